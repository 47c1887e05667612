"""The training objective packs inputs exactly as sampling does and computes the official flow-matching loss."""

from __future__ import annotations

import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from diptych.canvas import PanelSize, compose_diptych
from diptych.encoders import FluxPromptEncoder
from diptych.sampler import FillSampler
from diptych.testing import build_tiny_fill_pipeline, random_image
from diptych.train.objective import FlowMatchingObjective
from diptych.train.stream import training_diptych

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_fill_pipeline(seed=3)


@pytest.fixture(scope="module")
def embeds(pipe):
    return FluxPromptEncoder(pipe, max_sequence_length=32).encode(["make it red", "make it blue"])


def gens(*seeds):
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def test_condition_is_the_samplers_and_x0_is_a_posterior_sample(pipe, embeds):
    canvas, mask = compose_diptych(random_image(16, 12, seed=1))
    state = FillSampler(pipe).prepare([canvas], [mask], embeds[0][:1], embeds[1][:1], seeds=[5], steps=2, guidance=1.0)
    # The sampler draws (1) a replayed canvas encode, (2) the noise, (3) the masked-canvas encode.
    # Advance past (1): the objective's x0 draw is then (2) and its masked draw (3), as in the sampler.
    (gen,) = gens(5)
    randn_tensor((1, 4, 6, 16), generator=gen)
    objective = FlowMatchingObjective(pipe)
    encoded = objective.encode([canvas], [mask], [gen], device=CPU, dtype=torch.float32)
    assert torch.equal(encoded.condition, state.condition)
    assert (encoded.latent_height, encoded.latent_width) == (6, 16)

    init = pipe.image_processor.preprocess([canvas], height=12, width=32)
    posterior = pipe.vae.encode(init).latent_dist
    noise = pipe._unpack_latents(state.noise, 12, 32, pipe.vae_scale_factor)
    expected = (posterior.mean + posterior.std * noise - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    assert torch.allclose(encoded.x0, pipe._pack_latents(expected, 1, 4, 6, 16), atol=1e-5)
    # masked tokens: exactly the right half of every latent row
    share = encoded.mask_tokens.view(3, 8)
    assert (share[:, :4] == 0).all() and (share[:, 4:] == 1).all()


def test_with_the_source_under_the_mask_training_conditions_as_sampling_does(pipe, embeds):
    """`masked_content="source"`: the training canvas holds the target on the right, yet its condition is the
    sampler's on the inference canvas (the source in both panels) — the target never shows."""
    source, target = random_image(16, 12, seed=1), random_image(16, 12, seed=2)
    canvas, mask = compose_diptych(source)
    sampler = FillSampler(pipe, masked_content="source")
    state = sampler.prepare([canvas], [mask], embeds[0][:1], embeds[1][:1], seeds=[5], steps=2, guidance=1.0)
    (gen,) = gens(5)
    randn_tensor((1, 4, 6, 16), generator=gen)
    trained, _ = training_diptych(source, target, PanelSize(16, 12))
    objective = FlowMatchingObjective(pipe, masked_content="source")
    encoded = objective.encode([trained], [mask], [gen], device=CPU, dtype=torch.float32)
    assert torch.allclose(encoded.condition, state.condition, atol=1e-6)
    zeroed = FillSampler(pipe).prepare([canvas], [mask], embeds[0][:1], embeds[1][:1], seeds=[5], steps=2, guidance=1.0)
    assert not torch.allclose(zeroed.condition, state.condition, atol=1e-3)


class Oracle(torch.nn.Module):
    """Returns the true velocity (x_t - x0) / t on the tokens where `where` is True, zeros elsewhere."""

    def __init__(self, x0, where):
        super().__init__()
        self.x0, self.where, self.calls = x0, where, []

    def forward(self, *, hidden_states, timestep, guidance, pooled_projections, encoder_hidden_states, **kw):
        self.calls.append({"timestep": timestep, "guidance": guidance, "hidden": hidden_states})
        x_t = hidden_states[..., : self.x0.shape[-1]]
        v = (x_t - self.x0) / timestep.view(-1, 1, 1)
        return (v * self.where[..., None],)


def test_flow_matching_loss_draws_t_and_noise_per_sample_and_weights_regions(pipe, embeds):
    source, target = random_image(16, 16, seed=1), random_image(16, 16, seed=2)
    canvas, mask = training_diptych(source, target, PanelSize(16, 16))
    objective = FlowMatchingObjective(pipe)
    encoded = objective.encode([canvas, canvas], [mask, mask], gens(1, 2), device=CPU, dtype=torch.float32)
    everywhere = torch.ones(encoded.x0.shape[:2], dtype=torch.bool)
    oracle = Oracle(encoded.x0, everywhere)
    draw_gens = gens(11, 12)
    loss = objective.loss(oracle, encoded, *embeds, draw_gens, guidance_embeds=True)
    assert loss.item() < 1e-8
    call = oracle.calls[0]
    replay = gens(11, 12)
    expected_t = torch.stack([torch.sigmoid(torch.randn((), generator=g)) for g in replay])
    assert torch.equal(call["timestep"], expected_t)
    assert torch.equal(call["guidance"], torch.ones(2))
    assert call["hidden"].shape[-1] == pipe.transformer.config.in_channels
    assert torch.equal(call["hidden"][..., encoded.x0.shape[-1] :], encoded.condition)
    assert objective.loss(oracle, encoded, *embeds, gens(11, 12), guidance_embeds=False) < 1e-8
    assert oracle.calls[-1]["guidance"] is None

    right = encoded.mask_tokens > 0.5
    half = Oracle(encoded.x0, right)
    all_tokens = objective.loss(half, encoded, *embeds, gens(11, 12), guidance_embeds=True)
    right_only = FlowMatchingObjective(pipe, loss_region="right").loss(
        half, encoded, *embeds, gens(11, 12), guidance_embeds=True
    )
    assert right_only.item() < 1e-8 < all_tokens.item()
    # with a zero prediction, the loss is the mean square of the target velocity (noise - x0)
    zero = Oracle(encoded.x0, torch.zeros_like(right))
    _t, noise = FlowMatchingObjective.draw(gens(11, 12), encoded.x0.shape[1:])
    expected = (noise - encoded.x0).pow(2).mean()
    assert torch.allclose(objective.loss(zero, encoded, *embeds, gens(11, 12), guidance_embeds=True), expected)


def test_velocity_error_is_per_token_at_given_times(pipe, embeds):
    canvas, mask = training_diptych(random_image(16, 16, seed=1), random_image(16, 16, seed=2), PanelSize(16, 16))
    objective = FlowMatchingObjective(pipe)
    encoded = objective.encode([canvas, canvas], [mask, mask], gens(1, 2), device=CPU, dtype=torch.float32)
    right = encoded.mask_tokens > 0.5
    oracle = Oracle(encoded.x0, right)  # exact on the right panel, zero on the left
    t = torch.tensor([0.25, 0.75])
    noise = torch.randn(encoded.x0.shape, generator=torch.Generator().manual_seed(7))
    error = objective.velocity_error(oracle, encoded, *embeds, t, noise, guidance_embeds=False)
    assert error.shape == encoded.x0.shape[:2]
    assert torch.equal(oracle.calls[0]["timestep"], t)
    assert error[right].max() < 1e-8
    assert torch.allclose(error[~right], (noise - encoded.x0).pow(2).mean(-1)[~right])


def test_a_samples_loss_does_not_depend_on_its_batch(pipe, embeds):
    canvases = [
        training_diptych(random_image(16, 16, seed=s), random_image(16, 16, seed=s + 9), PanelSize(16, 16))
        for s in (1, 2)
    ]
    objective = FlowMatchingObjective(pipe)
    transformer = pipe.transformer

    def loss(indices):
        encoded = objective.encode(
            [canvases[i][0] for i in indices],
            [canvases[i][1] for i in indices],
            gens(*[30 + i for i in indices]),
            device=CPU,
            dtype=torch.float32,
        )
        e, p = embeds[0][indices], embeds[1][indices]
        with torch.no_grad():
            return objective.loss(transformer, encoded, e, p, gens(*[40 + i for i in indices]), guidance_embeds=True)

    both = loss([0, 1])
    assert torch.allclose(both, (loss([0]) + loss([1])) / 2, rtol=1e-5)


def test_bad_sizes_and_options_are_refused(pipe):
    with pytest.raises(ValueError, match="loss_region"):
        FlowMatchingObjective(pipe, loss_region="left")
    objective = FlowMatchingObjective(pipe)
    assert objective.pixel_multiple == 4
    canvas, mask = compose_diptych(random_image(10, 8))
    with pytest.raises(ValueError, match="multiples of 4"):
        objective.encode([canvas], [mask], gens(1), device=CPU, dtype=torch.float32)
