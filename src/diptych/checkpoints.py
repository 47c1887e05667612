"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON, written into
`ckpt-N.tmp/` and renamed to `ckpt-N/` only when complete.

A checkpoint folder holds `trainer.json` (written last; a folder without it is never used), the
trainable weights, the optimizer and scheduler states, the EMA weights if any, and per process its
RNG states and data position. Nested states (an optimizer's state dict, RNG tuples) are stored as
JSON in which every tensor is replaced by a reference into the safetensors file; Python floats
survive JSON exactly, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .errors import WeightsError

CHECKPOINT_RE = re.compile(r"^ckpt-(\d+)$")
COMPLETE_MARKER = "trainer.json"
FORMAT_VERSION = 1


class CheckpointError(WeightsError):
    """A checkpoint is missing, incomplete or does not fit the run resuming from it."""


# ------------------------------------------------------------------------------------ state encoding


def encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-able form of `obj`; tensors go into `tensors` and are referenced by name."""
    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": name}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {"__dict__": [[encode(k, tensors), encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [encode(v, tensors) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint")


def decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of `encode`."""
    if isinstance(obj, list):
        return [decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
        if "__tuple__" in obj:
            return tuple(decode(v, tensors) for v in obj["__tuple__"])
        if "__dict__" in obj:
            return {_hashable(decode(k, tensors)): decode(v, tensors) for k, v in obj["__dict__"]}
        raise CheckpointError(f"unknown entry in a checkpoint state: keys {sorted(obj)}")
    return obj


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def save_state(folder: Path, stem: str, state: Any) -> None:
    """`stem.json` (+ `stem.safetensors` when the state holds tensors) in `folder`."""
    tensors: dict[str, torch.Tensor] = {}
    encoded = encode(state, tensors)
    if tensors:
        save_file(tensors, str(folder / f"{stem}.safetensors"))
        _fsync(folder / f"{stem}.safetensors")
    write_json(folder / f"{stem}.json", encoded)


def load_state(folder: Path, stem: str, device: str | torch.device = "cpu") -> Any:
    path = folder / f"{stem}.json"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {folder} has no {path.name}; it is incomplete or from another version")
    tensor_file = folder / f"{stem}.safetensors"
    tensors = load_file(str(tensor_file), device=str(device)) if tensor_file.is_file() else {}
    return decode(json.loads(path.read_text(encoding="utf-8")), tensors)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    _fsync(path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {path} ({err})") from err


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path))
    _fsync(path)


def load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing; the checkpoint is incomplete")
    try:
        return load_file(str(path), device=str(device))
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{path} is not a readable safetensors file ({err})") from err


def _fsync(path: Path) -> None:
    # Durability before the rename that publishes the folder; a no-op where fsync is unsupported.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------ RNG states


def rng_state() -> Any:
    """Python, numpy and torch (CPU and every CUDA device) RNG states."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].to(torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([t.to(torch.uint8) for t in cuda])


# ------------------------------------------------------------------------------------------- folders


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under `root`, oldest first. Partial (`.tmp`) folders are ignored."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = CHECKPOINT_RE.match(child.name)
        if match and child.is_dir() and (child / COMPLETE_MARKER).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def begin(root: Path, step: int) -> Path:
    """A fresh, empty `ckpt-N.tmp/` folder (left-overs of an interrupted save are removed first)."""
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob("ckpt-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f"ckpt-{step}.tmp"
    tmp.mkdir()
    return tmp


def commit(tmp: Path, meta: dict[str, Any]) -> Path:
    """Write the completion marker, then publish `ckpt-N.tmp/` as `ckpt-N/` with one rename."""
    write_json(tmp / COMPLETE_MARKER, {"format": FORMAT_VERSION, **meta})
    final = tmp.with_name(tmp.name.removesuffix(".tmp"))
    if final.exists():
        # Re-saving a step (a resumed run saving again): set the old copy aside, then drop it.
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync(final.parent)
    return final


def prune(root: Path, keep: int) -> list[Path]:
    """Delete all but the `keep` newest complete checkpoints; returns what was removed."""
    found = list_checkpoints(root)
    removed = [path for _, path in found[: max(0, len(found) - keep)]]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def resolve_resume(root: Path, resume: bool | str | None) -> Path | None:
    """The checkpoint to resume from: None = the latest if any; True = the latest, required;
    False = none (refused if the folder already has checkpoints); a path = that checkpoint."""
    if isinstance(resume, str):
        path = Path(resume)
        if not (path / COMPLETE_MARKER).is_file():
            raise CheckpointError(f"{path} is not a complete checkpoint (no {COMPLETE_MARKER})")
        return path
    latest = latest_checkpoint(root)
    if resume is True and latest is None:
        raise CheckpointError(f"--resume was given but {root} holds no complete checkpoint")
    if resume is False:
        if latest is not None:
            raise CheckpointError(
                f"{root} already holds checkpoints (latest {latest.name}) and resuming was turned off; "
                "resume (drop --no-resume), delete them, or choose another --output"
            )
        return None
    return latest


# ------------------------------------------------------------------------------------- simple loops


def save_loop_state(
    root: Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    keep: int = 2,
) -> Path:
    """A checkpoint of a simple training loop: model weights, optimizer, torch and numpy generator states.
    Published atomically as `root/ckpt-{step}`; only the `keep` newest are kept."""
    tmp = begin(root, step)
    save_tensors(tmp / "model.safetensors", model.state_dict())
    save_state(tmp, "optimizer", optimizer.state_dict())
    save_state(tmp, "torch_rng", torch.get_rng_state())
    final = commit(tmp, {"step": step, "rng": rng.bit_generator.state})
    prune(root, keep)
    return final


def resume_loop_state(
    root: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    device: str | torch.device = "cpu",
) -> int:
    """Restore the latest `save_loop_state` checkpoint under `root` in place; returns its step (0 if none)."""
    latest = latest_checkpoint(root)
    if latest is None:
        return 0
    model.load_state_dict(load_tensors(latest / "model.safetensors", device))
    optimizer.load_state_dict(load_state(latest, "optimizer", device))
    torch.set_rng_state(load_state(latest, "torch_rng").to(torch.uint8))
    meta = read_json(latest / COMPLETE_MARKER)
    rng.bit_generator.state = meta["rng"]
    print(f"resumed from {latest} at step {meta['step']}", flush=True)
    return int(meta["step"])
