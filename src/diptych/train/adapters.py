"""Putting trainable adapters on a FLUX Fill transformer and exporting them in the formats `diptych edit`
loads: plain LoRA through peft (saved in diffusers' Flux LoRA format) and LoRA-MoE through
`diptych.adapters.moe` (saved in the official ICEdit MoE layout)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..adapters.load import FILL_REGION_KEY, MASKED_CONTENT_KEY
from ..adapters.lora import adapter_qk_norms, qk_norm_parameters
from ..adapters.moe import DEFAULT_LORA_TARGETS, DEFAULT_MOE_TARGETS, MoEConfig, inject_moe, resolve_targets
from ..files import write_atomic
from .config import ConfigError, TrainConfig

#: The official ICEdit plain-LoRA targets: the MoE targets of the MoE adapter plus its plain ones.
OFFICIAL_LORA_TARGETS: tuple[str, ...] = (*DEFAULT_LORA_TARGETS, *DEFAULT_MOE_TARGETS)
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
MOE_WEIGHT_NAME = "adapter.safetensors"


def lora_module_paths(transformer: nn.Module, targets: tuple[str, ...] | list[str]) -> list[str]:
    """Full module paths for block-relative target names (so `proj_out` never hits the output head)."""
    paths: list[str] = []
    for target, found in resolve_targets(transformer, list(targets)).items():
        if not found:
            raise ConfigError(f"LoRA target {target!r} matches no module of this transformer")
        paths.extend(found)
    return paths


def add_lora(transformer: nn.Module, config: TrainConfig) -> list[str]:
    """Freeze the transformer and add a trainable peft LoRA (gaussian init) on the targets (and, with
    `train_norms`, make the attention q/k norm gains trainable)."""
    from peft import LoraConfig

    targets = tuple(config.lora_targets or OFFICIAL_LORA_TARGETS)
    paths = lora_module_paths(transformer, targets)
    transformer.requires_grad_(False)
    transformer.add_adapter(
        LoraConfig(r=config.rank, lora_alpha=config.alpha, init_lora_weights="gaussian", target_modules=paths)
    )
    if config.train_norms:
        _unfreeze_qk_norms(transformer)
    return paths


def _unfreeze_qk_norms(transformer: nn.Module) -> None:
    gains = qk_norm_parameters(transformer)
    if not gains:
        raise ConfigError("train_norms: this transformer has no attention q/k norms (norm_q, norm_k) to train")
    for p in gains.values():
        p.requires_grad_(True)


def add_moe(transformer: nn.Module, config: TrainConfig) -> MoEConfig:
    """Freeze the transformer and inject LoRA-MoE layers: experts on `ff.net.2` and the single blocks'
    `proj_out`, plain LoRA on the other official targets (or on `lora_targets`, less those two)."""
    kwargs = {}
    if config.lora_targets is not None:
        kwargs["lora_targets"] = tuple(t for t in config.lora_targets if t not in DEFAULT_MOE_TARGETS)
    try:
        moe_config = MoEConfig(
            num_experts=config.num_experts,
            rank=config.rank,
            alpha=config.alpha,
            top_k=config.top_k,
            gate=config.gate,  # type: ignore[arg-type]
            dispatch=config.dispatch,  # type: ignore[arg-type]
            balance_loss=config.balance_loss_weight > 0,
            **kwargs,
        )
        inject_moe(transformer, moe_config, freeze_base=True, dtype=torch.float32)
    except (ValueError, TypeError) as err:  # e.g. a target that names no module of this transformer
        raise ConfigError(f"cannot add the MoE adapter: {err}") from err
    if config.train_norms:
        _unfreeze_qk_norms(transformer)
    return moe_config


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def lora_scalings(transformer: nn.Module) -> dict[str, float]:
    """Each peft LoRA layer's alpha / rank, by module path."""
    scalings = {}
    for name, module in transformer.named_modules():
        scaling = getattr(module, "scaling", None)
        if isinstance(scaling, dict) and scaling:
            scalings[name] = float(next(iter(scaling.values())))
    return scalings


def lora_state_dict(transformer: nn.Module) -> dict[str, torch.Tensor]:
    """The peft LoRA weights in diffusers' key layout, with alpha / rank folded into B.

    Folding makes the file independent of alpha (loaders assume scaling 1 when a file names none),
    so `diptych edit --lora` reproduces the trained model exactly whatever alpha was used.
    """
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(transformer)
    scalings = lora_scalings(transformer)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        tensor = tensor.detach().to("cpu", torch.float32)
        if ".lora_B." in key:
            tensor = tensor * scalings.get(key.split(".lora_B.")[0], 1.0)
        out[key] = tensor.contiguous()
    return out


def init_adapter_weights(transformer: nn.Module, config: TrainConfig, path: Path) -> None:
    """Start the adapter just added for `config` from an exported one (its `.safetensors` file: `resolve_adapter_file`
    of a file or run folder, as `diptych edit --lora` takes it) instead of its fresh initialisation: continuing an
    adapter whose checkpoints are gone, or fine-tuning one; for `objective: locate`, a locator file (its LoRA and
    head). Every tensor is checked against the model before any
    is copied."""
    from ..adapters.lora import (
        is_qk_norm_key,
        load_qk_norms,
        read_adapter_state_dict,
        summarize_problems,
    )
    from ..adapters.moe_io import copy_moe_weights, strip_prefix
    from ..errors import WeightsError

    if config.adapter == "moe":
        copy_moe_weights(transformer, path)
        return
    from peft.utils import set_peft_model_state_dict

    if config.objective == "locate":  # a locator file: its LoRA, and its head onto the one the run attached
        from ..locator import read_locator_file, split_locator_state
        from .locate import HEAD_ATTRIBUTE

        lora, head = split_locator_state(read_locator_file(path)[0])
        try:
            getattr(transformer, HEAD_ATTRIBUTE).load_state_dict(head)
        except RuntimeError as err:
            raise WeightsError(f"locator {path}: its head does not fit this transformer ({err})") from err
        state = {strip_prefix(k): v for k, v in lora.items()}
    else:
        state = {strip_prefix(k): v for k, v in read_adapter_state_dict(path).items()}
    gains = {k: v for k, v in state.items() if is_qk_norm_key(k)}
    expected = lora_state_dict(transformer)  # B with alpha / rank folded in, as export_adapter writes it
    problems = [f"{k}: only in {path.name}" for k in sorted(state.keys() - expected.keys() - gains.keys())]
    problems += [f"{k}: not in {path.name}" for k in sorted(expected.keys() - state.keys())]
    problems += [
        f"{k}: {tuple(state[k].shape)} in {path.name}, {tuple(v.shape)} here"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if problems:
        raise WeightsError(
            f"adapter {path} does not fit the LoRA of this config: {summarize_problems(problems)}. Use the rank "
            "and targets it was trained with"
        )
    scalings = lora_scalings(transformer)
    unfolded = {
        k: v / scalings.get(k.split(".lora_B.")[0], 1.0) if ".lora_B." in k else v
        for k, v in state.items()
        if k in expected
    }
    set_peft_model_state_dict(transformer, unfolded)
    if gains:
        load_qk_norms(transformer, gains)


def export_adapter(transformer: nn.Module, config: TrainConfig, folder: Path) -> Path:
    """Write the adapter into `folder` (atomically) in the format `diptych edit --lora` loads; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    if config.adapter == "moe":
        from ..adapters.moe_io import save_moe_adapter

        target = save_moe_adapter(transformer, folder / MOE_WEIGHT_NAME)
    else:
        from diffusers import FluxFillPipeline

        target = folder / LORA_WEIGHT_NAME
        scratch = Path(tempfile.mkdtemp(dir=folder, prefix=".lora-"))
        try:
            layers = lora_state_dict(transformer) | adapter_qk_norms(transformer)
            FluxFillPipeline.save_lora_weights(scratch, transformer_lora_layers=layers, weight_name=LORA_WEIGHT_NAME)
            os.replace(scratch / LORA_WEIGHT_NAME, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    if (config.fill_region, config.masked_content) != ("panel", "zero"):
        mark_fill(target, region=config.fill_region, content=config.masked_content)
    return target


def mark_fill(path: Path, *, region: str = "panel", content: str = "zero") -> None:
    """Record in an adapter file's metadata what its training filled and what the condition showed there, so the
    editor lays out its edits the same way at inference."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save

    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    metadata |= {FILL_REGION_KEY: region, MASKED_CONTENT_KEY: content}
    write_atomic(path, save(load_file(str(path)), metadata=metadata))
