"""One entry point for adapters: find the file, tell a LoRA-MoE checkpoint from a plain LoRA by its keys,
and load it with the right mechanism (diptych's MoE layers, or diffusers/peft for plain LoRA)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from diffusers import FluxFillPipeline
from safetensors import safe_open

from ..canvas import FILL_REGIONS, MASKED_CONTENTS
from ..errors import WeightsError
from .lora import load_lora, read_adapter_state_dict, resolve_adapter_file
from .moe_io import is_moe_state_dict, load_moe_adapter

#: Safetensors metadata of an adapter trained to fill only an edit's region (`diptych train --fill-region edit`)
#: and with the source visible under the mask (`--masked-content source`); absent: the ICEdit layout.
FILL_REGION_KEY = "diptych.fill_region"
MASKED_CONTENT_KEY = "diptych.masked_content"


@dataclass(frozen=True)
class LoadedAdapter:
    kind: str  # "lora" or "moe"
    fill_region: str = "panel"  # what its Fill masks covered in training (canvas.FILL_REGIONS)
    masked_content: str = "zero"  # what the condition showed under them (canvas.MASKED_CONTENTS)


def load_adapter(
    pipe: FluxFillPipeline,
    adapter: str | os.PathLike,
    *,
    scale: float = 1.0,
    local_files_only: bool = False,
    moe_dispatch: str = "dense",
) -> LoadedAdapter:
    """Load `adapter` into the pipeline's transformer; returns its kind ("moe" or "lora") and the layout it was
    trained for (fill region, masked content: from its metadata).

    `moe_dispatch` ("dense", the official forward, or "sparse": only the chosen experts per token) applies
    to LoRA-MoE checkpoints.
    """
    path = resolve_adapter_file(adapter, local_files_only=local_files_only)
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = dict.fromkeys(f.keys())
            metadata = f.metadata() or {}
    except Exception as err:
        raise WeightsError(f"adapter {path} is not a readable safetensors file ({err})") from err
    layout = {}
    for key, known, default in (
        (FILL_REGION_KEY, FILL_REGIONS, "panel"),
        (MASKED_CONTENT_KEY, MASKED_CONTENTS, "zero"),
    ):
        layout[key] = metadata.get(key, default)
        if layout[key] not in known:
            raise WeightsError(f"adapter {path}: unknown {key} {layout[key]!r} (known: {', '.join(known)})")
    if is_moe_state_dict(keys):
        # The path, not the tensors: the file's metadata carries alphas and routing options.
        load_moe_adapter(pipe.transformer, path, scale=scale, dtype=pipe.transformer.dtype, dispatch=moe_dispatch)
        kind = "moe"
    else:
        load_lora(pipe, read_adapter_state_dict(path), scale=scale)
        kind = "lora"
    return LoadedAdapter(kind, layout[FILL_REGION_KEY], layout[MASKED_CONTENT_KEY])
