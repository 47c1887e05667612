"""Classifier-free guidance on the prompt (`true_cfg_scale`): the guided velocity, its state, and its plumbing."""

import numpy as np
import pytest
import torch

from diptych import canvas as cv
from diptych.editor import EditRequest
from diptych.encoders import FluxPromptEncoder
from diptych.errors import InputError
from diptych.prompts import UNCONDITIONAL_PROMPT
from diptych.sampler import FillSampler, FillState
from diptych.scaling.early_filter import edit_with_early_filter
from diptych.scaling.judges import CallableJudge
from diptych.testing import build_tiny_fill_pipeline, random_image

PROMPT = "A diptych with two side-by-side images of the same scene. On the right, ... but make it blue"
SOURCE = random_image(64, 48, seed=5)


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_fill_pipeline(dtype=torch.float32)


def _prepare(pipe, prompt, negative=None, scale=1.0, steps=4):
    canvas, mask = cv.compose_diptych(random_image(32, 32, seed=1))
    encoder = FluxPromptEncoder(pipe)
    embeds, pooled = encoder.encode([prompt])
    extra = {}
    if negative is not None:
        neg_embeds, neg_pooled = encoder.encode([negative])
        extra = dict(negative_prompt_embeds=neg_embeds, negative_pooled_prompt_embeds=neg_pooled)
    sampler = FillSampler(pipe)
    state = sampler.prepare(
        [canvas], [mask], embeds, pooled, seeds=[3], steps=steps, guidance=50.0, true_cfg_scale=scale, **extra
    )
    return sampler, state


def test_guided_step_extrapolates_from_the_negative_prompt(pipe):
    # The Euler update is linear in the velocity, so one guided step lands at neg + s * (cond - neg).
    sampler, guided = _prepare(pipe, PROMPT, negative="a cat", scale=3.0)
    cond = sampler.step(_prepare(pipe, PROMPT)[1]).latents
    neg = sampler.step(_prepare(pipe, "a cat")[1]).latents
    after = sampler.step(guided).latents
    assert torch.allclose(after, neg + 3.0 * (cond - neg), atol=1e-4)
    assert not torch.allclose(after, cond, atol=1e-3)


def test_scale_one_drops_the_negative_and_equals_unguided(pipe):
    sampler, state = _prepare(pipe, PROMPT, negative="a cat", scale=1.0)
    assert state.negative_prompt_embeds is None
    assert torch.equal(sampler.run(state).latents, sampler.run(_prepare(pipe, PROMPT)[1]).latents)


def test_guided_state_saves_and_resumes_exactly(pipe, tmp_path):
    sampler, state = _prepare(pipe, PROMPT, negative=" ", scale=2.5)
    full = sampler.run(state)
    sampler.run(state, until=2).save(tmp_path / "state.safetensors")
    loaded = FillState.load(tmp_path / "state.safetensors")
    assert loaded.true_cfg_scale == 2.5 and loaded.negative_prompt_embeds is not None
    assert torch.equal(sampler.run(loaded).latents, full.latents)
    assert loaded.select([0]).negative_pooled_prompt_embeds.shape[0] == 1


def test_bad_scales_and_missing_negatives_are_refused(pipe):
    with pytest.raises(InputError, match="at least 1"):
        _prepare(pipe, PROMPT, negative=" ", scale=0.5)
    with pytest.raises(InputError, match="needs negative prompt embeddings"):
        _prepare(pipe, PROMPT, scale=2.0)


def test_editor_guides_against_the_unconditional_training_prompt(tiny_editor):
    item = tiny_editor.prepare(EditRequest(SOURCE, "make it blue"))
    state = tiny_editor.start([item], steps=3, guidance=50.0, true_cfg_scale=2.0)
    expected, _ = tiny_editor.encoder.encode([UNCONDITIONAL_PROMPT])
    assert torch.equal(state.negative_prompt_embeds, expected)
    plain = np.asarray(tiny_editor.edit(SOURCE, "make it blue", steps=3))
    assert np.array_equal(np.asarray(tiny_editor.edit(SOURCE, "make it blue", steps=3, true_cfg_scale=1.0)), plain)
    assert not np.array_equal(np.asarray(tiny_editor.edit(SOURCE, "make it blue", steps=3, true_cfg_scale=4.0)), plain)


def test_early_filter_counts_both_passes(tiny_editor):
    result = edit_with_early_filter(
        tiny_editor,
        EditRequest(SOURCE, "make it blue", seed=0),
        judge=CallableJudge(lambda source, candidate, instruction: float(np.asarray(candidate).mean())),
        candidates=2,
        early_steps=1,
        steps=3,
        true_cfg_scale=2.0,
    )
    assert result.nfe == 2 * (2 * 1 + 2) and result.restart_nfe == 2 * (2 * 1 + 3)
    plain = tiny_editor.edit(SOURCE, "make it blue", seed=result.seed, steps=3, true_cfg_scale=2.0)
    assert np.abs(np.asarray(result.image, np.int16) - np.asarray(plain, np.int16)).max() <= 1


def test_bench_variant_suffix_sets_the_scale():
    from diptych.shapes.bench import variant_options

    assert variant_options("moe+cfg3") == {"adapter": "moe", "true_cfg_scale": 3.0}
    assert variant_options("moe+locate+cfg1.5") == {"adapter": "moe", "mask": "auto", "true_cfg_scale": 1.5}


def test_cli_flag_reaches_the_editor(tiny_base, tiny_editor, tmp_path):
    from PIL import Image

    from diptych.cli import main

    SOURCE.save(tmp_path / "in.png")
    argv = ["edit", str(tmp_path / "in.png"), "make it blue", "--base", tiny_base, "--width", "32", "--steps", "3"]
    code = main([*argv, "-o", str(tmp_path / "out.png"), "--device", "cpu", "-q", "--true-cfg-scale", "3"])
    assert code == 0
    expected = tiny_editor.edit(SOURCE, "make it blue", steps=3, true_cfg_scale=3.0)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), np.asarray(expected))
