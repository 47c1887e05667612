"""LoRA-MoE checkpoints in the official ICEdit layout: recognise, load (checked key by key), save, and
export to a plain LoRA that stock diffusers loads.

Layout (the released `ICEdit-MoE-LoRA.safetensors`; the prefix may also be `base_model.model.` or
absent): plain layers `transformer.<module>.lora_A.weight` / `.lora_B.weight`; MoE layers
`transformer.<module>.lora_A.expert_{i}.weight`, `.lora_B.expert_{i}.weight`, `.lora_route.weight`.
diptych adds, when used, `.lora_route_context.weight` (the router-context projection) and accepts
`<module>.alpha` scalars. The official file stores no alpha: it was trained with alpha == rank, so
without other information alpha is taken equal to the rank (scaling 1). `save_moe_adapter` writes the
options the layout cannot hold (alphas, top_k, gate) into the safetensors metadata, where
`load_moe_adapter` finds them again.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import nn

from ..errors import WeightsError
from ..files import write_atomic
from .lora import adapter_qk_norms, is_qk_norm_key, load_qk_norms, summarize_problems
from .moe import (
    BLOCK_LISTS,
    AdapterError,
    AdapterLayer,
    LoRALinear,
    MoEConfig,
    MoELoRALinear,
    _inject_paths,
    adapter_layers,
    is_base_linear,
    resolve_targets,
    routing_stats,
)

PREFIXES: tuple[str, ...] = ("base_model.model.", "transformer.")
EXPORT_PREFIX = "transformer"
METADATA_KEY = "diptych_moe"
MAX_LISTED = 5

_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<param>(?:lora_A|lora_B)(?:\.expert_(?P<expert>\d+))?\.weight"
    r"|lora_route\.weight|lora_route_context\.weight|alpha)$"
)
# Options a caller may override; the rest of MoEConfig is read from the checkpoint's tensors.
_OVERRIDABLE = frozenset({"alpha", "lora_alpha", "top_k", "gate", "dispatch", "balance_loss", "init"})
_INFERRED = frozenset({"num_experts", "rank", "lora_rank", "router_context_dim"})


@dataclass
class _Module:
    """The tensors of one adapted module, by the parameter name they have in the adapter layer."""

    path: str
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # parameter name -> key as written in the file
    alpha: float | None = None

    @property
    def is_moe(self) -> bool:
        return any(".expert_" in name or name.startswith("lora_route") for name in self.tensors)

    def experts(self) -> list[int]:
        found = {int(m.group(1)) for n in self.tensors if (m := re.search(r"expert_(\d+)", n))}
        return sorted(found)


def strip_prefix(key: str) -> str:
    """The key without a leading `base_model.model.` and/or `transformer.`."""
    for prefix in PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def is_moe_state_dict(state_dict: Mapping[str, object]) -> bool:
    """Whether the keys are those of a LoRA-MoE adapter (expert or router weights present)."""
    for key in state_dict:
        match = _KEY.match(strip_prefix(key))
        if match and (match.group("expert") is not None or match.group("param").startswith("lora_route")):
            return True
    return False


# ------------------------------------------------------------------------------------------------ load


def load_moe_adapter(
    transformer: nn.Module,
    source: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    *,
    scale: float = 1.0,
    freeze_base: bool = True,
    dtype: torch.dtype | None = None,
    **overrides: object,
) -> MoEConfig:
    """Inject and load a LoRA-MoE adapter (a `.safetensors` file or a state dict) into a FLUX transformer.

    The number of experts, the ranks and the router-context width come from the tensors; the modules
    adapted are exactly those in the checkpoint. Every key is checked against the transformer before
    anything changes: unknown modules, unrecognised names, missing or mis-shaped tensors raise a
    `WeightsError` listing the first few with expected vs actual shapes. `overrides` may set `alpha`,
    `lora_alpha`, `top_k`, `gate`, `dispatch`, `balance_loss`, `init`; giving an inferred field
    (`num_experts`, `rank`, `lora_rank`, `router_context_dim`) that disagrees with the checkpoint is
    an error. `scale` is the adapters' run-time multiplier. Returns the config that was applied.
    """
    _check_overrides(overrides)
    if not (isinstance(scale, int | float) and math.isfinite(scale)):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    if adapter_layers(transformer):
        raise AdapterError("this transformer already has LoRA/MoE adapters; call remove_moe(transformer) first")
    state_dict, metadata = _read(source)
    state_dict, gains = _split_qk_norms(state_dict)
    groups = _group(state_dict)
    moe = [g for g in groups.values() if g.is_moe]
    if not moe:
        raise WeightsError(
            "this checkpoint has no MoE keys (lora_A.expert_{i} / lora_route); it is a plain LoRA: load it "
            "with pipe.load_lora_weights(...) instead"
        )
    plain = [g for g in groups.values() if not g.is_moe]
    num_experts, rank, plain_rank, context_dim = _infer_sizes(moe, plain)
    _check_against(transformer, groups, num_experts, rank, plain_rank or rank, context_dim)
    if gains:
        load_qk_norms(transformer, gains)  # checks every key before it copies any

    config = _config(metadata, num_experts, rank, plain_rank, context_dim, overrides)
    moe_paths = _in_model_order(transformer, [g.path for g in moe])
    lora_paths = _in_model_order(transformer, [g.path for g in plain])
    config = replace(
        config,
        moe_targets=_compress(transformer, moe_paths),
        lora_targets=_compress(transformer, lora_paths),
    )
    injected = _inject_paths(transformer, config, moe_paths, lora_paths, freeze_base=freeze_base, dtype=dtype)
    alphas = _alphas(metadata, groups, overrides)
    with torch.no_grad():
        for path, layer in injected.items():
            params = dict(layer.named_parameters())
            for name, tensor in groups[path].tensors.items():
                params[name].copy_(tensor)
            if path in alphas:
                layer.alpha = alphas[path]
            layer.scale = float(scale)
    return config


def copy_moe_weights(transformer: nn.Module, source: str | os.PathLike[str] | Mapping[str, torch.Tensor]) -> int:
    """Copy a checkpoint into the adapter layers `transformer` already has (`inject_moe` first): the way to
    fine-tune or continue a saved adapter with fresh optimizer state. Both sides must hold the same modules, weights,
    shapes and alphas, checked before anything is copied (a `WeightsError` lists what differs). Returns the number
    of tensors copied."""
    state_dict, metadata = _read(source)
    state_dict, gains = _split_qk_norms(state_dict)
    groups = _group(state_dict)
    layers = adapter_layers(transformer)
    alphas = _alphas(metadata, groups, {})
    problems = [f"{path}: in the checkpoint, not adapted in the model" for path in sorted(set(groups) - set(layers))]
    problems += [f"{path}: adapted in the model, not in the checkpoint" for path in sorted(set(layers) - set(groups))]
    targets: list[tuple[nn.Parameter, torch.Tensor]] = []
    for path in sorted(set(groups) & set(layers)):
        tensors = groups[path].tensors
        params = {n: p for n, p in layers[path].named_parameters() if not n.startswith("base.")}
        for name in sorted(tensors.keys() | params.keys()):
            tensor, param = tensors.get(name), params.get(name)
            if tensor is None or param is None:
                problems.append(f"{path}.{name}: only in the {'model' if tensor is None else 'checkpoint'}")
            elif tensor.shape != param.shape:
                problems.append(f"{path}.{name}: {tuple(tensor.shape)} in the checkpoint, {tuple(param.shape)} here")
            else:
                targets.append((param, tensor))
        if path in alphas and alphas[path] != layers[path].alpha:
            problems.append(f"{path}: alpha {alphas[path]:g} in the checkpoint, {layers[path].alpha:g} here")
    _raise_if(
        problems,
        "the checkpoint does not fit this model's adapter",
        "Use the experts, ranks, alphas and targets it was trained with",
    )
    if gains:
        load_qk_norms(transformer, gains)
    with torch.no_grad():
        for param, tensor in targets:
            param.copy_(tensor)
    return len(targets)


def _split_qk_norms(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    """(the LoRA / MoE tensors, the attention q/k norm gains an adapter trained with `--train-norms` carries)."""
    gains = {k: v for k, v in state_dict.items() if is_qk_norm_key(k)}
    return {k: v for k, v in state_dict.items() if k not in gains}, gains


def _infer_sizes(moe: Sequence[_Module], plain: Sequence[_Module]) -> tuple[int, int, int | None, int | None]:
    """(experts, MoE rank, plain rank, router-context width), each the most common value over the layers
    (the odd ones out are then reported as mis-shaped)."""
    num_experts = _most_common([len(g.experts()) for g in moe if g.experts()]) or _most_common(
        [t.shape[0] for g in moe if (t := g.tensors.get("lora_route.weight")) is not None and t.dim() == 2]
    )
    if not num_experts:
        raise WeightsError("the checkpoint's MoE layers have no usable lora_A.expert_{i} / lora_route weights")
    rank = _most_common([t.shape[0] for g in moe for n, t in g.tensors.items() if _is_down(n, t)]) or 0
    plain_rank = _most_common([t.shape[0] for g in plain for n, t in g.tensors.items() if _is_down(n, t)])
    context_dim = _most_common(
        [t.shape[1] for g in moe if (t := g.tensors.get("lora_route_context.weight")) is not None and t.dim() == 2]
    )
    return num_experts, rank, plain_rank, context_dim


def _check_overrides(overrides: Mapping[str, object]) -> None:
    names = {f.name for f in fields(MoEConfig)}
    for key in overrides:
        if key in ("moe_targets", "lora_targets"):
            raise TypeError(f"{key} cannot be overridden: the modules adapted are those in the checkpoint")
        if key not in names:
            raise TypeError(f"load_moe_adapter() got an unknown option {key!r}; options: {sorted(names)}")


def _read(source: str | os.PathLike[str] | Mapping[str, torch.Tensor]) -> tuple[dict, dict[str, str]]:
    if isinstance(source, Mapping):
        bad = [k for k, v in source.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise TypeError(f"a state dict maps str keys to tensors; these entries do not: {bad[:MAX_LISTED]}")
        return dict(source), {}
    if not isinstance(source, str | os.PathLike):
        raise TypeError(f"expected a .safetensors path or a state dict, got {type(source).__name__}")
    path = Path(source)
    if not path.is_file():
        raise WeightsError(f"adapter file {path} does not exist")
    if path.suffix != ".safetensors":
        raise WeightsError(
            f"adapter {path} is not a .safetensors file; diptych never unpickles weights. "
            "Convert it with safetensors.torch.save_file first"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        return load_file(str(path)), metadata
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise WeightsError(f"adapter {path} is not a readable safetensors file ({err})") from err


def _group(state_dict: Mapping[str, torch.Tensor]) -> dict[str, _Module]:
    groups: dict[str, _Module] = {}
    problems: list[str] = []
    for key, tensor in state_dict.items():
        match = _KEY.match(strip_prefix(key))
        if match is None:
            problems.append(
                f"{key}: not an adapter key (expected <module>.lora_A[.expert_i].weight, "
                "<module>.lora_B[.expert_i].weight or <module>.lora_route.weight)"
            )
            continue
        path, name = match.group("module"), match.group("param")
        group = groups.setdefault(path, _Module(path))
        if name == "alpha":
            if tensor.numel() != 1 or tensor.dtype == torch.bool:
                problems.append(f"{key}: alpha must be a single number, got shape {tuple(tensor.shape)}")
            else:
                group.alpha = float(tensor.reshape(()).item())
            continue
        if name in group.tensors:
            problems.append(f"{key}: duplicate of {group.keys[name]} (same module under another prefix)")
            continue
        group.tensors[name] = tensor
        group.keys[name] = key
    for group in groups.values():
        if not group.tensors:
            problems.append(f"{group.path}.alpha: an alpha without lora_A/lora_B weights")
    _raise_if(problems, "adapter checkpoint has unrecognised keys", "Is it an ICEdit MoE file?")
    return groups


def _is_down(name: str, tensor: torch.Tensor) -> bool:
    return name.startswith("lora_A") and tensor.dim() == 2


def _most_common(values: Sequence[int]) -> int | None:
    return Counter(values).most_common(1)[0][0] if values else None


def _expected_shapes(
    linear: nn.Linear, is_moe: bool, num_experts: int, rank: int, context_dim: int | None
) -> dict[str, tuple[int, ...]]:
    d_in, d_out = linear.in_features, linear.out_features
    if not is_moe:
        return {"lora_A.weight": (rank, d_in), "lora_B.weight": (d_out, rank)}
    shapes: dict[str, tuple[int, ...]] = {"lora_route.weight": (num_experts, d_in)}
    for i in range(num_experts):
        shapes[f"lora_A.expert_{i}.weight"] = (rank, d_in)
        shapes[f"lora_B.expert_{i}.weight"] = (d_out, rank)
    if context_dim is not None:
        shapes["lora_route_context.weight"] = (num_experts, context_dim)
    return shapes


def _check_against(
    transformer: nn.Module,
    groups: Mapping[str, _Module],
    num_experts: int,
    rank: int,
    plain_rank: int,
    context_dim: int | None,
) -> None:
    modules = dict(transformer.named_modules())
    problems: list[str] = []
    for path, group in groups.items():
        first = next(iter(group.keys.values()))
        module = modules.get(path)
        if module is None:
            problems.append(f"{first}: this transformer has no module {path!r}")
            continue
        if not is_base_linear(module):
            problems.append(f"{first}: module {path!r} is a {type(module).__name__}, not an nn.Linear")
            continue
        r = rank if group.is_moe else plain_rank
        expected = _expected_shapes(module, group.is_moe, num_experts, r, context_dim)
        for name, tensor in group.tensors.items():
            key = group.keys[name]
            if name not in expected:
                what = f"{num_experts} experts" if group.is_moe else "a plain LoRA layer"
                problems.append(f"{key}: unexpected for {what}")
            elif tuple(tensor.shape) != expected[name]:
                problems.append(f"{key}: expected shape {expected[name]}, got {tuple(tensor.shape)}")
        for name in expected:
            if name not in group.tensors:
                problems.append(f"{path}.{name}: missing, expected shape {expected[name]}")
    _raise_if(problems, "the adapter does not fit this model", "Was it trained for another base model (--base)?")


def _raise_if(problems: Sequence[str], what: str, hint: str = "") -> None:
    if not problems:
        return
    raise WeightsError(f"{what}: {summarize_problems(list(problems))}{'. ' + hint if hint else ''}")


def _config(
    metadata: Mapping[str, str],
    num_experts: int,
    rank: int,
    plain_rank: int | None,
    context_dim: int | None,
    overrides: Mapping[str, object],
) -> MoEConfig:
    inferred = {
        "num_experts": num_experts,
        "rank": rank,
        "lora_rank": plain_rank if plain_rank not in (None, rank) else None,
        "router_context_dim": context_dim,
    }
    for key in _INFERRED & overrides.keys():
        if overrides[key] != inferred[key] and not (key == "lora_rank" and overrides[key] == plain_rank):
            raise WeightsError(
                f"the checkpoint has {key}={inferred[key]!r} but {key}={overrides[key]!r} was asked for; "
                f"drop the {key} option"
            )
    options: dict[str, object] = dict(_stored(metadata).get("options", {}))
    options.update({k: v for k, v in overrides.items() if k in _OVERRIDABLE})
    if "alpha" not in options:
        # No alpha anywhere: the official convention, alpha == rank (scaling 1) for every layer.
        options["alpha"] = float(rank)
        if options.get("lora_alpha") is None and inferred["lora_rank"] is not None:
            options["lora_alpha"] = float(inferred["lora_rank"])
    return MoEConfig(**inferred, **options)  # type: ignore[arg-type]


def _stored(metadata: Mapping[str, str]) -> dict[str, dict]:
    """The diptych metadata of a saved adapter: {"options": {...}, "alphas": {path: alpha}}."""
    raw = metadata.get(METADATA_KEY)
    if raw is None:
        return {}
    try:
        stored = json.loads(raw)
    except json.JSONDecodeError as err:
        raise WeightsError(f"the adapter's {METADATA_KEY!r} metadata is not valid JSON ({err})") from err
    if not isinstance(stored, dict) or not all(isinstance(stored.get(k, {}), dict) for k in ("options", "alphas")):
        raise WeightsError(f"the adapter's {METADATA_KEY!r} metadata must hold JSON objects 'options', 'alphas'")
    options = {k: v for k, v in stored.get("options", {}).items() if k in _OVERRIDABLE}
    return {"options": options, "alphas": stored.get("alphas", {})}


def _alphas(
    metadata: Mapping[str, str], groups: Mapping[str, _Module], overrides: Mapping[str, object]
) -> dict[str, float]:
    """Per-module alphas: overrides, else `.alpha` keys, else metadata; absent ones keep the config's."""
    stored = _stored(metadata).get("alphas", {})
    alphas: dict[str, float] = {}
    for path, group in groups.items():
        override = overrides.get("alpha" if group.is_moe else "lora_alpha")
        if override is None and not group.is_moe:
            override = overrides.get("alpha") if "lora_alpha" not in overrides else None
        if override is not None:
            alphas[path] = float(override)  # type: ignore[arg-type]
        elif group.alpha is not None:
            alphas[path] = group.alpha
        elif path in stored:
            alphas[path] = float(stored[path])
    return alphas


def _in_model_order(transformer: nn.Module, paths: Sequence[str]) -> list[str]:
    wanted = set(paths)
    return [name for name, _ in transformer.named_modules() if name in wanted]


def _compress(transformer: nn.Module, paths: Sequence[str]) -> tuple[str, ...]:
    """Target names for `paths`: a block-relative name where it covers exactly its modules, else paths."""
    remaining = list(paths)
    names: list[str] = []
    block_prefixes = tuple(f"{b}." for b in BLOCK_LISTS)
    relative = dict.fromkeys(p.split(".", 2)[2] for p in paths if p.startswith(block_prefixes))
    for rel, full in resolve_targets(transformer, list(relative)).items():
        if full and set(full) <= set(remaining):
            names.append(rel)
            remaining = [p for p in remaining if p not in full]
    return (*names, *remaining)


# ------------------------------------------------------------------------------------------------ save


def save_moe_adapter(transformer: nn.Module, path: str | os.PathLike[str], *, prefix: str = "transformer") -> Path:
    """Write every adapter layer of `transformer` in the official layout to a `.safetensors` file.

    The file is written atomically (a temporary file in the same folder, then renamed). Alphas and
    routing options go into the metadata. Returns the path.
    """
    layers = adapter_layers(transformer)
    if not any(isinstance(m, MoELoRALinear) for m in layers.values()):
        raise AdapterError("the transformer has no MoE layers to save; inject_moe or load_moe_adapter first")
    target = Path(path)
    if target.suffix != ".safetensors":
        raise ValueError(f"save the adapter as a .safetensors file, got {target.name!r}")
    if not target.parent.is_dir():
        raise ValueError(f"folder {target.parent} does not exist; create it first")
    lead = f"{prefix}." if prefix else ""
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        for pname, param in layer.named_parameters():
            if not pname.startswith("base."):
                tensors[f"{lead}{name}.{pname}"] = param.detach().to("cpu").contiguous().clone()
    tensors |= {f"{lead}{name}": gain for name, gain in adapter_qk_norms(transformer).items()}
    metadata = {"format": "pt", METADATA_KEY: json.dumps(_options_of(layers))}
    return write_atomic(target, save(tensors, metadata=metadata))


def _options_of(layers: Mapping[str, AdapterLayer]) -> dict[str, object]:
    moe = [m for m in layers.values() if isinstance(m, MoELoRALinear)]
    first = moe[0]
    options: dict[str, object] = {"alpha": first.alpha, "top_k": first.top_k, "gate": first.gate}
    plain = [m for m in layers.values() if isinstance(m, LoRALinear)]
    if plain:
        options["lora_alpha"] = plain[0].alpha
    return {"options": options, "alphas": {name: m.alpha for name, m in layers.items()}}


# ---------------------------------------------------------------------------------------------- export


def export_moe_to_lora(
    source: nn.Module | Mapping[str, torch.Tensor],
    weighting: str = "mean",
    usage: Mapping[str, Sequence[float]] | None = None,
    *,
    alpha: float | None = None,
) -> dict[str, torch.Tensor]:
    """A plain LoRA in diffusers' Flux format (`transformer.<module>.lora_A.weight` / `.lora_B.weight`)
    with each MoE layer replaced by the expert-weighted average of its deltas, exactly.

    Averaging the experts' A and B separately is not the average of their products, so each MoE
    layer becomes one LoRA of rank E*r: A = [A_1; ...; A_E] (E*r, in) and
    B = [w_1 s B_1, ..., w_E s B_E] (out, E*r), whose product is sum_e w_e s B_e A_e with s = alpha/r.
    The scaling is folded into B, so the result has the diffusers convention of scaling 1 (no alpha
    keys). Plain layers pass through (scaling folded likewise). The run-time `scale` is not included.

    `weighting="mean"`: w_e = 1/E. `weighting="usage"`: w_e = each expert's share of routed tokens,
    from `usage` ({layer path: counts}) or, for a model, its `routing_stats` (collect them on data
    like the data you will edit; top-1 routing per token is not a mean, this is its average).
    `source` is a model with adapters or an MoE state dict (official layout; `alpha` then applies to
    every layer, default alpha == rank). Tensors come back on the CPU in the adapter's dtype.
    """
    if weighting not in ("mean", "usage"):
        raise ValueError(f"weighting must be 'mean' or 'usage', got {weighting!r}")
    if alpha is not None and not (isinstance(alpha, int | float) and alpha > 0):
        raise ValueError(f"alpha must be a positive number, got {alpha!r}")
    if isinstance(source, nn.Module):
        if alpha is not None:
            raise ValueError("alpha is read from the model's layers; pass it only with a state dict")
        parts = _parts_of_model(source)
        gains = {f"{EXPORT_PREFIX}.{name}": gain for name, gain in adapter_qk_norms(source).items()}
        if weighting == "usage" and usage is None:
            usage = routing_stats(source)
    elif isinstance(source, Mapping):
        source, gains = _split_qk_norms(_read(source)[0])
        gains = {f"{EXPORT_PREFIX}.{strip_prefix(k)}": v for k, v in gains.items()}
        parts = _parts_of_state_dict(source, alpha)
    else:
        raise TypeError(f"export_moe_to_lora takes a model or a state dict, got {type(source).__name__}")
    out: dict[str, torch.Tensor] = {}
    for part in parts:
        if not part.is_moe:
            weights = [1.0]
        elif weighting == "mean":
            weights = [1.0 / len(part.downs)] * len(part.downs)
        else:
            weights = _usage_weights(part.path, len(part.downs), usage)
        a, b = _merge(part.downs, part.ups, weights, part.scaling)
        out[f"{EXPORT_PREFIX}.{part.path}.lora_A.weight"] = a
        out[f"{EXPORT_PREFIX}.{part.path}.lora_B.weight"] = b
    return out | gains  # the q/k norm gains are not per expert: they pass through


@dataclass
class _Part:
    """One adapted module to export: its down (A) and up (B) matrices, one pair per expert."""

    path: str
    downs: list[torch.Tensor]
    ups: list[torch.Tensor]
    scaling: float
    is_moe: bool


def _parts_of_model(model: nn.Module) -> list[_Part]:
    found = adapter_layers(model)
    if not any(isinstance(m, MoELoRALinear) for m in found.values()):
        raise AdapterError("the model has no MoE layers to export; inject_moe or load_moe_adapter first")
    parts = []
    for path, m in found.items():
        if isinstance(m, MoELoRALinear):
            downs = [lin.weight for lin in m.lora_A.values()]
            ups = [lin.weight for lin in m.lora_B.values()]
            parts.append(_Part(path, downs, ups, m.scaling, True))
        else:
            parts.append(_Part(path, [m.lora_A.weight], [m.lora_B.weight], m.scaling, False))
    return parts


def _parts_of_state_dict(state_dict: Mapping[str, torch.Tensor], alpha: float | None) -> list[_Part]:
    groups = _group(dict(_read(state_dict)[0]))
    if not any(g.is_moe for g in groups.values()):
        raise WeightsError("the state dict has no MoE keys (lora_A.expert_{i} / lora_route); nothing to export")
    parts, problems = [], []
    for path, g in groups.items():
        if g.is_moe:
            experts = g.experts()
            names = [(f"lora_A.expert_{i}.weight", f"lora_B.expert_{i}.weight") for i in experts]
        else:
            names = [("lora_A.weight", "lora_B.weight")]
        missing = [n for pair in names for n in pair if n not in g.tensors]
        if missing or (g.is_moe and experts != list(range(len(experts)))):
            problems.append(f"{path}: incomplete experts (missing {missing or 'a middle expert index'})")
            continue
        downs = [g.tensors[a] for a, _ in names]
        ups = [g.tensors[b] for _, b in names]
        bad = [
            f"{g.keys[b]}: shape {tuple(u.shape)} does not chain with {g.keys[a]} {tuple(d.shape)}"
            for (a, b), d, u in zip(names, downs, ups, strict=True)
            if d.dim() != 2 or u.dim() != 2 or u.shape[1] != d.shape[0]
        ]
        if bad or len({(tuple(d.shape), tuple(u.shape)) for d, u in zip(downs, ups, strict=True)}) != 1:
            problems.extend(bad or [f"{path}: experts of different shapes"])
            continue
        rank = downs[0].shape[0]
        layer_alpha = g.alpha if g.alpha is not None else (alpha if alpha is not None else float(rank))
        parts.append(_Part(path, downs, ups, layer_alpha / rank, g.is_moe))
    _raise_if(problems, "cannot export this state dict")
    return parts


def _usage_weights(path: str, num_experts: int, usage: Mapping[str, Sequence[float]] | None) -> list[float]:
    if usage is None or path not in usage:
        raise ValueError(
            f"no usage counts for MoE layer {path!r}; pass usage={{layer path: counts}} or, for a model, "
            "collect routing stats (set_collect_stats(model, True)) on some inputs first"
        )
    counts = [float(c) for c in usage[path]]
    if len(counts) != num_experts or any(not math.isfinite(c) or c < 0 for c in counts):
        raise ValueError(f"usage for {path!r} must be {num_experts} non-negative counts, got {counts}")
    total = sum(counts)
    if total == 0:
        raise ValueError(
            f"no token was routed through {path!r}: collect routing stats (set_collect_stats(model, True), "
            "then run some inputs) before exporting with weighting='usage', or use weighting='mean'"
        )
    return [c / total for c in counts]


def _merge(
    downs: Sequence[torch.Tensor], ups: Sequence[torch.Tensor], weights: Sequence[float], scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = downs[0].dtype
    a = torch.cat([d.detach().float().cpu() for d in downs], dim=0)
    b = torch.cat([u.detach().float().cpu() * (w * scaling) for u, w in zip(ups, weights, strict=True)], dim=1)
    return a.to(dtype).contiguous(), b.to(dtype).contiguous()
