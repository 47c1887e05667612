"""Training a locator (`diptych train --objective locate`; the model is `diptych.locator`).

The canvas is the one the editor builds at inference — the source in both panels, the right half masked — so
the locator never sees the target. Labels: a token is in the region when at least `REGION_SHARE` of its pixels
are in the sample's edit mask (its own, or the dilated |target - source| for data without masks), the same
region marked in both panels. Every token of both panels counts in a binary cross-entropy, in-region tokens
weighted by `locate_positive_weight` (a recolor's region is ~7% of the tokens). The input is noised to
`LOCATE_TIMESTEP` with each sample's own noise, as the flow objective draws it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..adapters.lora import adapter_qk_norms
from ..locator import (
    LOCATE_TIMESTEP,
    LOCATOR_WEIGHT_NAME,
    REGION_SHARE,
    ReferentHead,
    referent_logits,
    save_locator_file,
)
from .adapters import lora_state_dict
from .objective import EncodedBatch, FlowMatchingObjective

#: Where the head hangs on the transformer while it trains (so checkpoints and resume carry it).
HEAD_ATTRIBUTE = "referent_head"


def attach_head(transformer: torch.nn.Module) -> ReferentHead:
    """A trainable fp32 `ReferentHead` as a submodule of `transformer` (its parameters then train, checkpoint and
    resume with the LoRA's)."""
    config = transformer.config
    head = ReferentHead(config.num_attention_heads * config.attention_head_dim).to(transformer.device)
    transformer.add_module(HEAD_ATTRIBUTE, head)
    return head


def region_labels(encoded: EncodedBatch) -> torch.Tensor:
    """(B, tokens) 0/1 labels: the edit mask's tokens (on the target panel) marked in both panels."""
    if encoded.edit_tokens is None:
        raise ValueError("the locator objective needs the batch's edit masks (encode(..., edit_masks=...))")
    rows, cols = encoded.latent_height // 2, encoded.latent_width // 2
    grid = encoded.edit_tokens.view(-1, rows, cols)
    right = grid[:, :, cols // 2 :]
    return (torch.cat((right, right), dim=2) >= REGION_SHARE).float().flatten(1)


class LocatorObjective(FlowMatchingObjective):
    """Binary cross-entropy of the referent head's per-token logits (see the module docstring). Encoding is the
    flow objective's (VAE posteriors, the Fill condition, the edit masks' tokens, the latent cache)."""

    def __init__(self, pipe, *, positive_weight: float = 4.0, timestep: float = LOCATE_TIMESTEP):
        super().__init__(pipe)
        self.positive_weight = positive_weight
        self.timestep = timestep

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
        x0 = encoded.x0
        noise = torch.stack([torch.randn(tuple(x0.shape[1:]), generator=g) for g in generators])
        x_t = ((1 - self.timestep) * x0.float() + self.timestep * noise.to(x0.device)).to(x0.dtype)
        head = getattr(getattr(transformer, "module", transformer), HEAD_ATTRIBUTE)
        logits = referent_logits(
            transformer,
            head,
            x_t,
            encoded.condition,
            prompt_embeds,
            pooled_prompt_embeds,
            latent_size=(encoded.latent_height, encoded.latent_width),
            timestep=self.timestep,
            guidance=self.guidance,
        )
        labels = region_labels(encoded).to(logits.device)
        weight = torch.tensor(self.positive_weight, device=logits.device)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels, pos_weight=weight)


def export_locator(transformer: torch.nn.Module, folder: Path) -> Path:
    """`locator.safetensors` in `folder`: the LoRA (alpha folded in) and trained q/k norm gains under diffusers
    keys, and the head; what `Editor.from_pretrained(..., locator=...)` and `diptych edit --locator` load."""
    folder.mkdir(parents=True, exist_ok=True)
    layers = lora_state_dict(transformer) | adapter_qk_norms(transformer)
    lora = {f"transformer.{k}": v for k, v in layers.items()}
    return save_locator_file(folder / LOCATOR_WEIGHT_NAME, lora, getattr(transformer, HEAD_ATTRIBUTE))
