"""Emu Edit's task inversion: teach a frozen editor a new task from a few examples by optimising only
that task's vector, with the training objective (`FlowMatchingObjective`, the same diptych flow-matching
loss `diptych train` minimises) and the vector injected through `task_conditioning`.

Every model weight and every existing task vector stays bit-identical; the result is the base embedding
(or a fresh one) with one row added.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..canvas import PanelSize
from ..conditioning.task_embedding import TaskEmbedding, task_conditioning, temb_width
from ..errors import InputError
from ..prompts import build_prompt
from ..train.data import EditSample, make_sample
from ..train.objective import FlowMatchingObjective
from ..train.stream import sample_seed, training_layout

#: `callback(step, steps, loss)` after each optimisation step.
InversionCallback = Callable[[int, int, float], None]
Example = EditSample | tuple


@dataclass
class _Prepared:
    canvases: list[Image.Image]
    masks: list[Image.Image]
    prompt_embeds: torch.Tensor  # (N, L, C)
    pooled: torch.Tensor  # (N, P)


@dataclass
class _Parts:
    pipe: Any  # a FluxFillPipeline
    encoder: Any  # a PromptEncoder
    fill_region: str  # the layout the adapter was trained in: an Editor's, else the whole panel
    masked_content: str


def _parts(pipe_or_editor, encoder) -> _Parts:
    """The pipe, prompt encoder and adapter layout of a FluxFillPipeline or an Editor."""
    pipe = getattr(pipe_or_editor, "pipe", pipe_or_editor)
    if not hasattr(pipe, "transformer") or not hasattr(pipe, "vae"):
        raise InputError(f"expected a FluxFillPipeline or an Editor, got {type(pipe_or_editor).__name__}")
    if encoder is None:
        encoder = getattr(pipe_or_editor, "encoder", None)
    if encoder is None:
        from ..encoders import FluxPromptEncoder

        encoder = FluxPromptEncoder(pipe)
    sampler = getattr(pipe_or_editor, "sampler", None)
    return _Parts(
        pipe,
        encoder,
        getattr(pipe_or_editor, "fill_region", "panel"),
        getattr(sampler, "masked_content", "zero"),
    )


def _as_sample(example: Example, index: int) -> EditSample:
    if isinstance(example, EditSample):
        return example
    if isinstance(example, tuple | list) and len(example) == 3:
        source, instruction, target = example
        return make_sample(source, instruction, target, where=f"example {index}")
    raise InputError(f"example {index}: expected (source, instruction, target) or an EditSample")


def _panel(resolution: int | tuple[int, int], multiple: int) -> PanelSize:
    width, height = (resolution, resolution) if isinstance(resolution, int) else resolution
    if width < multiple or height < multiple or width % multiple or height % multiple:
        raise InputError(f"resolution {width}x{height}: both sides must be multiples of {multiple} for this model")
    return PanelSize(int(width), int(height))


def _prepare(parts: _Parts, examples: Sequence[Example], resolution, template: str | None) -> _Prepared:
    samples = [_as_sample(e, i) for i, e in enumerate(examples)]
    if not samples:
        raise InputError("task inversion needs at least one (source, instruction, target) example")
    token = 2 * parts.pipe.vae_scale_factor
    panel = _panel(resolution, token)
    # the adapter's own layout: an adapter that fills edit regions is tuned on its regions, as it was trained
    layouts = [training_layout(s, panel, fill_region=parts.fill_region, token=token) for s in samples]
    embeds, pooled = parts.encoder.encode([build_prompt(s.instruction, template) for s in samples])
    return _Prepared([c for c, _ in layouts], [m for _, m in layouts], embeds, pooled)


def _batch_loss(
    objective: FlowMatchingObjective,
    data: _Prepared,
    indices: Sequence[int],
    seeds: Sequence[int],
    holder: TaskEmbedding,
    vector: torch.Tensor,
    *,
    route: bool,
) -> torch.Tensor:
    pipe = objective.pipe
    transformer = pipe.transformer
    device, dtype = pipe._execution_device, transformer.dtype
    # One generator per sample feeds its VAE posterior, t and noise, as in training.
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    encoded = objective.encode(
        [data.canvases[i] for i in indices], [data.masks[i] for i in indices], generators, device=device, dtype=dtype
    )
    index = torch.as_tensor(list(indices), dtype=torch.long)
    embeds = data.prompt_embeds.index_select(0, index.to(data.prompt_embeds.device)).to(device)
    pooled = data.pooled.index_select(0, index.to(data.pooled.device)).to(device)
    with task_conditioning(transformer, holder, vector.reshape(1, -1), route=route):
        return objective.loss(
            transformer,
            encoded,
            embeds,
            pooled,
            generators,
            guidance_embeds=bool(transformer.config.guidance_embeds),
        )


class _Frozen:
    """Freeze the transformer (and put it in eval mode) for the block; restore its flags afterwards."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def __enter__(self) -> None:
        self.flags = [(p, p.requires_grad) for p in self.module.parameters()]
        self.training = self.module.training
        self.module.requires_grad_(False).eval()

    def __exit__(self, *exc) -> None:
        for p, flag in self.flags:
            p.requires_grad_(flag)
        self.module.train(self.training)


def invert_task(
    pipe_or_editor,
    examples: Sequence[Example],
    name: str,
    *,
    steps: int = 500,
    lr: float = 5e-3,
    base_embedding: TaskEmbedding | None = None,
    init_task: str | None = None,
    batch_size: int = 4,
    resolution: int | tuple[int, int] = 512,
    template: str | None = None,
    seed: int = 0,
    route: bool = False,
    encoder=None,
    callback: InversionCallback | None = None,
) -> TaskEmbedding:
    """Learn a vector for the new task `name` from `examples` ((source, instruction, target) tuples of
    images or paths, or `EditSample`s), keeping the model and `base_embedding`'s rows frozen.

    Each of `steps` AdamW steps (learning rate `lr`, no weight decay) draws `batch_size` examples, lays them
    out as training diptychs of `resolution` panels with `template` prompts, and minimises the flow-matching
    loss with the vector added to the transformer's `temb`. Given an Editor, the diptychs are laid out as its
    adapter was trained: with `fill_region == "edit"`, only each example's edit region (the pixels that
    change) is filled. The vector starts at zero (the unconditioned model) or at `init_task`'s row of
    `base_embedding`. Returns `base_embedding` plus the new row (a new
    object; `base_embedding` itself is not modified), or a one-task embedding when there is no base.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise InputError(f"lr must be a positive number, got {lr!r}")
    if not isinstance(name, str) or not name.strip():
        raise InputError("the new task needs a non-empty name")
    parts = _parts(pipe_or_editor, encoder)
    pipe = parts.pipe
    transformer = pipe.transformer
    dim = temb_width(transformer)
    if base_embedding is not None:
        if base_embedding.dim != dim:
            raise InputError(f"base embedding width {base_embedding.dim} != the transformer's temb width {dim}")
        if name in base_embedding.names:
            raise InputError(f"task {name!r} already exists in the base embedding; pick another name")
    if init_task is not None and base_embedding is None:
        raise InputError("init_task needs a base_embedding to copy the starting vector from")

    data = _prepare(parts, examples, resolution, template)
    device = pipe._execution_device
    start = torch.zeros(dim)
    if init_task is not None:
        assert base_embedding is not None
        start = base_embedding.weight[base_embedding.index(init_task)].detach().float().cpu()
    vector = torch.nn.Parameter(start.clone().to(device))
    holder = TaskEmbedding([name], dim)  # only carries the vector into task_conditioning
    objective = FlowMatchingObjective(pipe, masked_content=parts.masked_content)
    optimizer = torch.optim.AdamW([vector], lr=float(lr), weight_decay=0.0)
    rng = np.random.default_rng(seed)
    count = len(data.canvases)
    with _Frozen(transformer):
        for step in range(steps):
            indices = rng.choice(count, size=min(batch_size, count), replace=False).tolist()
            seeds = [sample_seed(seed, step, i) for i in indices]
            loss = _batch_loss(objective, data, indices, seeds, holder, vector, route=route)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if callback is not None:
                callback(step + 1, steps, float(loss.detach()))
    learned = vector.detach().float().cpu()
    if base_embedding is None:
        result = TaskEmbedding([name], dim)
        with torch.no_grad():
            result.table.weight[0].copy_(learned)
        return result
    return base_embedding.with_task(name, init=learned.to(base_embedding.weight.device, base_embedding.weight.dtype))


@torch.no_grad()
def task_loss(
    pipe_or_editor,
    examples: Sequence[Example],
    embedding: TaskEmbedding,
    task: str | None,
    *,
    resolution: int | tuple[int, int] = 512,
    template: str | None = None,
    seed: int = 1,
    draws: int = 4,
    route: bool = False,
    encoder=None,
) -> float:
    """Mean flow-matching loss of `examples` conditioned on `task` (None: no task vector), over `draws`
    fixed draws of (t, noise) per example: comparable across embeddings, to measure what inversion gained."""
    parts = _parts(pipe_or_editor, encoder)
    pipe = parts.pipe
    data = _prepare(parts, examples, resolution, template)
    vector = torch.zeros(embedding.dim) if task is None else embedding.weight[embedding.index(task)].float().cpu()
    vector = vector.to(pipe._execution_device)
    holder = TaskEmbedding(["probe"], embedding.dim)
    objective = FlowMatchingObjective(pipe, masked_content=parts.masked_content)
    losses = []
    for draw in range(draws):
        for i in range(len(data.canvases)):
            loss = _batch_loss(objective, data, [i], [sample_seed(seed, draw, i)], holder, vector, route=route)
            losses.append(float(loss))
    return float(np.mean(losses))
