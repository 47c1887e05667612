"""ShapesEdit splits, sampling of (scene, edit) examples, and export to / import from a JSONL folder.

Every example is a pure function of (split, seed, index): its random generator is seeded with
`SeedSequence([ROOT_ENTROPY, split key, seed, index])`, so the same index in different splits or seeds
gives unrelated examples. Splits are also disjoint in content: a source scene belongs to exactly one
split, decided by a hash of its JSON form (80 % train, 10 % val, 10 % test), and a split's sampler
rejects scenes of the other splits. No test scene is ever a training source.

Train uses only seen phrasings; val and test default to all phrasings (seen and held out), or only one
kind with `phrasings=`. `ops=` / `exclude_ops=` restrict the operations, e.g. to hold one out entirely.

Exported layout (paths in the JSONL are relative to its folder)::

    out_dir/data.jsonl
    out_dir/images/000000_source.png  000000_target.png  000000_mask.png (L, white = may change)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from diptych.errors import DiptychError
from diptych.files import write_atomic
from diptych.images import save_image_atomic
from diptych.shapes_core.edits import OPS, Edit, EditError, Phrasings, edit_region, get_op
from diptych.shapes_core.world import Scene, SceneError, caption, random_scene, render

__all__ = [
    "ROOT_ENTROPY",
    "SPLITS",
    "DatasetError",
    "Example",
    "Record",
    "load_dataset",
    "make_dataset",
    "resolve_ops",
    "sample_edit",
    "scene_split",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")
ROOT_ENTROPY = 0x5EED_5A9E_ED17
"""Fixed root of every ShapesEdit seed; changing it changes every dataset."""

_SPLIT_KEYS = {"train": 1, "val": 2, "test": 3}
_SPLIT_BUCKETS = (("train", 80), ("val", 90), ("test", 100))  # cumulative percent of scene hashes
_MAX_TRIES = 10_000
_JSONL = "data.jsonl"


class DatasetError(DiptychError, ValueError):
    """A ShapesEdit dataset request or file is invalid."""


def _check_split(split: str) -> None:
    if split not in _SPLIT_KEYS:
        raise DatasetError(f"unknown split {split!r}; choose one of {list(SPLITS)}")


def scene_split(scene: Scene) -> str:
    """The split a source scene belongs to, from a hash of its canonical JSON."""
    text = json.dumps(scene.to_dict(), sort_keys=True, separators=(",", ":"))
    bucket = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % 100
    return next(name for name, upper in _SPLIT_BUCKETS if bucket < upper)


def resolve_ops(ops: Iterable[str] | None = None, exclude_ops: Iterable[str] | None = None) -> tuple[str, ...]:
    """Operation names to sample from, in registry order: `ops` (default all) minus `exclude_ops`."""
    if isinstance(ops, str) or isinstance(exclude_ops, str):
        raise DatasetError("ops and exclude_ops take a list of op names, not a single string")
    chosen = list(OPS) if ops is None else [get_op(name).name for name in ops]
    dropped = {get_op(name).name for name in exclude_ops or ()}
    names = tuple(name for name in OPS if name in chosen and name not in dropped)
    if not names:
        raise DatasetError("no edit op left to sample; keep at least one op in ops / out of exclude_ops")
    return names


def _resolve_phrasings(split: str, phrasings: Phrasings | None) -> Phrasings:
    if phrasings is None:
        return "seen" if split == "train" else "all"
    if phrasings not in ("seen", "heldout", "all"):
        raise DatasetError(f"phrasings must be 'seen', 'heldout' or 'all', got {phrasings!r}")
    if split == "train" and phrasings != "seen":
        raise DatasetError("the train split uses only seen phrasings; pass phrasings='seen' or None")
    return phrasings


@dataclass(frozen=True)
class Example:
    """One sampled edit; images are rendered on first use at `size` pixels."""

    split: str
    index: int
    seed: int
    edit: Edit
    size: int = 64

    @property
    def source_scene(self) -> Scene:
        """The scene before the edit."""
        return self.edit.source

    @property
    def target_scene(self) -> Scene:
        """The ground-truth scene after the edit."""
        return self.edit.target

    @property
    def task(self) -> str:
        """Operation name, e.g. 'recolor'."""
        return self.edit.op

    @property
    def phrasing(self) -> str:
        """'seen' or 'heldout'."""
        return self.edit.phrasing

    @property
    def instruction(self) -> str:
        """The edit instruction in words."""
        return self.edit.instruction

    @cached_property
    def source_image(self) -> Image.Image:
        """Render of the source scene (RGB)."""
        return render(self.edit.source, self.size)

    @cached_property
    def target_image(self) -> Image.Image:
        """Ground-truth render of the target scene (RGB)."""
        return render(self.edit.target, self.size)

    @cached_property
    def mask_image(self) -> Image.Image:
        """The edit region as an L image, 255 where pixels may change."""
        return Image.fromarray(edit_region(self.edit, self.size).astype(np.uint8) * 255, mode="L")


def sample_edit(
    split: str,
    index: int,
    *,
    seed: int = 0,
    phrasings: Phrasings | None = None,
    ops: Iterable[str] | None = None,
    exclude_ops: Iterable[str] | None = None,
    size: int = 64,
) -> Example:
    """The example number `index` of `split` (and `seed`): an op drawn uniformly, a scene of the split
    it applies to, and a random edit of that scene worded with a phrasing from the `phrasings` pool.

    Deterministic in all its arguments; `phrasings` defaults to 'seen' for train and 'all' otherwise.
    """
    _check_split(split)
    for name, value in (("index", index), ("seed", seed)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 0:
            raise DatasetError(f"{name} must be a non-negative int, got {value!r}")
    pool = _resolve_phrasings(split, phrasings)
    names = resolve_ops(ops, exclude_ops)
    rng = np.random.default_rng(np.random.SeedSequence([ROOT_ENTROPY, _SPLIT_KEYS[split], seed, index]))
    op = OPS[names[int(rng.integers(len(names)))]]
    for _ in range(_MAX_TRIES):
        scene = random_scene(rng)
        if scene_split(scene) == split and op.applicable(scene):
            return Example(split, int(index), int(seed), op.apply(scene, rng, pool), size)
    raise DatasetError(f"found no {split} scene for op {op.name!r} in {_MAX_TRIES} tries")  # pragma: no cover


# --- export ---------------------------------------------------------------------------------------------


def _record(example: Example, i: int, stem: str) -> dict[str, Any]:
    edit = example.edit
    return {
        "id": f"{example.split}-{example.seed}-{i:06d}",
        "source": f"images/{stem}_source.png",
        "instruction": edit.instruction,
        "target": f"images/{stem}_target.png",
        "mask": f"images/{stem}_mask.png",
        "task": edit.op,
        "phrasing": edit.phrasing,
        "meta": {
            "split": example.split,
            "index": example.index,
            "seed": example.seed,
            "size": example.size,
            "source_scene": edit.source.to_dict(),
            "target_scene": edit.target.to_dict(),
            "source_caption": caption(edit.source),
            "target_caption": caption(edit.target),
            "params": edit.params,
            "phrasing_index": edit.phrasing_index,
            "touched_source": list(edit.touched_source),
            "touched_target": list(edit.touched_target),
            "full_image": edit.full_image,
        },
    }


def make_dataset(
    split: str,
    n: int,
    seed: int,
    out_dir: str | os.PathLike[str],
    *,
    size: int = 64,
    phrasings: Phrasings | None = None,
    ops: Iterable[str] | None = None,
    exclude_ops: Iterable[str] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write examples 0..n-1 of (`split`, `seed`) to `out_dir` (layout in the module docstring).

    Returns `out_dir` as a Path. Refuses to write over an existing data.jsonl unless `overwrite`.
    Every file is written atomically; the JSONL last, so a folder with a data.jsonl is complete.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise DatasetError(f"n must be a positive int, got {n!r}")
    _check_split(split)
    names = resolve_ops(ops, exclude_ops)
    _resolve_phrasings(split, phrasings)
    out = Path(out_dir)
    jsonl = out / _JSONL
    if jsonl.exists() and not overwrite:
        raise DatasetError(f"{jsonl} already exists; pass overwrite=True or choose another folder")
    (out / "images").mkdir(parents=True, exist_ok=True)
    indices: Iterable[int] = range(n)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc=f"ShapesEdit {split}", unit="ex")
    lines = []
    for i in indices:
        example = sample_edit(split, i, seed=seed, phrasings=phrasings, ops=names, size=size)
        stem = f"{i:06d}"
        save_image_atomic(example.source_image, out / "images" / f"{stem}_source.png", fsync=False)
        save_image_atomic(example.target_image, out / "images" / f"{stem}_target.png", fsync=False)
        save_image_atomic(example.mask_image, out / "images" / f"{stem}_mask.png", fsync=False)
        lines.append(json.dumps(_record(example, i, stem), sort_keys=True))
    write_atomic(jsonl, "\n".join(lines) + "\n")
    return out


# --- import ---------------------------------------------------------------------------------------------

_TOP_FIELDS: dict[str, type] = {
    "id": str,
    "source": str,
    "instruction": str,
    "target": str,
    "mask": str,
    "task": str,
    "phrasing": str,
    "meta": dict,
}
_META_FIELDS: dict[str, type | tuple[type, ...]] = {
    "split": str,
    "index": int,
    "seed": int,
    "size": int,
    "source_scene": dict,
    "target_scene": dict,
    "params": dict,
    "phrasing_index": int,
    "touched_source": list,
    "touched_target": list,
    "full_image": bool,
}


@dataclass(frozen=True)
class Record:
    """One line of an exported dataset, with image paths resolved against the dataset folder."""

    id: str
    source: Path
    target: Path
    mask: Path
    instruction: str
    task: str
    phrasing: str
    meta: dict[str, Any] = field(repr=False)
    edit: Edit = field(repr=False)

    @property
    def source_scene(self) -> Scene:
        """The scene before the edit."""
        return self.edit.source

    @property
    def target_scene(self) -> Scene:
        """The ground-truth scene after the edit."""
        return self.edit.target

    @property
    def size(self) -> int:
        """Side length in pixels of the exported images."""
        return int(self.meta["size"])

    def load_images(self) -> tuple[Image.Image, Image.Image, Image.Image]:
        """(source RGB, target RGB, mask L) read from disk."""
        with Image.open(self.source) as s, Image.open(self.target) as t, Image.open(self.mask) as m:
            return s.convert("RGB"), t.convert("RGB"), m.convert("L")


def _check_types(data: dict[str, Any], fields: dict[str, Any], where: str) -> None:
    for name, kind in fields.items():
        if name not in data:
            raise DatasetError(f"{where}: missing field {name!r}")
        value = data[name]
        if isinstance(value, bool) and kind is not bool:
            raise DatasetError(f"{where}: field {name!r} must be {kind.__name__}, got a bool")
        if not isinstance(value, kind):
            raise DatasetError(f"{where}: field {name!r} must be {kind.__name__}, got {type(value).__name__}")


def _resolve_image(root: Path, rel: str, where: str) -> Path:
    path = Path(rel)
    if path.is_absolute() or ".." in path.parts:
        raise DatasetError(f"{where}: image path {rel!r} must be relative to the dataset folder")
    full = root / path
    if not full.is_file():
        raise DatasetError(f"{where}: image {rel!r} does not exist in {root}")
    return full


def _parse_line(root: Path, line: str, where: str) -> Record:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{where}: not valid JSON ({err.msg})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(data).__name__}")
    _check_types(data, _TOP_FIELDS, where)
    meta = data["meta"]
    _check_types(meta, _META_FIELDS, f"{where} meta")
    if data["phrasing"] not in ("seen", "heldout"):
        raise DatasetError(f"{where}: phrasing must be 'seen' or 'heldout', got {data['phrasing']!r}")
    try:
        edit = Edit.from_dict(
            {
                "op": data["task"],
                "source": meta["source_scene"],
                "target": meta["target_scene"],
                "params": meta["params"],
                "instruction": data["instruction"],
                "phrasing_index": meta["phrasing_index"],
                "heldout": data["phrasing"] == "heldout",
                "touched_source": meta["touched_source"],
                "touched_target": meta["touched_target"],
                "full_image": meta["full_image"],
            }
        )
    except (EditError, SceneError) as err:
        raise DatasetError(f"{where}: {err}") from None
    return Record(
        id=data["id"],
        source=_resolve_image(root, data["source"], where),
        target=_resolve_image(root, data["target"], where),
        mask=_resolve_image(root, data["mask"], where),
        instruction=data["instruction"],
        task=data["task"],
        phrasing=data["phrasing"],
        meta=meta,
        edit=edit,
    )


def load_dataset(directory: str | os.PathLike[str]) -> list[Record]:
    """Read a folder written by `make_dataset` back, validating every line.

    Each record carries the rebuilt `Edit` (from `meta`, without re-running the sampler), ready for
    `judge_edit`. Raises DatasetError naming the file and line number of the first malformed line.
    """
    root = Path(directory)
    jsonl = root / _JSONL
    if not jsonl.is_file():
        raise DatasetError(f"{jsonl} not found; point at a folder written by make_dataset")
    records = []
    seen_ids: set[str] = set()
    with jsonl.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            record = _parse_line(root, line, f"{jsonl} line {number}")
            if record.id in seen_ids:
                raise DatasetError(f"{jsonl} line {number}: duplicate id {record.id!r}")
            seen_ids.add(record.id)
            records.append(record)
    return records
