"""The Editor: load a Fill model (+ adapter) once, then edit images from text instructions.

An edit is ICEdit's in-context inpainting: the source on the left of a diptych, the right half masked, and
a prompt saying the right is the left "but {instruction}". The Fill model completes the right half.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from diffusers import FluxFillPipeline
from PIL import Image, ImageFilter

from . import canvas as cv
from .conditioning.tasks import WHOLE_IMAGE_TASKS
from .devices import default_device, default_dtype  # noqa: F401  (public names kept importable from here)
from .encoders import FluxPromptEncoder, PromptEncoder
from .errors import DiptychError, InputError, WeightsError
from .images import AUTO_MASK, load_image, load_mask, validate_instruction
from .loading import (  # noqa: F401  (DEFAULT_BASE, OFFLOAD_MODES: public names kept importable from here)
    DEFAULT_BASE,
    OFFLOAD_MODES,
    check_fill_transformer,
    fuse_adapter,
    load_fill_pipeline,
    unfuse_adapter,
)
from .locator import check_threshold, region_mask, token_region
from .prompts import UNCONDITIONAL_PROMPT, build_prompt, resolve_template
from .sampler import FillSampler, FillState
from .speed import CacheMode

if TYPE_CHECKING:
    from .conditioning.task_embedding import TaskEmbedding
    from .locator import Locator
    from .scaling.judges import Judge


ImageInput = str | os.PathLike | bytes | Image.Image
ProgressCallback = Callable[[int, int], None]


@dataclass
class EditRequest:
    """One edit of a batch: an image, an instruction, a seed and an optional mask (white = may change; "auto" =
    the region the editor's locator predicts from the instruction)."""

    image: ImageInput
    instruction: str
    seed: int = 42
    mask: ImageInput | None = None
    task: str | None = None  # Emu Edit task; None = predicted from the instruction (with a task embedding)


@dataclass
class PreparedEdit:
    """An edit after input validation and layout, ready to be batched with others of the same canvas size."""

    source: Image.Image  # the loaded source, at its own size
    panel_source: Image.Image  # the source resized to the panel
    canvas: Image.Image
    fill_mask: Image.Image
    instruction: str
    prompt: str
    seed: int
    mask: Image.Image | None  # user (or located) mask at the source's size
    keep_grid: np.ndarray | None  # latent cells of the canvas that must keep the source
    located: bool = False  # the mask is the locator's: composited after sampling only (no keep-blending)
    task: str | None = None  # the edit's task, given or predicted (`Editor.resolve_tasks`); None without tasks
    requested: str | None = None  # the instruction as given, when the editor's rewriter restated it


class Editor:
    """Instruction-based editing with a FLUX.1 Fill pipeline.

    Example:
        >>> editor = Editor.from_pretrained("black-forest-labs/FLUX.1-Fill-dev", adapter="RiverZ/normal-lora")
        >>> edited = editor.edit("cat.png", "make the cat wear a red hat", seed=42)
    """

    def __init__(
        self,
        pipe: FluxFillPipeline,
        *,
        encoder: PromptEncoder | None = None,
        default_width: int = 512,
        max_canvas_pixels: int = cv.DEFAULT_MAX_CANVAS_PIXELS,
        cache: CacheMode | str | None = None,
        fill_region: str = "panel",
        masked_content: str = "zero",
    ):
        cv.check_fill_region(fill_region)
        cv.check_masked_content(masked_content)
        check_fill_transformer(pipe.transformer.config, pipe.vae.config, where="this pipeline")
        self.pipe = pipe
        self.encoder: PromptEncoder = encoder or FluxPromptEncoder(pipe)
        # what the Fill condition shows under the mask, as the adapter was trained (`sampler.masked_canvas`)
        self.sampler = FillSampler(pipe, cache=cache, masked_content=masked_content)
        self.default_width = default_width
        self.max_canvas_pixels = max_canvas_pixels
        self.adapter_kind: str | None = None  # "lora" or "moe" once an adapter is loaded
        self.adapter_fused = False
        self.quantized: str | None = None  # the quantization mode of the loaded weights
        self.task_embedding: TaskEmbedding | None = None  # see use_task_embedding
        self.task_predictor = None
        self.locator: Locator | None = None  # see use_locator; needed by mask="auto"
        self.rewriter: Callable[[str], str] | None = None  # see use_rewriter
        # "edit": a mask (the user's or the located region) is the Fill mask itself, the source around it, as the
        # adapter was trained (`diptych train --fill-region edit`); "panel": the whole right panel is filled
        self.fill_region = fill_region

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        base: str | os.PathLike = DEFAULT_BASE,
        adapter: str | os.PathLike | None = None,
        *,
        adapter_scale: float = 1.0,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        offload: str = "none",
        local_files_only: bool = False,
        moe_dispatch: str = "dense",
        cache: CacheMode | str | None = None,
        quantize: str | None = None,
        compile: bool = False,
        gguf: str | os.PathLike | None = None,
        locator: str | os.PathLike | None = None,
        locator_threshold: float | None = None,
        rewrite: bool = True,
    ) -> Editor:
        """Load a Fill model from the hub or a local diffusers folder, plus an optional adapter.

        `adapter` may be a plain LoRA (diffusers format, e.g. the official ICEdit normal LoRA) or a LoRA-MoE
        checkpoint in the official ICEdit layout; which one is told from its keys.

        `base="shapes"` is the built-in ShapesEdit model (shipped in the package; `"shapes:FOLDER"` for one
        in the same layout); its adapter defaults to the shipped LoRA-MoE (with the Emu Edit task embedding
        trained with it: each edit's task is predicted from its instruction unless given), `"lora"` picks
        the shipped plain LoRA and `"none"` the bare base model; its adapter's plain-LoRA layers are fused at
        load. `moe_dispatch` "sparse" computes only each token's chosen experts (equal to the official "dense"
        up to float rounding).

        `offload`: "none" (everything on `device`), "model" (each model moves to the GPU while it runs;
        fits 24 GB cards), "sequential" (layer by layer; least memory, slowest) or "group" (diffusers' group
        offloading, block by block).

        Speed and memory modes (`diptych.speed`, docs/performance.md): `cache` "fbcache[:THRESHOLD]",
        "taylorseer", "magcache[:THRESHOLD]" or "fastercache" (diffusers' cache hooks; also settable later as
        `editor.cache`); `quantize` "int8" (any device), "fp8" or "nf4" (CUDA); `compile` regional
        `torch.compile` of the transformer's repeated blocks; `gguf` a GGUF file of the transformer (e.g. a Q8_0
        FLUX.1 Fill), the rest of the pipeline from `base`.

        `locator`: a locator file or training folder (`diptych train --objective locate`) for `mask="auto"`;
        it loads its own copy of `base`'s transformer. The built-in model's defaults to the one shipped in its
        folder, if any. `locator_threshold` overrides the probability above which the locator marks a token
        (default: the one saved in the locator file, else 0.5).

        `rewrite`: restate each instruction with the model's instruction rewriter before editing, when it has one
        (the built-in model: `shapes_core.rewrite.InstructionRewriter`, an unfamiliar wording -> the nearest seen
        phrasing; see `use_rewriter`). False edits with the words as given.
        """
        model = load_fill_pipeline(
            base,
            adapter,
            adapter_scale=adapter_scale,
            device=device,
            dtype=dtype,
            offload=offload,
            local_files_only=local_files_only,
            moe_dispatch=moe_dispatch,
            quantize=quantize,
            compile=compile,
            gguf=gguf,
        )
        editor = cls(
            model.pipe,
            encoder=model.encoder,
            default_width=model.default_width,
            cache=cache,
            fill_region=model.fill_region,
            masked_content=model.masked_content,
        )
        editor.adapter_kind, editor.adapter_fused, editor.quantized = (
            model.adapter_kind,
            model.adapter_fused,
            model.quantized,
        )
        if model.task_embedding_file is not None:
            from .conditioning.task_embedding import load_task_embedding

            editor.use_task_embedding(load_task_embedding(model.task_embedding_file))
        if locator is None:
            from .shapes_core.models import resolve_locator

            locator = resolve_locator(str(base))
        if locator is not None:
            from .locator import Locator

            transformer = model.pipe.transformer
            editor.use_locator(
                Locator.from_pretrained(
                    base, locator, device=transformer.device, dtype=transformer.dtype, local_files_only=local_files_only
                )
            )
        if locator_threshold is not None:
            if editor.locator is None:
                raise InputError("a locator threshold needs a locator: --locator FILE (or the built-in model's own)")
            editor.locator.threshold = locator_threshold  # checked by the locator
        if rewrite:
            from .shapes_core.models import resolve_rewriter

            editor.use_rewriter(resolve_rewriter(str(base), editor.encoder))
        return editor

    @property
    def cache(self) -> CacheMode | None:
        """The sampler's caching mode (`diptych.speed.CacheMode`); set a spec such as "fbcache:0.1" or None."""
        return self.sampler.cache

    @cache.setter
    def cache(self, spec: CacheMode | str | None) -> None:
        self.sampler.cache = spec

    @property
    def stochastic(self) -> bool:
        """Stochastic sampling: each step re-noises the x0 prediction with fresh noise drawn from the edit's seed
        instead of following the flow (diffusers' `FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)`;
        the flag lives on the pipeline's scheduler, so a scheduler built with it turns it on too)."""
        return bool(self.pipe.scheduler.config.get("stochastic_sampling", False))

    @stochastic.setter
    def stochastic(self, on: bool) -> None:
        if "stochastic_sampling" not in self.pipe.scheduler.config:  # diffusers records every option there
            if on:
                raise InputError(f"{type(self.pipe.scheduler).__name__} has no stochastic_sampling option")
            return  # off already; writing the flag would make this scheduler look as if it had the option
        self.pipe.scheduler.register_to_config(stochastic_sampling=bool(on))

    # ------------------------------------------------------------------ adapters
    def fuse_adapter(self) -> None:
        """Fold the adapter into the base weights for the fastest inference (equal up to rounding).

        Plain LoRA layers fuse; LoRA-MoE expert layers stay dynamic (their delta depends on each token's
        routing: export them with `diptych export-lora` to fuse everything).
        """
        if self.adapter_kind is None:
            raise InputError("there is no adapter to fuse: load one with Editor.from_pretrained(adapter=...)")
        if self.adapter_fused:
            return
        if self.quantized:
            raise InputError(f"a {self.quantized}-quantized base cannot fold an adapter in; load it without --quantize")
        fuse_adapter(self.pipe, self.adapter_kind)
        self.adapter_fused = True

    def unfuse_adapter(self) -> None:
        """Undo `fuse_adapter` (the base weights come back up to rounding)."""
        if not self.adapter_fused:
            return
        if self.quantized:
            raise InputError(f"the adapter was folded in before {self.quantized} quantization and cannot be taken out")
        unfuse_adapter(self.pipe, self.adapter_kind)
        self.adapter_fused = False

    # ------------------------------------------------------------------ Emu Edit tasks
    def use_task_embedding(self, embedding: TaskEmbedding | None, *, predictor=None) -> None:
        """Condition every edit on an Emu Edit task vector from `embedding` (None: no task conditioning).

        Each edit's task is its `task=` or, when that is None, predicted from the instruction by `predictor`
        (default: the shipped `TaskPredictor`, loaded on first use).
        """
        if embedding is not None:
            from .conditioning.task_embedding import temb_width

            if embedding.dim != temb_width(self.pipe.transformer):
                raise WeightsError(
                    f"the task embedding is {embedding.dim} wide but this transformer's timestep embedding is "
                    f"{temb_width(self.pipe.transformer)}: it was trained for another model"
                )
            embedding = embedding.to(self.pipe.transformer.device).eval()
        self.task_embedding = embedding
        self.task_predictor = predictor

    def resolve_tasks(self, instructions: Sequence[str], tasks: Sequence[str | None]) -> list[str] | None:
        """The task of each edit (given, or predicted from its instruction); None without a task embedding."""
        if self.task_embedding is None:
            if any(t is not None for t in tasks):
                raise InputError(
                    "a task was given but this editor has no task embedding: load one with "
                    "editor.use_task_embedding(load_task_embedding(FILE)) (CLI: --task-file FILE)"
                )
            return None
        for task in tasks:
            if task is not None:
                self.task_embedding.index(task)  # a clear error for an unknown name
        unknown = [i for i, t in enumerate(tasks) if t is None]
        resolved = list(tasks)
        if unknown:
            if self.task_predictor is None:
                from .conditioning.tasks import TaskPredictor

                encoder = self.encoder if hasattr(self.encoder, "embed") else None  # reuse MiniLM if loaded
                self.task_predictor = TaskPredictor.from_pretrained(encoder=encoder)
            predicted = self.task_predictor.predict([instructions[i] for i in unknown])
            for index, name in zip(unknown, predicted, strict=True):
                if name not in self.task_embedding.names:
                    raise InputError(
                        f"the predicted task {name!r} has no vector in this task embedding "
                        f"({', '.join(self.task_embedding.names)}); pass the task explicitly"
                    )
                resolved[index] = name
        return resolved  # type: ignore[return-value]

    def task_conditioning(self, tasks: Sequence[str] | None):
        """A context in which the transformer adds the task vectors of `tasks` (one per batch row, or one for
        the whole batch) to its timestep embedding; a no-op context for `tasks=None`."""
        if tasks is None or self.task_embedding is None:
            return contextlib.nullcontext()
        from .conditioning.task_embedding import task_conditioning

        return task_conditioning(self.pipe.transformer, self.task_embedding, list(tasks))

    # ------------------------------------------------------------------ rewriting
    def use_rewriter(self, rewriter: Callable[[str], str] | None) -> None:
        """Restate every instruction with `rewriter` (instruction -> instruction) before it is encoded, located
        or its task predicted — the job of the LLM real editors put in front of the image model; None: edit with
        the instruction as given. The result's `PreparedEdit.requested` keeps the words the user gave."""
        self.rewriter = rewriter

    def rewrite(self, instruction: str) -> str:
        """`instruction` as the editor will read it (unchanged without a rewriter)."""
        return instruction if self.rewriter is None else self.rewriter(instruction)

    # ------------------------------------------------------------------ locating
    def use_locator(self, locator: Locator | None) -> None:
        """Predict the region of `mask="auto"` edits with `locator` (`diptych.locator.Locator`; None: none)."""
        self.locator = locator

    def locate(self, image: ImageInput, instruction: str, *, width: int | None = None, template: str | None = None):
        """The region of `image` that `instruction` names, as the locator predicts it: an 'L' mask at the image's
        size (white = edit here), what `mask="auto"` composites the edit inside."""
        return self.prepare(EditRequest(image, instruction, mask=AUTO_MASK), width=width, template=template).mask

    def _located_mask(
        self, canvas: Image.Image, fill_mask: Image.Image, prompt: str, panel: cv.PanelSize, threshold: float | None
    ):
        if self.locator is None:
            raise InputError(
                "mask='auto' needs a locator: Editor.from_pretrained(..., locator=FILE) (CLI: --locator FILE); "
                "train one with `diptych train --objective locate`"
            )
        embeds, pooled = self.encoder.encode([prompt])
        probabilities = self.locator.probabilities(self.pipe, [canvas], [fill_mask], embeds, pooled)[0]
        token = 2 * self.sampler.vae_scale  # pixels per token: the locator's resolution
        # Half a token of margin: tokens are coarse, and an object the region clips is a failed edit (docs/shapes.md).
        threshold = self.locator.threshold if threshold is None else check_threshold(threshold)
        return region_mask(probabilities, (panel.width, panel.height), threshold=threshold, dilate=max(1, token // 2))

    # ------------------------------------------------------------------ editing
    def session(self, image: ImageInput, **options):
        """A multi-turn editing session on `image` (history, undo, Emu Edit thresholding between turns);
        see `diptych.session.EditSession` for the options."""
        from .session import EditSession

        return EditSession(self, image, **options)

    def edit(
        self,
        image: ImageInput,
        instruction: str,
        *,
        seed: int = 42,
        steps: int = 28,
        guidance: float = 50.0,
        true_cfg_scale: float = 1.0,
        width: int | None = None,
        template: str | None = None,
        mask: ImageInput | None = None,
        keep_size: bool = False,
        feather: int = 3,
        candidates: int = 1,
        early_steps: int = 10,
        judge: Judge | str | None = None,
        strategy: str = "auto",
        samplers: Sequence[str] | None = None,
        task: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> Image.Image:
        """Edit one image; returns the edited panel (`width` wide, or the source's size with `keep_size`).

        `mask` (white = may change) restricts the edit: latents outside it are blended back to the source
        at every step, and the final image takes the source's pixels outside the mask exactly. `mask="auto"`:
        the region the editor's locator predicts from the instruction (`use_locator`), composited after
        sampling only (the edit inside it, the source's pixels outside; `locate` returns the region); the whole
        image when the editor conditions on tasks and the edit's task (given or predicted) changes every part
        of it (`conditioning.tasks.WHOLE_IMAGE_TASKS`: background, global, style, color_filter, translate). With an
        adapter trained to fill edit regions (`fill_region == "edit"`), the mask — snapped to whole tokens
        with half a token of margin, as in training — is the Fill mask itself: only it is generated, the
        source showing around it; without a mask, such an adapter edits the located region when the editor
        has a locator (the whole panel, which it was not trained for, when not).

        With `candidates` > 1, early filtering: seeds `seed .. seed + candidates - 1` run `early_steps`
        steps together, `judge` (a judge object or a spec such as "clip" or "python:mod:fn") picks one from
        the x0 previews, and the winner resumes to `steps`. The result equals `edit(seed=winner)`. `samplers`
        ("stochastic", "euler"): each seed runs with each (default: the editor's own). For the
        previews, the judge's reasons and the NFE count, call
        `diptych.scaling.early_filter.edit_with_early_filter` directly.

        `task` (Emu Edit) picks the task vector when the editor has a task embedding (`use_task_embedding`);
        None predicts it from the instruction.

        `true_cfg_scale` > 1: classifier-free guidance on the prompt (diffusers' name), against the
        unconditional prompt adapters are trained with (`UNCONDITIONAL_PROMPT`); two transformer passes a
        step. `guidance` is FLUX's distilled guidance input, ignored by a transformer without one.
        """
        request = EditRequest(image, instruction, seed, mask, task)
        options = dict(
            steps=steps,
            guidance=guidance,
            true_cfg_scale=true_cfg_scale,
            width=width,
            template=template,
            keep_size=keep_size,
            feather=feather,
            progress=progress,
        )
        if candidates > 1:
            from .scaling.early_filter import edit_with_early_filter
            from .scaling.spec import load_judge

            if judge is None:
                raise InputError("early filtering (candidates > 1) needs a judge, e.g. judge='clip'")
            judge = load_judge(judge) if isinstance(judge, str) else judge
            return edit_with_early_filter(
                self,
                request,
                judge=judge,
                candidates=candidates,
                early_steps=early_steps,
                strategy=strategy,
                samplers=samplers,
                **options,
            ).image
        return self.edit_many([request], **options)[0]

    def edit_many(
        self,
        requests: Iterable[EditRequest | tuple | dict],
        *,
        steps: int = 28,
        guidance: float = 50.0,
        true_cfg_scale: float = 1.0,
        width: int | None = None,
        template: str | None = None,
        keep_size: bool = False,
        feather: int = 3,
        batch_size: int = 4,
        progress: ProgressCallback | None = None,
    ) -> list[Image.Image]:
        """Edit several images, batching those of the same canvas size through the transformer.

        Each result equals the single edit with the same seed (up to float rounding of batched kernels).
        `progress(done, total)` counts denoising steps over all batches.
        """
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        requests = [_as_request(r, i) for i, r in enumerate(requests)]
        prepared = [self.prepare(r, width=width, template=template) for r in requests]
        tasks = [item.task for item in prepared] if self.task_embedding is not None else None
        groups: dict[tuple[int, int], list[int]] = {}
        for index, item in enumerate(prepared):
            groups.setdefault(item.canvas.size, []).append(index)
        chunks = [ids[i : i + batch_size] for ids in groups.values() for i in range(0, len(ids), batch_size)]
        total, done = steps * len(chunks), 0
        results: list[Image.Image | None] = [None] * len(prepared)
        for chunk in chunks:
            items = [prepared[i] for i in chunk]
            state = self.start(items, steps=steps, guidance=guidance, true_cfg_scale=true_cfg_scale)

            def on_step(step: int, _total: int, offset: int = done) -> None:
                if progress is not None:
                    progress(offset + step, total)

            with self.task_conditioning(None if tasks is None else [tasks[i] for i in chunk]):
                state = self.sampler.run(state, callback=on_step)
            done += steps
            for index, item, image in zip(chunk, items, self.sampler.decode_state(state), strict=True):
                results[index] = self.finish(item, image, keep_size=keep_size, feather=feather)
        self.pipe.maybe_free_model_hooks()
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------ building blocks
    # Public so that the early filter, the UI and benchmarks compose them without re-implementing.
    def prepare(
        self,
        request: EditRequest,
        *,
        width: int | None = None,
        template: str | None = None,
        locator_threshold: float | None = None,
    ) -> PreparedEdit:
        """Validate inputs and lay out the diptych for one edit. `locator_threshold` overrides the locator's own
        (`Locator.threshold`) for a located region."""
        resolve_template(template)
        requested = validate_instruction(request.instruction)
        instruction = self.rewrite(requested)
        source = load_image(request.image)
        panel = cv.plan_panel(
            source.size,
            width or self.default_width,
            multiple=2 * self.sampler.vae_scale,
            max_canvas_pixels=self.max_canvas_pixels,
        )
        panel_source = cv.fit_panel(source, panel)
        canvas, fill_mask = cv.compose_diptych(panel_source)
        mask = keep_grid = None
        given_mask = request.mask
        if given_mask is None and self.fill_region == "edit" and self.locator is not None:
            given_mask = AUTO_MASK  # an adapter trained on regions gets one: the located region
        located = isinstance(given_mask, str) and given_mask == AUTO_MASK
        tasks = self.resolve_tasks([instruction], [request.task])  # None: the editor does not condition on tasks
        task = tasks[0] if tasks is not None else None
        if located:
            if self.locator is not None and task in WHOLE_IMAGE_TASKS:  # not located: the whole image changes
                region = Image.new("L", (panel.width, panel.height), 255)
            else:
                prompt = build_prompt(instruction, template)
                region = self._located_mask(canvas, fill_mask, prompt, panel, locator_threshold)
            mask = region.resize(source.size, Image.Resampling.NEAREST)
        elif given_mask is not None:
            mask = load_mask(given_mask, size=source.size)
            region = cv.fit_mask(mask, (panel.width, panel.height))
            if self.fill_region == "panel":
                cell = self.sampler.vae_scale  # pixels per latent cell
                right = cv.keep_map(region, (panel.width // cell, panel.height // cell))
                keep_grid = np.concatenate([np.zeros_like(right), right], axis=1)
            else:
                region = token_region(region, 2 * self.sampler.vae_scale)
        if mask is not None and self.fill_region == "edit":
            fill_mask = cv.region_fill_mask(region)
        return PreparedEdit(
            source=source,
            panel_source=panel_source,
            canvas=canvas,
            fill_mask=fill_mask,
            instruction=instruction,
            prompt=build_prompt(instruction, template),
            seed=int(request.seed),
            mask=mask,
            keep_grid=keep_grid,
            located=located,
            task=task,
            requested=requested if instruction != requested else None,
        )

    def start(
        self, items: Sequence[PreparedEdit], *, steps: int, guidance: float, true_cfg_scale: float = 1.0
    ) -> FillState:
        """The initial sampling state of a batch of prepared edits with the same canvas size."""
        embeds, pooled = self.encoder.encode([item.prompt for item in items])
        negative = {}
        if true_cfg_scale != 1:
            negative_embeds, negative_pooled = self.encoder.encode([UNCONDITIONAL_PROMPT] * len(items))
            negative = dict(negative_prompt_embeds=negative_embeds, negative_pooled_prompt_embeds=negative_pooled)
        keep = [item.keep_grid for item in items] if any(i.keep_grid is not None for i in items) else None
        return self.sampler.prepare(
            [item.canvas for item in items],
            [item.fill_mask for item in items],
            embeds,
            pooled,
            seeds=[item.seed for item in items],
            steps=steps,
            guidance=guidance,
            keep_masks=keep,
            true_cfg_scale=true_cfg_scale,
            **negative,
        )

    @staticmethod
    def finish(item: PreparedEdit, canvas: Image.Image, *, keep_size: bool = False, feather: int = 3) -> Image.Image:
        """Crop the edited panel, resize it back if asked, and composite the user mask."""
        edited = cv.crop_right(canvas)
        reference = item.panel_source
        if keep_size and edited.size != item.source.size:
            edited = edited.resize(item.source.size, Image.Resampling.BICUBIC)
            reference = item.source
        elif keep_size:
            reference = item.source
        if item.mask is not None:
            mask = cv.fit_mask(item.mask, edited.size)
            if item.located and feather > 0:
                # The ramp (erode by `feather`, blur by `feather`) must lie wholly outside the located region.
                mask = mask.filter(ImageFilter.MaxFilter(4 * feather + 1))
            edited = cv.feathered_composite(reference, edited, mask, feather)
        return edited


# ---------------------------------------------------------------------- helpers
def edit_many_isolated(
    editor, requests: Sequence, *, errors: tuple[type[BaseException], ...] = (DiptychError,), **options
) -> list[Image.Image | BaseException]:
    """`editor.edit_many(requests, **options)`, except that one bad edit fails alone: when the batch raises one
    of `errors`, every request is run on its own and a failing one's slot holds its exception (the others
    their images). Any editor with an `edit_many` will do; the eval runner and the server's batcher use it."""
    requests = list(requests)
    try:
        return list(editor.edit_many(requests, **options))
    except errors as err:
        if len(requests) == 1:
            return [err]
    outputs: list[Image.Image | BaseException] = []
    for request in requests:
        try:
            outputs.append(editor.edit_many([request], **options)[0])
        except errors as err:
            outputs.append(err)
    return outputs


def _as_request(item: EditRequest | tuple | dict, index: int) -> EditRequest:
    if isinstance(item, EditRequest):
        return item
    if isinstance(item, dict):
        unknown = set(item) - {"image", "instruction", "seed", "mask", "task"}
        if unknown or "image" not in item or "instruction" not in item:
            raise InputError(
                f"edit #{index}: expected keys image, instruction[, seed, mask, task]; got {', '.join(sorted(item))}"
            )
        return EditRequest(**item)
    if isinstance(item, tuple) and 2 <= len(item) <= 5:
        return EditRequest(*item)
    raise InputError(f"edit #{index}: expected an EditRequest, a dict or an (image, instruction, seed) tuple")
