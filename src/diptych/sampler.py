"""Step-level control over FLUX.1 Fill sampling: prepare, run some steps, preview, resume.

`FillSampler` runs the same computation as `diffusers.FluxFillPipeline.__call__` (the parity tests check
bit equality) but as a loop whose state is an explicit value, `FillState`. That state can stop after K
steps, give an x0 preview, be sliced to the candidates worth keeping, be saved and loaded, and resume:
K steps + resume equal an uninterrupted run bit for bit.

Two details make that exact:
- The pipeline draws from the seed's generator three times: a *sampled* VAE encode of the canvas (whose
  result it multiplies by zero at strength 1), the noise, then a sampled encode of the masked canvas. We
  replay the first draw without the encode, and cache the masked-canvas latents in the state, so resuming
  never touches the generator.
- Modules run in eval mode (dropout off); loaders and the tiny rig guarantee it.

Stochastic sampling (`FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)`, read from the pipeline's
scheduler when a batch is prepared): each step re-noises the x0 prediction to the next sigma with fresh noise
instead of following the velocity, as the scheduler's `step` does. The fresh noise of sample i at step k is drawn
from a generator seeded by (seed_i, k), so it too resumes exactly and does not depend on the batch.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from diffusers import FluxFillPipeline
from diffusers.pipelines.flux.pipeline_flux_fill import calculate_shift, retrieve_timesteps
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from safetensors.torch import load_file, save

from .canvas import check_masked_content
from .errors import InputError
from .files import write_atomic
from .speed import CacheMode

StepCallback = Callable[[int, int], None]

#: FLUX.1's scheduler configuration: flow matching with a resolution-dependent shift of the sigmas.
FLUX_SCHEDULER_CONFIG = {
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "base_shift": 0.5,
    "max_shift": 1.15,
}


@dataclass
class FillState:
    """Everything needed to continue sampling a batch of diptychs from step `step`.

    Packed tensors have shape (B, tokens, channels) as Flux uses them. `keep_*` are set only for edits
    restricted by a user mask.
    """

    latents: torch.Tensor  # noisy latents at sigmas[step]
    condition: torch.Tensor  # masked-canvas latents and packed Fill mask, concatenated on channels
    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor
    guidance: torch.Tensor  # (B,) float32
    sigmas: torch.Tensor  # (N + 1,) float32, ending in 0
    timesteps: torch.Tensor  # (N,)
    noise: torch.Tensor  # the initial latents, to re-noise kept regions
    height: int
    width: int
    step: int = 0
    keep_latents: torch.Tensor | None = None
    keep_mask: torch.Tensor | None = None
    x0: torch.Tensor | None = None  # prediction of the clean latents at the last step run
    # Classifier-free guidance on the prompt (diffusers' `true_cfg_scale`): velocity = negative + scale *
    # (prompt - negative), a second transformer pass per step. 1 = off (and no negative embeddings kept).
    true_cfg_scale: float = 1.0
    negative_prompt_embeds: torch.Tensor | None = None
    negative_pooled_prompt_embeds: torch.Tensor | None = None
    # Stochastic sampling (see the module docstring) when set: each sample's seed, which draws its fresh noise.
    seeds: torch.Tensor | None = None  # (B,) int64

    _TENSORS = (
        "latents",
        "condition",
        "prompt_embeds",
        "pooled_prompt_embeds",
        "guidance",
        "sigmas",
        "timesteps",
        "noise",
        "keep_latents",
        "keep_mask",
        "x0",
        "negative_prompt_embeds",
        "negative_pooled_prompt_embeds",
        "seeds",
    )
    _BATCHED = (
        "latents",
        "condition",
        "prompt_embeds",
        "pooled_prompt_embeds",
        "guidance",
        "noise",
        "keep_latents",
        "keep_mask",
        "x0",
        "negative_prompt_embeds",
        "negative_pooled_prompt_embeds",
        "seeds",
    )

    @property
    def stochastic(self) -> bool:
        return self.seeds is not None

    @property
    def batch_size(self) -> int:
        return self.latents.shape[0]

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def done(self) -> bool:
        return self.step >= self.num_steps

    def select(self, indices: Sequence[int]) -> FillState:
        """The state of a subset of the batch (e.g. the early filter's winner)."""
        index = torch.as_tensor(list(indices), dtype=torch.long)
        picked = {
            name: getattr(self, name).index_select(0, index.to(getattr(self, name).device))
            for name in self._BATCHED
            if getattr(self, name) is not None
        }
        return replace(self, **picked)

    def save(self, path: str | Path) -> None:
        """Write the state as one safetensors file (atomic: temp file + rename)."""
        path = Path(path)
        tensors = {
            name: getattr(self, name).detach().cpu().contiguous()
            for name in self._TENSORS
            if getattr(self, name) is not None
        }
        meta = {"height": self.height, "width": self.width, "step": self.step, "true_cfg_scale": self.true_cfg_scale}
        write_atomic(path, save(tensors, metadata={"diptych_fill_state": json.dumps(meta)}))

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> FillState:
        """Read a state written by `save`; tensors go to `device`."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta_text = (f.metadata() or {}).get("diptych_fill_state")
        if meta_text is None:
            raise InputError(f"{path} is not a diptych sampling state (no 'diptych_fill_state' metadata)")
        tensors = load_file(str(path), device=str(device))
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in tensors.items() if k in names}, **json.loads(meta_text))


def masked_canvas(canvas: torch.Tensor, fill: torch.Tensor, content: str = "zero") -> torch.Tensor:
    """The pixels the Fill condition encodes, from preprocessed (B, 3, H, 2W) canvases and (B, 1, H, 2W) masks:
    "zero" blanks the region to fill (FLUX.1 Fill, ICEdit); "source" shows the source (the left panel) in both
    panels, so the mask channel marks what may change while its old content stays visible token by token, as
    InstructPix2Pix concatenates the source image (an adapter trained so: `diptych train --masked-content source`).
    """
    check_masked_content(content)
    if content == "zero":
        return canvas * (1 - fill)
    left = canvas[..., : canvas.shape[-1] // 2]
    return torch.cat((left, left), dim=-1)


def step_noise(seeds: torch.Tensor, step: int, shape: Sequence[int]) -> torch.Tensor:
    """Stochastic sampling's fresh noise (B, *shape) float32 at step index `step`: sample i's from a generator
    seeded by (seeds[i], step), so that it does not depend on the batch or on where sampling was resumed."""
    draws = []
    for seed in seeds.tolist():
        gen = torch.Generator("cpu").manual_seed((seed * 1_000_003 + step + 1) % 2**63)
        draws.append(torch.randn(tuple(shape), generator=gen, dtype=torch.float32))
    return torch.stack(draws)


class FillSampler:
    """Runs FLUX.1 Fill sampling on prepared diptychs, one explicit step at a time.

    `cache` (a `diptych.speed.CacheMode`, or a spec such as "fbcache:0.1") turns on one of diffusers' cache
    hooks for every step; see `_prepare_cache` for how its state is kept to one run.
    """

    def __init__(self, pipe: FluxFillPipeline, *, cache: CacheMode | str | None = None, masked_content: str = "zero"):
        self.pipe = pipe
        self.cache = cache
        self.masked_content = masked_content  # what the condition shows under the mask (`masked_canvas`)
        self._cache_key: tuple | None = None  # (mode, steps) the transformer's hooks were made for
        self._last_state: FillState | None = None  # the state the last step returned
        self._timestep = 1000.0

    @property
    def cache(self) -> CacheMode | None:
        return self._cache

    @cache.setter
    def cache(self, spec: CacheMode | str | None) -> None:
        self._cache = CacheMode.parse(spec)

    def _prepare_cache(self, state: FillState) -> bool:
        """Set the transformer's cache hooks up for a step of `state`; True when a cache is on (each transformer
        call then runs in its `cache_context`: "cond", and "uncond" for the guidance pass).

        The hooks are (re)made when the mode or the run's number of steps changes (MagCache's ratios depend on
        it), and their state is reset whenever `state` is not the one the previous step returned — a new
        batch, a resumed `FillState`, the early filter's winner — so residuals of another image never leak."""
        transformer = self.pipe.transformer
        mode = self._cache
        if mode is None:
            if self._cache_key is not None:
                transformer.disable_cache()
                self._cache_key = None
            return False
        key = (mode, state.num_steps)
        if key != self._cache_key:
            if self._cache_key is not None:
                transformer.disable_cache()
            transformer.enable_cache(mode.config(steps=state.num_steps, current_timestep=lambda: self._timestep))
            self._cache_key, self._last_state = key, None
        if state is not self._last_state:
            transformer._reset_stateful_cache()
        return True

    @property
    def vae_scale(self) -> int:
        return self.pipe.vae_scale_factor

    @property
    def latent_channels(self) -> int:
        return self.pipe.vae.config.latent_channels

    # ---------------------------------------------------------------- preparation
    @torch.no_grad()
    def prepare(
        self,
        canvases: Sequence[Image.Image],
        fill_masks: Sequence[Image.Image],
        prompt_embeds: torch.Tensor,
        pooled_prompt_embeds: torch.Tensor,
        *,
        seeds: Sequence[int],
        steps: int,
        guidance: float | Sequence[float],
        keep_masks: Sequence[np.ndarray | None] | None = None,
        true_cfg_scale: float = 1.0,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
    ) -> FillState:
        """Initial state for a batch of same-sized canvases, drawing from each seed as the pipeline does.

        `keep_masks[i]`, if given, is a (rows, cols) array over the latent grid of the whole canvas:
        1 where the latents must stay the canvas's own (re-noised to the current level each step).
        `true_cfg_scale` > 1 guides each step away from the negative prompt embeddings (required then).
        The pipeline scheduler's `stochastic_sampling` flag, as it is now, decides the state's sampling.
        """
        pipe, device = self.pipe, self.pipe._execution_device
        batch = len(canvases)
        if not (len(fill_masks) == len(seeds) == batch == prompt_embeds.shape[0]):
            raise InputError("canvases, masks, seeds and prompts must have the same length")
        if steps < 1:
            raise InputError(f"steps must be at least 1, got {steps}")
        if true_cfg_scale < 1:
            raise InputError(f"true_cfg_scale must be at least 1 (1 = no guidance), got {true_cfg_scale}")
        if true_cfg_scale == 1:
            negative_prompt_embeds = negative_pooled_prompt_embeds = None
        elif negative_prompt_embeds is None or negative_pooled_prompt_embeds is None:
            raise InputError("true_cfg_scale > 1 needs negative prompt embeddings (e.g. of UNCONDITIONAL_PROMPT)")
        elif negative_prompt_embeds.shape[0] != batch or negative_pooled_prompt_embeds.shape[0] != batch:
            raise InputError("negative prompt embeddings must have one row per canvas")
        width, height = canvases[0].size
        if any(c.size != (width, height) for c in canvases):
            raise InputError("all canvases in one batch must have the same size")
        dtype = prompt_embeds.dtype
        lc, s = self.latent_channels, self.vae_scale
        lat_h, lat_w = 2 * (height // (s * 2)), 2 * (width // (s * 2))

        init = pipe.image_processor.preprocess(list(canvases), height=height, width=width).to(torch.float32)
        generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
        vae_dtype = pipe.vae.dtype
        noise = []
        for gen in generators:
            # Replay the draw of the pipeline's sampled encode of the canvas (multiplied by zero at strength 1).
            randn_tensor((1, lc, lat_h, lat_w), generator=gen, device=torch.device("cpu"), dtype=vae_dtype)
            noise.append(randn_tensor((1, lc, lat_h, lat_w), generator=gen, device=device, dtype=dtype))
        latents = pipe._pack_latents(torch.cat(noise), batch, lc, lat_h, lat_w)

        fill = pipe.mask_processor.preprocess(list(fill_masks), height=height, width=width)
        masked = masked_canvas(init, fill, self.masked_content).to(device=device, dtype=dtype)
        mask, masked_latents = pipe.prepare_mask_latents(
            fill, masked, batch, lc, 1, height, width, dtype, device, generators
        )
        condition = torch.cat((masked_latents, mask), dim=-1)

        keep_latents = keep_mask = None
        if keep_masks is not None and any(k is not None for k in keep_masks):
            keep_latents, keep_mask = self._keep_tensors(init, keep_masks, lat_h, lat_w, dtype, device)

        sigmas, timesteps = self.schedule(steps, height, width, device)
        guidance_values = [guidance] * batch if isinstance(guidance, int | float) else list(guidance)
        return FillState(
            latents=latents,
            condition=condition,
            prompt_embeds=prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            guidance=torch.tensor(guidance_values, dtype=torch.float32, device=device),
            sigmas=sigmas,
            timesteps=timesteps,
            noise=latents.clone(),
            height=height,
            width=width,
            keep_latents=keep_latents,
            keep_mask=keep_mask,
            true_cfg_scale=float(true_cfg_scale),
            negative_prompt_embeds=negative_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            seeds=(
                torch.tensor([int(seed) for seed in seeds], dtype=torch.int64)
                if pipe.scheduler.config.get("stochastic_sampling", False)
                else None
            ),
        )

    def schedule(self, steps: int, height: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The pipeline's sigmas (with the resolution-dependent shift) and timesteps for `steps` steps."""
        scheduler = copy.deepcopy(self.pipe.scheduler)
        seq_len = (height // self.vae_scale // 2) * (width // self.vae_scale // 2)
        cfg = scheduler.config
        mu = calculate_shift(
            seq_len,
            cfg.get("base_image_seq_len", 256),
            cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5),
            cfg.get("max_shift", 1.15),
        )
        sigmas = np.linspace(1.0, 1 / steps, steps)
        timesteps, _ = retrieve_timesteps(scheduler, steps, device, sigmas=sigmas, mu=mu)
        return scheduler.sigmas.clone(), timesteps

    @torch.no_grad()
    def clean_latents(self, canvases: Sequence[Image.Image]) -> torch.Tensor:
        """The packed clean latents (B, tokens, 4 lc) of same-sized canvases: the VAE posterior's mode, shifted and
        scaled as the pipeline does, so that nothing is drawn from any seed's generator."""
        width, height = canvases[0].size
        init = self.pipe.image_processor.preprocess(list(canvases), height=height, width=width)
        s = self.vae_scale
        return self._clean_packed(init, 2 * (height // (s * 2)), 2 * (width // (s * 2)), self.pipe.vae.dtype)

    def _clean_packed(self, init: torch.Tensor, lat_h: int, lat_w: int, dtype: torch.dtype) -> torch.Tensor:
        vae = self.pipe.vae
        clean = vae.encode(init.to(device=self.pipe._execution_device, dtype=vae.dtype)).latent_dist.mode()
        clean = ((clean - vae.config.shift_factor) * vae.config.scaling_factor).to(dtype)
        return self.pipe._pack_latents(clean, clean.shape[0], self.latent_channels, lat_h, lat_w)

    def _keep_tensors(self, init, keep_masks, lat_h, lat_w, dtype, device):
        lc = self.latent_channels
        # The clean latents of the canvas (its right panel holds the source), drawing nothing from the seeds.
        clean = self._clean_packed(init, lat_h, lat_w, dtype).to(device)
        grids = [np.zeros((lat_h, lat_w), np.float32) if k is None else np.asarray(k, np.float32) for k in keep_masks]
        if any(g.shape != (lat_h, lat_w) for g in grids):
            raise InputError(f"keep masks must be ({lat_h}, {lat_w}) latent grids")
        grid = torch.from_numpy(np.stack(grids))[:, None].expand(-1, lc, -1, -1).to(device=device, dtype=dtype)
        batch = len(keep_masks)
        return clean, self.pipe._pack_latents(grid.contiguous(), batch, lc, lat_h, lat_w)

    # ---------------------------------------------------------------- sampling
    @torch.no_grad()
    def step(self, state: FillState) -> FillState:
        """One Euler step of the flow, exactly as the pipeline and FlowMatchEulerDiscreteScheduler do it."""
        if state.done:
            raise InputError(f"sampling already finished ({state.num_steps} steps)")
        pipe, i = self.pipe, state.step
        latents = state.latents
        s = self.vae_scale
        lat_h, lat_w = 2 * (state.height // (s * 2)), 2 * (state.width // (s * 2))
        image_ids = pipe._prepare_latent_image_ids(None, lat_h // 2, lat_w // 2, latents.device, latents.dtype)
        t = state.timesteps[i]
        timestep = t.expand(latents.shape[0]).to(latents.dtype)
        guidance = state.guidance if pipe.transformer.config.guidance_embeds else None
        self._timestep = float(t)
        cached = self._prepare_cache(state)

        def velocity_for(embeds: torch.Tensor, pooled: torch.Tensor, context: str) -> torch.Tensor:
            text_ids = torch.zeros(embeds.shape[1], 3, device=latents.device, dtype=latents.dtype)
            with pipe.transformer.cache_context(context) if cached else contextlib.nullcontext():
                return pipe.transformer(
                    hidden_states=torch.cat((latents, state.condition), dim=2),
                    timestep=timestep / 1000,
                    guidance=guidance,
                    pooled_projections=pooled,
                    encoder_hidden_states=embeds,
                    txt_ids=text_ids,
                    img_ids=image_ids,
                    return_dict=False,
                )[0]

        velocity = velocity_for(state.prompt_embeds, state.pooled_prompt_embeds, "cond")
        if state.negative_prompt_embeds is not None:
            negative = velocity_for(state.negative_prompt_embeds, state.negative_pooled_prompt_embeds, "uncond")
            velocity = negative + state.true_cfg_scale * (velocity - negative)
        sigma, sigma_next = state.sigmas[i], state.sigmas[i + 1]
        x0 = latents - sigma.to(latents.device, latents.dtype) * velocity
        if state.seeds is not None and sigma_next > 0:
            fresh = step_noise(state.seeds, i, latents.shape[1:]).to(latents.device)
            new_latents = ((1 - sigma_next) * x0.to(torch.float32) + sigma_next * fresh).to(velocity.dtype)
        else:
            new_latents = (latents.to(torch.float32) + (sigma_next - sigma) * velocity).to(velocity.dtype)
        if state.keep_mask is not None:
            level = sigma_next.to(new_latents.device, new_latents.dtype)
            kept = (1 - level) * state.keep_latents + level * state.noise
            new_latents = state.keep_mask * kept + (1 - state.keep_mask) * new_latents
        new_state = replace(state, latents=new_latents, step=i + 1, x0=x0)
        if self._cache is not None:  # only a cache needs to know which state comes next (no reference kept otherwise)
            self._last_state = new_state
        return new_state

    def run(self, state: FillState, *, until: int | None = None, callback: StepCallback | None = None) -> FillState:
        """Run steps until step index `until` (default: the end). `callback(step, total)` after each."""
        stop = state.num_steps if until is None else min(until, state.num_steps)
        while state.step < stop:
            state = self.step(state)
            if callback is not None:
                callback(state.step, state.num_steps)
        return state

    # ---------------------------------------------------------------- decoding
    @torch.no_grad()
    def decode(self, latents: torch.Tensor, height: int, width: int) -> list[Image.Image]:
        """Packed latents -> canvas images, as the pipeline's post-processing."""
        pipe = self.pipe
        unpacked = pipe._unpack_latents(latents, height, width, self.vae_scale)
        unpacked = unpacked / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        images = pipe.vae.decode(unpacked.to(pipe.vae.dtype), return_dict=False)[0]
        return pipe.image_processor.postprocess(images, output_type="pil")

    def decode_state(self, state: FillState) -> list[Image.Image]:
        """The current canvases: final images when done, else the x0 previews of the last step."""
        if state.done:
            return self.decode(state.latents, state.height, state.width)
        if state.x0 is None:
            raise InputError("no preview yet: run at least one step first")
        return self.decode(state.x0, state.height, state.width)
