"""Official-layout MoE checkpoints: loading against an independent reference, prefixes, refusals, and
the save -> load round trip."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from diptych.adapters import (
    MoELoRALinear,
    adapter_layers,
    inject_moe,
    is_moe_state_dict,
    load_moe_adapter,
    save_moe_adapter,
)
from diptych.errors import WeightsError

EXPERTS, RANK = 4, 8
MOE_MODULES = (
    "transformer_blocks.0.ff.net.2",
    "transformer_blocks.1.ff.net.2",
    "single_transformer_blocks.0.proj_out",
    "single_transformer_blocks.1.proj_out",
)
PLAIN_MODULES = (
    "x_embedder",
    *(f"transformer_blocks.{i}.{n}" for i in range(2) for n in ("norm1.linear", "attn.to_q", "attn.to_out.0")),
    *(f"single_transformer_blocks.{i}.{n}" for i in range(2) for n in ("norm.linear", "proj_mlp", "attn.to_v")),
)


def official_checkpoint(model: nn.Module, prefix: str = "transformer.", seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors in the released ICEdit MoE layout (non-zero B, a router with clear preferences)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for path in MOE_MODULES:
        lin = model.get_submodule(path)
        for i in range(EXPERTS):
            sd[f"{prefix}{path}.lora_A.expert_{i}.weight"] = torch.randn(RANK, lin.in_features, generator=g) * 0.1
            sd[f"{prefix}{path}.lora_B.expert_{i}.weight"] = torch.randn(lin.out_features, RANK, generator=g) * 0.1
        sd[f"{prefix}{path}.lora_route.weight"] = torch.randn(EXPERTS, lin.in_features, generator=g)
    for path in PLAIN_MODULES:
        lin = model.get_submodule(path)
        sd[f"{prefix}{path}.lora_A.weight"] = torch.randn(RANK, lin.in_features, generator=g) * 0.1
        sd[f"{prefix}{path}.lora_B.weight"] = torch.randn(lin.out_features, RANK, generator=g) * 0.1
    return sd


def reference_model(base: nn.Module, sd: dict[str, torch.Tensor], top_k: int, scaling: float) -> nn.Module:
    """A deep copy of `base` whose adapted Linears compute the official MoE / LoRA forward straight from
    the raw checkpoint tensors, written out plainly (independent of diptych's layers)."""
    model = copy.deepcopy(base)
    raw = {k.removeprefix("transformer."): v for k, v in sd.items()}

    def moe_forward(lin: nn.Linear, path: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            out = F.linear(x, lin.weight, lin.bias)
            logits = F.linear(x, raw[f"{path}.lora_route.weight"])
            top_values, top_index = torch.topk(logits, top_k, dim=-1)
            gate = torch.softmax(top_values, dim=-1)
            weights = torch.zeros_like(logits).scatter(-1, top_index, gate)
            for i in range(EXPERTS):
                h = F.linear(x, raw[f"{path}.lora_A.expert_{i}.weight"])
                y = F.linear(h, raw[f"{path}.lora_B.expert_{i}.weight"])
                out = out + weights[..., i : i + 1] * y * scaling
            return out

        return forward

    def lora_forward(lin: nn.Linear, path: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            h = F.linear(x, raw[f"{path}.lora_A.weight"])
            return F.linear(x, lin.weight, lin.bias) + F.linear(h, raw[f"{path}.lora_B.weight"]) * scaling

        return forward

    for path in MOE_MODULES:
        lin = model.get_submodule(path)
        lin.forward = moe_forward(lin, path)
    for path in PLAIN_MODULES:
        lin = model.get_submodule(path)
        lin.forward = lora_forward(lin, path)
    return model


@pytest.mark.parametrize("top_k", [1, 2])
def test_official_checkpoint_matches_the_reference(tiny_transformer, run_flux, top_k):
    base_out = run_flux(tiny_transformer)
    sd = official_checkpoint(tiny_transformer)
    assert is_moe_state_dict(sd)
    reference = run_flux(reference_model(tiny_transformer, sd, top_k, scaling=1.0))
    config = load_moe_adapter(tiny_transformer, sd, top_k=top_k)
    assert (config.num_experts, config.rank, config.alpha, config.top_k) == (EXPERTS, RANK, float(RANK), top_k)
    assert config.gate == "official" and config.dispatch == "dense"
    out = run_flux(tiny_transformer)
    assert (out - base_out).abs().max() > 1e-2  # the adapter matters
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=0)


def test_alpha_override_and_sparse_dispatch(tiny_transformer, run_flux):
    sd = official_checkpoint(tiny_transformer)
    reference = run_flux(reference_model(tiny_transformer, sd, 1, scaling=2.0 / RANK))
    config = load_moe_adapter(tiny_transformer, sd, alpha=2.0, dispatch="sparse")
    assert config.alpha == 2.0 and config.plain_alpha == 2.0
    torch.testing.assert_close(run_flux(tiny_transformer), reference, atol=1e-5, rtol=0)


def test_loaded_targets_and_config(tiny_transformer):
    other = copy.deepcopy(tiny_transformer)
    config = load_moe_adapter(tiny_transformer, official_checkpoint(tiny_transformer), scale=0.5)
    assert config.moe_targets == ("ff.net.2", "proj_out")
    # A name covering all its modules stays a name; a partial one becomes full paths.
    assert set(config.lora_targets) == {
        "x_embedder",
        "norm1.linear",
        "attn.to_out.0",
        "norm.linear",
        "proj_mlp",
        "transformer_blocks.0.attn.to_q",
        "transformer_blocks.1.attn.to_q",
        "single_transformer_blocks.0.attn.to_v",
        "single_transformer_blocks.1.attn.to_v",
    }
    layers = adapter_layers(tiny_transformer)
    assert set(layers) == set(MOE_MODULES) | set(PLAIN_MODULES)
    assert all(m.scale == 0.5 for m in layers.values())
    # The returned config rebuilds the same structure on another transformer.
    assert set(inject_moe(other, config)) == set(layers)
    assert {n: type(m) for n, m in adapter_layers(other).items()} == {n: type(m) for n, m in layers.items()}


@pytest.mark.parametrize("prefix", ["transformer.", "base_model.model.", ""])
def test_prefixes_are_accepted(tiny_transformer, run_flux, prefix):
    sd = official_checkpoint(tiny_transformer, prefix="transformer.")
    expected = run_flux(reference_model(tiny_transformer, sd, 1, scaling=1.0))
    renamed = {prefix + k.removeprefix("transformer."): v for k, v in sd.items()}
    assert is_moe_state_dict(renamed)
    load_moe_adapter(tiny_transformer, renamed)
    torch.testing.assert_close(run_flux(tiny_transformer), expected, atol=1e-5, rtol=0)


def test_unknown_and_misshaped_keys_are_refused_with_a_list(tiny_transformer):
    sd = official_checkpoint(tiny_transformer)
    sd["transformer.transformer_blocks.7.ff.net.2.lora_route.weight"] = torch.zeros(EXPERTS, 128)
    sd["transformer.transformer_blocks.0.ff.net.2.lora_B.expert_1.weight"] = torch.zeros(31, RANK)
    sd["transformer.single_transformer_blocks.0.proj_out.lora_route.weight"] = torch.zeros(EXPERTS + 1, 160)
    with pytest.raises(WeightsError) as info:
        load_moe_adapter(tiny_transformer, sd)
    message = str(info.value)
    # One short line: the count, the first problem in full, the next keys by name.
    assert (
        "mismatched keys: 3, first transformer_blocks.0.ff.net.2.lora_B.expert_1.weight: expected shape (32, 8), "
        "got (31, 8); then single_transformer_blocks.0.proj_out.lora_route.weight, "
        "transformer_blocks.7.ff.net.2.lora_route.weight."
    ) in message
    assert len(message) < 330
    assert not adapter_layers(tiny_transformer)  # refused before anything changed


def test_at_most_three_problems_are_listed(tiny_transformer):
    sd = official_checkpoint(tiny_transformer)
    for i in range(8):
        sd[f"transformer.single_transformer_blocks.{10 + i}.proj_out.lora_route.weight"] = torch.zeros(4, 160)
    with pytest.raises(WeightsError, match=r"mismatched keys: 8, first .*; then [^,]+, [^,]+ and 5 more"):
        load_moe_adapter(tiny_transformer, sd)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda sd: sd.update({"transformer.x_embedder.lora_down.weight": torch.zeros(2, 2)}), "not an adapter key"),
        (
            lambda sd: sd.pop("transformer.transformer_blocks.1.ff.net.2.lora_A.expert_3.weight"),
            "expert_3.weight: missing",
        ),
        (lambda sd: sd.pop("transformer.x_embedder.lora_B.weight"), "x_embedder.lora_B.weight: missing"),
        (
            lambda sd: sd.update({"transformer.context_embedder.lora_A.expert_0.weight": torch.zeros(8, 32)}),
            "context_embedder.lora_route.weight: missing",
        ),
        (
            lambda sd: sd.update({"transformer.transformer_blocks.0.attn.to_out.lora_A.weight": torch.zeros(8, 32)}),
            "is a ModuleList, not an nn.Linear",
        ),
    ],
)
def test_malformed_checkpoints(tiny_transformer, edit, match):
    sd = official_checkpoint(tiny_transformer)
    edit(sd)
    with pytest.raises(WeightsError, match=match):
        load_moe_adapter(tiny_transformer, sd)


def test_plain_lora_and_bad_sources_are_refused(tiny_transformer, tmp_path):
    plain = {k: v for k, v in official_checkpoint(tiny_transformer).items() if "expert" not in k and "route" not in k}
    assert not is_moe_state_dict(plain)
    with pytest.raises(WeightsError, match="plain LoRA"):
        load_moe_adapter(tiny_transformer, plain)
    with pytest.raises(WeightsError, match="does not exist"):
        load_moe_adapter(tiny_transformer, tmp_path / "missing.safetensors")
    pickle = tmp_path / "adapter.bin"
    pickle.write_bytes(b"not read")
    with pytest.raises(WeightsError, match="never unpickles"):
        load_moe_adapter(tiny_transformer, pickle)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 20)
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        load_moe_adapter(tiny_transformer, corrupt)
    with pytest.raises(WeightsError, match="rank=8 but rank=16"):
        load_moe_adapter(tiny_transformer, official_checkpoint(tiny_transformer), rank=16)
    with pytest.raises(TypeError, match="unknown option"):
        load_moe_adapter(tiny_transformer, official_checkpoint(tiny_transformer), experts=4)
    assert not adapter_layers(tiny_transformer)


def test_save_load_round_trip(tiny_transformer, run_flux, tmp_path):
    fresh = copy.deepcopy(tiny_transformer)
    sd = official_checkpoint(tiny_transformer, prefix="base_model.model.")
    load_moe_adapter(tiny_transformer, sd, alpha=4.0, lora_alpha=16.0, top_k=2, gate="learned")
    expected = run_flux(tiny_transformer)
    path = save_moe_adapter(tiny_transformer, tmp_path / "moe.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["moe.safetensors"]  # no temporary file left
    config = load_moe_adapter(fresh, path)
    assert (config.alpha, config.plain_alpha, config.top_k, config.gate) == (4.0, 16.0, 2, "learned")
    torch.testing.assert_close(run_flux(fresh), expected, atol=0, rtol=0)
    # The written keys are the official layout under the "transformer." prefix.
    from safetensors.torch import load_file

    keys = set(load_file(path))
    assert keys == {"transformer." + k.removeprefix("base_model.model.") for k in sd}


def test_saved_file_loads_without_metadata_as_official(tiny_transformer, run_flux, tmp_path):
    sd = official_checkpoint(tiny_transformer)
    path = tmp_path / "official.safetensors"
    save_file(sd, str(path))  # what the authors' code writes: tensors only
    expected = run_flux(reference_model(tiny_transformer, sd, 1, scaling=1.0))
    load_moe_adapter(tiny_transformer, path)
    torch.testing.assert_close(run_flux(tiny_transformer), expected, atol=1e-5, rtol=0)


def test_router_context_round_trip(tiny_transformer, run_flux, tmp_path):
    from diptych.adapters import MoEConfig, inject_moe, use_router_context

    fresh = copy.deepcopy(tiny_transformer)
    layers = inject_moe(tiny_transformer, MoEConfig(rank=4, router_context_dim=6))
    with torch.no_grad():
        for layer in layers.values():
            for name, p in layer.named_parameters():
                if name.startswith(("lora_B", "lora_route_context")):
                    p.normal_()
    context = torch.randn(2, 6)
    with use_router_context(tiny_transformer, context):
        expected = run_flux(tiny_transformer)
    save_moe_adapter(tiny_transformer, tmp_path / "ctx.safetensors")
    config = load_moe_adapter(fresh, tmp_path / "ctx.safetensors")
    assert config.router_context_dim == 6
    assert all(m.router_context_dim == 6 for m in adapter_layers(fresh).values() if isinstance(m, MoELoRALinear))
    with use_router_context(fresh, context):
        torch.testing.assert_close(run_flux(fresh), expected, atol=0, rtol=0)


def test_save_refuses_bad_paths_and_empty_models(tiny_transformer, tmp_path):
    from diptych.adapters import AdapterError

    with pytest.raises(AdapterError, match="no MoE layers"):
        save_moe_adapter(tiny_transformer, tmp_path / "x.safetensors")
    load_moe_adapter(tiny_transformer, official_checkpoint(tiny_transformer))
    with pytest.raises(ValueError, match=r"\.safetensors"):
        save_moe_adapter(tiny_transformer, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="does not exist"):
        save_moe_adapter(tiny_transformer, tmp_path / "missing" / "x.safetensors")


def test_alpha_keys_set_the_scaling(tiny_transformer, run_flux):
    sd = official_checkpoint(tiny_transformer)
    expected = run_flux(reference_model(tiny_transformer, sd, 1, scaling=2.0 / RANK))
    for path in (*MOE_MODULES, *PLAIN_MODULES):
        sd[f"transformer.{path}.alpha"] = torch.tensor(2.0)
    load_moe_adapter(tiny_transformer, sd)
    assert all(m.alpha == 2.0 for m in adapter_layers(tiny_transformer).values())
    torch.testing.assert_close(run_flux(tiny_transformer), expected, atol=1e-5, rtol=0)
