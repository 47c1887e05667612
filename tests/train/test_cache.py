"""The training cache (`--cache-dir`) and the objective's options that change what a step learns:
cached and uncached runs train the same thing; edit loss weighting weights what it says; timestep shift."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from diptych.canvas import PanelSize
from diptych.testing import build_tiny_fill_pipeline, random_image
from diptych.train.cache import CachedPromptEncoder, LatentCache, TensorStore, model_fingerprint
from diptych.train.config import ConfigError, TrainConfig
from diptych.train.data import EditSample
from diptych.train.objective import FlowMatchingObjective
from diptych.train.stream import edit_mask_canvas, training_diptych
from diptych.train.trainer import Trainer

CPU = torch.device("cpu")


def gens(*seeds):
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_fill_pipeline(seed=3)


def diptychs(count: int) -> list[tuple[Image.Image, Image.Image]]:
    return [
        training_diptych(random_image(16, 16, seed=s), random_image(16, 16, seed=s + 50), PanelSize(16, 16))
        for s in range(count)
    ]


def test_tensor_store_round_trips_across_instances_and_skips_damaged_shards(tmp_path):
    store = TensorStore(tmp_path, shard_size=2)
    a, b, c = torch.randn(2, 3), torch.randn(4), torch.randn(1)
    store.put("k1", {"a": a, "b": b})
    assert store.get("k1")["a"] is not None and len(list(tmp_path.glob("shard-*"))) == 0  # buffered
    store.put("k2", {"a": c, "b": c})  # the second record fills a shard: written
    assert len(list(tmp_path.glob("shard-*.safetensors"))) == 1
    store.put("k3", {"a": b, "b": a})
    store.flush()
    (tmp_path / "shard-9-broken.safetensors").write_bytes(b"not a safetensors file")
    again = TensorStore(tmp_path)
    assert len(again) == 3 and "k2" in again and "k4" not in again
    assert torch.equal(again.get("k1")["a"], a) and torch.equal(again.get("k3")["b"], a)
    assert again.get("k4") is None and (again.hits, again.misses) == (2, 1)
    with pytest.raises(ValueError, match="cannot contain"):
        again.put("a/b", {"a": a})


def test_fingerprint_follows_the_weights():
    one, two = build_tiny_fill_pipeline(seed=3).vae, build_tiny_fill_pipeline(seed=3).vae
    assert model_fingerprint(one) == model_fingerprint(two)
    with torch.no_grad():
        next(two.parameters()).add_(1e-3)
    assert model_fingerprint(one) != model_fingerprint(two)
    assert model_fingerprint(one, 64) != model_fingerprint(one, 128)
    # the same weights read from another folder (a copy, a symlink) share their cache entries
    two = build_tiny_fill_pipeline(seed=3).vae
    two.register_to_config(_name_or_path="/somewhere/else")
    assert model_fingerprint(one) == model_fingerprint(two)


def test_cached_encoding_draws_the_same_latents_and_reads_from_disk(pipe, tmp_path):
    pairs = diptychs(3)
    canvases, masks = [c for c, _ in pairs], [m for _, m in pairs]
    objective = FlowMatchingObjective(pipe)
    plain = objective.encode(canvases, masks, gens(1, 2, 3), device=CPU, dtype=torch.float32)
    cache = LatentCache(tmp_path, pipe.vae)
    first = objective.encode(canvases[:2], masks[:2], gens(1, 2), device=CPU, dtype=torch.float32, cache=cache)
    cache.flush()
    reopened = LatentCache(tmp_path, pipe.vae)
    mixed = objective.encode(canvases, masks, gens(1, 2, 3), device=CPU, dtype=torch.float32, cache=reopened)
    assert (reopened.store.hits, reopened.store.misses) == (2, 1)  # the third was encoded and added
    # a batch of 3 and a batch of 1 round differently in the VAE (~1e-6); a wrong draw is off by O(1)
    close = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mixed.x0, plain.x0, **close)
    torch.testing.assert_close(mixed.condition, plain.condition, **close)
    torch.testing.assert_close(first.x0, plain.x0[:2], **close)
    # the entry is the posterior, not a draw: other generators give other latents from the same entry
    other = objective.encode(canvases[:1], masks[:1], gens(9), device=CPU, dtype=torch.float32, cache=reopened)
    assert not torch.allclose(other.x0, plain.x0[:1])
    # the source under the mask is another condition: its own entries; FLUX.1 Fill's keys are unchanged
    assert reopened.keys(canvases, masks, "source") != reopened.keys(canvases, masks)
    assert reopened.keys(canvases, masks, "zero") == reopened.keys(canvases, masks)
    # another VAE gets its own namespace
    other_vae = build_tiny_fill_pipeline(seed=4).vae
    assert LatentCache(tmp_path, other_vae).store.folder != reopened.store.folder
    # so does the same VAE tiled (its latents change): a tiled run never reads untiled entries
    other_vae.enable_tiling()
    tiled = LatentCache(tmp_path, other_vae).store.folder
    other_vae.tile_overlap_factor = 0.0
    assert LatentCache(tmp_path, other_vae).store.folder != tiled
    other_vae.disable_tiling()
    assert LatentCache(tmp_path, other_vae).store.folder not in (tiled, reopened.store.folder)


def test_cached_prompt_encoder_encodes_each_prompt_once(tmp_path):
    calls = []

    class Counting:
        def encode(self, prompts):
            calls.append(list(prompts))
            codes = torch.tensor([[float(len(p)), float(ord(p[0]))] for p in prompts])
            return codes[:, None, :].repeat(1, 3, 1), codes

    encoder = CachedPromptEncoder(Counting(), tmp_path, "fp")
    embeds, pooled = encoder.encode(["ab", "c", "ab"])
    assert calls == [["ab", "c"]] and embeds.shape == (3, 3, 2) and torch.equal(pooled[0], pooled[2])
    encoder.flush()
    again = CachedPromptEncoder(Counting(), tmp_path, "fp")
    embeds2, pooled2 = again.encode(["c", "ab"])
    assert calls == [["ab", "c"]] and torch.equal(pooled2, pooled[[1, 0]]) and torch.equal(embeds2, embeds[[1, 0]])
    # a batch of stored and fresh prompts comes back on the model's device ("meta" stands in for a GPU)
    on_device = CachedPromptEncoder(Counting(), tmp_path, "fp", device="meta")
    mixed = on_device.encode(["c", "new"])
    assert all(t.device.type == "meta" for t in mixed) and calls[-1] == ["new"]


def run_config(root, data, tiny_base, fast, **extra) -> TrainConfig:
    options = {
        **fast,
        "base": tiny_base,
        "data": str(data),
        "output": str(root),
        "max_steps": 6,
        "batch_size": 2,
        "optimizer": "adamw",
        "lr": 1e-2,
        "prompt_dropout": 0.5,
        "log_every": 1,
    }
    options.update(extra)
    return TrainConfig(**options)


def test_cached_and_uncached_training_agree(tiny_base, tmp_path, make_pairs, fast, read_metrics):
    data = make_pairs(tmp_path / "pairs", 4)  # 2 batches an epoch: the cached run hits from its 3rd step
    cache = tmp_path / "cache"
    plain = Trainer(run_config(tmp_path / "plain", data, tiny_base, fast), show_progress=False).train()
    filling = Trainer(run_config(tmp_path / "fill", data, tiny_base, fast, cache_dir=str(cache)), show_progress=False)
    filled = filling.train()
    warm = Trainer(run_config(tmp_path / "warm", data, tiny_base, fast, cache_dir=str(cache)), show_progress=False)
    warmed = warm.train()
    for result in (filled, warmed):
        assert result.losses == pytest.approx(plain.losses, rel=1e-4)
        adapter, expected = load_file(str(result.adapter)), load_file(str(plain.adapter))
        for key in expected:
            torch.testing.assert_close(adapter[key], expected[key], rtol=1e-3, atol=1e-6)
    assert [r["cache_hit_rate"] for r in read_metrics(tmp_path / "fill")][:3] == pytest.approx([0, 0, 1 / 3], abs=1e-3)
    assert read_metrics(tmp_path / "warm")[-1]["cache_hit_rate"] == 1.0
    assert len(list(cache.glob("vae-*/shard-*.safetensors"))) == 1 and len(list(cache.glob("text-*"))) == 1


def test_edit_masks_come_from_the_sample_or_from_the_change():
    panel = PanelSize(32, 32)
    source = Image.new("RGB", (32, 32), "white")
    target = source.copy()
    target.paste((255, 0, 0), (8, 8, 12, 12))
    derived = np.asarray(edit_mask_canvas(EditSample(source, "x", target), panel)) > 0
    assert derived.shape == (32, 64) and not derived[:, :32].any()  # only the target panel
    assert derived[8:12, 40:44].all() and derived[7, 39] and not derived[20:, :].any()  # dilated by 1 px
    given = Image.new("L", (32, 32), 0)
    given.paste(255, (0, 0, 4, 4))
    own = np.asarray(edit_mask_canvas(EditSample(source, "x", target, mask=given), panel)) > 0
    assert own[:4, 32:36].all() and own.sum() == 16


def test_edit_loss_weighting_weights_the_edited_tokens(pipe):
    canvas, fill = diptychs(1)[0]
    edit = Image.new("L", canvas.size, 0)
    edit.paste(255, (16, 0, 20, 4))  # the first token of the target panel (4 x 4 pixels a token)
    objective = FlowMatchingObjective(pipe, loss_weighting="edit", edit_weight=5.0)
    encoded = objective.encode([canvas], [fill], gens(1), device=CPU, dtype=torch.float32, edit_masks=[edit])
    edited = encoded.edit_tokens.view(4, 8)
    assert edited[0, 4] == 1 and edited.sum() == 1  # tokens in the packing order: row 0, column 4
    weights = objective.token_weights(encoded).view(4, 8)
    assert weights[0, 4] == 5 and (weights.sum() - 5) == 31

    class Constant(torch.nn.Module):
        def forward(self, *, hidden_states, **kw):
            return (torch.zeros(hidden_states.shape[0], hidden_states.shape[1], encoded.x0.shape[-1]),)

    embeds = (torch.zeros(1, 5, pipe.transformer.config.joint_attention_dim), torch.zeros(1, 8))
    _t, noise = objective.draw(gens(2), encoded.x0.shape[1:])
    per_token = (noise - encoded.x0).pow(2).mean(-1)
    expected = (per_token * weights.view(1, -1)).sum() / weights.sum()
    got = objective.loss(Constant(), encoded, *embeds, gens(2), guidance_embeds=False)
    assert torch.allclose(got, expected)
    with pytest.raises(ValueError, match="edit masks"):
        objective.token_weights(
            FlowMatchingObjective(pipe).encode([canvas], [fill], gens(1), device=CPU, dtype=torch.float32)
        )


def test_timestep_shift_moves_training_times_toward_noise():
    plain, _ = FlowMatchingObjective.draw(gens(*range(200)), torch.Size([1]))
    shifted, _ = FlowMatchingObjective.draw(gens(*range(200)), torch.Size([1]), shift=3.0)
    assert torch.allclose(shifted, 3 * plain / (1 + 2 * plain))
    assert shifted.mean() > plain.mean() + 0.1 and (shifted > plain).all()


def test_new_options_are_validated():
    with pytest.raises(ConfigError, match="loss_weighting"):
        TrainConfig(loss_weighting="masks")
    with pytest.raises(ConfigError, match="edit_weight"):
        TrainConfig(edit_weight=0.5)
    with pytest.raises(ConfigError, match="timestep_shift"):
        TrainConfig(timestep_shift=0)
    with pytest.raises(ConfigError, match="pixel_loss_weight"):
        TrainConfig(pixel_loss_weight=-0.1)
    with pytest.raises(ConfigError, match="pixel_loss_weight"):
        TrainConfig(pixel_loss_weight=0.1, objective="locate", adapter="lora", task_embedding=False)
    assert TrainConfig(pixel_loss_weight="1e-1").pixel_loss_weight == 0.1  # YAML's 1e-1 is a string
