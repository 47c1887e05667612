"""export_moe_to_lora: an exact expert-weighted LoRA that stock diffusers loads."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxFillPipeline
from torch import nn

from diptych.adapters import (
    MoEConfig,
    adapter_layers,
    export_moe_to_lora,
    inject_moe,
    load_moe_adapter,
    routing_stats,
    set_collect_stats,
)

EXPERTS, RANK, ALPHA = 3, 4, 2.0


def random_adapter(model: nn.Module) -> dict[str, nn.Module]:
    torch.manual_seed(3)
    layers = inject_moe(model, MoEConfig(num_experts=EXPERTS, rank=RANK, alpha=ALPHA, lora_alpha=8.0))
    with torch.no_grad():
        for layer in layers.values():
            for name, p in layer.named_parameters():
                if name.startswith("lora_B"):
                    p.normal_(std=0.2)
    return layers


def merged_reference(base: nn.Module, layers: dict[str, nn.Module], weights: dict[str, list[float]]) -> nn.Module:
    """`base` with W += sum_e w_e (alpha/r) B_e A_e for MoE layers and (alpha/r) B A for plain ones,
    computed directly from the adapter parameters."""
    model = copy.deepcopy(base)
    with torch.no_grad():
        for path, layer in layers.items():
            lin = model.get_submodule(path)
            scaling = layer.alpha / layer.rank
            if hasattr(layer, "lora_route"):
                for e in range(EXPERTS):
                    a = layer.lora_A[f"expert_{e}"].weight
                    b = layer.lora_B[f"expert_{e}"].weight
                    lin.weight += weights[path][e] * scaling * (b @ a)
            else:
                lin.weight += scaling * (layer.lora_B.weight @ layer.lora_A.weight)
    return model


def stock_flux_with(base: nn.Module, lora: dict[str, torch.Tensor]) -> nn.Module:
    model = copy.deepcopy(base)
    model.load_lora_adapter(dict(lora), prefix="transformer")
    return model


def test_mean_export_loads_into_diffusers_and_matches(tiny_transformer, run_flux):
    base = copy.deepcopy(tiny_transformer)
    layers = random_adapter(tiny_transformer)
    lora = export_moe_to_lora(tiny_transformer, "mean")
    assert set(lora) == {f"transformer.{p}.lora_{ab}.weight" for p in layers for ab in "AB"}
    assert lora["transformer.transformer_blocks.0.ff.net.2.lora_A.weight"].shape == (EXPERTS * RANK, 128)
    assert lora["transformer.x_embedder.lora_A.weight"].shape == (RANK, 48)
    expected = run_flux(merged_reference(base, layers, {p: [1 / EXPERTS] * EXPERTS for p in layers}))
    loaded = stock_flux_with(base, lora)
    assert (run_flux(loaded) - run_flux(base)).abs().max() > 1e-2
    torch.testing.assert_close(run_flux(loaded), expected, atol=1e-5, rtol=0)


def test_export_is_not_the_average_of_a_and_b(tiny_transformer):
    layers = random_adapter(tiny_transformer)
    lora = export_moe_to_lora(tiny_transformer)
    path = "single_transformer_blocks.1.proj_out"
    layer = layers[path]
    delta = lora[f"transformer.{path}.lora_B.weight"] @ lora[f"transformer.{path}.lora_A.weight"]
    exact = sum(layer.lora_B[f"expert_{e}"].weight @ layer.lora_A[f"expert_{e}"].weight for e in range(EXPERTS))
    torch.testing.assert_close(delta, exact * (ALPHA / RANK) / EXPERTS, atol=1e-6, rtol=0)
    mean_a = torch.stack([m.weight for m in layer.lora_A.values()]).mean(0)
    mean_b = torch.stack([m.weight for m in layer.lora_B.values()]).mean(0)
    naive = mean_b @ mean_a * (ALPHA / RANK)
    assert (naive - delta).abs().max() > 1e-3


def test_usage_export_through_the_pipeline_loader(tiny_transformer, run_flux):
    base = copy.deepcopy(tiny_transformer)
    layers = random_adapter(tiny_transformer)
    set_collect_stats(tiny_transformer, True)
    run_flux(tiny_transformer)
    stats = routing_stats(tiny_transformer)
    assert all(sum(c) > 0 for c in stats.values())
    lora = export_moe_to_lora(tiny_transformer, "usage")
    weights = {p: [c / sum(counts) for c in counts] for p, counts in stats.items()}
    expected = run_flux(merged_reference(base, layers, weights))
    # The path users take: FluxFillPipeline.load_lora_weights (the other components do not matter here).
    loaded = copy.deepcopy(base)
    pipe = FluxFillPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=None,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=loaded,
    )
    pipe.load_lora_weights(lora)
    torch.testing.assert_close(run_flux(loaded), expected, atol=1e-5, rtol=0)
    pipe.fuse_lora()  # the exported LoRA fuses like any other
    torch.testing.assert_close(run_flux(loaded), expected, atol=1e-5, rtol=0)


def test_export_from_a_state_dict_equals_export_from_the_model(tiny_transformer):
    random_adapter(tiny_transformer)
    from_model = export_moe_to_lora(tiny_transformer)
    raw = {
        f"transformer.{p}.{n}": t.detach().clone()
        for p, layer in adapter_layers(tiny_transformer).items()
        for n, t in layer.named_parameters()
        if not n.startswith("base.")
    }
    # A state dict has no alphas: give each layer's alpha as `.alpha` keys (plain layers use 8.0).
    for key in list(raw):
        if key.endswith("lora_route.weight"):
            raw[key.replace("lora_route.weight", "alpha")] = torch.tensor(ALPHA)
        elif key.endswith("lora_A.weight"):
            raw[key.replace("lora_A.weight", "alpha")] = torch.tensor(8.0)
    from_sd = export_moe_to_lora(raw)
    assert from_sd.keys() == from_model.keys()
    for key in from_model:
        torch.testing.assert_close(from_sd[key], from_model[key], atol=0, rtol=0)


def test_export_of_an_official_state_dict_defaults_to_alpha_equal_rank(tiny_transformer, run_flux):
    base = copy.deepcopy(tiny_transformer)
    random_adapter(tiny_transformer)
    raw = {
        f"transformer.{p}.{n}": t.detach().clone()
        for p, m in tiny_transformer.named_modules()
        if hasattr(m, "lora_A")
        for n, t in m.named_parameters()
        if not n.startswith("base.")
    }
    fresh = copy.deepcopy(base)
    load_moe_adapter(fresh, raw)  # alpha == rank: scaling 1, as the official adapter
    layers = {p: m for p, m in fresh.named_modules() if hasattr(m, "lora_A")}
    expected = run_flux(merged_reference(base, layers, {p: [1 / EXPERTS] * EXPERTS for p in layers}))
    torch.testing.assert_close(run_flux(stock_flux_with(base, export_moe_to_lora(raw))), expected, atol=1e-5, rtol=0)


def test_export_errors(tiny_transformer):
    random_adapter(tiny_transformer)
    with pytest.raises(ValueError, match="weighting"):
        export_moe_to_lora(tiny_transformer, "median")
    with pytest.raises(ValueError, match="collect routing stats"):
        export_moe_to_lora(tiny_transformer, "usage")  # stats never collected: all zero
    with pytest.raises(ValueError, match="no usage counts"):
        export_moe_to_lora(tiny_transformer, "usage", usage={})
    with pytest.raises(ValueError, match="3 non-negative counts"):
        usage = {p: [1.0, 2.0] for p in routing_stats(tiny_transformer)}
        export_moe_to_lora(tiny_transformer, "usage", usage=usage)
    with pytest.raises(ValueError, match="only with a state dict"):
        export_moe_to_lora(tiny_transformer, alpha=4.0)
