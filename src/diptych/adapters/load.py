"""One entry point for adapters: find the file, tell a LoRA-MoE checkpoint from a plain LoRA by its keys,
and load it with the right mechanism (diptych's MoE layers, or diffusers/peft for plain LoRA)."""

from __future__ import annotations

import os

from diffusers import FluxFillPipeline
from safetensors import safe_open

from ..errors import WeightsError
from .lora import load_lora, read_adapter_state_dict, resolve_adapter_file
from .moe_io import is_moe_state_dict, load_moe_adapter


def load_adapter(
    pipe: FluxFillPipeline,
    adapter: str | os.PathLike,
    *,
    scale: float = 1.0,
    local_files_only: bool = False,
    moe_dispatch: str = "dense",
) -> str:
    """Load `adapter` into the pipeline's transformer; returns "moe" or "lora".

    `moe_dispatch` ("dense", the official forward, or "sparse": only the chosen experts per token) applies
    to LoRA-MoE checkpoints.
    """
    path = resolve_adapter_file(adapter, local_files_only=local_files_only)
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = dict.fromkeys(f.keys())
    except Exception as err:
        raise WeightsError(f"adapter {path} is not a readable safetensors file ({err})") from err
    if is_moe_state_dict(keys):
        # The path, not the tensors: the file's metadata carries alphas and routing options.
        load_moe_adapter(pipe.transformer, path, scale=scale, dtype=pipe.transformer.dtype, dispatch=moe_dispatch)
        return "moe"
    load_lora(pipe, read_adapter_state_dict(path), scale=scale)
    return "lora"
