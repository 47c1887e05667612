"""The sampler against diffusers' FluxFillPipeline: same pixels, and stop/resume without drift."""

import numpy as np
import pytest
import torch

from diptych import canvas as cv
from diptych.encoders import FluxPromptEncoder
from diptych.sampler import FillSampler, FillState
from diptych.testing import build_tiny_fill_pipeline, random_image

PROMPT = "A diptych with two side-by-side images of the same scene. On the right, ... but make it blue"


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def pipe(request):
    return build_tiny_fill_pipeline(dtype=request.param)


def _start(pipe, seeds=(42,), steps=6, image=None):
    canvas, mask = cv.compose_diptych(image or random_image(32, 32))
    embeds, pooled = FluxPromptEncoder(pipe).encode([PROMPT] * len(seeds))
    sampler = FillSampler(pipe)
    n = len(seeds)
    return sampler, sampler.prepare(
        [canvas] * n, [mask] * n, embeds, pooled, seeds=list(seeds), steps=steps, guidance=50.0
    )


def _pipeline_latents(pipe, seed=42, steps=6, image=None):
    canvas, mask = cv.compose_diptych(image or random_image(32, 32))
    return pipe(
        prompt=PROMPT,
        image=canvas,
        mask_image=mask,
        height=canvas.height,
        width=canvas.width,
        guidance_scale=50.0,
        num_inference_steps=steps,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="latent",
    ).images


def test_full_run_equals_pipeline_bit_for_bit(pipe):
    sampler, state = _start(pipe)
    final = sampler.run(state)
    assert torch.equal(final.latents, _pipeline_latents(pipe))


def test_other_seed_differs(pipe):
    sampler, state = _start(pipe, seeds=(43,))
    assert not torch.equal(sampler.run(state).latents, _pipeline_latents(pipe, seed=42))


def test_k_steps_save_load_resume_equals_uninterrupted(pipe, tmp_path):
    sampler, state = _start(pipe)
    full = sampler.run(state)
    partial = sampler.run(state, until=3)
    assert partial.step == 3 and not partial.done
    partial.save(tmp_path / "state.safetensors")
    resumed = sampler.run(FillState.load(tmp_path / "state.safetensors"))
    assert resumed.done and torch.equal(resumed.latents, full.latents)


def test_x0_preview_is_latents_minus_sigma_velocity(pipe):
    sampler, state = _start(pipe)
    after = sampler.step(state)
    # Recover the velocity from the Euler update, then check the preview formula against it.
    sigma, sigma_next = state.sigmas[0], state.sigmas[1]
    velocity = (after.latents.float() - state.latents.float()) / (sigma_next - sigma)
    expected = state.latents.float() - sigma * velocity
    tol = 1e-4 if pipe.dtype == torch.float32 else 0.1
    assert torch.allclose(after.x0.float(), expected, atol=tol)
    previews = sampler.decode_state(after)
    assert len(previews) == 1 and previews[0].size == (64, 32)


def test_select_slices_a_batch_to_one_candidate(pipe):
    sampler, state = _start(pipe, seeds=(1, 42, 3))
    early = sampler.run(state, until=2)
    winner = sampler.run(early.select([1]))
    assert winner.batch_size == 1
    reference = sampler.run(_start(pipe, seeds=(42,))[1])
    tol = 1e-5 if pipe.dtype == torch.float32 else 2e-2
    assert torch.allclose(winner.latents.float(), reference.latents.float(), atol=tol)


def test_load_refuses_foreign_safetensors(tmp_path):
    from safetensors.torch import save_file

    from diptych.errors import InputError

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(InputError, match="not a diptych sampling state"):
        FillState.load(tmp_path / "other.safetensors")


def test_keep_mask_pins_latents_to_source(pipe):
    image = random_image(32, 32, seed=3)
    canvas, mask = cv.compose_diptych(image)
    embeds, pooled = FluxPromptEncoder(pipe).encode([PROMPT])
    sampler = FillSampler(pipe)
    keep = np.zeros((16, 32), np.float32)
    keep[:, 16:] = 1.0  # keep the whole right panel
    state = sampler.prepare([canvas], [mask], embeds, pooled, seeds=[0], steps=4, guidance=50.0, keep_masks=[keep])
    final = sampler.run(state)
    kept = final.keep_mask.bool()
    assert kept.any()
    assert torch.equal(final.latents[kept], final.keep_latents[kept])


def _stochastic(pipe):
    """The same pipeline with its scheduler's stochastic_sampling flag on (a copy: the fixture stays as it is)."""
    import copy

    stochastic = copy.copy(pipe)
    stochastic.scheduler = copy.deepcopy(pipe.scheduler)
    stochastic.scheduler.register_to_config(stochastic_sampling=True)
    return stochastic


def test_stochastic_step_is_diffusers_stochastic_sampling(pipe):
    from diptych.sampler import step_noise

    stochastic = _stochastic(pipe)
    sampler, state = _start(stochastic, seeds=(42,))
    assert state.stochastic and state.seeds.tolist() == [42]
    after = sampler.step(state)
    sigma = state.sigmas[0]
    velocity = (state.latents.float() - after.x0.float()) / sigma
    scheduler = stochastic.scheduler
    scheduler.sigmas, scheduler.timesteps = state.sigmas.clone(), state.timesteps.clone()
    scheduler.set_begin_index(0)
    scheduler._step_index = None
    # diffusers draws its fresh noise from the generator it is given: the one step_noise seeds for (42, step 0)
    generator = torch.Generator("cpu").manual_seed(42 * 1_000_003 + 1)
    expected = scheduler.step(velocity, state.timesteps[0], state.latents.float(), generator=generator).prev_sample
    tol = 1e-5 if pipe.dtype == torch.float32 else 2e-2
    assert torch.allclose(after.latents.float(), expected.float(), atol=tol)
    assert torch.equal(
        step_noise(state.seeds, 0, state.latents.shape[1:])[0],
        torch.randn(state.latents.shape[1:], generator=torch.Generator("cpu").manual_seed(42 * 1_000_003 + 1)),
    )
    # not the Euler step of the flow
    euler = state.latents.float() + (state.sigmas[1] - sigma) * velocity
    assert not torch.allclose(after.latents.float(), euler, atol=1e-3)


def test_stochastic_run_resumes_exactly_and_does_not_depend_on_the_batch(pipe, tmp_path):
    stochastic = _stochastic(pipe)
    sampler, state = _start(stochastic, seeds=(42,))
    full = sampler.run(state)
    assert not torch.equal(full.latents, _pipeline_latents(pipe))  # the deterministic run differs
    partial = sampler.run(state, until=3)
    partial.save(tmp_path / "state.safetensors")
    loaded = FillState.load(tmp_path / "state.safetensors")
    assert loaded.stochastic and loaded.seeds.tolist() == [42]
    assert torch.equal(sampler.run(loaded).latents, full.latents)
    _, batch = _start(stochastic, seeds=(7, 42))
    in_batch = sampler.run(sampler.run(batch, until=2).select([1]))
    tol = 1e-5 if pipe.dtype == torch.float32 else 2e-2
    assert torch.allclose(in_batch.latents.float(), full.latents.float(), atol=tol)
