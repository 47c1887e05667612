"""MoELoRALinear / LoRALinear on their own: no-op at init, dense == sparse, gates, balance loss,
routing statistics and router context."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diptych.adapters import (
    AdapterError,
    LoRALinear,
    MoEConfig,
    MoELoRALinear,
    configure_moe,
    moe_balance_loss,
    reset_routing_stats,
    routing_stats,
    set_collect_stats,
    use_router_context,
)


def make_moe(in_f: int = 24, out_f: int = 20, *, seed: int = 0, **kw) -> MoELoRALinear:
    torch.manual_seed(seed)
    kw = {"num_experts": 4, "rank": 6, "alpha": 3.0, **kw}
    layer = MoELoRALinear(nn.Linear(in_f, out_f), **kw)
    with torch.no_grad():  # non-zero B so the experts actually differ
        for b in layer.lora_B.values():
            b.weight.normal_(std=0.5)
    return layer


def test_fresh_adapters_are_exact_no_ops():
    torch.manual_seed(0)
    base = nn.Linear(24, 20)
    x = torch.randn(2, 7, 24)
    expected = base(x)
    assert torch.equal(MoELoRALinear(base, 4, 6)(x), expected)
    base2 = nn.Linear(24, 20)
    assert torch.equal(LoRALinear(base2, 6)(x), base2(x))


def test_base_is_frozen_and_adapter_trainable():
    layer = make_moe()
    assert not any(p.requires_grad for p in layer.base.parameters())
    trainable = {n for n, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {f"lora_{ab}.expert_{i}.weight" for ab in "AB" for i in range(4)} | {"lora_route.weight"}


def test_state_dict_names_follow_the_official_layout():
    layer = make_moe(router_context_dim=3)
    names = {k for k in layer.state_dict() if not k.startswith("base.")}
    assert "lora_A.expert_3.weight" in names and "lora_B.expert_0.weight" in names
    assert {"lora_route.weight", "lora_route_context.weight"} <= names
    assert "expert_counts" not in names  # statistics never enter checkpoints
    assert set(LoRALinear(nn.Linear(4, 4), 2).state_dict()) == {
        "base.weight",
        "base.bias",
        "lora_A.weight",
        "lora_B.weight",
    }


@pytest.mark.parametrize("top_k", [1, 2, 3])
@pytest.mark.parametrize("gate", ["official", "learned"])
def test_sparse_dispatch_equals_dense(top_k, gate):
    """Tolerance: 1e-5 absolute in float32 (only the summation order differs)."""
    dense = make_moe(top_k=top_k, gate=gate, dispatch="dense")
    sparse = make_moe(top_k=top_k, gate=gate, dispatch="sparse")
    sparse.load_state_dict(dense.state_dict())
    x = torch.randn(3, 11, 24)
    out_d, out_s = dense(x), sparse(x)
    torch.testing.assert_close(out_s, out_d, atol=1e-5, rtol=0)
    assert (out_d - dense.base(x)).abs().max() > 0.1  # the experts contribute
    target = torch.randn_like(out_d)
    ((out_d - target) ** 2).mean().backward()
    ((out_s - target) ** 2).mean().backward()
    for (name, p_d), (_, p_s) in zip(dense.named_parameters(), sparse.named_parameters(), strict=True):
        if p_d.requires_grad:
            torch.testing.assert_close(p_s.grad, p_d.grad, atol=1e-5, rtol=0, msg=name)


def test_dense_matches_a_per_expert_loop():
    layer = make_moe(top_k=2)
    x = torch.randn(5, 24)
    logits = x @ layer.lora_route.weight.T
    vals, idx = logits.topk(2, dim=-1)
    w = torch.zeros_like(logits).scatter(-1, idx, torch.softmax(vals, -1))
    expected = layer.base(x)
    for e in range(4):
        a, b = layer.lora_A[f"expert_{e}"].weight, layer.lora_B[f"expert_{e}"].weight
        expected = expected + w[:, e : e + 1] * (x @ a.T @ b.T) * (3.0 / 6)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dispatch", ["dense", "sparse"])
def test_bf16_input_and_weights(dispatch):
    ref = make_moe(dispatch=dispatch)
    half = make_moe(dispatch=dispatch).to(torch.bfloat16)
    x = torch.randn(2, 9, 24)
    out = half(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == (2, 9, 20)
    # Routing can flip on near-ties in bf16; compare where the top-1 expert agrees.
    same = ref.route(x)[0].squeeze(-1) == half.route(x.to(torch.bfloat16))[0].squeeze(-1)
    assert same.float().mean() > 0.8
    diff = (out.float() - ref(x)).reshape(-1, 20)[same.reshape(-1)]
    assert diff.abs().max() < 0.15


def test_fp32_adapter_on_bf16_base():
    torch.manual_seed(0)
    base = nn.Linear(24, 20).to(torch.bfloat16)
    layer = MoELoRALinear(base, 4, 6, dtype=torch.float32)
    assert layer.lora_route.weight.dtype == torch.float32
    out = layer(torch.randn(2, 3, 24, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    lora = LoRALinear(nn.Linear(24, 20).to(torch.bfloat16), 4, dtype=torch.float32)
    assert lora(torch.randn(3, 24, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_lora_linear_forward_and_2d_input():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(8, 5), rank=2, alpha=4.0)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(3, 8)  # the norm layers' modulation Linears see (batch, features)
    expected = layer.base(x) + 2.0 * (x @ layer.lora_A.weight.T @ layer.lora_B.weight.T)
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=0)
    layer.scale = 0.0
    assert torch.equal(layer(x), layer.base(x))


def _one_step(gate: str) -> tuple[MoELoRALinear, torch.Tensor, torch.Tensor | None]:
    layer = make_moe(gate=gate, top_k=1)
    before = layer.lora_route.weight.detach().clone()
    opt = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=0.5)
    x = torch.randn(4, 16, 24)
    loss = (layer(x) - torch.randn(4, 16, 20)).pow(2).mean()
    loss.backward()
    grad = layer.lora_route.weight.grad
    grad = None if grad is None else grad.clone()
    opt.step()
    return layer, before, grad


def test_learned_gate_trains_the_router_with_top1():
    layer, before, grad = _one_step("learned")
    assert grad is not None and grad.abs().max() > 0
    assert not torch.equal(layer.lora_route.weight, before)


def test_official_gate_gives_the_router_no_gradient_with_top1():
    """The released design's flaw: softmax over one logit is 1, so the task loss never reaches the router."""
    layer, before, grad = _one_step("official")
    assert grad is None or torch.count_nonzero(grad) == 0
    assert torch.equal(layer.lora_route.weight, before)
    assert layer.lora_A["expert_0"].weight.grad is not None  # the experts themselves do learn


def test_learned_gate_weights_are_full_softmax_probabilities():
    layer = make_moe(gate="learned", top_k=2)
    x = torch.randn(6, 24)
    idx, w, logits = layer.route(x)
    probs = torch.softmax(logits, -1)
    torch.testing.assert_close(w, probs.gather(-1, idx))
    assert (w.sum(-1) < 1).all()  # not renormalised


def test_balance_loss_value():
    layer = make_moe(balance_loss=True, top_k=1)
    model = nn.Sequential(layer)
    x = torch.randn(50, 24)
    model(x)
    idx, _, logits = layer.route(x)
    f = torch.bincount(idx[:, 0], minlength=4).float() / 50
    expected = 4 * (f * torch.softmax(logits, -1).mean(0)).sum()
    torch.testing.assert_close(moe_balance_loss(model), expected)
    assert moe_balance_loss(model).requires_grad


def test_balance_loss_evens_out_usage():
    torch.manual_seed(0)
    layer = MoELoRALinear(nn.Linear(16, 16), 4, 4, balance_loss=True)
    model = nn.Sequential(layer)
    x = torch.randn(512, 16) + 0.5
    with torch.no_grad():  # a router that sends (nearly) every token to expert 0, not saturated
        layer.lora_route.weight.normal_(std=0.1)
        layer.lora_route.weight[0] += 0.3

    def usage() -> torch.Tensor:
        idx = layer.route(x)[0][:, 0]
        return torch.bincount(idx, minlength=4).float() / len(idx)

    assert usage().max() > 0.9
    opt = torch.optim.Adam([layer.lora_route.weight], lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        model(x)
        moe_balance_loss(model).backward()
        opt.step()
    assert usage().max() < 0.35  # uniform is 0.25


def test_balance_loss_needs_enabling():
    model = nn.Sequential(make_moe())
    with pytest.raises(AdapterError, match="balance_loss=True"):
        moe_balance_loss(model)
    configure_moe(model, balance_loss=True)
    with pytest.raises(AdapterError, match="forward"):
        moe_balance_loss(model)
    model(torch.randn(3, 24))
    assert moe_balance_loss(model).item() > 0


@pytest.mark.parametrize("top_k", [1, 2])
def test_routing_stats_sum_to_token_counts(top_k):
    model = nn.Sequential(make_moe(top_k=top_k))
    model(torch.randn(2, 7, 24))
    assert routing_stats(model) == {"0": [0.0] * 4}  # off by default
    set_collect_stats(model, True)
    model(torch.randn(2, 7, 24))
    model(torch.randn(3, 5, 24))
    counts = routing_stats(model)["0"]
    assert sum(counts) == (14 + 15) * top_k
    idx = model[0].route(torch.randn(1, 1, 24))[0]
    assert idx.shape == (1, top_k)
    reset_routing_stats(model)
    assert routing_stats(model)["0"] == [0.0] * 4


def test_router_context_changes_routing_per_sample():
    layer = make_moe(router_context_dim=3)
    model = nn.Sequential(layer)
    x = torch.randn(2, 40, 24)
    plain_idx = layer.route(x)[0]
    ctx = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    with use_router_context(model, ctx):
        # zero-initialised projection: no change until trained
        assert torch.equal(layer.route(x)[0], plain_idx)
        with torch.no_grad():
            layer.lora_route_context.weight.copy_(torch.tensor([[20.0, 0, 0], [0, 20.0, 0], [0, 0, 0], [0, 0, 0]]))
        idx = layer.route(x)[0].view(2, 40)
        assert (idx[0] == 0).all() and (idx[1] == 1).all()  # each sample follows its own context
        out_ctx = layer(x)
        with use_router_context(model, ctx[:1]):  # one row broadcasts to the whole batch
            assert (layer.route(x)[0] == 0).all()
    assert layer.router_context is None
    assert not torch.equal(out_ctx, layer(x))


def test_router_context_errors():
    layer = make_moe(router_context_dim=3)
    x = torch.randn(2, 4, 24)
    layer.router_context = torch.zeros(2, 5)
    with pytest.raises(ValueError, match=r"\(batch, 3\)"):
        layer(x)
    layer.router_context = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="batch 2"):
        layer(x)
    with (
        pytest.raises(AdapterError, match="router_context_dim"),
        use_router_context(nn.Sequential(make_moe()), torch.zeros(1, 3)),
    ):
        pass


def test_moe_layer_cannot_be_fused():
    with pytest.raises(AdapterError, match="export_moe_to_lora"):
        make_moe().fuse()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"top_k": 5}, "top_k"),
        ({"gate": "softmax"}, "gate"),
        ({"dispatch": "scatter"}, "dispatch"),
        ({"rank": 0}, "rank"),
        ({"alpha": -1.0}, "alpha"),
        ({"moe_targets": "proj_out"}, "sequence"),
        ({"lora_targets": ("proj_out",)}, "both"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        MoEConfig(**kwargs)


def test_wrapping_requires_a_linear():
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        MoELoRALinear(nn.Conv1d(2, 2, 1))  # type: ignore[arg-type]
    with pytest.raises(AdapterError, match="already"):
        LoRALinear(make_moe())  # type: ignore[arg-type]
