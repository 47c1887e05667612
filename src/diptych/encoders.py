"""Prompt encoders: text -> the `prompt_embeds` / `pooled_prompt_embeds` a Flux transformer takes.

The diffusion side only sees the `PromptEncoder` protocol, so FLUX's CLIP + T5 and the small encoders of
the built-in models are interchangeable.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol, runtime_checkable

import torch
from diffusers import FluxFillPipeline


@runtime_checkable
class PromptEncoder(Protocol):
    """Encodes prompts into per-token embeddings (B, S, D) and pooled embeddings (B, P)."""

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]: ...


class FluxPromptEncoder:
    """CLIP (pooled) + T5 (tokens) through the pipeline's own `encode_prompt`.

    Each distinct prompt is encoded on its own and cached: a batch of edits then gets exactly the
    embeddings that single edits get, and repeated prompts (candidates, batches) cost nothing.
    """

    def __init__(self, pipe: FluxFillPipeline, *, max_sequence_length: int = 512, cache_size: int = 64):
        self.pipe = pipe
        self.max_sequence_length = max_sequence_length
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    @torch.no_grad()
    def _encode_one(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        if prompt in self._cache:
            self._cache.move_to_end(prompt)
            return self._cache[prompt]
        embeds, pooled, _ = self.pipe.encode_prompt(
            prompt=prompt,
            prompt_2=None,
            device=self.pipe._execution_device,
            num_images_per_prompt=1,
            max_sequence_length=self.max_sequence_length,
        )
        self._cache[prompt] = (embeds, pooled)
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return embeds, pooled

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self._encode_one(p) for p in prompts]
        return torch.cat([e for e, _ in pairs]), torch.cat([p for _, p in pairs])
