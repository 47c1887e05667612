"""Device and dtype defaults and parsing: the one place that decides where models run and in what precision.

Every loader (the editor's, the metrics', the judges') asks here, so `--device` / `--dtype` mean the same on
every command and MPS is picked up wherever CUDA is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:  # torch is imported where a device or dtype is made, so the CLI starts without it
    import torch

DTYPE_NAMES: dict[str, str] = {
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
    "fp32": "float32",
    "float32": "float32",
}
"""The spellings `--dtype` accepts, to torch's names (the short ones are what the CLI advertises)."""

DTYPE_CHOICES: tuple[str, ...] = ("bf16", "fp16", "fp32")

OFFLOAD_MODES: tuple[str, ...] = ("none", "model", "sequential", "group")
"""CPU offload: none, model (each model moves to the accelerator while it runs), sequential (layer by layer),
group (diffusers' group offloading: blocks stream to the accelerator just before they run)."""


def default_device() -> torch.device:
    """The best accelerator present: CUDA, then Apple MPS, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on CUDA (what FLUX is run in), fp32 elsewhere (CPU bf16 is not faster for most ops, MPS lacks some)."""
    import torch

    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def parse_device(device: torch.device | str | None) -> torch.device:
    """`None` -> `default_device()`; a bad name -> one `InputError` line."""
    import torch

    if device is None:
        return default_device()
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device must be e.g. 'cpu', 'cuda', 'cuda:1' or 'mps', got {device!r}") from exc


def parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A torch dtype or one of `DTYPE_NAMES` (case-insensitive); anything else -> one `InputError` line."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if not isinstance(dtype, str) or dtype.lower() not in DTYPE_NAMES:
        raise InputError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {dtype!r}")
    return getattr(torch, DTYPE_NAMES[dtype.lower()])
