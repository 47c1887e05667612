"""Benchmark loaders for `diptych eval`: Emu Edit, MagicBrush, GEdit-Bench and ShapesEdit from local copies.

Every loader turns a benchmark in its released layout into a list of `Sample`s: an id (also the file name
of the edited image), a task category, one instruction per turn, the source image, the ground truth where
the benchmark has one, and the captions its metrics need. Images are read lazily (`ImageRef.load`), so
listing a benchmark of thousands of parquet rows reads only its text columns.

Layouts (see docs/evaluation.md for the details and the reasons):

- Emu Edit (`facebook/emu_edit_test_set`): parquet files with `instruction, image, task, split, idx, hash,
  input_caption, output_caption`. `split` picks the test set's "test" (3,589 rows, default) or "validation"
  (2,022) rows, from the hub file names (`test-*.parquet`) or else the `split` column. Samples whose input
  or output caption is missing, empty, or the same as the other (after trimming, case folding and
  collapsing white space) are dropped unless `caption_filter=False`. The generations dataset
  (`facebook/emu_edit_test_set_generations`, same columns plus `edited_image, model`) is read the same way
  and its `edited_image` becomes the prediction; its hub split names are swapped (its `validation-*` files
  hold the 3,589 rows of the test split), which the loader undoes when it reads the split from file names.
- MagicBrush test (the official zip): `edit_sessions.json` mapping `img_id` to its turns
  `{"input", "output", "mask", "instruction"}` and `images/{img_id}/{img_id}-input.png`,
  `{img_id}-output{k}.png`, `{img_id}-mask{k}.png`; optional `local_descriptions.json` /
  `global_descriptions.json` captions. Protocols: "all-turn" (every turn from its ground-truth input) and
  "final-turn" (each session chained through the model's own outputs, the last one scored).
- GEdit-Bench (`stepfun-ai/GEdit-Bench`): parquet or Arrow files, or a JSON / JSONL list, with
  `key, task_type, instruction, instruction_language (or language), input_image[, input_image_raw]`.
- ShapesEdit: a folder written by `diptych shapes make`.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import DiptychError
from ..images import load_image
from ..parquet import image_cell, open_parquet, pyarrow_modules
from .scoring import ImageMetricScoring, Scoring, ShapesScoring, VieScoring

__all__ = [
    "BENCHMARKS",
    "DEFAULT_HUB_REPOS",
    "IMAGE_SUFFIXES",
    "KINDS",
    "METRICS",
    "Benchmark",
    "BenchmarkError",
    "BenchmarkKind",
    "BytesImage",
    "FileImage",
    "ImageRef",
    "Sample",
    "load_benchmark",
    "parse_shard",
    "select_samples",
    "shard_samples",
]

BENCHMARKS: tuple[str, ...] = ("emu-edit", "magicbrush", "gedit", "shapes")

METRICS: dict[str, tuple[str, ...]] = {
    # No ground truth on Emu Edit: image metrics compare the edit with its source.
    "emu-edit": ("clip_i", "clip_out", "clip_dir", "dino", "l1"),
    "magicbrush": ("l1", "l2", "clip_i", "dino", "clip_t"),
    "gedit": ("vie_sc", "vie_pq", "vie_overall"),
    "shapes": ("success", "l1"),
}
"""The metrics each benchmark can report, in report order."""

DEFAULT_HUB_REPOS: dict[str, str] = {
    "emu-edit": "facebook/emu_edit_test_set",
    "gedit": "stepfun-ai/GEdit-Bench",
}

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp")
EMU_SPLITS: tuple[str, ...] = ("test", "validation", "all")
MAGICBRUSH_PROTOCOLS: tuple[str, ...] = ("all-turn", "final-turn")
_HUB_SPLIT = re.compile(r"^(train|validation|test)[-_.]")
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")
_LANGUAGE_ALIASES = {"zh": "cn", "chinese": "cn", "english": "en"}


class BenchmarkError(DiptychError, ValueError):
    """A benchmark cannot be loaded: a missing folder, an unknown layout, missing columns, bad options."""


# ---------------------------------------------------------------------------------------------- images


class ImageRef:
    """An image that is read only when needed. `path` is set when it is a file (for links in reports)."""

    path: Path | None = None

    def load(self) -> Image.Image:
        """The image as validated 8-bit RGB (`diptych.images.load_image` rules)."""
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__


class FileImage(ImageRef):
    """An image file."""

    def __init__(self, path: str | os.PathLike[str], what: str = "image"):
        self.path = Path(path)
        self.what = what

    def load(self) -> Image.Image:
        return load_image(self.path, what=self.what)

    def describe(self) -> str:
        return str(self.path)


class BytesImage(ImageRef):
    """The bytes of an image file held in memory."""

    def __init__(self, data: bytes, label: str):
        self.data, self.label = bytes(data), label

    def load(self) -> Image.Image:
        return load_image(self.data, what=self.label)

    def describe(self) -> str:
        return self.label


class _CellImage(ImageRef):
    """An image cell of a table, read (with its row group) on first use."""

    def __init__(self, table: _Table, row: int, column: str):
        self.table, self.row, self.column = table, row, column

    def load(self) -> Image.Image:
        return self.table.image_cell(self.row, self.column).load()

    def describe(self) -> str:
        return self.table.where(self.row) + f" column {self.column}"


def _cell_to_ref(value: object, base: Path, where: str) -> ImageRef:
    """An image cell (`diptych.parquet.image_cell`) as a lazily loaded image."""
    content = image_cell(value, base, where=where, error=BenchmarkError)
    return BytesImage(content, where) if isinstance(content, bytes) else FileImage(content, where)


# ---------------------------------------------------------------------------------------------- tables


class _Table:
    """Rows of a released benchmark file set: text columns read at once, image cells on demand."""

    names: set[str]

    def __len__(self) -> int:
        raise NotImplementedError

    def texts(self, column: str) -> list[Any]:
        """Every row's value of a (non-image) column; None where a file lacks the column."""
        raise NotImplementedError

    def image_cell(self, row: int, column: str) -> ImageRef:
        raise NotImplementedError

    def where(self, row: int) -> str:
        raise NotImplementedError

    def file_of(self, row: int) -> Path | None:
        return None

    def image(self, row: int, column: str) -> ImageRef:
        return _CellImage(self, row, column)


def _pyarrow():
    return pyarrow_modules(BenchmarkError)


class _ParquetTable(_Table):
    """Parquet files; image cells are read one row group at a time, one cached group per column."""

    def __init__(self, files: Sequence[Path]):
        self.files = list(files)
        self._handles = []
        self._rows: list[tuple[int, int, int]] = []  # (file, row group, offset in the group)
        self.names = set()
        for index, file in enumerate(self.files):
            handle = open_parquet(file, BenchmarkError)
            names = set(handle.schema_arrow.names)
            self._handles.append((handle, names))
            self.names |= names
            for group in range(handle.metadata.num_row_groups):
                count = handle.metadata.row_group(group).num_rows
                self._rows.extend((index, group, offset) for offset in range(count))
        self._cache: dict[str, tuple[tuple[int, int], list[Any]]] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def texts(self, column: str) -> list[Any]:
        values: list[Any] = []
        for file, (handle, names) in zip(self.files, self._handles, strict=True):
            count = handle.metadata.num_rows
            if column not in names:
                values.extend([None] * count)
                continue
            try:
                values.extend(handle.read(columns=[column]).column(column).to_pylist())
            except Exception as err:
                raise BenchmarkError(f"{file}: cannot read column {column!r} ({err}); the file is damaged") from err
        return values

    def image_cell(self, row: int, column: str) -> ImageRef:
        file, group, offset = self._rows[row]
        handle, names = self._handles[file]
        where = self.where(row) + f" column {column}"
        if column not in names:
            raise BenchmarkError(f"{where}: the file has no column {column!r}")
        cached = self._cache.get(column)
        if cached is None or cached[0] != (file, group):
            try:
                values = handle.read_row_group(group, columns=[column]).column(column).to_pylist()
            except Exception as err:
                raise BenchmarkError(f"{where}: unreadable row group ({err}); the file is damaged") from err
            cached = ((file, group), values)
            self._cache[column] = cached
        return _cell_to_ref(cached[1][offset], self.files[file].parent, where)

    def where(self, row: int) -> str:
        file, group, offset = self._rows[row]
        return f"{self.files[file].name} row group {group} row {offset}"

    def file_of(self, row: int) -> Path:
        return self.files[self._rows[row][0]]


class _ArrowTable(_Table):
    """Arrow IPC files (what `datasets` stores, e.g. the GEdit-Bench download), memory-mapped."""

    def __init__(self, files: Sequence[Path]):
        pa, _ = _pyarrow()
        self.files = list(files)
        self._tables = []
        self._rows: list[tuple[int, int]] = []
        self.names = set()
        for index, file in enumerate(self.files):
            table = None
            for opener in (pa.ipc.open_stream, pa.ipc.open_file):
                try:
                    table = opener(pa.memory_map(str(file))).read_all()
                    break
                except Exception:
                    continue
            if table is None:
                raise BenchmarkError(f"{file} is not a readable Arrow file; download it again")
            self._tables.append(table)
            self.names |= set(table.column_names)
            self._rows.extend((index, offset) for offset in range(table.num_rows))

    def __len__(self) -> int:
        return len(self._rows)

    def texts(self, column: str) -> list[Any]:
        values: list[Any] = []
        for table in self._tables:
            if column in table.column_names:
                values.extend(table.column(column).to_pylist())
            else:
                values.extend([None] * table.num_rows)
        return values

    def image_cell(self, row: int, column: str) -> ImageRef:
        file, offset = self._rows[row]
        table = self._tables[file]
        where = self.where(row) + f" column {column}"
        if column not in table.column_names:
            raise BenchmarkError(f"{where}: the file has no column {column!r}")
        return _cell_to_ref(table.column(column)[offset].as_py(), self.files[file].parent, where)

    def where(self, row: int) -> str:
        file, offset = self._rows[row]
        return f"{self.files[file].name} row {offset}"

    def file_of(self, row: int) -> Path:
        return self.files[self._rows[row][0]]


class _RowsTable(_Table):
    """Rows of a JSON list / JSONL file; image paths are relative to the file's folder."""

    def __init__(self, rows: list[dict[str, Any]], file: Path):
        self.rows, self.file = rows, file
        self.names = set().union(*(row.keys() for row in rows)) if rows else set()

    def __len__(self) -> int:
        return len(self.rows)

    def texts(self, column: str) -> list[Any]:
        return [row.get(column) for row in self.rows]

    def image_cell(self, row: int, column: str) -> ImageRef:
        where = self.where(row) + f" field {column}"
        return _cell_to_ref(self.rows[row].get(column), self.file.parent, where)

    def where(self, row: int) -> str:
        return f"{self.file.name} item {row}"

    def file_of(self, row: int) -> Path:
        return self.file


def _read_json_rows(file: Path) -> list[dict[str, Any]]:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise BenchmarkError(f"cannot read {file} ({err})") from err
    try:
        if file.suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
            rows = list(data.values()) if isinstance(data, dict) else data
    except json.JSONDecodeError as err:
        raise BenchmarkError(f"{file} is not valid JSON ({err.msg} at line {err.lineno})") from err
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise BenchmarkError(f"{file} must hold a list of JSON objects (one per sample)")
    return rows


def _open_table(path: Path, *, allow_json: bool = False) -> _Table:
    """A table from a parquet / Arrow / JSON file or a folder of them (searched recursively, sorted)."""
    if not path.exists():
        raise BenchmarkError(f"benchmark data {path} does not exist; pass the folder you downloaded with --data")
    suffixes = {".parquet": "parquet", ".arrow": "arrow"}
    if allow_json:
        suffixes |= {".json": "json", ".jsonl": "json"}
    if path.is_file():
        kind = suffixes.get(path.suffix.lower())
        if kind is None:
            raise BenchmarkError(f"{path}: expected a {' / '.join(suffixes)} file or a folder of them")
        files = [path]
    else:
        found = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and p.suffix.lower() in suffixes
            # skip hidden folders such as the .cache/ that `huggingface-cli download --local-dir` leaves
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        kinds = {suffixes[p.suffix.lower()] for p in found}
        # A `datasets` download keeps parquet/arrow files next to JSON metadata; prefer the data files.
        for kind in ("parquet", "arrow", "json"):
            if kind in kinds:
                break
        else:
            raise BenchmarkError(f"folder {path} has no {' / '.join(suffixes)} files; point --data at the benchmark")
        files = [p for p in found if suffixes[p.suffix.lower()] == kind]
        if kind == "json":
            files = [p for p in files if p.name != "dataset_info.json" and p.name != "state.json"]
            if len(files) != 1:
                raise BenchmarkError(f"folder {path} has {len(files)} JSON files; pass the one to use with --data")
    if kind == "parquet":
        return _ParquetTable(files)
    if kind == "arrow":
        return _ArrowTable(files)
    return _RowsTable(_read_json_rows(files[0]), files[0])


# --------------------------------------------------------------------------------------------- samples


@dataclass
class Sample:
    """One benchmark item.

    `instructions` holds one instruction per turn; with several, the edits chain (turn k edits the output
    of turn k-1) and the last output is scored. `target` is the ground truth (None on benchmarks without
    one). `output_caption` is the caption CLIP-out / CLIP-T compare with. `prediction` is an edited image
    shipped with the data (generations files); `prediction_names` are other file names, relative to a
    `--predictions` folder, under which a benchmark's official tools save this sample's output.
    """

    id: str
    task: str
    instructions: tuple[str, ...]
    source: ImageRef
    target: ImageRef | None = None
    input_caption: str | None = None
    output_caption: str | None = None
    judge_source: ImageRef | None = None
    prediction: ImageRef | None = None
    prediction_names: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)
    edit: Any = field(default=None, repr=False)

    @property
    def instruction(self) -> str:
        """The last (for single-turn samples the only) instruction."""
        return self.instructions[-1]


@dataclass
class Benchmark:
    """A loaded benchmark: its samples in order, the metrics it reports, and what the loader left out."""

    name: str
    samples: list[Sample]
    metrics: tuple[str, ...]
    dropped: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # where the data was read from

    @property
    def tasks(self) -> list[str]:
        """Task categories in order of first appearance."""
        return list(dict.fromkeys(s.task for s in self.samples))

    @property
    def scoring(self) -> Scoring:
        """How this benchmark scores an edit (`KINDS`)."""
        return KINDS[self.name].scoring


def safe_id(text: str) -> str:
    """A sample id usable as a file name: runs of characters outside [A-Za-z0-9._-] become '_'."""
    cleaned = _SAFE_ID.sub("_", str(text)).strip("._")
    return cleaned or "_"


def _check_unique(samples: Sequence[Sample], what: str) -> None:
    counts = Counter(s.id for s in samples)
    repeated = [i for i, n in counts.items() if n > 1]
    if repeated:
        raise BenchmarkError(
            f"{what}: {len(repeated)} sample id(s) occur more than once (e.g. {repeated[0]!r}); the data holds "
            "duplicate rows or several copies of the benchmark"
        )


def _text(value: object) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


# -------------------------------------------------------------------------------------------- emu edit


def _normalised_caption(text: str) -> str:
    return " ".join(text.casefold().split())


def load_emu_edit(path: str | os.PathLike[str], *, split: str = "test", caption_filter: bool = True) -> Benchmark:
    """The Emu Edit test set (or its generations file) from local parquet files; see the module docstring."""
    if split not in EMU_SPLITS:
        raise BenchmarkError(f"Emu Edit split must be one of {', '.join(EMU_SPLITS)}, got {split!r}")
    table = _open_table(Path(path))
    required = {"instruction", "image"}
    missing = sorted(required - table.names)
    if missing:
        raise BenchmarkError(
            f"{path}: no column {', '.join(missing)} (columns: {', '.join(sorted(table.names))}); "
            "is it the Emu Edit test set (facebook/emu_edit_test_set)?"
        )
    generations = "edited_image" in table.names
    models = [m for m in dict.fromkeys(table.texts("model")) if m is not None] if generations else []
    if len(models) > 1:
        raise BenchmarkError(
            f"{path} holds the generations of several models ({', '.join(map(str, models))}); "
            "split it into one folder per model"
        )
    columns = {
        name: table.texts(name)
        for name in ("instruction", "task", "split", "idx", "hash", "input_caption", "output_caption")
    }
    samples, dropped = [], Counter()
    for row in range(len(table)):
        row_split = _emu_row_split(table, row, columns["split"][row], generations)
        if split != "all" and row_split != split:
            continue
        instruction = _text(columns["instruction"][row])
        if instruction is None:
            dropped["empty instruction"] += 1
            continue
        in_cap, out_cap = _text(columns["input_caption"][row]), _text(columns["output_caption"][row])
        if caption_filter:
            if in_cap is None or out_cap is None:
                dropped["missing or empty caption"] += 1
                continue
            if _normalised_caption(in_cap) == _normalised_caption(out_cap):
                dropped["identical input and output captions"] += 1
                continue
        idx = columns["idx"][row]
        number = idx if isinstance(idx, int) else row
        task = _text(columns["task"][row]) or "unknown"
        samples.append(
            Sample(
                # idx counts within a split; rows of unknown split are numbered by their position
                id=safe_id(f"{row_split}-{number}" if row_split else f"row-{row}"),
                task=task,
                instructions=(instruction,),
                source=table.image(row, "image"),
                input_caption=in_cap,
                output_caption=out_cap,
                prediction=table.image(row, "edited_image") if generations else None,
                meta={"split": row_split, "idx": idx, "hash": columns["hash"][row]},
            )
        )
    _check_unique(samples, str(path))
    if not samples:
        splits = {_emu_row_split(table, row, columns["split"][row], generations) for row in range(len(table))}
        if splits == {None}:
            raise BenchmarkError(
                f"{path}: the rows say nothing of their split (no hub file names like test-00000.parquet, no "
                "split column); pass --split all"
            )
        raise BenchmarkError(f"{path}: no sample of split {split!r} left (dropped: {dict(dropped) or 'none'})")
    info = {"split": split, "caption_filter": caption_filter, "generations": generations}
    if models:
        info["model"] = str(models[0])
    return Benchmark("emu-edit", samples, METRICS["emu-edit"], dict(dropped), info)


def _emu_row_split(table: _Table, row: int, column_value: object, generations: bool) -> str | None:
    """The Emu Edit test-set split of a row: from a hub file name (swapped back for the generations
    dataset, whose `validation-*` files hold the test split) or else the `split` column."""
    file = table.file_of(row)
    match = _HUB_SPLIT.match(file.name) if file is not None else None
    if match:
        name = match.group(1)
        if generations:
            name = {"validation": "test", "test": "validation"}.get(name, name)
        return name
    return _text(column_value)


# ------------------------------------------------------------------------------------------ magicbrush

_SESSIONS = "edit_sessions.json"
_CAPTION_FILES = ("local_descriptions.json", "local_captions.json", "global_descriptions.json")


def _magicbrush_root(path: Path) -> Path:
    if not path.exists():
        raise BenchmarkError(f"MagicBrush data {path} does not exist; unzip the official test.zip and pass its folder")
    for root in (path, path / "test"):
        if (root / _SESSIONS).is_file():
            return root
    if path.is_file() and path.name == _SESSIONS:
        return path.parent
    raise BenchmarkError(
        f"{path} has no {_SESSIONS}; pass the folder of the unzipped MagicBrush test set (with {_SESSIONS} and "
        "images/{img_id}/...)"
    )


def _load_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise BenchmarkError(f"cannot read {file} ({err})") from err
    except json.JSONDecodeError as err:
        raise BenchmarkError(f"{file} is not valid JSON ({err.msg} at line {err.lineno})") from err


def _magicbrush_sessions(root: Path) -> list[tuple[str, list[dict[str, Any]]]]:
    data = _load_json(root / _SESSIONS)
    if isinstance(data, dict):
        sessions = [(str(k), v) for k, v in data.items()]
    elif isinstance(data, list):  # a list of sessions: the id comes from the input file name
        sessions = []
        for turns in data:
            first = turns[0] if isinstance(turns, list) and turns and isinstance(turns[0], dict) else {}
            sessions.append((str(first.get("input", "")).split("-")[0], turns))
    else:
        raise BenchmarkError(f"{root / _SESSIONS} must map img_id to a list of turns")
    for img_id, turns in sessions:
        if not img_id or not isinstance(turns, list) or not turns or not all(isinstance(t, dict) for t in turns):
            raise BenchmarkError(f"{root / _SESSIONS}: session {img_id!r} must be a non-empty list of turn objects")
        for number, turn in enumerate(turns, start=1):
            missing = [k for k in ("input", "output", "instruction") if not turn.get(k)]
            if missing:
                raise BenchmarkError(f"{root / _SESSIONS}: session {img_id} turn {number} lacks {', '.join(missing)}")
    return sessions


def _magicbrush_captions(root: Path) -> dict[str, Any]:
    for name in _CAPTION_FILES:
        for folder in (root, root.parent):
            if (folder / name).is_file():
                data = _load_json(folder / name)
                return data if isinstance(data, dict) else {}
    return {}


def _caption_for(captions: dict[str, Any], img_id: str, file_name: str) -> str | None:
    nested = captions.get(img_id)
    if isinstance(nested, dict):
        return _text(nested.get(file_name))
    return _text(captions.get(file_name))


def _magicbrush_image(root: Path, img_id: str, name: str) -> Path | None:
    for candidate in (root / "images" / img_id / name, root / img_id / name, root / "images" / name):
        if candidate.is_file():
            return candidate
    return None


def load_magicbrush(path: str | os.PathLike[str], *, protocol: str = "all-turn") -> Benchmark:
    """The MagicBrush test set from the official zip layout; see the module docstring.

    "all-turn": one sample per turn (id `{img_id}-t{k}`, task `turn {k}`), edited from the ground-truth
    input of that turn and compared with that turn's ground truth. "final-turn": one sample per session
    (id `{img_id}`, task `{n} turns`), its instructions chained through the model's own outputs and the
    last output compared with the final ground truth. Sessions with missing image files are dropped and
    counted.
    """
    if protocol not in MAGICBRUSH_PROTOCOLS:
        raise BenchmarkError(f"MagicBrush protocol must be one of {', '.join(MAGICBRUSH_PROTOCOLS)}, got {protocol!r}")
    root = _magicbrush_root(Path(path))
    captions = _magicbrush_captions(root)
    samples, dropped = [], Counter()
    for img_id, turns in _magicbrush_sessions(root):
        paths = [
            (_magicbrush_image(root, img_id, str(t["input"])), _magicbrush_image(root, img_id, str(t["output"])))
            for t in turns
        ]
        if any(p is None for pair in paths for p in pair):
            dropped["session with missing image files"] += 1
            continue
        instructions = [_text(t["instruction"]) for t in turns]
        if any(i is None for i in instructions):
            dropped["session with an empty instruction"] += 1
            continue
        sid = safe_id(img_id)
        if protocol == "all-turn":
            for k, (turn, (src, out)) in enumerate(zip(turns, paths, strict=True), start=1):
                name = f"{img_id}_1.png" if k == 1 else f"{img_id}_inde_{k}.png"
                samples.append(
                    Sample(
                        id=f"{sid}-t{k}",
                        task=f"turn {k}",
                        instructions=(instructions[k - 1],),
                        source=FileImage(src, "MagicBrush input"),
                        target=FileImage(out, "MagicBrush ground truth"),
                        output_caption=_caption_for(captions, img_id, str(turn["output"])),
                        prediction_names=(f"{img_id}/{name}",),
                        meta={"img_id": img_id, "turn": k, "turns": len(turns)},
                    )
                )
        else:
            n = len(turns)
            name = f"{img_id}_1.png" if n == 1 else f"{img_id}_iter_{n}.png"
            samples.append(
                Sample(
                    id=sid,
                    task=f"{n} turn" + ("s" if n > 1 else ""),
                    instructions=tuple(instructions),  # type: ignore[arg-type]
                    source=FileImage(paths[0][0], "MagicBrush input"),
                    target=FileImage(paths[-1][1], "MagicBrush ground truth"),
                    output_caption=_caption_for(captions, img_id, str(turns[-1]["output"])),
                    prediction_names=(f"{img_id}/{name}",),
                    meta={"img_id": img_id, "turns": n},
                )
            )
    _check_unique(samples, str(root / _SESSIONS))
    if not samples:
        raise BenchmarkError(f"{root}: no usable MagicBrush session (dropped: {dict(dropped) or 'none'})")
    return Benchmark("magicbrush", samples, METRICS["magicbrush"], dict(dropped), {"protocol": protocol})


# ----------------------------------------------------------------------------------------------- gedit


def _language(value: object) -> str | None:
    text = _text(value)
    if text is None:
        return None
    text = text.lower()
    return _LANGUAGE_ALIASES.get(text, text)


def load_gedit(path: str | os.PathLike[str], *, languages: Iterable[str] = ("en",)) -> Benchmark:
    """GEdit-Bench from parquet / Arrow / JSON files; only `languages` (default English) are kept."""
    wanted = {_language(lang) for lang in languages}
    wanted.discard(None)
    if not wanted:
        raise BenchmarkError("give at least one GEdit-Bench language, e.g. en or cn")
    table = _open_table(Path(path), allow_json=True)
    image_column = "input_image" if "input_image" in table.names else "input_image_raw"
    lang_column = "instruction_language" if "instruction_language" in table.names else "language"
    missing = [c for c in ("key", "instruction", image_column, lang_column) if c not in table.names]
    if missing:
        raise BenchmarkError(
            f"{path}: no column {', '.join(missing)} (columns: {', '.join(sorted(table.names))}); is it GEdit-Bench "
            "(stepfun-ai/GEdit-Bench: key, task_type, instruction, instruction_language, input_image)?"
        )
    raw = "input_image_raw" in table.names
    keys, instructions = table.texts("key"), table.texts("instruction")
    tasks, langs = table.texts("task_type"), table.texts(lang_column)
    intersection = table.texts("Intersection_exist")
    samples, dropped = [], Counter()
    for row in range(len(table)):
        lang = _language(langs[row])
        if lang not in wanted:
            continue
        key = _text(None if keys[row] is None else str(keys[row]))
        instruction = _text(instructions[row])
        if key is None or instruction is None:
            dropped["empty key or instruction"] += 1
            continue
        task = _text(tasks[row]) or "unknown"
        judge_source = table.image(row, image_column)
        samples.append(
            Sample(
                id=safe_id(f"{lang}-{key}"),
                task=task,
                instructions=(instruction,),
                # The official generation script edits the raw input; the judge sees `input_image`.
                source=table.image(row, "input_image_raw") if raw else judge_source,
                judge_source=judge_source,
                prediction_names=(f"fullset/{task}/{lang}/{key}.png",),
                meta={"key": key, "language": lang, "intersection": intersection[row]},
            )
        )
    _check_unique(samples, str(path))
    if not samples:
        found = sorted({str(x) for x in (_language(v) for v in langs) if x})
        raise BenchmarkError(f"{path}: no sample in language(s) {', '.join(sorted(wanted))} (found: {found})")
    return Benchmark("gedit", samples, METRICS["gedit"], dict(dropped), {"languages": sorted(wanted)})


# ---------------------------------------------------------------------------------------------- shapes


def load_shapes(path: str | os.PathLike[str]) -> Benchmark:
    """A ShapesEdit folder written by `diptych shapes make` (scored by the exact success rule)."""
    from ..shapes_core.dataset import load_dataset

    folder = Path(path)
    if not folder.is_dir():
        raise BenchmarkError(f"ShapesEdit folder {folder} does not exist; write one with `diptych shapes make`")
    samples = [
        Sample(
            id=safe_id(record.id),
            task=record.task,
            instructions=(record.instruction,),
            source=FileImage(record.source, "ShapesEdit source"),
            target=FileImage(record.target, "ShapesEdit target"),
            meta={"phrasing": record.phrasing, "size": record.size},
            edit=record.edit,
        )
        for record in load_dataset(folder)
    ]
    _check_unique(samples, str(folder))
    if not samples:
        raise BenchmarkError(f"{folder} holds no ShapesEdit records")
    return Benchmark("shapes", samples, METRICS["shapes"], {}, {})


# ------------------------------------------------------------------------------------------- dispatch


def resolve_data(benchmark: str, data: str) -> Path:
    """`data` as a local path; `hub` or `hub:REPO` downloads the benchmark from the Hugging Face hub first
    (needs `huggingface_hub` and a connection; the files land in the usual hub cache)."""
    if data != "hub" and not data.startswith("hub:"):
        return Path(data)
    repo = data.partition(":")[2] or DEFAULT_HUB_REPOS.get(benchmark)
    if not repo:
        raise BenchmarkError(
            f"{benchmark} is not on the Hugging Face hub; download it and pass the local folder with --data"
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:  # pragma: no cover - huggingface_hub comes with diffusers
        raise BenchmarkError("downloading from the hub needs huggingface_hub: pip install huggingface_hub") from err
    from ..hub import check_hub_access

    fix = f"download it by hand (huggingface-cli download {repo} --repo-type dataset) and pass the folder with --data"
    try:
        local = check_hub_access(repo, what=f"the {benchmark} data", fix=fix, repo_type="dataset")
    except DiptychError as err:
        raise BenchmarkError(str(err)) from err
    try:  # pragma: no cover - needs the network
        return Path(snapshot_download(repo, repo_type="dataset", local_files_only=local))
    except Exception as err:  # pragma: no cover - needs the network
        raise BenchmarkError(
            f"cannot download {repo} from the hub ({type(err).__name__}: {err}); download it by hand "
            f"(huggingface-cli download {repo} --repo-type dataset) and pass the folder with --data"
        ) from err


def load_benchmark(
    name: str,
    data: str | os.PathLike[str],
    *,
    split: str = "test",
    protocol: str = "all-turn",
    languages: Iterable[str] = ("en",),
    caption_filter: bool = True,
) -> Benchmark:
    """Load benchmark `name` (one of `BENCHMARKS`) from `data` (a local path, or `hub[:REPO]`)."""
    if name not in KINDS:
        raise BenchmarkError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    kind = KINDS[name]
    path = resolve_data(name, str(data))
    options = {"split": split, "protocol": protocol, "languages": languages, "caption_filter": caption_filter}
    bench = kind.load(path, **{key: options[key] for key in kind.options})
    bench.path = path.resolve()
    return bench


@dataclass(frozen=True)
class BenchmarkKind:
    """What makes a benchmark: its loader (and which of `load_benchmark`'s options it takes) and how it scores an
    edit. A new benchmark is a loader, its `METRICS` (and `DEFAULT_HUB_REPOS`) entry and a line here; the runner
    does not change."""

    load: Callable[..., Benchmark]
    scoring: Scoring
    options: tuple[str, ...] = ()


KINDS: dict[str, BenchmarkKind] = {
    "emu-edit": BenchmarkKind(load_emu_edit, ImageMetricScoring(reference="source"), ("split", "caption_filter")),
    "magicbrush": BenchmarkKind(load_magicbrush, ImageMetricScoring(reference="target"), ("protocol",)),
    "gedit": BenchmarkKind(load_gedit, VieScoring(), ("languages",)),
    "shapes": BenchmarkKind(load_shapes, ShapesScoring()),
}


def select_samples(
    samples: Sequence[Sample], *, tasks: Iterable[str] | None = None, subset: int | None = None
) -> list[Sample]:
    """Samples of the given task categories, then `subset` of them spread evenly over the list
    (item `floor(i * len / subset)` for i < subset), so every task keeps about its share."""
    chosen = list(samples)
    if tasks is not None:
        wanted = list(dict.fromkeys(tasks))
        known = list(dict.fromkeys(s.task for s in samples))
        unknown = [t for t in wanted if t not in known]
        if unknown:
            raise BenchmarkError(f"unknown task(s) {', '.join(unknown)}; this benchmark has: {', '.join(known)}")
        chosen = [s for s in chosen if s.task in wanted]
    if subset is not None:
        if isinstance(subset, bool) or not isinstance(subset, int) or subset < 1:
            raise BenchmarkError(f"subset must be a positive number of samples, got {subset!r}")
        if subset < len(chosen):
            chosen = [chosen[(i * len(chosen)) // subset] for i in range(subset)]
    return chosen


def parse_shard(text: str) -> tuple[int, int]:
    """`"i/n"` -> (i, n) with 0 <= i < n."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise BenchmarkError(f"--shard takes i/n (e.g. 0/4: the first of four shards), got {text!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise BenchmarkError(f"--shard {text}: need n >= 1 and 0 <= i < n")
    return index, count


def shard_samples(samples: Sequence[Sample], index: int, count: int) -> list[Sample]:
    """Shard `index` of `count`: every `count`-th sample from `index` (round robin, so shards stay balanced
    across tasks and turn counts)."""
    if count < 1 or not 0 <= index < count:
        raise BenchmarkError(f"shard {index}/{count}: need count >= 1 and 0 <= index < count")
    return list(samples[index::count])
