"""The ICEdit training objective: flow matching on FLUX.1 Fill, with the diptych as the image.

For a canvas x (source left, target right) and its right-half mask, as the official recipe:
- x0 = VAE latents of the canvas (a posterior sample, shifted and scaled, packed 2x2);
- the condition = the latents of the masked canvas (right half zeroed) and the packed pixel mask,
  built with the pipeline's own `prepare_mask_latents`, exactly as sampling builds it;
- t = sigmoid(n), n ~ N(0, 1) per sample; x_t = (1 - t) x0 + t noise; target velocity = noise - x0;
- the transformer sees cat(x_t, condition) with timestep t (in [0, 1], as the sampler passes
  timestep / 1000) and guidance 1.0 if it has a guidance embedding;
- loss = MSE over all tokens (`loss_region="all"`, official) or over the masked (right) half only.

Every random draw of a sample (VAE posteriors, t, noise) comes from that sample's own generator, so
a sample's loss does not depend on which batch or process it lands in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import FluxFillPipeline
from PIL import Image

LOSS_REGIONS: tuple[str, ...] = ("all", "right")


@dataclass
class EncodedBatch:
    """Packed tensors of a batch: clean latents, the Fill condition, and the latent grid size."""

    x0: torch.Tensor  # (B, tokens, 4 * lc)
    condition: torch.Tensor  # (B, tokens, 4 * lc + 4 * s * s): masked-canvas latents, packed mask
    mask_tokens: torch.Tensor  # (B, tokens): share of each token's pixels that are masked (to generate)
    latent_height: int
    latent_width: int


class FlowMatchingObjective:
    """Computes the training loss of a Fill transformer on diptych canvases (see the module docstring)."""

    def __init__(self, pipe: FluxFillPipeline, *, loss_region: str = "all", guidance: float = 1.0):
        if loss_region not in LOSS_REGIONS:
            raise ValueError(f"loss_region must be one of {', '.join(LOSS_REGIONS)}, got {loss_region!r}")
        self.pipe = pipe
        self.loss_region = loss_region
        self.guidance = guidance

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
    ) -> EncodedBatch:
        """VAE-encode canvases and masked canvases, and pack them as the Fill pipeline does."""
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
        init = pipe.image_processor.preprocess(list(canvases), height=height, width=width)
        init = init.to(device=device, dtype=vae.dtype)
        posterior = vae.encode(init).latent_dist
        latents = posterior.sample(generator=gens)
        latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
        x0 = pipe._pack_latents(latents.to(dtype), batch, lc, lat_h, lat_w)

        fill = pipe.mask_processor.preprocess(list(fill_masks), height=height, width=width)
        masked = (init.float() * (1 - fill.to(device))).to(vae.dtype)
        mask, masked_latents = pipe.prepare_mask_latents(
            fill.to(device), masked, batch, lc, 1, height, width, dtype, device, gens
        )
        condition = torch.cat((masked_latents, mask), dim=-1)
        return EncodedBatch(x0, condition, mask.float().mean(-1), lat_h, lat_w)

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
        """Mean flow-matching loss of the batch (a scalar with a gradient through the transformer)."""
        t, noise = self.draw(generators, encoded.x0.shape[1:])
        per_token = self.velocity_error(
            transformer, encoded, prompt_embeds, pooled_prompt_embeds, t, noise, guidance_embeds=guidance_embeds
        )
        if self.loss_region == "all":
            return per_token.mean()
        weights = encoded.mask_tokens.to(per_token.device)
        return (per_token * weights).sum() / weights.sum().clamp_min(1e-8)

    def velocity_error(
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
        """Squared error of the predicted velocity per token, (B, tokens) in fp32, at times `t` (B,) with
        `noise` shaped like the clean latents."""
        x0 = encoded.x0
        batch, device, dtype = x0.shape[0], x0.device, x0.dtype
        t, noise = t.to(device=device, dtype=torch.float32), noise.to(device=device, dtype=torch.float32)
        t_b = t.view(batch, 1, 1)
        x_t = ((1 - t_b) * x0.float() + t_b * noise).to(dtype)
        target = noise - x0.float()
        image_ids = self.pipe._prepare_latent_image_ids(
            None, encoded.latent_height // 2, encoded.latent_width // 2, device, dtype
        )
        text_ids = torch.zeros(prompt_embeds.shape[1], 3, device=device, dtype=dtype)
        guidance = torch.full((batch,), self.guidance, device=device, dtype=torch.float32) if guidance_embeds else None
        velocity = transformer(
            hidden_states=torch.cat((x_t, encoded.condition.to(dtype)), dim=2),
            timestep=t.to(dtype),
            guidance=guidance,
            pooled_projections=pooled_prompt_embeds.to(dtype),
            encoder_hidden_states=prompt_embeds.to(dtype),
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0]
        return (velocity.float() - target).pow(2).mean(-1)

    @staticmethod
    def draw(generators: Sequence[torch.Generator], shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample, from its own generator (on the CPU, so every device draws the same numbers):
        t = sigmoid(n) with n ~ N(0, 1), then the noise of `shape`."""
        ts, noises = [], []
        for gen in generators:
            ts.append(torch.sigmoid(torch.randn((), generator=gen)))
            noises.append(torch.randn(tuple(shape), generator=gen))
        return torch.stack(ts), torch.stack(noises)
