"""Instruction augmentation: request frames around a dataset's phrasing, word dropout and noise on the prompt's token
states."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diptych.prompts import build_prompt
from diptych.train.config import ConfigError, TrainConfig
from diptych.train.paraphrase import REQUEST_FRAMES, drop_words, noisy_states, request_frame
from diptych.train.trainer import Trainer


def test_a_request_frame_keeps_the_instruction_whole_and_reads_as_one_sentence():
    rng = np.random.default_rng(0)
    framed = [request_frame("Make the circle red.", rng) for _ in range(200)]
    assert all("make the circle red" in f and "Make" not in f and not f.endswith("red.") for f in framed)
    assert {f.replace("make the circle red", "{instruction}") for f in framed} == set(REQUEST_FRAMES)
    # acronyms and "I" keep their capitals
    assert "RGB" in request_frame("RGB split the image", np.random.default_rng(1))
    assert all("I want a red circle" in request_frame("I want a red circle", rng) for _ in range(20))
    # the ShapesEdit held-out phrasings ask "could you ...": no frame may teach that wording
    assert not any("could" in frame for frame in REQUEST_FRAMES)


def test_word_dropout_drops_each_word_at_its_rate_keeps_the_order_and_never_empties():
    rng = np.random.default_rng(0)
    words = ["recolor", "the", "small", "red", "circle", "in", "the", "top", "left", "blue"]
    kept = [drop_words(" ".join(words), 0.25, rng).split() for _ in range(2000)]
    share_dropped = 1 - sum(map(len, kept)) / (len(words) * len(kept))
    assert share_dropped == pytest.approx(0.25, abs=0.02)
    for k in kept:  # what remains is the instruction's words in their order (a subsequence)
        it = iter(words)
        assert all(word in it for word in k)
    assert all(drop_words("remove the star", 0.9, rng) for _ in range(200))  # at least one word stays
    assert drop_words("remove the star", 0.0, rng) == "remove the star"


def test_noisy_states_adds_noise_of_the_asked_size_and_repeats_with_the_same_generators():
    embeds = torch.randn(3, 48, 64) * 4.0
    same = noisy_states(embeds, 0.0, [torch.Generator().manual_seed(i) for i in range(3)])
    assert same is embeds
    noisy = noisy_states(embeds, 0.25, [torch.Generator().manual_seed(i) for i in range(3)])
    ratio = (noisy - embeds).pow(2).mean().sqrt() / embeds.pow(2).mean().sqrt()
    assert ratio.item() == pytest.approx(0.25, rel=0.05)
    again = noisy_states(embeds, 0.25, [torch.Generator().manual_seed(i) for i in range(3)])
    assert torch.equal(noisy, again)
    assert not torch.equal(noisy[0] - embeds[0], noisy[1] - embeds[1])  # one draw per prompt


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"request_frames": 1.5}, "request_frames"),
        ({"text_noise": -1}, "text_noise"),
        ({"word_dropout": 1.0}, "word_dropout"),
    ],
)
def test_out_of_range_augmentation_is_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(base="b", data="d", output="o", **options)


def test_the_trainer_frames_instructions_and_noises_their_states(
    tiny_base, tmp_path, make_pairs, fast, read_metrics, first_batch_prompts
):
    data = make_pairs(tmp_path / "pairs", 3)
    _, plain = first_batch_prompts(tiny_base, data, tmp_path / "plain", fast)
    _, framed = first_batch_prompts(tiny_base, data, tmp_path / "framed", fast, request_frames=1.0)
    instructions = [p.removeprefix(build_prompt("")) for p in plain]
    assert all(build_prompt("") in f for f in framed)  # the template still wraps the framed instruction
    assert all(i in f and i != f.removeprefix(build_prompt("")) for i, f in zip(instructions, framed, strict=True))
    # word dropout leaves out words of the dataset's instruction, drawn from the samples' seeds
    _, dropped = first_batch_prompts(tiny_base, data, tmp_path / "dropped", fast, word_dropout=0.5)
    _, again = first_batch_prompts(tiny_base, data, tmp_path / "dropped-again", fast, word_dropout=0.5)
    assert dropped == again
    shorter = [d.removeprefix(build_prompt("")).split() for d in dropped]
    assert sum(map(len, shorter)) < sum(len(i.split()) for i in instructions)
    assert all(set(s) <= set(i.split()) and s for s, i in zip(shorter, instructions, strict=True))

    losses = {}
    for name, noise in (("quiet", 0.0), ("noisy", 1.0), ("noisy-again", 1.0)):
        cfg = TrainConfig(
            base=tiny_base,
            data=str(data),
            output=str(tmp_path / name),
            max_steps=1,
            batch_size=3,
            text_noise=noise,
            **fast,
        )
        Trainer(cfg, show_progress=False).train()
        losses[name] = read_metrics(tmp_path / name)[0]["loss"]
    assert losses["noisy"] == losses["noisy-again"]  # the noise is drawn from the samples' seeds
    assert losses["noisy"] != losses["quiet"]  # and it reaches the model (the tiny one hardly reads its text)
