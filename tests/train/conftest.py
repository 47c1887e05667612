"""Fixtures for the training tests: tiny pair folders, metric reading and fast run options."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from diptych.testing import random_image


def _write_pairs(folder: Path, count: int, *, size: tuple[int, int] = (16, 16), seed: int = 0) -> Path:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        random_image(*size, seed=seed + i).save(folder / f"img/s{i}.png")
        random_image(*size, seed=seed + 100 + i).save(folder / f"img/t{i}.png")
        row = {"source": f"img/s{i}.png", "instruction": f"edit number {i}", "target": f"img/t{i}.png"}
        lines.append(json.dumps(row))
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def make_pairs() -> Callable[..., Path]:
    """`make_pairs(folder, count, size=(16, 16), seed=0)`: a JSONL folder of random pairs."""
    return _write_pairs


@pytest.fixture(scope="session")
def read_metrics() -> Callable[[Path], list[dict]]:
    def read(output: Path) -> list[dict]:
        return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]

    return read


@pytest.fixture(scope="session")
def fast() -> dict:
    """TrainConfig options that keep a run on the tiny model fast (16 x 16 panels: VAE scale 2)."""
    return {
        "resolution": (16, 16),
        "rank": 4,
        "alpha": 4.0,
        "max_sequence_length": 64,
        "num_validation": 0,
        "checkpoint_every": 0,
        "tensorboard": False,
        "cpu": True,
    }


@pytest.fixture(scope="session")
def first_batch_prompts() -> Callable[..., tuple]:
    """`first_batch_prompts(tiny_base, data, root, fast, **options)`: a trainer set up on `data` (batch 3, no prompt
    dropout) and the prompts of its first batch, as `train()` would draw them."""
    from diptych.train.config import TrainConfig
    from diptych.train.trainer import Trainer

    def first(tiny_base, data, root, fast, **options):
        cfg = TrainConfig(
            base=tiny_base,
            data=str(data),
            output=str(root),
            max_steps=1,
            batch_size=3,
            prompt_dropout=0.0,
            **fast,
            **options,
        )
        trainer = Trainer(cfg, show_progress=False)
        trainer._setup()  # the data stream, as train() builds it
        return trainer, [item.prompt for item in trainer.stream.next_batch()]

    return first
