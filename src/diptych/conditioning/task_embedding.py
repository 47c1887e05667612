"""Emu Edit's task embeddings for the FLUX Fill transformer: one learned vector per edit task, added to the
transformer's timestep-text embedding `temb` (which drives the adaptive norms of every block).

`TaskEmbedding` holds the vectors (zero-initialised, so a fresh one changes nothing); `task_conditioning`
is a context manager that, while active, adds each sample's task vector to `temb` through a forward hook on
`transformer.time_text_embed` (diffusers is not patched). Tasks are per sample and batch-aligned: a list of
names / row indices / None (None = no task: nothing is added for that sample), or a (B, D) tensor of
vectors; a single name or a (1, D) vector applies to the whole batch.

For training, `attach_task_embedding` registers the embedding as a submodule of the transformer, so its
parameters travel with the model (device moves, DDP gradient sync, checkpoints of trainable parameters).

Not done: Emu Edit also feeds the vector to cross-attention. An extra text token would change the joint
attention's softmax even for a zero vector (the token's keys are not zero after the blocks' modulated
norms), so a fresh embedding would no longer be a no-op; diptych conditions through `temb` (and, with
`route=True`, through the LoRA-MoE router context) only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import nn

from ..errors import InputError, WeightsError
from ..files import write_atomic

#: The file the trainer writes next to the adapter, and `find_task_embedding` looks for.
TASK_EMBEDDING_FILE = "task_embedding.safetensors"
logger = logging.getLogger("diptych.emu")
_META_KEY = "diptych_task_embedding"
_ATTR = "diptych_task_embedding"  # submodule name on an attached transformer
_FORMAT_VERSION = 1

#: What one forward pass can be conditioned on (see the module docstring).
TaskSpec = str | int | None | Sequence[str | int | None] | torch.Tensor


class TaskEmbedding(nn.Module):
    """One learned vector of width `dim` (the transformer's `inner_dim`) per task name.

    The vectors start at zero: adding them to `temb` leaves the model's output bit-identical.
    """

    def __init__(self, names: Sequence[str], dim: int):
        super().__init__()
        names = [str(n) for n in names]
        if not names:
            raise InputError("a task embedding needs at least one task name")
        if len(set(names)) != len(names):
            raise InputError(f"task names must be unique, got {names}")
        if any(not n.strip() for n in names):
            raise InputError("task names must not be empty")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise InputError(f"dim must be a positive integer, got {dim!r}")
        self.names: list[str] = names
        self.table = nn.Embedding(len(names), dim)
        nn.init.zeros_(self.table.weight)
        self._active: TaskSpec = None
        self._has_active = False

    @classmethod
    def for_transformer(cls, transformer: nn.Module, names: Sequence[str] | None = None) -> TaskEmbedding:
        """A zero embedding sized for `transformer` (default names: the taxonomy's `TASK_NAMES`)."""
        if names is None:
            from .tasks import TASK_NAMES

            names = TASK_NAMES
        return cls(names, temb_width(transformer))

    @property
    def dim(self) -> int:
        return self.table.embedding_dim

    @property
    def weight(self) -> torch.Tensor:
        return self.table.weight

    def index(self, task: str | int) -> int:
        """The row of a task name (or a row index, checked)."""
        if isinstance(task, bool):
            raise InputError(f"a task must be a name or a row index, got {task!r}")
        if isinstance(task, int):
            if not 0 <= task < len(self.names):
                raise InputError(f"task row {task} out of range: this embedding has {len(self.names)} tasks")
            return task
        if task not in self.names:
            raise InputError(f"unknown task {task!r}; this embedding knows: {', '.join(self.names)}")
        return self.names.index(task)

    def forward(self, tasks: TaskSpec) -> torch.Tensor:
        """Vectors (B, D) for per-sample tasks (None rows are zero), or (1, D) for a single task."""
        if isinstance(tasks, torch.Tensor):
            return self._tensor_vectors(tasks)
        items = [tasks] if tasks is None or isinstance(tasks, str | int) else list(tasks)
        if not items:
            raise InputError("no tasks given: pass one task (name, row or None) per sample")
        rows = [0 if t is None else self.index(t) for t in items]
        device = self.table.weight.device
        vectors = self.table(torch.tensor(rows, dtype=torch.long, device=device))
        if any(t is None for t in items):
            # Multiply rather than skip: the table stays in the graph, so DDP sees every parameter used.
            keep = torch.tensor([t is not None for t in items], dtype=vectors.dtype, device=device)
            vectors = vectors * keep[:, None]
        return vectors

    def _tensor_vectors(self, tasks: torch.Tensor) -> torch.Tensor:
        if tasks.dtype in (torch.int32, torch.int64) and tasks.dim() == 1:
            return self.table(tasks.to(self.table.weight.device))
        if not tasks.is_floating_point() or tasks.dim() not in (1, 2) or tasks.shape[-1] != self.dim:
            raise InputError(
                f"task vectors must be a float tensor (B, {self.dim}) or row indices (B,), got "
                f"{tasks.dtype} {tuple(tasks.shape)}"
            )
        return tasks if tasks.dim() == 2 else tasks[None]

    def with_task(self, name: str, init: torch.Tensor | None = None) -> TaskEmbedding:
        """A copy with one more row, `name` (zero, or `init`); the existing rows are kept bit for bit."""
        if name in self.names:
            raise InputError(f"task {name!r} already exists in this embedding; pick another name")
        grown = TaskEmbedding([*self.names, name], self.dim)
        grown.to(device=self.table.weight.device, dtype=self.table.weight.dtype)
        with torch.no_grad():
            grown.table.weight[:-1].copy_(self.table.weight)
            if init is not None:
                if init.numel() != self.dim:
                    raise InputError(f"the initial vector must have {self.dim} values, got {tuple(init.shape)}")
                grown.table.weight[-1].copy_(init.reshape(-1))
        return grown

    def extra_repr(self) -> str:
        return f"tasks={self.names}, dim={self.dim}"


def temb_width(transformer: nn.Module) -> int:
    """The width of `temb` in a Flux transformer (its `inner_dim`)."""
    model = _unwrap(transformer)
    if not hasattr(model, "time_text_embed"):
        raise InputError(
            f"{type(model).__name__} has no time_text_embed; task embeddings need a FluxTransformer2DModel"
        )
    width = getattr(model, "inner_dim", None)
    if width is None:
        cfg = model.config
        width = cfg.num_attention_heads * cfg.attention_head_dim
    return int(width)


def _unwrap(model: nn.Module) -> nn.Module:
    # DDP / accelerate wrappers keep the real model in `.module`.
    return getattr(model, "module", model)


# ------------------------------------------------------------------------------------------ injection


def _hook(embedding: TaskEmbedding):
    def add_task_vectors(_module: nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor | None:
        if not embedding._has_active:
            return None
        vectors = embedding(embedding._active)
        if vectors.shape[0] not in (1, output.shape[0]):
            raise InputError(
                f"{vectors.shape[0]} task vectors for a batch of {output.shape[0]}: give one task per sample "
                "or a single task for the whole batch"
            )
        return output + vectors.to(device=output.device, dtype=output.dtype)

    return add_task_vectors


def attach_task_embedding(transformer: nn.Module, embedding: TaskEmbedding) -> TaskEmbedding:
    """Register `embedding` as a submodule of `transformer` (moved to its device) and hook it into
    `time_text_embed` for good. It adds nothing until `task_conditioning` sets tasks."""
    model = _unwrap(transformer)
    if embedding.dim != temb_width(model):
        raise InputError(f"task embedding width {embedding.dim} != the transformer's temb width {temb_width(model)}")
    if attached_task_embedding(model) is not None:
        raise InputError("this transformer already has a task embedding attached; detach it first")
    embedding.to(next(model.parameters()).device)
    model.add_module(_ATTR, embedding)
    embedding._attached_handle = model.time_text_embed.register_forward_hook(_hook(embedding))
    return embedding


def attached_task_embedding(transformer: nn.Module) -> TaskEmbedding | None:
    """The embedding attached to `transformer`, if any."""
    found = getattr(_unwrap(transformer), _ATTR, None)
    return found if isinstance(found, TaskEmbedding) else None


def detach_task_embedding(transformer: nn.Module) -> TaskEmbedding | None:
    """Remove the attached embedding and its hook; returns it (None if there was none)."""
    model = _unwrap(transformer)
    embedding = attached_task_embedding(model)
    if embedding is None:
        return None
    embedding._attached_handle.remove()
    del model._modules[_ATTR]
    return embedding


@contextlib.contextmanager
def task_conditioning(
    transformer: nn.Module, embedding: TaskEmbedding, tasks: TaskSpec, *, route: bool = False
) -> Iterator[None]:
    """Within the block, every forward of `transformer` adds the task vectors of `tasks` to `temb`.

    `tasks`: per sample (names, rows or None) or a (B, D) tensor, batch-aligned with the transformer's
    input; a single name / (1, D) vector for the whole batch. The vectors are computed at each forward,
    so gradients reach the embedding. `route=True` also gives them to the LoRA-MoE routers as their
    router context (layers injected with `router_context_dim` = the embedding width).
    """
    model = _unwrap(transformer)
    attached = attached_task_embedding(model)
    if attached is not None and attached is not embedding:
        raise InputError("another task embedding is attached to this transformer; use that one or detach it")
    if embedding.dim != temb_width(model):
        raise InputError(f"task embedding width {embedding.dim} != the transformer's temb width {temb_width(model)}")
    embedding(tasks)  # validate names and shapes now, not inside the model's forward
    handle = None if attached is not None else model.time_text_embed.register_forward_hook(_hook(embedding))
    previous = (embedding._has_active, embedding._active)
    embedding._has_active, embedding._active = True, tasks
    try:
        with _routing(model, embedding, tasks) if route else contextlib.nullcontext():
            yield
    finally:
        embedding._has_active, embedding._active = previous
        if handle is not None:
            handle.remove()


@contextlib.contextmanager
def _routing(model: nn.Module, embedding: TaskEmbedding, tasks: TaskSpec) -> Iterator[None]:
    """Feed the task vectors to the MoE routers. They are recomputed before every forward (a pre-hook) so
    that each training step builds a fresh graph to the embedding."""
    from ..adapters.moe import moe_layers, use_router_context

    layers = [m for m in moe_layers(model).values() if m.lora_route_context is not None]
    for layer in layers:
        if layer.lora_route_context.in_features != embedding.dim:
            raise InputError(
                f"the MoE router context is {layer.lora_route_context.in_features} wide but the task embedding "
                f"is {embedding.dim}; inject the MoE with router_context_dim={embedding.dim}"
            )

    def refresh(_module: nn.Module, _args) -> None:
        vectors = embedding(tasks)
        for layer in layers:
            layer.router_context = vectors

    # use_router_context checks that routers take a context, and restores the previous one on exit.
    with use_router_context(model, embedding(tasks).detach()):
        pre = model.register_forward_pre_hook(refresh)
        try:
            yield
        finally:
            pre.remove()


# ------------------------------------------------------------------------------------------ files


def save_task_embedding(embedding: TaskEmbedding, path: str | os.PathLike[str]) -> Path:
    """Write the vectors (fp32) and the task names (metadata) as one safetensors file, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"names": embedding.names, "dim": embedding.dim, "version": _FORMAT_VERSION}
    weight = embedding.table.weight.detach().to("cpu", torch.float32).contiguous()
    return write_atomic(path, save({"weight": weight}, metadata={_META_KEY: json.dumps(meta)}))


def load_task_embedding(path: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> TaskEmbedding:
    """Read a file written by `save_task_embedding` (a folder: its `task_embedding.safetensors`)."""
    path = Path(path)
    if path.is_dir():
        path = path / TASK_EMBEDDING_FILE
    if not path.is_file():
        raise WeightsError(f"task embedding file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta_text = (f.metadata() or {}).get(_META_KEY)
            weight = f.get_tensor("weight") if "weight" in f.keys() else None  # noqa: SIM118 - safe_open API
    except Exception as err:  # safetensors raises its own error types for a corrupt header
        raise WeightsError(f"{path} is not a readable safetensors file: {err}") from err
    if meta_text is None or weight is None:
        raise WeightsError(f"{path} is not a diptych task embedding (no '{_META_KEY}' metadata or 'weight')")
    meta = json.loads(meta_text)
    names = meta.get("names")
    if not isinstance(names, list) or weight.dim() != 2 or weight.shape[0] != len(names):
        raise WeightsError(f"{path}: {len(names or [])} task names for a weight of shape {tuple(weight.shape)}")
    embedding = TaskEmbedding(names, int(weight.shape[1]))
    with torch.no_grad():
        embedding.table.weight.copy_(weight.float())
    return embedding.to(device)


def find_task_embedding(adapter: str | os.PathLike[str] | None) -> Path | None:
    """The task embedding saved next to an adapter, or None: `<name>_task_embedding.safetensors` beside an
    adapter file `<name>.safetensors` (the built-in model's layout), else the `task_embedding.safetensors` that
    `diptych train --task-embedding` writes in the run folder (given as the folder or a file inside it)."""
    if adapter is None:
        return None
    path = Path(adapter)
    if path.is_file():
        sibling = path.with_name(f"{path.stem}_{TASK_EMBEDDING_FILE}")
        if sibling.is_file():
            return sibling
    folder = path if path.is_dir() else path.parent
    found = folder / TASK_EMBEDDING_FILE
    return found if found.is_file() else None


# ------------------------------------------------------------------------------------------ labels

_warned_labels: set[str] = set()


def taxonomy_task(label: str | None) -> str | None:
    """A dataset's task label as a taxonomy task name (`diptych.conditioning.tasks.map_task`); None for no label
    or an unknown one (logged once per label), which trains and edits with no task vector."""
    if label is None:
        return None
    from .tasks import map_task

    try:
        return map_task(label)
    except InputError as err:
        if label not in _warned_labels:
            _warned_labels.add(label)
            logger.warning("%s: samples with this label get no task vector", err)
        return None
