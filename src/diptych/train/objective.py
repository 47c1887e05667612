"""The ICEdit training objective: flow matching on FLUX.1 Fill, with the diptych as the image.

For a canvas x (source left, target right) and its right-half mask, as the official recipe:
- x0 = VAE latents of the canvas (a posterior sample, shifted and scaled, packed 2x2);
- the condition = the latents of the masked canvas (right half zeroed) and the packed pixel mask,
  built with the pipeline's own `prepare_mask_latents`, exactly as sampling builds it;
- t = sigmoid(n), n ~ N(0, 1) per sample (optionally shifted toward noise, `timestep_shift`, as SD3 and
  FLUX shift their sampling schedules: t -> s t / (1 + (s - 1) t)); x_t = (1 - t) x0 + t noise; target
  velocity = noise - x0;
- the transformer sees cat(x_t, condition) with timestep t (in [0, 1], as the sampler passes
  timestep / 1000) and guidance 1.0 if it has a guidance embedding;
- loss = MSE over all tokens (`loss_region="all"`, official) or over the masked (right) half only;
  `loss_weighting="edit"` weights each token by 1 + (edit_weight - 1) x the share of its pixels that the
  edit changes (the sample's edit mask, placed on the target panel), so that the few tokens an edit
  changes are not drowned by the many it copies (a recolor changes ~7% of the canvas's tokens);
- `pixel_loss_weight` > 0 adds, with that weight, the mean absolute error in pixels between the decoded
  x0 prediction (x_t - t v) and the decoded clean latents over the edit's pixels of the target panel: the
  flow loss counts every latent value alike, while an edit is judged on the pixels it draws — the
  outline of a small object is a few latent values the decoder turns into many pixels. The frozen VAE
  decoder runs forward and backward on the target panel only (the right half of the canvas).

Every random draw of a sample (VAE posteriors, t, noise) comes from that sample's own generator, so
a sample's loss does not depend on which batch or process it lands in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import FluxFillPipeline
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from PIL import Image

from ..sampler import masked_canvas
from .cache import LatentCache

LOSS_REGIONS: tuple[str, ...] = ("all", "right")
LOSS_WEIGHTINGS: tuple[str, ...] = ("none", "edit")


@dataclass
class EncodedBatch:
    """Packed tensors of a batch: clean latents, the Fill condition, and the latent grid size."""

    x0: torch.Tensor  # (B, tokens, 4 * lc)
    condition: torch.Tensor  # (B, tokens, 4 * lc + 4 * s * s): masked-canvas latents, packed mask
    mask_tokens: torch.Tensor  # (B, tokens): share of each token's pixels that are masked (to generate)
    latent_height: int
    latent_width: int
    edit_tokens: torch.Tensor | None = None  # (B, tokens): share of each token's pixels the edit changes
    edit_pixels: torch.Tensor | None = None  # (B, 1, H, W) in [0, 1]: the edit masks on the canvas


class FlowMatchingObjective:
    """Computes the training loss of a Fill transformer on diptych canvases (see the module docstring)."""

    def __init__(
        self,
        pipe: FluxFillPipeline,
        *,
        loss_region: str = "all",
        guidance: float = 1.0,
        loss_weighting: str = "none",
        edit_weight: float = 10.0,
        timestep_shift: float = 1.0,
        masked_content: str = "zero",
        pixel_loss_weight: float = 0.0,
    ):
        if loss_region not in LOSS_REGIONS:
            raise ValueError(f"loss_region must be one of {', '.join(LOSS_REGIONS)}, got {loss_region!r}")
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {', '.join(LOSS_WEIGHTINGS)}, got {loss_weighting!r}")
        if not edit_weight >= 1 or not timestep_shift > 0:
            raise ValueError(f"edit_weight must be >= 1 and timestep_shift > 0, got {edit_weight}, {timestep_shift}")
        if not pixel_loss_weight >= 0:
            raise ValueError(f"pixel_loss_weight must be >= 0, got {pixel_loss_weight}")
        self.pipe = pipe
        self.loss_region = loss_region
        self.guidance = guidance
        self.loss_weighting = loss_weighting
        self.edit_weight = edit_weight
        self.timestep_shift = timestep_shift
        self.masked_content = masked_content  # what the condition shows under the mask (sampler.masked_canvas)
        self.pixel_loss_weight = pixel_loss_weight

    @property
    def pixel_multiple(self) -> int:
        """Panel sides must be multiples of this (VAE scale x 2x2 packing: 16 for FLUX)."""
        return 2 * self.pipe.vae_scale_factor

    @torch.no_grad()
    def encode(
        self,
        canvases: Sequence[Image.Image],
        fill_masks: Sequence[Image.Image],
        generators: Sequence[torch.Generator],
        *,
        device: torch.device,
        dtype: torch.dtype,
        cache: LatentCache | None = None,
        edit_masks: Sequence[Image.Image] | None = None,
    ) -> EncodedBatch:
        """VAE-encode canvases and masked canvases, sample their posteriors and pack them as the Fill
        pipeline does. With a `cache`, posteriors already there are read instead of encoded (the draws
        from them are the same either way). `edit_masks` (canvas-sized, white = changed by the edit) give
        `edit_tokens`, which `loss_weighting="edit"` needs."""
        pipe = self.pipe
        width, height = canvases[0].size
        if any(c.size != (width, height) for c in canvases):
            raise ValueError("all canvases of a batch must have the same size")
        m = self.pixel_multiple
        if width % (2 * m) or height % m:
            raise ValueError(f"canvas {width}x{height}: panels must be multiples of {m} pixels")
        batch, lc = len(canvases), pipe.vae.config.latent_channels
        lat_h, lat_w = 2 * (height // m), 2 * (width // m)
        gens = list(generators)
        vae = pipe.vae
        fill = pipe.mask_processor.preprocess(list(fill_masks), height=height, width=width).to(device)

        keys = cache.keys(canvases, fill_masks, self.masked_content) if cache is not None else [None] * batch
        found = [cache.get(k) if cache is not None else None for k in keys]
        todo = [i for i, hit in enumerate(found) if hit is None]
        if todo:
            canvas_params, masked_params = self.posteriors([canvases[i] for i in todo], fill[todo], device=device)
            for j, i in enumerate(todo):
                found[i] = (canvas_params[j], masked_params[j])
                if cache is not None:
                    cache.put(keys[i], canvas_params[j], masked_params[j])
        # Cache hits come back on the CPU, fresh encodings on `device`: each is moved before they are stacked.
        canvas_dist = DiagonalGaussianDistribution(torch.stack([f[0].to(device, vae.dtype) for f in found]))
        masked_dist = DiagonalGaussianDistribution(torch.stack([f[1].to(device, vae.dtype) for f in found]))

        latents = canvas_dist.sample(generator=gens)
        latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
        x0 = pipe._pack_latents(latents.to(dtype), batch, lc, lat_h, lat_w)
        # Given latents (lc channels) rather than pixels, the pipeline's own mask preparation skips its
        # encode and only shifts, scales and packs them, and packs the mask.
        mask, masked_latents = pipe.prepare_mask_latents(
            fill, masked_dist.sample(generator=gens), batch, lc, 1, height, width, dtype, device, gens
        )
        condition = torch.cat((masked_latents, mask), dim=-1)
        edit_tokens = edit_pixels = None
        if edit_masks is not None:
            edit_pixels = pipe.mask_processor.preprocess(list(edit_masks), height=height, width=width).to(device)
            edit_tokens = torch.nn.functional.avg_pool2d(edit_pixels.float(), m).flatten(1)  # tokens in packing order
        return EncodedBatch(x0, condition, mask.float().mean(-1), lat_h, lat_w, edit_tokens, edit_pixels)

    @torch.no_grad()
    def posteriors(
        self, canvases: Sequence[Image.Image], fill: torch.Tensor, *, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE posteriors' parameters (mean and log-variance, (B, 2 lc, h, w)) of the canvases and of the
        Fill condition's pixels (`fill`, preprocessed masks: the region zeroed, or the source shown)."""
        pipe, vae = self.pipe, self.pipe.vae
        width, height = canvases[0].size
        init = pipe.image_processor.preprocess(list(canvases), height=height, width=width)
        init = init.to(device=device, dtype=vae.dtype)
        masked = masked_canvas(init.float(), fill.to(device), self.masked_content).to(vae.dtype)
        return vae.encode(init).latent_dist.parameters, vae.encode(masked).latent_dist.parameters

    def loss(
        self,
        transformer: torch.nn.Module,
        encoded: EncodedBatch,
        prompt_embeds: torch.Tensor,
        pooled_prompt_embeds: torch.Tensor,
        generators: Sequence[torch.Generator],
        *,
        guidance_embeds: bool,
    ) -> torch.Tensor:
        """Mean flow-matching loss of the batch (a scalar with a gradient through the transformer), plus the
        pixel loss when `pixel_loss_weight` > 0."""
        t, noise = self.draw(generators, encoded.x0.shape[1:], shift=self.timestep_shift)
        velocity = self.velocity(
            transformer, encoded, prompt_embeds, pooled_prompt_embeds, t, noise, guidance_embeds=guidance_embeds
        )
        per_token = self.squared_error(velocity, encoded, noise)
        weights = self.token_weights(encoded).to(per_token.device)
        loss = (per_token * weights).sum() / weights.sum().clamp_min(1e-8)
        if self.pixel_loss_weight > 0:
            loss = loss + self.pixel_loss_weight * self.pixel_error(velocity, encoded, t, noise)
        return loss

    def pixel_error(
        self, velocity: torch.Tensor, encoded: EncodedBatch, t: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """Mean absolute error, over the edit's pixels of the target panel (the canvas's right half), between
        the decoded x0 prediction and the decoded clean latents (pixels in [-1, 1]; a scalar with a gradient
        through `velocity`)."""
        if encoded.edit_pixels is None:
            raise ValueError("pixel_loss_weight > 0 needs the batch's edit masks (encode(..., edit_masks=...))")
        x0 = encoded.x0.float()
        t_b = t.to(x0.device, torch.float32).view(-1, 1, 1)
        # x_t - t v with x_t = (1 - t) x0 + t noise: x0 less t times the velocity's error
        error_v = velocity.float() - (noise.to(x0.device, torch.float32) - x0)
        predicted = self.decode_target_panel(x0 - t_b * error_v, encoded)
        with torch.no_grad():
            target = self.decode_target_panel(x0, encoded)
        region = encoded.edit_pixels[..., encoded.edit_pixels.shape[-1] // 2 :].float()
        error = (predicted - target).abs().mean(1, keepdim=True) * region
        return error.sum() / region.sum().clamp_min(1.0)

    def decode_target_panel(self, packed: torch.Tensor, encoded: EncodedBatch) -> torch.Tensor:
        """Packed canvas latents -> the VAE decoder's pixels of their right half (B, 3, H, W / 2)."""
        pipe, vae = self.pipe, self.pipe.vae
        scale = pipe.vae_scale_factor
        latents = pipe._unpack_latents(packed, encoded.latent_height * scale, encoded.latent_width * scale, scale)
        latents = latents[..., latents.shape[-1] // 2 :] / vae.config.scaling_factor + vae.config.shift_factor
        return vae.decode(latents.to(vae.dtype), return_dict=False)[0].float()

    def token_weights(self, encoded: EncodedBatch) -> torch.Tensor:
        """(B, tokens) weights of the per-token errors in the loss (see the module docstring)."""
        weights = torch.ones_like(encoded.mask_tokens, dtype=torch.float32)
        if self.loss_region == "right":
            weights = encoded.mask_tokens.float()
        if self.loss_weighting == "edit":
            if encoded.edit_tokens is None:
                raise ValueError("loss_weighting='edit' needs the batch's edit masks (encode(..., edit_masks=...))")
            weights = weights * (1 + (self.edit_weight - 1) * encoded.edit_tokens.to(weights.device))
        return weights

    @staticmethod
    def squared_error(velocity: torch.Tensor, encoded: EncodedBatch, noise: torch.Tensor) -> torch.Tensor:
        """(B, tokens) squared error, in fp32, of a predicted velocity against noise - x0."""
        target = noise.to(velocity.device, torch.float32) - encoded.x0.float()
        return (velocity.float() - target).pow(2).mean(-1)

    def velocity(
        self,
        transformer: torch.nn.Module,
        encoded: EncodedBatch,
        prompt_embeds: torch.Tensor,
        pooled_prompt_embeds: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        *,
        guidance_embeds: bool,
    ) -> torch.Tensor:
        """The transformer's velocity (B, tokens, 4 lc) at times `t` (B,) with `noise` shaped like the clean
        latents."""
        x0 = encoded.x0
        batch, device, dtype = x0.shape[0], x0.device, x0.dtype
        t, noise = t.to(device=device, dtype=torch.float32), noise.to(device=device, dtype=torch.float32)
        t_b = t.view(batch, 1, 1)
        x_t = ((1 - t_b) * x0.float() + t_b * noise).to(dtype)
        image_ids = self.pipe._prepare_latent_image_ids(
            None, encoded.latent_height // 2, encoded.latent_width // 2, device, dtype
        )
        text_ids = torch.zeros(prompt_embeds.shape[1], 3, device=device, dtype=dtype)
        guidance = torch.full((batch,), self.guidance, device=device, dtype=torch.float32) if guidance_embeds else None
        return transformer(
            hidden_states=torch.cat((x_t, encoded.condition.to(dtype)), dim=2),
            timestep=t.to(dtype),
            guidance=guidance,
            pooled_projections=pooled_prompt_embeds.to(dtype),
            encoder_hidden_states=prompt_embeds.to(dtype),
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0]

    @staticmethod
    def draw(
        generators: Sequence[torch.Generator], shape: torch.Size, *, shift: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample, from its own generator (on the CPU, so every device draws the same numbers):
        t = sigmoid(n) with n ~ N(0, 1), shifted as t -> s t / (1 + (s - 1) t), then the noise of `shape`."""
        ts, noises = [], []
        for gen in generators:
            ts.append(torch.sigmoid(torch.randn((), generator=gen)))
            noises.append(torch.randn(tuple(shape), generator=gen))
        t = torch.stack(ts)
        if shift != 1.0:
            t = shift * t / (1 + (shift - 1) * t)
        return t, torch.stack(noises)
