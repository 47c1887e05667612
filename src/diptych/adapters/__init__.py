"""Adapters for the FLUX Fill transformer: plain LoRA (`lora`, through diffusers/peft) and LoRA-MoE
(`moe`: layers and injection; `moe_io`: official ICEdit MoE checkpoints and export to plain LoRA).

Importing this package loads neither diffusers nor peft; `diptych.adapters.lora` does.
"""

from .moe import (
    AdapterError,
    LoRALinear,
    MoEConfig,
    MoELoRALinear,
    adapter_layers,
    configure_moe,
    fuse_lora,
    inject_moe,
    moe_balance_loss,
    moe_layers,
    remove_moe,
    reset_routing_stats,
    routing_stats,
    set_adapter_scale,
    set_collect_stats,
    unfuse_lora,
    use_router_context,
)
from .moe_io import export_moe_to_lora, is_moe_state_dict, load_moe_adapter, save_moe_adapter

__all__ = [
    "AdapterError",
    "LoRALinear",
    "MoEConfig",
    "MoELoRALinear",
    "adapter_layers",
    "configure_moe",
    "export_moe_to_lora",
    "fuse_lora",
    "inject_moe",
    "is_moe_state_dict",
    "load_moe_adapter",
    "moe_balance_loss",
    "moe_layers",
    "remove_moe",
    "reset_routing_stats",
    "routing_stats",
    "save_moe_adapter",
    "set_adapter_scale",
    "set_collect_stats",
    "unfuse_lora",
    "use_router_context",
]
