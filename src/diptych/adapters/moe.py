"""LoRA and LoRA-MoE layers for FLUX transformers, and their injection into a transformer by module name.

The official ICEdit MoE adapter (4 experts, rank 32, alpha 32, top-1 routing per token) puts a
mixture of LoRA experts on the double blocks' `ff.net.2` and the single blocks' `proj_out`, and a
plain LoRA on the other official targets. The released adapter needs the authors' patched peft; the
layers here reproduce its forward pass on stock torch, so the official weights give the official
results, and add what the original lacks as options: a gate through which the router learns with
top-1 routing, a Switch-Transformer load-balancing loss, sparse dispatch, routing statistics and a
per-sample router context (e.g. a task embedding).

Parameter names follow the official checkpoint layout, so a layer's own state dict (less `base.`)
is its part of the checkpoint: plain `lora_A.weight` / `lora_B.weight`; MoE
`lora_A.expert_{i}.weight`, `lora_B.expert_{i}.weight`, `lora_route.weight` and, a diptych extension,
`lora_route_context.weight`.

Fusing: a plain `LoRALinear` can be fused into its base weight. An MoE layer cannot, since its delta
depends on each token's routing; export it to a plain LoRA first (`moe_io.export_moe_to_lora`), load
that with diffusers and fuse there.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DiptychError
from .lora import restore_qk_norms

Gate = Literal["official", "learned"]
Dispatch = Literal["dense", "sparse"]
Init = Literal["gaussian", "kaiming"]

GATES: tuple[str, ...] = ("official", "learned")
DISPATCHES: tuple[str, ...] = ("dense", "sparse")
INITS: tuple[str, ...] = ("gaussian", "kaiming")

BLOCK_LISTS: tuple[str, ...] = ("transformer_blocks", "single_transformer_blocks")
# The image-stream input projection is the only official top-level target; `context_embedder` (the text
# stream's input projection) may be added for bases whose text pathway needs adapting (TEXT_STREAM_TARGETS).
# The top-level `proj_out` (the output head) shares its name with the single blocks' `proj_out` and must stay
# untouched.
TOP_LEVEL_TARGETS: tuple[str, ...] = ("x_embedder", "context_embedder")
DEFAULT_MOE_TARGETS: tuple[str, ...] = ("ff.net.2", "proj_out")
DEFAULT_LORA_TARGETS: tuple[str, ...] = (
    "x_embedder",
    "norm1.linear",
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "norm.linear",
    "proj_mlp",
)

#: The text stream's layers, which the official targets leave frozen (FLUX's text pathway is strong already):
#: its input projection, the double blocks' text-side modulation, attention projections and feed-forward.
TEXT_STREAM_TARGETS: tuple[str, ...] = (
    "context_embedder",
    "norm1_context.linear",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "ff_context.net.0.proj",
    "ff_context.net.2",
)


def is_base_linear(module: nn.Module) -> bool:
    """A linear layer an adapter can wrap: `nn.Linear` or a quantized subclass of it (GGUF, bitsandbytes)."""
    return isinstance(module, nn.Linear)


def compute_dtype(base: nn.Linear) -> torch.dtype:
    """The dtype a base layer computes in: its weight's, or for weights stored quantized (GGUF, bitsandbytes
    4-bit: integer storage) the layer's `compute_dtype`, else float32. Adapter weights are made in it."""
    if base.weight.dtype.is_floating_point:
        return base.weight.dtype
    return getattr(base, "compute_dtype", None) or torch.float32


class AdapterError(DiptychError, ValueError):
    """An adapter operation that cannot be done in the model's current state (e.g. injecting twice)."""


@dataclass
class MoEConfig:
    """How to build LoRA-MoE adapters; the defaults are the official ICEdit MoE adapter.

    Targets are module names relative to a block (`"attn.to_q"` applies to every double and single
    block that has it), a top-level name from `TOP_LEVEL_TARGETS`, or a full path inside a block
    (`"transformer_blocks.3.ff.net.2"`). `lora_rank` / `lora_alpha` (None: same as `rank` / `alpha`)
    are for the plain-LoRA targets. `gate`, `dispatch`, `top_k` and `balance_loss` are explained on
    `MoELoRALinear`. `init` is the initialisation of the LoRA down-projections A ("gaussian": normal
    with std 1/rank as the official adapter; "kaiming": peft's default); B starts at zero.
    """

    num_experts: int = 4
    rank: int = 32
    alpha: float = 32.0
    top_k: int = 1
    gate: Gate = "official"
    dispatch: Dispatch = "dense"
    balance_loss: bool = False
    moe_targets: tuple[str, ...] = DEFAULT_MOE_TARGETS
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    router_context_dim: int | None = None
    lora_rank: int | None = None
    lora_alpha: float | None = None
    init: Init = "gaussian"

    def __post_init__(self) -> None:
        self.moe_targets = _as_names(self.moe_targets, "moe_targets")
        self.lora_targets = _as_names(self.lora_targets, "lora_targets")
        _check_positive_int(self.num_experts, "num_experts")
        _check_positive_int(self.rank, "rank")
        _check_top_k(self.top_k, self.num_experts)
        _check_choice(self.gate, GATES, "gate")
        _check_choice(self.dispatch, DISPATCHES, "dispatch")
        _check_choice(self.init, INITS, "init")
        _check_alpha(self.alpha, "alpha")
        if self.lora_rank is not None:
            _check_positive_int(self.lora_rank, "lora_rank")
        if self.lora_alpha is not None:
            _check_alpha(self.lora_alpha, "lora_alpha")
        if self.router_context_dim is not None:
            _check_positive_int(self.router_context_dim, "router_context_dim")
        overlap = sorted(set(self.moe_targets) & set(self.lora_targets))
        if overlap:
            raise ValueError(f"targets {overlap} are in both moe_targets and lora_targets; keep each in one")

    @property
    def plain_rank(self) -> int:
        """Rank of the plain-LoRA targets."""
        return self.lora_rank if self.lora_rank is not None else self.rank

    @property
    def plain_alpha(self) -> float:
        """Alpha of the plain-LoRA targets."""
        return self.lora_alpha if self.lora_alpha is not None else self.alpha


# ----------------------------------------------------------------------------------------------- layers


class _AdapterBase(nn.Module):
    """Shared plumbing: wraps a frozen `nn.Linear`, looks like one from outside (`weight`, `bias`,
    `in_features`, `out_features`), and runs the adapter in its own dtype."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        if isinstance(base, _AdapterBase):
            raise AdapterError("this layer already has an adapter; call remove_moe() first")
        if not isinstance(base, nn.Linear):
            raise TypeError(f"adapters wrap an nn.Linear, got {type(base).__name__}")
        _check_positive_int(rank, "rank")
        _check_alpha(alpha, "alpha")
        super().__init__()
        self.base = base
        self.rank = rank
        self.alpha = float(alpha)
        # A run-time multiplier on the adapter's output (like diffusers' LoRA `scale`); 0 disables it.
        self.scale = 1.0
        self._base_requires_grad = {name: p.requires_grad for name, p in base.named_parameters()}
        base.requires_grad_(False)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    @property
    def scaling(self) -> float:
        """alpha / rank, the LoRA scaling of the official adapter."""
        return self.alpha / self.rank

    def _adapter_dtype(self) -> torch.dtype:
        raise NotImplementedError

    def adapter_delta(self, x: torch.Tensor) -> torch.Tensor:
        """What the adapter adds to `base(x)`, in the adapter's dtype (scaling and `scale` applied)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.scale == 0 or getattr(self, "merged", False):
            return out
        return out + self.adapter_delta(x).to(out.dtype)

    def restore_base(self) -> nn.Linear:
        """The wrapped Linear with its original `requires_grad` flags back."""
        for name, p in self.base.named_parameters():
            p.requires_grad_(self._base_requires_grad.get(name, True))
        return self.base


def _init_down(weight: torch.Tensor, init: str, rank: int) -> None:
    _check_choice(init, INITS, "init")
    if init == "gaussian":
        nn.init.normal_(weight, std=1.0 / rank)
    else:
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))


class LoRALinear(_AdapterBase):
    """`base(x) + scale * (alpha/r) * B(A(x))` around a frozen `nn.Linear` (one expert, no router).

    B starts at zero, so a fresh layer returns exactly `base(x)`. Input of any shape `(..., in)`.
    `dtype` is the adapter's parameter dtype (default: the base weight's); the input is cast to it
    for the adapter path and the result cast back to the base output's dtype.
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int = 32,
        alpha: float = 32.0,
        *,
        init: Init = "gaussian",
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(base, rank, alpha)
        kw = {"device": base.weight.device, "dtype": dtype or compute_dtype(base)}
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, **kw)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, **kw)
        _init_down(self.lora_A.weight, init, rank)
        nn.init.zeros_(self.lora_B.weight)
        self.merged = False
        self._merged_scale = 0.0

    def _adapter_dtype(self) -> torch.dtype:
        return self.lora_A.weight.dtype

    def delta_weight(self) -> torch.Tensor:
        """`(alpha/r) * B @ A` in float32, shape (out, in); `scale` not applied."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling

    def adapter_delta(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(self._adapter_dtype())
        return self.lora_B(self.lora_A(h)) * (self.scaling * self.scale)

    @torch.no_grad()
    def fuse(self) -> None:
        """Add the adapter into the base weight (exact up to rounding); forward then skips the adapter."""
        if self.merged:
            return
        w = self.base.weight
        w.copy_((w.float() + self.delta_weight() * self.scale).to(w.dtype))
        self.merged = True
        self._merged_scale = self.scale

    @torch.no_grad()
    def unfuse(self) -> None:
        """Subtract what `fuse` added (the base weight comes back up to rounding in its dtype)."""
        if not self.merged:
            return
        w = self.base.weight
        w.copy_((w.float() - self.delta_weight() * self._merged_scale).to(w.dtype))
        self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, merged={self.merged}"


class MoELoRALinear(_AdapterBase):
    """A frozen `nn.Linear` plus a mixture of LoRA experts chosen per token by a linear router.

    `out = base(x) + scale * (alpha/r) * sum_e w_e(x) * B_e(A_e(x))` with router logits
    `lora_route(x)` (plus `lora_route_context(router_context)` when a context is set), top-k experts
    per token and weights `w` from the gate:

    - `gate="official"` (default): softmax over the k chosen logits only, as the released adapter.
      With `top_k=1` every weight is exactly 1, so the router gets no gradient from the task loss and
      stays at its initialisation (a flaw of the original, kept so official weights give official
      results).
    - `gate="learned"`: probabilities are the softmax over all E logits and each chosen expert is
      weighted by its probability, *not* renormalised over the chosen ones (Switch-Transformer
      style). Renormalising would make the top-1 weight identically 1 and bring the flaw back; the
      price is that the adapter's output is damped by the chosen probability (about 1/E at init).

    `dispatch="dense"` runs every expert on every token and zeroes the unchosen ones (official);
    `"sparse"` groups tokens by expert and runs each expert on its own tokens only. Both give the
    same result within float rounding (1e-5 absolute in float32 at unit-scale inputs).

    `balance_loss=True` stores after each forward `last_balance_loss = E * sum_e f_e * P_e`
    (f_e: share of the token-to-expert assignments that went to e, P_e: mean full-softmax router
    probability of e; 1.0 when balanced), which `moe_balance_loss(model)` collects. It gives the
    router a gradient with either gate.

    `collect_stats=True` accumulates per-expert assignment counts in `expert_counts` (k per token).
    `router_context` (a tensor (B, D) or (1, D), set directly or with `use_router_context`) adds
    `lora_route_context(context)` to every token's logits of the sample; the projection starts at
    zero so it changes nothing until trained.
    """

    def __init__(
        self,
        base: nn.Linear,
        num_experts: int = 4,
        rank: int = 32,
        alpha: float = 32.0,
        top_k: int = 1,
        *,
        gate: Gate = "official",
        dispatch: Dispatch = "dense",
        balance_loss: bool = False,
        router_context_dim: int | None = None,
        init: Init = "gaussian",
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(base, rank, alpha)
        _check_positive_int(num_experts, "num_experts")
        _check_top_k(top_k, num_experts)
        _check_choice(gate, GATES, "gate")
        _check_choice(dispatch, DISPATCHES, "dispatch")
        kw = {"device": base.weight.device, "dtype": dtype or compute_dtype(base)}
        self.num_experts = num_experts
        self.top_k = top_k
        self.gate = gate
        self.dispatch = dispatch
        self.balance_loss = balance_loss
        self.lora_A = nn.ModuleDict(
            {f"expert_{i}": nn.Linear(base.in_features, rank, bias=False, **kw) for i in range(num_experts)}
        )
        self.lora_B = nn.ModuleDict(
            {f"expert_{i}": nn.Linear(rank, base.out_features, bias=False, **kw) for i in range(num_experts)}
        )
        for a, b in zip(self.lora_A.values(), self.lora_B.values(), strict=True):
            _init_down(a.weight, init, rank)
            nn.init.zeros_(b.weight)
        self.lora_route = nn.Linear(base.in_features, num_experts, bias=False, **kw)
        self.lora_route_context: nn.Linear | None = None
        if router_context_dim is not None:
            _check_positive_int(router_context_dim, "router_context_dim")
            self.lora_route_context = nn.Linear(router_context_dim, num_experts, bias=False, **kw)
            nn.init.zeros_(self.lora_route_context.weight)
        self.register_buffer(
            "expert_counts",
            torch.zeros(num_experts, dtype=torch.int64, device=kw["device"]),
            persistent=False,
        )
        self.collect_stats = False
        self.router_context: torch.Tensor | None = None
        self.last_balance_loss: torch.Tensor | None = None

    @property
    def router_context_dim(self) -> int | None:
        """Width D of the router context, or None when the layer takes none."""
        return None if self.lora_route_context is None else self.lora_route_context.in_features

    def _adapter_dtype(self) -> torch.dtype:
        return self.lora_route.weight.dtype

    def fuse(self) -> None:
        """Not possible: the delta depends on each token's routing."""
        raise AdapterError(
            "an MoE layer cannot be fused into its base weight (its delta changes per token); export it "
            "to a plain LoRA with diptych.adapters.export_moe_to_lora and fuse that"
        )

    def router_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Router logits, shape (tokens, E), for input (..., in) flattened over the leading dims."""
        flat = x.to(self._adapter_dtype()).reshape(-1, self.in_features)
        logits = self.lora_route(flat)
        context = self.router_context
        if context is not None and self.lora_route_context is not None:
            logits = logits + self._context_logits(context, x)
        return logits

    def _context_logits(self, context: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        assert self.lora_route_context is not None
        dim = self.lora_route_context.in_features
        if context.dim() != 2 or context.shape[1] != dim:
            raise ValueError(f"router_context must have shape (batch, {dim}), got {tuple(context.shape)}")
        batch = x.shape[0] if x.dim() > 1 else 1
        if context.shape[0] not in (1, batch):
            raise ValueError(
                f"router_context has {context.shape[0]} rows but the input has batch {batch}; "
                "give one row per sample or a single row for all"
            )
        ctx = self.lora_route_context(context.to(device=x.device, dtype=self._adapter_dtype()))
        tokens = x[..., 0].numel() // batch
        # Broadcast each sample's context over its tokens, then flatten like the token logits.
        return ctx[:, None, :].expand(batch, tokens, -1).reshape(-1, self.num_experts)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Routing for input (..., in): (expert indices (tokens, k), weights (tokens, k) float32,
        logits (tokens, E))."""
        logits = self.router_logits(x)
        top_logits, top_idx = logits.topk(self.top_k, dim=-1)
        if self.gate == "official":
            weights = torch.softmax(top_logits.float(), dim=-1)
        else:
            weights = torch.softmax(logits.float(), dim=-1).gather(-1, top_idx)
        return top_idx, weights, logits

    def adapter_delta(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.to(self._adapter_dtype()).reshape(-1, self.in_features)
        top_idx, weights, logits = self.route(x)
        if self.collect_stats:
            self._count(top_idx)
        self.last_balance_loss = self._balance_loss(top_idx, logits) if self.balance_loss else None
        if self.dispatch == "sparse":
            delta = self._sparse(flat, top_idx, weights)
        else:
            delta = self._dense(flat, top_idx, weights)
        return (delta * (self.scaling * self.scale)).reshape(*x.shape[:-1], self.out_features)

    def _dense(self, flat: torch.Tensor, top_idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        # All experts in two matmuls: A stacked to (E*r, in), B side by side to (out, E*r); the
        # per-token weights (zero for unchosen experts) scale each expert's r hidden units.
        n, e, r = flat.shape[0], self.num_experts, self.rank
        a = torch.cat([m.weight for m in self.lora_A.values()], dim=0)
        b = torch.cat([m.weight for m in self.lora_B.values()], dim=1)
        dense_w = torch.zeros(n, e, dtype=flat.dtype, device=flat.device)
        dense_w = dense_w.scatter(-1, top_idx, weights.to(flat.dtype))
        hidden = F.linear(flat, a).view(n, e, r) * dense_w.unsqueeze(-1)
        return F.linear(hidden.reshape(n, e * r), b)

    def _sparse(self, flat: torch.Tensor, top_idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        # Sort the (token, expert) assignments by expert, gather their inputs once, run each expert on
        # its contiguous slice, then undo the sort with one gather. Gathers rather than index_add:
        # index_add is serial on CPU and was the slowest step.
        n, k = flat.shape[0], self.top_k
        experts = top_idx.reshape(-1)
        order = torch.argsort(experts, stable=True)
        inputs = flat.index_select(0, order // k)  # assignment p belongs to token p // k
        counts = torch.bincount(experts, minlength=self.num_experts).tolist()
        outputs = [
            self.lora_B[f"expert_{e}"](self.lora_A[f"expert_{e}"](chunk))
            for e, chunk in enumerate(inputs.split(counts))
            if counts[e] > 0
        ]
        ys = torch.cat(outputs) * weights.reshape(-1)[order].to(flat.dtype).unsqueeze(-1)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        ys = ys.index_select(0, inverse)
        return ys if k == 1 else ys.view(n, k, -1).sum(dim=1)

    @torch.no_grad()
    def _count(self, top_idx: torch.Tensor) -> None:
        idx = top_idx.reshape(-1).to(self.expert_counts.device)
        # index_add rather than bincount: no host sync on accelerators.
        self.expert_counts.index_add_(0, idx, torch.ones_like(idx))

    def _balance_loss(self, top_idx: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float(), dim=-1)
        one_hot = torch.zeros_like(probs).scatter(-1, top_idx, 1.0)
        frac = one_hot.sum(0) / top_idx.numel()
        return self.num_experts * (frac * probs.mean(0)).sum()

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, rank={self.rank}, alpha={self.alpha}, top_k={self.top_k}, "
            f"gate={self.gate!r}, dispatch={self.dispatch!r}, balance_loss={self.balance_loss}"
        )


AdapterLayer = LoRALinear | MoELoRALinear


# -------------------------------------------------------------------------------------------- injection


def resolve_targets(transformer: nn.Module, targets: Sequence[str]) -> dict[str, list[str]]:
    """Full module paths each target name stands for (see `MoEConfig` for the naming rules)."""
    modules = dict(transformer.named_modules())
    found: dict[str, list[str]] = {}
    block_prefixes = tuple(f"{b}." for b in BLOCK_LISTS)
    for target in targets:
        if target in TOP_LEVEL_TARGETS or target.startswith(block_prefixes):
            found[target] = [target] if target in modules else []
            continue
        paths = []
        for block_list in BLOCK_LISTS:
            blocks = getattr(transformer, block_list, None)
            for i in range(len(blocks) if blocks is not None else 0):
                path = f"{block_list}.{i}.{target}"
                if path in modules:
                    paths.append(path)
        found[target] = paths
    return found


def inject_moe(
    transformer: nn.Module,
    config: MoEConfig | None = None,
    *,
    freeze_base: bool = True,
    dtype: torch.dtype | None = None,
) -> dict[str, AdapterLayer]:
    """Wrap the target Linears of a FLUX transformer in `MoELoRALinear` / `LoRALinear` layers.

    Returns {module path: new layer}. Fresh layers are no-ops (B = 0). The wrapped Linears are always
    frozen; with `freeze_base` every other transformer parameter is frozen too (`remove_moe` does not
    unfreeze those). `dtype` is the adapters' parameter dtype (default: each base weight's).
    Raises ValueError for a target that matches no Linear and AdapterError if adapters are present.
    """
    config = config or MoEConfig()
    moe_paths = _paths_for(transformer, config.moe_targets)
    lora_paths = _paths_for(transformer, config.lora_targets)
    clash = sorted(set(moe_paths) & set(lora_paths))
    if clash:
        raise ValueError(f"modules {clash[:5]} are matched by both moe_targets and lora_targets")
    return _inject_paths(transformer, config, moe_paths, lora_paths, freeze_base=freeze_base, dtype=dtype)


def _paths_for(transformer: nn.Module, targets: Sequence[str]) -> list[str]:
    paths: list[str] = []
    for target, found in resolve_targets(transformer, targets).items():
        if not found:
            raise ValueError(
                f"adapter target {target!r} matches no module of this transformer; use a name relative to "
                f"a block (e.g. 'attn.to_q'), one of {list(TOP_LEVEL_TARGETS)} or a full path, or drop it"
            )
        paths.extend(found)
    return paths


def _inject_paths(
    transformer: nn.Module,
    config: MoEConfig,
    moe_paths: Sequence[str],
    lora_paths: Sequence[str],
    *,
    freeze_base: bool,
    dtype: torch.dtype | None,
) -> dict[str, AdapterLayer]:
    if adapter_layers(transformer):
        raise AdapterError("this transformer already has LoRA/MoE adapters; call remove_moe(transformer) first")
    bases: dict[str, nn.Linear] = {}
    for path in [*moe_paths, *lora_paths]:
        module = transformer.get_submodule(path)
        if not is_base_linear(module):
            raise TypeError(f"adapter target {path!r} is a {type(module).__name__}, not an nn.Linear")
        bases[path] = module
    if freeze_base:
        transformer.requires_grad_(False)
    injected: dict[str, AdapterLayer] = {}
    for path in moe_paths:
        injected[path] = MoELoRALinear(
            bases[path],
            config.num_experts,
            config.rank,
            config.alpha,
            config.top_k,
            gate=config.gate,
            dispatch=config.dispatch,
            balance_loss=config.balance_loss,
            router_context_dim=config.router_context_dim,
            init=config.init,
            dtype=dtype,
        )
    for path in lora_paths:
        injected[path] = LoRALinear(bases[path], config.plain_rank, config.plain_alpha, init=config.init, dtype=dtype)
    for path, layer in injected.items():
        _set_submodule(transformer, path, layer)
    return injected


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, child, module)  # also right for ModuleList / Sequential children ("0")


def remove_moe(transformer: nn.Module) -> int:
    """Put the original Linear modules back (fused plain layers are unfused first) and the attention q/k norm
    gains an adapter file replaced; returns how many Linear modules."""
    restore_qk_norms(transformer)
    layers = adapter_layers(transformer)
    for path, layer in layers.items():
        if isinstance(layer, LoRALinear):
            layer.unfuse()
        _set_submodule(transformer, path, layer.restore_base())
    return len(layers)


# ----------------------------------------------------------------------------------- model-wide helpers


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    """Every LoRA / MoE adapter layer of `model`, by module path."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear | MoELoRALinear)}


def moe_layers(model: nn.Module) -> dict[str, MoELoRALinear]:
    """Every MoE adapter layer of `model`, by module path."""
    return {n: m for n, m in model.named_modules() if isinstance(m, MoELoRALinear)}


def fuse_lora(model: nn.Module) -> int:
    """Fuse every plain LoRA layer into its base weight; MoE layers stay dynamic. Returns the count."""
    layers = [m for m in adapter_layers(model).values() if isinstance(m, LoRALinear)]
    for layer in layers:
        layer.fuse()
    return len(layers)


def unfuse_lora(model: nn.Module) -> int:
    """Undo `fuse_lora`. Returns the number of plain LoRA layers."""
    layers = [m for m in adapter_layers(model).values() if isinstance(m, LoRALinear)]
    for layer in layers:
        layer.unfuse()
    return len(layers)


def set_adapter_scale(model: nn.Module, scale: float) -> None:
    """Set the run-time output multiplier of every adapter layer (0 turns the adapters off)."""
    layers = adapter_layers(model)
    if any(isinstance(m, LoRALinear) and m.merged for m in layers.values()):
        raise AdapterError("plain LoRA layers are fused; call unfuse_lora(model) before changing the scale")
    for layer in layers.values():
        layer.scale = float(scale)


def configure_moe(
    model: nn.Module,
    *,
    gate: Gate | None = None,
    dispatch: Dispatch | None = None,
    top_k: int | None = None,
    balance_loss: bool | None = None,
) -> None:
    """Change the routing options of every MoE layer (None leaves an option as it is)."""
    layers = moe_layers(model)
    if not layers:
        raise AdapterError("the model has no MoE layers; inject or load an MoE adapter first")
    if gate is not None:
        _check_choice(gate, GATES, "gate")
    if dispatch is not None:
        _check_choice(dispatch, DISPATCHES, "dispatch")
    for layer in layers.values():
        if top_k is not None:
            _check_top_k(top_k, layer.num_experts)
            layer.top_k = top_k
        layer.gate = gate or layer.gate
        layer.dispatch = dispatch or layer.dispatch
        if balance_loss is not None:
            layer.balance_loss = balance_loss


def moe_balance_loss(model: nn.Module) -> torch.Tensor:
    """Mean over MoE layers of the load-balancing loss of their last forward (1.0 when balanced).

    Call once per forward pass and add `coef * loss` to the training loss (Switch Transformer used
    coef = 0.01). Raises AdapterError when no layer has the loss enabled or no forward ran yet.
    """
    layers = [m for m in moe_layers(model).values() if m.balance_loss]
    if not layers:
        raise AdapterError(
            "no MoE layer computes a balance loss; inject with MoEConfig(balance_loss=True) "
            "or call configure_moe(model, balance_loss=True)"
        )
    losses = [m.last_balance_loss for m in layers if m.last_balance_loss is not None]
    if not losses:
        raise AdapterError("no balance loss yet: run a forward pass through the model first")
    return torch.stack([loss.to(losses[0].device) for loss in losses]).mean()


def set_collect_stats(model: nn.Module, enabled: bool = True) -> None:
    """Turn routing-count collection on or off in every MoE layer."""
    for layer in moe_layers(model).values():
        layer.collect_stats = enabled


def routing_stats(model: nn.Module) -> dict[str, list[float]]:
    """Per MoE layer, how many token-to-expert assignments each expert received while
    `collect_stats` was on (each token counts `top_k` times)."""
    return {name: [float(c) for c in m.expert_counts.tolist()] for name, m in moe_layers(model).items()}


def reset_routing_stats(model: nn.Module) -> None:
    """Zero the routing counts of every MoE layer."""
    for layer in moe_layers(model).values():
        layer.expert_counts.zero_()


@contextmanager
def use_router_context(model: nn.Module, context: torch.Tensor | None) -> Iterator[None]:
    """Within the block, every MoE layer that takes a router context uses `context` (B, D) (or (1, D))."""
    layers = [m for m in moe_layers(model).values() if m.lora_route_context is not None]
    if not layers:
        raise AdapterError("no MoE layer takes a router context; inject with MoEConfig(router_context_dim=D)")
    previous = [m.router_context for m in layers]
    for layer in layers:
        layer.router_context = context
    try:
        yield
    finally:
        for layer, old in zip(layers, previous, strict=True):
            layer.router_context = old


# ---------------------------------------------------------------------------------------------- checks


def _check_positive_int(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_top_k(top_k: object, num_experts: int) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be an integer from 1 to num_experts={num_experts}, got {top_k!r}")


def _check_choice(value: object, choices: Sequence[str], name: str) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _check_alpha(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def _as_names(value: object, name: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence | set | frozenset):
        raise TypeError(f"{name} must be a sequence of module names, e.g. ('attn.to_q',), got {value!r}")
    names = tuple(value)
    if not all(isinstance(n, str) and n for n in names):
        raise TypeError(f"{name} must hold non-empty module names, got {names!r}")
    return names
