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


def test_the_velocity_and_its_error_are_per_token_at_given_times(pipe, embeds):
    canvas, mask = training_diptych(random_image(16, 16, seed=1), random_image(16, 16, seed=2), PanelSize(16, 16))
    objective = FlowMatchingObjective(pipe)
    encoded = objective.encode([canvas, canvas], [mask, mask], gens(1, 2), device=CPU, dtype=torch.float32)
    right = encoded.mask_tokens > 0.5
    oracle = Oracle(encoded.x0, right)  # exact on the right panel, zero on the left
    t = torch.tensor([0.25, 0.75])
    noise = torch.randn(encoded.x0.shape, generator=torch.Generator().manual_seed(7))
    velocity = objective.velocity(oracle, encoded, *embeds, t, noise, guidance_embeds=False)
    error = objective.squared_error(velocity, encoded, noise)
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


def _edit_mask(size, box):
    from PIL import Image

    edit = Image.new("L", size, 0)
    edit.paste(255, box)
    return edit


def test_pixel_loss_is_the_decoded_x0_predictions_error_over_the_edit(pipe, embeds):
    """`pixel_loss_weight`: zero for the true velocity; for a velocity off on the tokens of one panel, nonzero only
    when they are the target panel's; equal to the mean |decoded x0 prediction - decoded x0| over the edit's
    pixels of the target panel, computed by hand; and it trains the velocity through the decoder."""
    canvas, fill = training_diptych(random_image(16, 16, seed=1), random_image(16, 16, seed=2), PanelSize(16, 16))
    edit = _edit_mask(canvas.size, (20, 4, 28, 12))  # 8 x 8 pixels of the target panel
    objective = FlowMatchingObjective(pipe, loss_weighting="edit", pixel_loss_weight=2.0)
    encoded = objective.encode([canvas], [fill], gens(1), device=CPU, dtype=torch.float32, edit_masks=[edit])
    t, noise = FlowMatchingObjective.draw(gens(5), encoded.x0.shape[1:])
    x_t = (1 - t.view(1, 1, 1)) * encoded.x0 + t.view(1, 1, 1) * noise
    exact = noise - encoded.x0
    assert objective.pixel_error(exact, encoded, t, noise).item() < 1e-6

    right = (encoded.mask_tokens > 0.5)[..., None]
    off = torch.randn(exact.shape, generator=torch.Generator().manual_seed(9))
    assert objective.pixel_error(exact + off * ~right, encoded, t, noise).item() < 1e-6  # the source panel's tokens
    velocity = (exact + off * right).requires_grad_(True)
    got = objective.pixel_error(velocity, encoded, t, noise)

    vae, scale = pipe.vae, pipe.vae_scale_factor

    def decode(packed):
        latents = pipe._unpack_latents(packed, 16, 32, scale)[..., 8:]  # the right half of the 8 x 16 latent grid
        return vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor).sample

    with torch.no_grad():
        difference = (decode(x_t - t.view(1, 1, 1) * velocity) - decode(encoded.x0)).abs().mean(1)
    assert got.item() > 1e-3
    assert torch.allclose(got, difference[0, 4:12, 4:12].mean(), rtol=1e-4)
    got.backward()
    assert velocity.grad[~right.expand_as(velocity)].abs().max() == 0 and velocity.grad.abs().sum() > 0

    class Constant(torch.nn.Module):
        def forward(self, *, hidden_states, **kw):
            return (velocity.detach()[:, : hidden_states.shape[1]],)

    flow_only = FlowMatchingObjective(pipe, loss_weighting="edit")
    total = objective.loss(Constant(), encoded, *[e[:1] for e in embeds], gens(5), guidance_embeds=False)
    flow = flow_only.loss(Constant(), encoded, *[e[:1] for e in embeds], gens(5), guidance_embeds=False)
    assert torch.allclose(total, flow + 2.0 * got.detach(), rtol=1e-5)

    without_masks = objective.encode([canvas], [fill], gens(1), device=CPU, dtype=torch.float32)
    with pytest.raises(ValueError, match="edit masks"):
        objective.pixel_error(exact, without_masks, t, noise)
    with pytest.raises(ValueError, match="pixel_loss_weight"):
        FlowMatchingObjective(pipe, pixel_loss_weight=-1.0)


def test_bad_sizes_and_options_are_refused(pipe):
    with pytest.raises(ValueError, match="loss_region"):
        FlowMatchingObjective(pipe, loss_region="left")
    objective = FlowMatchingObjective(pipe)
    assert objective.pixel_multiple == 4
    canvas, mask = compose_diptych(random_image(10, 8))
    with pytest.raises(ValueError, match="multiples of 4"):
        objective.encode([canvas], [mask], gens(1), device=CPU, dtype=torch.float32)
