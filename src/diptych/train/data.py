"""Training data for edit adapters: datasets of (source, instruction, target[, task, mask]) samples.

Formats:
- a folder + JSONL (`JsonlDataset`): one object per line, `{"source": "a.png", "instruction": "...",
  "target": "b.png", "task": "optional", "mask": "optional"}`, paths relative to the JSONL's folder
  (the layout `diptych shapes make` exports; other keys are ignored);
- MagicBrush parquet files (`MagicBrushDataset`, hub `osunlp/MagicBrush`): `source_img, target_img,
  instruction` (+ `mask_img`), the bottom h/32 rows cropped as the official training code does;
- OmniEdit parquet shards (`OmniEditDataset`): `src_img, edited_img, edited_prompt_list, task`, one
  prompt drawn at random from the list;
- any Python callable `index -> sample` (`CallableDataset`), e.g. the ShapesEdit generator.

Every dataset has a length and `read(index, rng)`, which returns a validated `EditSample` or raises
`SampleError` / `InputError` for a bad sample (unreadable image, mismatched sizes, empty instruction).
Training skips and counts those; a problem with the dataset as a whole (missing file, wrong columns)
raises `DataError` at once. Parquet files are read one row group at a time, never whole, and
`blocks()` tells the sampler which rows share a row group so that a shuffled epoch still reads
each row group once.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import DiptychError, InputError
from ..images import ImageSource, load_image, load_mask, validate_instruction
from ..parquet import image_cell, open_parquet

FORMATS: tuple[str, ...] = ("auto", "jsonl", "magicbrush", "omniedit", "shapes")
MAX_ASPECT_MISMATCH = 0.02  # relative; source and target are resized to the same panel anyway

MAGICBRUSH_COLUMNS = ("source_img", "target_img", "instruction")
OMNIEDIT_COLUMNS = ("src_img", "edited_img", "edited_prompt_list")


class DataError(DiptychError, ValueError):
    """A dataset cannot be used at all: missing files, an unknown layout, missing columns."""


class SampleError(DataError):
    """One sample is unusable; training skips it and counts it."""


@dataclass
class EditSample:
    """One training example: images as validated RGB (`mask`: mode L, white = the edited region)."""

    source: Image.Image
    instruction: str
    target: Image.Image
    task: str | None = None
    mask: Image.Image | None = None


def make_sample(
    source: ImageSource,
    instruction: object,
    target: ImageSource,
    *,
    task: object = None,
    mask: ImageSource | None = None,
    where: str = "sample",
) -> EditSample:
    """Load and validate the parts of a sample; raises `SampleError` naming `where` and the reason."""
    try:
        if not isinstance(instruction, str):
            raise InputError(f"the instruction must be text, got {type(instruction).__name__}")
        text = validate_instruction(instruction)
        src = load_image(source, what="source image")
        tgt = load_image(target, what="target image")
        msk = load_mask(mask, size=src.size) if mask is not None else None
    except InputError as err:
        raise SampleError(f"{where}: {err}") from err
    except (TypeError, OSError) as err:  # a field of the wrong type, a file that vanished or is unreadable
        raise SampleError(f"{where}: {err}") from err
    check_sizes(src.size, tgt.size, where)
    if task is not None and not isinstance(task, str):
        raise SampleError(f"{where}: task must be text, got {type(task).__name__}")
    return EditSample(src, text, tgt, task or None, msk)


def check_sizes(source: tuple[int, int], target: tuple[int, int], where: str) -> None:
    """Refuse a pair whose aspect ratios differ: resizing both to one panel would distort one of them."""
    a_src, a_tgt = source[0] / source[1], target[0] / target[1]
    if abs(a_src / a_tgt - 1.0) > MAX_ASPECT_MISMATCH:
        raise SampleError(
            f"{where}: source {source[0]}x{source[1]} and target {target[0]}x{target[1]} have different "
            "aspect ratios; the pair is probably misaligned"
        )


class EditDataset:
    """Base class: a fixed number of rows, each read by index into an `EditSample`."""

    #: Whether shuffling makes sense (False for generators whose index already is a fresh draw).
    shuffle = True

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, index: int, rng: np.random.Generator | None = None) -> EditSample:
        """The sample at `index`; `rng` makes random choices (e.g. one of several prompts)."""
        raise NotImplementedError

    def blocks(self) -> list[tuple[int, int]]:
        """Contiguous [start, stop) row ranges that are cheap to read together (parquet row groups)."""
        return [(0, len(self))]

    def describe(self) -> str:
        return f"{type(self).__name__} ({len(self)} rows)"

    def task_of(self, index: int) -> str | None:
        """The task of row `index` (None: unnamed or unreadable); datasets that hold it apart override this
        to skip reading the images."""
        try:
            return self.read(index, np.random.default_rng(index)).task
        except SampleError:
            return None

    def __getitem__(self, index: int) -> EditSample:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} rows")
        return self.read(index, np.random.default_rng(index))

    def __iter__(self) -> Iterator[EditSample]:
        """Valid samples in row order; bad ones are skipped and counted in `self.skipped`."""
        self.skipped: Counter[str] = Counter()
        for index in range(len(self)):
            try:
                yield self.read(index, np.random.default_rng(index))
            except SampleError as err:
                self.skipped[skip_reason(err)] += 1


def skip_reason(err: Exception) -> str:
    """A short, countable reason for a skipped sample."""
    text = str(err).lower()
    for key in ("aspect", "corrupt", "not an image", "does not exist", "instruction", "prompt", "mask"):
        if key in text:
            return key.replace(" ", "_")
    return "other"


# ---------------------------------------------------------------------------------------------- JSONL


class JsonlDataset(EditDataset):
    """A JSONL file whose lines name a source, an instruction and a target (paths relative to the file).

    `path` is the .jsonl file or a folder holding `data.jsonl` (or exactly one .jsonl file). Malformed
    lines become bad samples (skipped and counted), not errors, so one broken line never stops a run.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = _find_jsonl(Path(path))
        self.root = self.path.parent
        self.rows: list[dict[str, Any] | str] = []  # a dict, or the reason the line is unusable
        with self.path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    self.rows.append(_parse_jsonl_line(line, f"{self.path.name} line {number}"))
        if not self.rows:
            raise DataError(f"{self.path} has no lines; write one JSON object per line")
        if all(isinstance(r, str) for r in self.rows):
            raise DataError(f"{self.path}: no line is a usable sample; first problem: {self.rows[0]}")

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, index: int, rng: np.random.Generator | None = None) -> EditSample:
        row = self.rows[index]
        if isinstance(row, str):
            raise SampleError(row)
        where = f"{self.path.name} line {row['_line']}"
        mask = row.get("mask")
        return make_sample(
            self._resolve(row["source"], where),
            row["instruction"],
            self._resolve(row["target"], where),
            task=row.get("task"),
            mask=self._resolve(mask, where) if mask else None,
            where=where,
        )

    def task_of(self, index: int) -> str | None:
        row = self.rows[index]
        task = row.get("task") if isinstance(row, dict) else None
        return task if isinstance(task, str) and task else None

    def _resolve(self, rel: object, where: str) -> str:
        if not isinstance(rel, str) or not rel:
            raise SampleError(f"{where}: image paths must be non-empty strings, got {rel!r}")
        return str(self.root / rel)

    def describe(self) -> str:
        return f"JSONL {self.path} ({len(self)} lines)"


def _find_jsonl(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(f"dataset {path} does not exist")
    if (path / "data.jsonl").is_file():
        return path / "data.jsonl"
    found = sorted(path.glob("*.jsonl"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"folder {path} has no .jsonl file (expected data.jsonl)")
    raise DataError(f"folder {path} has several .jsonl files; pass the one to use")


def _parse_jsonl_line(line: str, where: str) -> dict[str, Any] | str:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        return f"{where}: not valid JSON ({err.msg})"
    if not isinstance(row, dict):
        return f"{where}: expected a JSON object"
    missing = [k for k in ("source", "instruction", "target") if k not in row]
    if missing:
        return f"{where}: missing {', '.join(missing)}"
    row["_line"] = int(where.rsplit(" ", 1)[1])
    return row


# -------------------------------------------------------------------------------------------- parquet


class ParquetDataset(EditDataset):
    """Rows of one or more parquet files, read one row group at a time (the last one is cached)."""

    columns: tuple[str, ...] = ()
    optional_columns: tuple[str, ...] = ()

    def __init__(self, path: str | os.PathLike[str]):
        self.files = parquet_files(Path(path))
        self._groups: list[tuple[int, int, int]] = []  # (file index, row group, rows)
        self._present: set[str] = set()
        for file_index, file in enumerate(self.files):
            meta = open_parquet(file, DataError)
            names = set(meta.schema_arrow.names)
            missing = [c for c in self.columns if c not in names]
            if missing:
                raise DataError(
                    f"{file} has no column {', '.join(missing)} (columns: {', '.join(sorted(names))}); "
                    f"is it a {type(self).__name__.removesuffix('Dataset')} file? Set --data-format"
                )
            self._present |= names & set(self.optional_columns)
            for group in range(meta.metadata.num_row_groups):
                rows = meta.metadata.row_group(group).num_rows
                if rows:
                    self._groups.append((file_index, group, rows))
        self._starts = np.cumsum([0] + [g[2] for g in self._groups])
        if self._starts[-1] == 0:
            raise DataError(f"{path} holds no rows")
        self._cache: tuple[int, dict[str, list]] | None = None

    def __len__(self) -> int:
        return int(self._starts[-1])

    def blocks(self) -> list[tuple[int, int]]:
        return [(int(a), int(b)) for a, b in zip(self._starts[:-1], self._starts[1:], strict=True)]

    def _row(self, index: int) -> tuple[dict[str, Any], str]:
        group = int(np.searchsorted(self._starts, index, side="right")) - 1
        if self._cache is None or self._cache[0] != group:
            file_index, rg, _ = self._groups[group]
            wanted = [*self.columns, *sorted(self._present)]
            try:
                table = open_parquet(self.files[file_index], DataError).read_row_group(rg, columns=wanted)
            except Exception as err:  # a damaged row group costs its rows, not the run
                raise SampleError(f"{self.files[file_index].name} row group {rg}: unreadable ({err})") from err
            self._cache = (group, {name: table.column(name).to_pylist() for name in wanted})
        offset = index - int(self._starts[group])
        file_index, rg, _ = self._groups[group]
        row = {name: values[offset] for name, values in self._cache[1].items()}
        return row, f"{self.files[file_index].name} row {index - int(self._starts[group])} of group {rg}"

    def _image(self, value: object, file: Path, where: str, what: str) -> ImageSource:
        """An image cell (`diptych.parquet.image_cell`): encoded bytes, or the path of the file it names."""
        content = image_cell(value, file.parent, where=f"{where}: {what}", error=SampleError)
        return content if isinstance(content, bytes) else str(content)

    def _file_of(self, index: int) -> Path:
        group = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self.files[self._groups[group][0]]

    def describe(self) -> str:
        return f"{type(self).__name__} ({len(self.files)} parquet file(s), {len(self)} rows)"


class MagicBrushDataset(ParquetDataset):
    """MagicBrush (`osunlp/MagicBrush`) parquet files; the bottom h/32 rows of every image are cropped,
    as the official ICEdit training code does.

    `with_masks=True` also loads `mask_img` through `load_mask` (alpha if not opaque, else luminance).
    The training objective does not use masks, and which value MagicBrush gives the edited region is
    not checked here, so masks are off by default (saving a decode per sample).
    """

    columns = MAGICBRUSH_COLUMNS

    def __init__(self, path: str | os.PathLike[str], *, crop_bottom: bool = True, with_masks: bool = False):
        self.optional_columns = ("mask_img",) if with_masks else ()
        super().__init__(path)
        self.crop_bottom = crop_bottom

    def read(self, index: int, rng: np.random.Generator | None = None) -> EditSample:
        row, where = self._row(index)
        file = self._file_of(index)
        mask = row.get("mask_img")
        sample = make_sample(
            self._image(row["source_img"], file, where, "source_img"),
            row["instruction"],
            self._image(row["target_img"], file, where, "target_img"),
            mask=self._image(mask, file, where, "mask_img") if mask else None,
            where=where,
        )
        return crop_magicbrush(sample) if self.crop_bottom else sample


def crop_magicbrush(sample: EditSample) -> EditSample:
    """Drop the bottom h/32 rows of each image (official ICEdit MagicBrush preprocessing)."""

    def crop(image: Image.Image | None) -> Image.Image | None:
        if image is None:
            return None
        w, h = image.size
        return image.crop((0, 0, w, h - h // 32))

    return EditSample(crop(sample.source), sample.instruction, crop(sample.target), sample.task, crop(sample.mask))


class OmniEditDataset(ParquetDataset):
    """OmniEdit parquet shards: `src_img`, `edited_img`, `edited_prompt_list` (one drawn at random), `task`."""

    columns = OMNIEDIT_COLUMNS
    optional_columns = ("task",)
    _tasks: tuple[int, list] | None = None  # (row group, its task cells): the last group task_of read

    def task_of(self, index: int) -> str | None:
        """The row's `task` cell, read from that column alone: thinning by task opens no image."""
        if "task" not in self._present:
            return None
        group = int(np.searchsorted(self._starts, index, side="right")) - 1
        if self._tasks is None or self._tasks[0] != group:
            file_index, rg, _ = self._groups[group]
            try:
                table = open_parquet(self.files[file_index], DataError).read_row_group(rg, columns=["task"])
            except Exception:  # a damaged row group or a shard without the column: its rows name no task
                return None
            self._tasks = (group, table.column("task").to_pylist())
        task = self._tasks[1][index - int(self._starts[group])]
        return task if isinstance(task, str) and task else None

    def read(self, index: int, rng: np.random.Generator | None = None) -> EditSample:
        row, where = self._row(index)
        file = self._file_of(index)
        prompts = row["edited_prompt_list"]
        if isinstance(prompts, str):
            prompts = [prompts]
        usable = [p for p in prompts or [] if isinstance(p, str) and p.strip()]
        if not usable:
            raise SampleError(f"{where}: edited_prompt_list has no usable prompt")
        rng = rng or np.random.default_rng(index)
        return make_sample(
            self._image(row["src_img"], file, where, "src_img"),
            usable[int(rng.integers(len(usable)))],
            self._image(row["edited_img"], file, where, "edited_img"),
            task=row.get("task"),
            where=where,
        )


def parquet_files(path: Path) -> list[Path]:
    """A parquet file, or every *.parquet under a folder (sorted, so the order is reproducible)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"dataset {path} does not exist")
    files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
    if not files:
        raise DataError(f"folder {path} has no .parquet files")
    return files


# ------------------------------------------------------------------------------------------ generators


class CallableDataset(EditDataset):
    """Samples made by a function `index -> sample`, e.g. a synthetic generator.

    The function may return an `EditSample`, a dict with keys source, instruction, target[, task,
    mask], or an object with attributes `source_image, instruction, target_image[, task,
    mask_image]` (a ShapesEdit `Example`). `length` rows per epoch; with `shuffle=False` (the default,
    since each index already is an independent draw) the rows are read in order.
    """

    def __init__(self, fn: Callable[[int], Any], length: int, *, shuffle: bool = False, name: str = "generator"):
        if not callable(fn):
            raise TypeError(f"fn must be callable index -> sample, got {type(fn).__name__}")
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be a positive integer, got {length!r}")
        self.fn, self.length, self.shuffle, self.name = fn, length, shuffle, name

    def __len__(self) -> int:
        return self.length

    def read(self, index: int, rng: np.random.Generator | None = None) -> EditSample:
        where = f"{self.name} sample {index}"
        try:
            item = self.fn(index)
        except DiptychError as err:
            raise SampleError(f"{where}: {err}") from err
        if isinstance(item, EditSample):
            return make_sample(item.source, item.instruction, item.target, task=item.task, mask=item.mask, where=where)
        if isinstance(item, dict):
            missing = [k for k in ("source", "instruction", "target") if k not in item]
            if missing:
                raise SampleError(f"{where}: the function returned a dict without {', '.join(missing)}")
            return make_sample(
                item["source"],
                item["instruction"],
                item["target"],
                task=item.get("task"),
                mask=item.get("mask"),
                where=where,
            )
        if hasattr(item, "source_image") and hasattr(item, "target_image"):
            return make_sample(
                item.source_image,
                item.instruction,
                item.target_image,
                task=getattr(item, "task", None),
                mask=getattr(item, "mask_image", None),
                where=where,
            )
        raise SampleError(f"{where}: the function returned a {type(item).__name__}, not a sample")

    def describe(self) -> str:
        return f"{self.name} ({len(self)} samples per epoch)"


def shapes_dataset(split: str = "train", *, seed: int = 0, size: int = 64, length: int = 100_000, **kwargs: Any):
    """ShapesEdit edits generated on the fly (`diptych.shapes.sample_edit`), as a `CallableDataset`."""
    from ..shapes_core import sample_edit

    def make(index: int):
        return sample_edit(split, index, seed=seed, size=size, **kwargs)

    return CallableDataset(make, length, name=f"ShapesEdit {split}")


class HubMagicBrush(EditDataset):
    """MagicBrush through the `datasets` library (hub id `osunlp/MagicBrush`), if it is installed.

    `rows` is anything indexable whose items are dicts with PIL images (a `datasets.Dataset`).
    Downloading the parquet files (`huggingface-cli download osunlp/MagicBrush --repo-type dataset`)
    and pointing `--data` at them needs no extra package and streams; this class is the convenience.
    """

    def __init__(self, rows: Sequence[dict[str, Any]], *, crop_bottom: bool = True, with_masks: bool = False):
        self.rows, self.crop_bottom, self.with_masks = rows, crop_bottom, with_masks

    @classmethod
    def from_hub(cls, split: str = "train", *, repo: str = "osunlp/MagicBrush", **kwargs: Any) -> HubMagicBrush:
        try:
            import datasets
        except ImportError as err:
            raise DataError(
                "loading MagicBrush from the hub needs the `datasets` package (pip install datasets); or "
                f"download the parquet files (huggingface-cli download {repo} --repo-type dataset) and pass "
                "their folder with --data-format magicbrush"
            ) from err
        return cls(datasets.load_dataset(repo, split=split), **kwargs)

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, index: int, rng: np.random.Generator | None = None) -> EditSample:
        row = self.rows[index]
        where = f"MagicBrush row {index}"
        mask = row.get("mask_img") if self.with_masks else None
        sample = make_sample(row["source_img"], row["instruction"], row["target_img"], mask=mask, where=where)
        return crop_magicbrush(sample) if self.crop_bottom else sample


# ----------------------------------------------------------------------------------------- task shares


def share_fraction(value: object) -> Fraction:
    """A task share as an exact fraction in (0, 1]: a number (0.5) or a fraction's text ("1/3"); a float
    such as 1/3 is read as the simplest fraction within 1e-6 of it, so 0.3333333333333333 thins as 1/3."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"a task share is a number or a fraction such as 1/3, got {value!r}")
    try:
        share = Fraction(value) if isinstance(value, str) else Fraction(value).limit_denominator(10**6)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"a task share is a number or a fraction such as 1/3, got {value!r}") from None
    if not 0 < share <= 1:
        raise ValueError(f"a task share must be above 0 and at most 1, got {value!r}")
    return share


class TaskShareDataset(EditDataset):
    """The rows of `dataset` with the tasks in `shares` thinned: of a task with share p/q, the k-th row of
    that task is kept when floor(k p/q) steps up (share 1/3 keeps its 3rd, 6th, 9th ... rows), so the kept
    rows are spread evenly through the file and the same on every run; rows of other tasks, and rows that
    name none, all stay. A fixed subset rather than a per-epoch draw: what a continuation on the weak
    operations of the built-in model was measured with (docs/shapes.md, "Fresh edits, then more of the weak
    operations")."""

    def __init__(self, dataset: EditDataset, shares: dict[str, object]):
        if not dataset.shuffle:
            raise DataError(
                f"task shares thin a dataset's rows, and {dataset.describe()} draws a fresh edit per index: "
                "write the data out first (e.g. diptych shapes make)"
            )
        self.dataset = dataset
        self.shares = {task: share_fraction(value) for task, value in shares.items()}
        seen: Counter[str] = Counter()  # rows of each task so far
        kept: list[int] = []
        for index in range(len(dataset)):
            task = dataset.task_of(index)
            if task is not None:
                seen[task] += 1
                share = self.shares.get(task)
                if share is not None and math.floor(seen[task] * share) == math.floor((seen[task] - 1) * share):
                    continue
            kept.append(index)
        missing = sorted(set(self.shares) - set(seen))
        if missing:
            raise DataError(
                f"task share for {', '.join(missing)}: no row of {dataset.describe()} has that task; "
                + (f"its tasks: {', '.join(sorted(seen))}" if seen else "its rows name no task (a 'task' key per row)")
            )
        if not kept:
            raise DataError(f"the task shares leave no row of {dataset.describe()}")
        self.kept = np.asarray(kept, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.kept)

    def read(self, index: int, rng: np.random.Generator | None = None) -> EditSample:
        return self.dataset.read(int(self.kept[index]), rng)

    def task_of(self, index: int) -> str | None:
        return self.dataset.task_of(int(self.kept[index]))

    def blocks(self) -> list[tuple[int, int]]:
        """The base's blocks (parquet row groups) as ranges of kept rows: the kept indices ascend."""
        ranges = [
            (int(np.searchsorted(self.kept, a)), int(np.searchsorted(self.kept, b))) for a, b in self.dataset.blocks()
        ]
        return [(a, b) for a, b in ranges if b > a]

    def describe(self) -> str:
        shares = ", ".join(f"{task} {share}" for task, share in self.shares.items())
        return f"{self.dataset.describe()}, thinned ({shares}) to {len(self)} rows"


# --------------------------------------------------------------------------------------------- opening


def detect_format(path: str | os.PathLike[str]) -> str:
    """'jsonl', 'magicbrush' or 'omniedit' from the file type and, for parquet, the column names."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"dataset {p} does not exist")
    if p.is_file() and p.suffix == ".jsonl":
        return "jsonl"
    if p.is_dir() and ((p / "data.jsonl").is_file() or any(p.glob("*.jsonl"))):
        return "jsonl"
    if (p.is_file() and p.suffix == ".parquet") or p.is_dir():
        files = parquet_files(p)
        names = set(open_parquet(files[0], DataError).schema_arrow.names)
        if set(MAGICBRUSH_COLUMNS) <= names:
            return "magicbrush"
        if set(OMNIEDIT_COLUMNS) <= names:
            return "omniedit"
        raise DataError(
            f"cannot tell the layout of {files[0]} from its columns ({', '.join(sorted(names))}); expected "
            f"MagicBrush ({', '.join(MAGICBRUSH_COLUMNS)}) or OmniEdit ({', '.join(OMNIEDIT_COLUMNS)})"
        )
    raise DataError(f"{p} is neither a .jsonl file, a .parquet file nor a folder of them")


def open_dataset(path: str | os.PathLike[str], data_format: str = "auto", **kwargs: Any) -> EditDataset:
    """Open a dataset by path and format (`FORMATS`). For 'shapes', `path` is the split name."""
    if data_format not in FORMATS:
        raise DataError(f"data format must be one of {', '.join(FORMATS)}, got {data_format!r}")
    if data_format == "shapes":
        return shapes_dataset(str(path), **kwargs)
    if data_format == "auto":
        data_format = detect_format(path)
    if data_format == "jsonl":
        return JsonlDataset(path)
    if data_format == "magicbrush":
        return MagicBrushDataset(path, **kwargs)
    return OmniEditDataset(path)
