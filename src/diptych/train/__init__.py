"""Training ICEdit-style edit adapters (plain LoRA, LoRA-MoE) on FLUX Fill models.

- `data`: datasets (JSONL folder, MagicBrush and OmniEdit parquet, any `index -> sample` callable);
- `stream`: epoch order, batching, aspect buckets, resumable data position;
- `objective`: the flow-matching loss on diptych canvases;
- `adapters`: adding trainable adapters and exporting them for `diptych edit --lora`;
- checkpoints: `diptych.checkpoints` (pickle-free, written atomically, shared with the ShapesEdit loops);
- `trainer`: the accelerate loop; `cli`: `diptych train`.

`Trainer` and `train` are imported lazily (they load torch, diffusers and accelerate).
"""

from __future__ import annotations

from typing import Any

from .config import ConfigError, TrainConfig, build_config
from .data import (
    CallableDataset,
    DataError,
    EditDataset,
    EditSample,
    JsonlDataset,
    MagicBrushDataset,
    OmniEditDataset,
    SampleError,
    TaskShareDataset,
    open_dataset,
    shapes_dataset,
)

__all__ = [
    "CallableDataset",
    "ConfigError",
    "DataError",
    "EditDataset",
    "EditSample",
    "JsonlDataset",
    "MagicBrushDataset",
    "OmniEditDataset",
    "SampleError",
    "TaskShareDataset",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "build_config",
    "open_dataset",
    "shapes_dataset",
    "train",
]


def __getattr__(name: str) -> Any:
    if name in ("Trainer", "TrainResult", "train"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'diptych.train' has no attribute {name!r}")
