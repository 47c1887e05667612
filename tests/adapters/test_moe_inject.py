"""inject_moe / remove_moe / fuse on a tiny FluxTransformer2DModel."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diptych.adapters import (
    AdapterError,
    LoRALinear,
    MoEConfig,
    MoELoRALinear,
    adapter_layers,
    fuse_lora,
    inject_moe,
    remove_moe,
    routing_stats,
    set_adapter_scale,
    set_collect_stats,
    unfuse_lora,
)

DOUBLE_LORA = ("norm1.linear", "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0")
SINGLE_LORA = ("norm.linear", "proj_mlp", "attn.to_q", "attn.to_k", "attn.to_v")


def randomise(layers) -> None:
    """Give every adapter non-zero B (and a sharper router) so it changes the output."""
    with torch.no_grad():
        for layer in layers.values():
            for name, p in layer.named_parameters():
                if name.startswith("lora_B"):
                    p.normal_(std=0.2)


def test_default_targets_are_the_official_layout(tiny_transformer):
    injected = inject_moe(tiny_transformer, MoEConfig(rank=4, alpha=4.0))
    moe = {n for n, m in injected.items() if isinstance(m, MoELoRALinear)}
    plain = {n for n, m in injected.items() if isinstance(m, LoRALinear)}
    assert moe == {
        "transformer_blocks.0.ff.net.2",
        "transformer_blocks.1.ff.net.2",
        "single_transformer_blocks.0.proj_out",
        "single_transformer_blocks.1.proj_out",
    }
    expected_plain = {"x_embedder"}
    expected_plain |= {f"transformer_blocks.{i}.{n}" for i in range(2) for n in DOUBLE_LORA}
    expected_plain |= {f"single_transformer_blocks.{i}.{n}" for i in range(2) for n in SINGLE_LORA}
    assert plain == expected_plain
    assert set(adapter_layers(tiny_transformer)) == moe | plain
    # The output head and the whole text stream stay untouched.
    assert type(tiny_transformer.proj_out) is nn.Linear
    for name, module in tiny_transformer.named_modules():
        if any(t in name for t in ("context", "add_", "to_add_out", "time_text_embed")):
            assert not isinstance(module, LoRALinear | MoELoRALinear), name
    trainable = [n for n, p in tiny_transformer.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)


def test_inject_then_remove_restores_the_exact_output(tiny_transformer, run_flux):
    originals = {n: m for n, m in tiny_transformer.named_modules() if isinstance(m, nn.Linear)}
    expected = run_flux(tiny_transformer)
    layers = inject_moe(tiny_transformer, MoEConfig(rank=4, alpha=4.0, top_k=2))
    assert torch.equal(run_flux(tiny_transformer), expected)  # fresh adapters: B = 0
    randomise(layers)
    assert (run_flux(tiny_transformer) - expected).abs().max() > 1e-3
    assert remove_moe(tiny_transformer) == len(layers)
    assert not adapter_layers(tiny_transformer)
    assert torch.equal(run_flux(tiny_transformer), expected)
    for name, module in originals.items():
        assert tiny_transformer.get_submodule(name) is module


def test_remove_restores_requires_grad_of_wrapped_layers(tiny_transformer):
    inject_moe(tiny_transformer, MoEConfig(rank=2), freeze_base=False)
    assert tiny_transformer.x_embedder.base.weight.requires_grad is False
    assert tiny_transformer.context_embedder.weight.requires_grad is True  # freeze_base=False
    remove_moe(tiny_transformer)
    assert tiny_transformer.x_embedder.weight.requires_grad is True


def test_fuse_and_unfuse_plain_lora(tiny_transformer, run_flux):
    config = MoEConfig(rank=4, alpha=8.0, moe_targets=(), lora_targets=("x_embedder", "attn.to_q", "proj_mlp"))
    layers = inject_moe(tiny_transformer, config)
    randomise(layers)
    weights = {n: m.base.weight.detach().clone() for n, m in layers.items()}
    unfused = run_flux(tiny_transformer)
    assert fuse_lora(tiny_transformer) == len(layers)
    assert all(m.merged for m in layers.values())
    assert not torch.equal(tiny_transformer.x_embedder.base.weight, weights["x_embedder"])
    torch.testing.assert_close(run_flux(tiny_transformer), unfused, atol=1e-5, rtol=0)
    with pytest.raises(AdapterError, match="unfuse"):
        set_adapter_scale(tiny_transformer, 0.5)
    unfuse_lora(tiny_transformer)
    for name, layer in layers.items():
        torch.testing.assert_close(layer.base.weight, weights[name], atol=1e-6, rtol=0)
    torch.testing.assert_close(run_flux(tiny_transformer), unfused, atol=1e-5, rtol=0)


def test_fuse_leaves_moe_layers_dynamic(tiny_transformer, run_flux):
    layers = inject_moe(tiny_transformer, MoEConfig(rank=4))
    randomise(layers)
    before = run_flux(tiny_transformer)
    fuse_lora(tiny_transformer)
    torch.testing.assert_close(run_flux(tiny_transformer), before, atol=1e-5, rtol=0)
    remove_moe(tiny_transformer)  # unfuses on the way out


def test_adapter_scale(tiny_transformer, run_flux):
    base = run_flux(tiny_transformer)
    layers = inject_moe(tiny_transformer, MoEConfig(rank=4))
    randomise(layers)
    set_adapter_scale(tiny_transformer, 0.0)
    assert torch.equal(run_flux(tiny_transformer), base)


def test_routing_stats_in_the_transformer_count_every_token(tiny_transformer, flux_inputs, run_flux):
    inject_moe(tiny_transformer, MoEConfig(rank=4, top_k=2))
    set_collect_stats(tiny_transformer, True)
    run_flux(tiny_transformer)
    batch, image_tokens = flux_inputs["hidden_states"].shape[:2]
    text_tokens = flux_inputs["encoder_hidden_states"].shape[1]
    stats = routing_stats(tiny_transformer)
    for name, counts in stats.items():
        # ff.net.2 of a double block sees the image stream; single blocks see text + image tokens.
        tokens = image_tokens if name.startswith("transformer_blocks") else image_tokens + text_tokens
        assert sum(counts) == batch * tokens * 2, name
    assert len(stats) == 4


def test_inject_errors(tiny_transformer):
    with pytest.raises(ValueError, match=r"'attn\.to_z'"):
        inject_moe(tiny_transformer, MoEConfig(lora_targets=("attn.to_z",)))
    with pytest.raises(TypeError, match=r"not an nn\.Linear"):
        inject_moe(tiny_transformer, MoEConfig(moe_targets=(), lora_targets=("attn.to_out",)))
    assert not adapter_layers(tiny_transformer)  # nothing half-done
    inject_moe(tiny_transformer, MoEConfig(rank=2))
    with pytest.raises(AdapterError, match="remove_moe"):
        inject_moe(tiny_transformer, MoEConfig(rank=2))


def test_full_paths_and_top_level_names(tiny_transformer):
    config = MoEConfig(moe_targets=("transformer_blocks.1.ff.net.2",), lora_targets=())
    assert set(inject_moe(tiny_transformer, config)) == {"transformer_blocks.1.ff.net.2"}
    remove_moe(tiny_transformer)
    # Top-level modules other than x_embedder (the output head, norm_out) are never matched by name.
    with pytest.raises(ValueError, match="matches no module"):
        inject_moe(tiny_transformer, MoEConfig(moe_targets=("norm_out.linear",), lora_targets=()))
    inject_moe(tiny_transformer, MoEConfig(moe_targets=("proj_out",), lora_targets=()))
    assert type(tiny_transformer.proj_out) is nn.Linear
