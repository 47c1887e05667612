"""Instruction augmentation at training time: synonym swaps and request frames around the dataset's phrasing, word
dropout, and noise on the prompt's token states.

An edit dataset phrases its instructions in a few fixed ways ("make the circle red", "remove the star"); users ask
"please make the circle red" or "can you remove the star?". An adapter that has only seen the dataset's phrasings
reads the exact token states of those phrasings, and a wording it never saw shifts every token's contextual state
(MiniLM and T5 are contextual encoders), so it can fail on a word it should ignore. Four generic remedies, all off by
default (`synonym_swap`, `request_frames`, `word_dropout`, `text_noise` in `TrainConfig`):

- `swap_synonyms`: the dataset's words swapped for synonyms from a thesaurus (`thesaurus.py`, read from WordNet;
  Wei & Zou 2019, "EDA"), so that each of its verbs is one of many words the adapter has seen in that place.
- `request_frame`: the instruction wrapped in a common English request form. The frames are generic, written
  without looking at any benchmark's held-out phrasings; "could you ..." is left out on purpose because the
  ShapesEdit held-out phrasings use it, so that benchmark still measures a wording never trained on.
- `drop_words`: each word of the instruction left out with a small probability (word dropout, Iyyer et al. 2015;
  Bowman et al. 2016), so that no single word — the dataset's verb, its filler — is needed to read the instruction,
  and the model leans on the words that carry the edit wherever they stand. It needs no list of synonyms, so it
  cannot leak a benchmark's held-out wording.
- `noisy_states`: Gaussian noise on the token states, scaled to their RMS (NEFTune, Jain et al. 2023, adds such
  noise to the input embeddings of instruction-tuned language models for the same reason).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

REQUEST_FRAMES = (
    "please {instruction}",
    "{instruction}, please",
    "can you {instruction}?",
    "would you {instruction}?",
    "I'd like you to {instruction}",
    "I want you to {instruction}",
    "kindly {instruction}",
    "go ahead and {instruction}",
    "{instruction} for me",
    "now {instruction}",
)


def request_frame(instruction: str, rng: np.random.Generator) -> str:
    """The instruction inside a request frame drawn by `rng` ("can you make the circle red?"). A leading capital
    is lowered unless the word is an acronym or "I", and a final full stop dropped, so the frame reads as one
    sentence."""
    text = instruction.strip().rstrip(".")
    first = text.split(" ", 1)[0]
    if first[:1].isupper() and first[1:].islower():
        text = text[0].lower() + text[1:]
    frame = REQUEST_FRAMES[int(rng.integers(len(REQUEST_FRAMES)))]
    return frame.replace("{instruction}", text)


def swap_synonyms(
    instruction: str, thesaurus: Mapping[str, Sequence[str]], probability: float, rng: np.random.Generator
) -> str:
    """`instruction` with each word the thesaurus lists swapped, with `probability`, for one of its synonyms drawn
    by `rng`. Words are matched lower-cased; a word the thesaurus does not list (the edit's colours and shapes, in
    a thesaurus built to leave them out) is never touched."""
    if probability <= 0:
        return instruction
    words = instruction.split()
    for i, word in enumerate(words):
        synonyms = thesaurus.get(word.lower())
        if synonyms and rng.random() < probability:
            words[i] = synonyms[int(rng.integers(len(synonyms)))]
    return " ".join(words)


def drop_words(instruction: str, probability: float, rng: np.random.Generator) -> str:
    """`instruction` with each (space-separated) word left out with `probability`, drawn by `rng`; at least one
    word stays (the one `rng` picks when every word was drawn out), so an instruction never becomes empty."""
    words = instruction.split()
    if probability <= 0 or not words:
        return instruction
    kept = rng.random(len(words)) >= probability
    if not kept.any():
        kept[int(rng.integers(len(words)))] = True
    return " ".join(word for word, keep in zip(words, kept, strict=True) if keep)


def noisy_states(embeds: torch.Tensor, scale: float, generators: list[torch.Generator]) -> torch.Tensor:
    """`embeds` (batch, tokens, dim) plus Gaussian noise of `scale` times each prompt's RMS state, one generator
    per prompt (so a resumed run draws the same noise)."""
    if scale <= 0:
        return embeds
    noise = torch.stack([torch.randn(embeds.shape[1:], generator=g) for g in generators])
    rms = embeds.float().pow(2).mean(dim=(1, 2), keepdim=True).sqrt()
    return embeds + (scale * rms * noise.to(embeds.device)).to(embeds.dtype)
