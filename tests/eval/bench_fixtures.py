"""Builders for the `diptych eval` tests: tiny benchmarks in their released layouts, tiny CLIP / DINO
folders, and cheap deterministic stand-ins for the metric models."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from diptych.testing import (
    random_image,
    save_tiny_clip,  # noqa: F401  (re-exported for the eval tests)
)

EMU_TASKS = ("background", "style", "remove")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def image_cell(image: Image.Image) -> dict[str, Any]:
    """A Hugging Face `Image` feature cell."""
    return {"bytes": png_bytes(image), "path": None}


def _write_parquet(path: Path, rows: list[dict[str, Any]], *, row_group_size: int = 2) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    columns: dict[str, Any] = {}
    for name in rows[0]:
        values = [row[name] for row in rows]
        is_image = isinstance(values[0], dict)
        columns[name] = pa.array(values, type=image_type) if is_image else pa.array(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def emu_rows(n: int, *, split: str, seed: int = 0, size: int = 32, generations: bool = False) -> list[dict[str, Any]]:
    """Emu Edit test-set rows; row 1 has identical captions and row 2 an empty output caption when n > 2."""
    rows = []
    for i in range(n):
        in_cap, out_cap = f"a photo number {i}", f"a photo number {i} at night"
        if n > 2 and i == 1:
            out_cap = "  A PHOTO   number 1 "  # the same caption up to case and spaces
        if n > 2 and i == 2:
            out_cap = ""
        row = {
            "instruction": f"make photo {i} darker",
            "image": image_cell(random_image(size, size, seed=seed + i)),
            "task": EMU_TASKS[i % len(EMU_TASKS)],
            "split": split,
            "idx": i,
            "hash": f"h{seed}-{i}",
            "input_caption": in_cap,
            "output_caption": out_cap,
        }
        if generations:
            row["edited_image"] = image_cell(random_image(size, size, seed=seed + 1000 + i))
            row["model"] = "emu_edit"
        rows.append(row)
    return rows


def make_emu_edit(folder: Path, *, n_test: int = 6, n_validation: int = 3, generations: bool = False) -> Path:
    """The hub layout: data/test-00000-of-00001.parquet and data/validation-00000-of-00001.parquet.

    For `generations=True` the file names are swapped as on the hub: the test split's rows sit in the
    `validation-*` file (and keep `split == "test"` in their column).
    """
    test_name, val_name = ("validation", "test") if generations else ("test", "validation")
    _write_parquet(
        folder / f"data/{test_name}-00000-of-00001.parquet",
        emu_rows(n_test, split="test", generations=generations),
    )
    _write_parquet(
        folder / f"data/{val_name}-00000-of-00001.parquet",
        emu_rows(n_validation, split="validation", seed=50, generations=generations),
    )
    return folder


def make_magicbrush(folder: Path, sessions: dict[str, int] | None = None, *, size: int = 32) -> Path:
    """The unzipped official test set: edit_sessions.json, local_descriptions.json and
    images/{img_id}/{img_id}-input.png, -output{k}.png, -mask{k}.png."""
    sessions = sessions or {"101": 2, "202": 1, "303": 3}
    data: dict[str, list[dict[str, str]]] = {}
    captions: dict[str, dict[str, str]] = {}
    for s, (img_id, turns) in enumerate(sessions.items()):
        images = folder / "images" / img_id
        images.mkdir(parents=True, exist_ok=True)
        random_image(size, size, seed=100 * s).save(images / f"{img_id}-input.png")
        data[img_id], captions[img_id] = [], {}
        for k in range(1, turns + 1):
            random_image(size, size, seed=100 * s + k).save(images / f"{img_id}-output{k}.png")
            Image.new("L", (size, size), 255).save(images / f"{img_id}-mask{k}.png")
            source = f"{img_id}-input.png" if k == 1 else f"{img_id}-output{k - 1}.png"
            data[img_id].append(
                {
                    "input": source,
                    "output": f"{img_id}-output{k}.png",
                    "mask": f"{img_id}-mask{k}.png",
                    "instruction": f"change thing {k} of {img_id}",
                }
            )
            captions[img_id][f"{img_id}-output{k}.png"] = f"caption of {img_id} after turn {k}"
    (folder / "edit_sessions.json").write_text(json.dumps(data), encoding="utf-8")
    (folder / "local_descriptions.json").write_text(json.dumps(captions), encoding="utf-8")
    return folder


def gedit_rows(n: int = 4, *, size: int = 32) -> list[dict[str, Any]]:
    """GEdit-Bench rows: keys k0.., alternating English and Chinese instructions."""
    tasks = ("background_change", "color_alter")
    return [
        {
            "task_type": tasks[i % 2],
            "key": f"k{i}",
            "instruction": f"edit number {i}",
            "instruction_language": "en" if i % 2 == 0 else "cn",
            "input_image": image_cell(random_image(size, size, seed=300 + i)),
            "input_image_raw": image_cell(random_image(2 * size, 2 * size, seed=300 + i)),
            "Intersection_exist": i % 3 == 0,
        }
        for i in range(n)
    ]


def make_gedit(folder: Path, n: int = 6) -> Path:
    _write_parquet(folder / "data/train-00000-of-00001.parquet", gedit_rows(n))
    return folder


def make_shapes(folder: Path, n: int = 4) -> Path:
    from diptych.shapes.dataset import make_dataset

    return make_dataset("test", n, 0, folder, size=32)


# ------------------------------------------------------------------------------------ metric models


def save_tiny_dino(folder: Path) -> Path:
    """A random ViT (hidden 32, image 224, patch 16), loadable by `DinoMetrics.from_pretrained`."""
    import torch
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, image_size=224, patch_size=16
    )
    torch.manual_seed(0)
    ViTModel(config).save_pretrained(folder)
    return folder


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize((8, 8)), dtype=np.float64) / 255.0


class FakeClip:
    """Deterministic stand-ins for CLIP scores, cheap and sensitive to their inputs."""

    def __init__(self) -> None:
        self.calls = 0

    def clip_i(self, a: Image.Image, b: Image.Image) -> float:
        self.calls += 1
        return 1.0 - float(np.abs(_pixels(a) - _pixels(b)).mean())

    def clip_t(self, image: Image.Image, text: str) -> float:
        self.calls += 1
        return float(_pixels(image).mean()) * (len(text) % 7 + 1) / 7

    def clip_dir(self, src: Image.Image, out: Image.Image, src_caption: str, out_caption: str) -> float:
        self.calls += 1
        return float((_pixels(out) - _pixels(src)).mean()) + (len(out_caption) - len(src_caption)) / 100


class FakeDino:
    def dino(self, a: Image.Image, b: Image.Image) -> float:
        return 1.0 - float(np.square(_pixels(a) - _pixels(b)).mean())


class FakeVieScore:
    def __init__(self, sc: float, pq: float):
        self.sc, self.pq, self.overall = sc, pq, math.sqrt(sc * pq)


class FakeVie:
    """A VIEScore judge that scores by brightness; `fail_on` instructions raise a JudgeError."""

    def __init__(self, fail_on: str | None = None):
        self.fail_on = fail_on
        self.seen: list[tuple[tuple[int, int], str]] = []

    def score(self, source: Image.Image, edited: Image.Image, instruction: str) -> FakeVieScore:
        from diptych.scaling.judges import JudgeError

        self.seen.append((source.size, instruction))
        if self.fail_on and self.fail_on in instruction:
            raise JudgeError("the judge endpoint failed")
        return FakeVieScore(round(10 * float(_pixels(edited).mean()), 3), 7.0)


class BatchFakeVie(FakeVie):
    """FakeVie with VieScorer's `score_many`; remembers how many edits each call scored."""

    def __init__(self, fail_on: str | None = None):
        super().__init__(fail_on)
        self.batches: list[int] = []

    def score_many(self, samples: list[tuple[Any, Any, str]], *, return_exceptions: bool = False) -> list[Any]:
        from diptych.scaling.judges import JudgeError

        self.batches.append(len(samples))
        results: list[Any] = []
        for sample in samples:
            try:
                results.append(self.score(*sample))
            except JudgeError as err:
                if not return_exceptions:
                    raise
                results.append(err)
        return results


def fake_scorers(**kwargs: Any):
    """`Scorers` with the fakes above and numpy L1 / L2 (resizing like the official script)."""
    from diptych.eval.runner import Scorers

    def l1(a: Image.Image, b: Image.Image) -> float:
        return float(np.abs(_full(a, b) - _full(b, b)).mean())

    def l2(a: Image.Image, b: Image.Image) -> float:
        return float(np.square(_full(a, b) - _full(b, b)).mean())

    options = {"clip_metrics": FakeClip(), "dino_metrics": FakeDino(), "vie_scorer": FakeVie(), "l1": l1, "l2": l2}
    return Scorers(**{**options, **kwargs})


def _full(image: Image.Image, reference: Image.Image) -> np.ndarray:
    if image.size != reference.size:
        image = image.resize(reference.size, Image.Resampling.BICUBIC)
    return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))
