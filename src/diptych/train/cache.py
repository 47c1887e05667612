"""An on-disk cache of what a training step computes from frozen models: VAE posteriors of the canvas and
of the masked canvas, and prompt embeddings.

For FLUX, T5-XXL and the VAE dominate the data path, and for the built-in model the two VAE encodes cost
more than the transformer's forward and backward; all of it is redone every epoch unless cached.

- Entries are keyed by content (a hash of the canvas and Fill-mask pixels, or of the prompt), in a
  namespace named by a fingerprint of the frozen model that produced them, so a cache folder can be shared
  by every run on the same data: epochs, resumed runs, other recipes, probes.
- The VAE entry is the posterior itself (`latent_dist.parameters`: mean and log-variance), not one draw:
  each step still samples it with the sample's own generator, exactly as the uncached path does, so a
  cached run trains the same thing as an uncached one.
- Storage is safetensors shards of up to `shard_size` entries (tensor names `<key>/<field>`), each written
  atomically; a shard written by a crashed run is either whole or absent. New entries are buffered and
  written by `flush()` (the trainer flushes at every checkpoint and at the end).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from ..files import write_atomic

logger = logging.getLogger("diptych.train")

#: Elements hashed per parameter tensor for a model fingerprint (a strided sample: fast for T5-XXL, and
#: any retraining changes far more than a few elements).
FINGERPRINT_ELEMENTS = 4096


def model_fingerprint(module: torch.nn.Module, *extra: object) -> str:
    """A short hash of a frozen model: its config, parameter names, shapes, dtypes and a strided sample of
    each parameter's values, plus `extra` (settings that change the output, e.g. a maximum length)."""
    digest = hashlib.blake2b(digest_size=10)
    config = getattr(module, "config", None)
    if config is not None:
        items = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        # private keys such as `_name_or_path` say where the weights were read from, not what they are
        items = {k: v for k, v in items.items() if not k.startswith("_")}
        digest.update(json.dumps(items, sort_keys=True, default=str).encode())
    digest.update(json.dumps([str(e) for e in extra]).encode())
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // FINGERPRINT_ELEMENTS)
        sample = flat[::step].to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def image_key(*images: Image.Image) -> str:
    """Content key of images (mode, size and pixels)."""
    digest = hashlib.blake2b(digest_size=16)
    for image in images:
        digest.update(f"{image.mode}:{image.size}".encode())
        digest.update(image.tobytes())
    return digest.hexdigest()


def text_key(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


class TensorStore:
    """Content-keyed tensor records (each a dict of named tensors) in safetensors shards under `folder`."""

    def __init__(self, folder: str | Path, *, shard_size: int = 2048):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self._where: dict[str, Path] = {}  # key -> shard holding it
        self._fields: dict[str, list[str]] = {}
        self._handles: dict[Path, object] = {}
        self._pending: dict[str, dict[str, torch.Tensor]] = {}
        self.hits = self.misses = 0
        for shard in sorted(self.folder.glob("shard-*.safetensors")):
            self._index(shard)

    def _index(self, shard: Path) -> None:
        try:
            handle = safe_open(str(shard), framework="pt")
        except Exception as err:  # a foreign or damaged file: skip it, the entries get recomputed
            logger.warning("ignoring unreadable cache shard %s (%s)", shard, err)
            return
        self._handles[shard] = handle
        for name in handle.keys():  # noqa: SIM118 (a safe_open handle is not iterable)
            key, field = name.split("/", 1)
            self._where[key] = shard
            self._fields.setdefault(key, []).append(field)

    def __len__(self) -> int:
        return len(self._where) + len(self._pending)

    def __contains__(self, key: str) -> bool:
        return key in self._pending or key in self._where

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        """The record of `key`, or None (counted as a miss)."""
        if key in self._pending:
            self.hits += 1
            return self._pending[key]
        shard = self._where.get(key)
        if shard is None:
            self.misses += 1
            return None
        self.hits += 1
        handle = self._handles[shard]
        return {field: handle.get_tensor(f"{key}/{field}") for field in self._fields[key]}  # type: ignore[attr-defined]

    def put(self, key: str, record: dict[str, torch.Tensor]) -> None:
        if "/" in key:
            raise ValueError(f"cache keys cannot contain '/': {key!r}")
        if key in self:
            return
        # clone: records are often views of one batch tensor, and safetensors refuses shared storage
        self._pending[key] = {f: t.detach().to("cpu").clone().contiguous() for f, t in record.items()}
        if len(self._pending) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the buffered records as one new shard (atomically)."""
        if not self._pending:
            return
        tensors = {f"{key}/{field}": t for key, record in self._pending.items() for field, t in record.items()}
        shard = self.folder / f"shard-{time.time_ns():020d}-{secrets.token_hex(4)}.safetensors"
        write_atomic(shard, safetensors_bytes(tensors), fsync=False)
        self._pending.clear()
        self._index(shard)


def vae_tiling(vae: torch.nn.Module) -> tuple[object, ...]:
    """The VAE's tiling settings when tiling is on (they change its latents), else nothing: caches of untiled
    VAEs keep their names."""
    if not getattr(vae, "use_tiling", False):
        return ()
    return ("tiling", vae.tile_sample_min_size, vae.tile_latent_min_size, vae.tile_overlap_factor)


class LatentCache:
    """VAE posteriors of (canvas, masked canvas) pairs, keyed by the canvas and its Fill mask."""

    def __init__(self, folder: str | Path, vae: torch.nn.Module, **kwargs):
        self.store = TensorStore(Path(folder) / f"vae-{model_fingerprint(vae, *vae_tiling(vae))}", **kwargs)

    def keys(
        self, canvases: Sequence[Image.Image], fill_masks: Sequence[Image.Image], masked_content: str = "zero"
    ) -> list[str]:
        # "zero" keys stay as they were, so existing caches keep their hits
        salt = "" if masked_content == "zero" else f"masked:{masked_content}"
        return [image_key(c, m) + salt for c, m in zip(canvases, fill_masks, strict=True)]

    def get(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        record = self.store.get(key)
        return None if record is None else (record["canvas"], record["masked"])

    def put(self, key: str, canvas: torch.Tensor, masked: torch.Tensor) -> None:
        self.store.put(key, {"canvas": canvas, "masked": masked})

    def flush(self) -> None:
        self.store.flush()


class CachedPromptEncoder:
    """A `PromptEncoder` that keeps every prompt's embeddings on disk (per encoder fingerprint). The store keeps
    them on the CPU; a batch is returned on `device` (the model's: a GPU trainer's batch mixes stored and fresh
    prompts)."""

    def __init__(self, encoder, folder: str | Path, fingerprint: str, *, device: torch.device | str = "cpu", **kwargs):
        self.encoder = encoder
        self.device = device
        self.store = TensorStore(Path(folder) / f"text-{fingerprint}", **kwargs)

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        keys = [text_key(p) for p in prompts]
        records = {k: self.store.get(k) for k in dict.fromkeys(keys)}
        missing = [p for p, k in zip(prompts, keys, strict=True) if records[k] is None]
        missing = list(dict.fromkeys(missing))
        if missing:
            embeds, pooled = self.encoder.encode(missing)
            for i, prompt in enumerate(missing):
                record = {"embeds": embeds[i].cpu(), "pooled": pooled[i].cpu()}  # where stored ones come back
                self.store.put(text_key(prompt), record)
                records[text_key(prompt)] = record
        embeds = torch.stack([records[k]["embeds"] for k in keys])  # type: ignore[index]
        pooled = torch.stack([records[k]["pooled"] for k in keys])  # type: ignore[index]
        return embeds.to(self.device), pooled.to(self.device)

    def flush(self) -> None:
        self.store.flush()


def prompt_encoder_fingerprint(encoder) -> str:
    """The fingerprint of a prompt encoder's frozen models and settings (MiniLM or FLUX's CLIP + T5)."""
    models: Iterable[torch.nn.Module]
    if hasattr(encoder, "pipe"):  # FluxPromptEncoder
        pipe = encoder.pipe
        models = [m for m in (pipe.text_encoder, pipe.text_encoder_2) if m is not None]
        extra: tuple[object, ...] = ("flux", encoder.max_sequence_length)
    else:
        models = [encoder.model]
        extra = (type(encoder).__name__, getattr(encoder, "max_length", None), getattr(encoder, "pooling", None))
    digest = hashlib.blake2b(digest_size=10)
    for model in models:
        digest.update(model_fingerprint(model, *extra).encode())
    digest.update(json.dumps([str(e) for e in extra]).encode())
    return digest.hexdigest()
