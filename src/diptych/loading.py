"""The one loader: a Fill pipeline, its prompt encoder and an optional adapter, from the hub, a local folder or
the built-in ShapesEdit model.

`Editor.from_pretrained`, the trainer, the eval runner, Emu Edit's data generation and task inversion and the
ShapesEdit tools all load through `load_fill_pipeline`, so a base or adapter means the same thing on every
command and a bad one fails the same way (one line, before any weights are read where that is possible).

Example:
    >>> model = load_fill_pipeline("shapes", adapter="none", device="cpu")
    >>> model.pipe, model.encoder, model.default_width
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FluxFillPipeline, FluxTransformer2DModel

from .adapters.load import LoadedAdapter, load_adapter
from .adapters.lora import check_adapter_hub_access
from .adapters.moe import DISPATCHES
from .cli_options import is_builtin_base
from .devices import OFFLOAD_MODES, default_dtype, parse_device, parse_dtype
from .encoders import FluxPromptEncoder, PromptEncoder
from .errors import InputError, WeightsError
from .hub import check_hub_access
from .speed import check_quantize, load_gguf_transformer, quantize_transformer

DEFAULT_BASE = "black-forest-labs/FLUX.1-Fill-dev"


@dataclass
class FillModel:
    """What a loaded base brings: the pipeline (adapter injected), the encoder that turns prompts into its
    conditioning, the panel width it was made for, and, for the built-in model, its adapter's task embedding."""

    pipe: FluxFillPipeline
    encoder: PromptEncoder
    adapter: LoadedAdapter | None = None  # its kind and the layout it was trained for, when one was loaded
    default_width: int = 512
    builtin: bool = False
    task_embedding_file: Path | None = None
    quantized: str | None = None  # the --quantize mode, when the weights are quantized
    adapter_fused: bool = False  # the built-in adapter's plain-LoRA layers are folded in at load

    @property
    def adapter_kind(self) -> str | None:
        """The adapter's kind, "lora" or "moe"; None without an adapter."""
        return self.adapter.kind if self.adapter else None

    @property
    def fill_region(self) -> str:
        """What the adapter was trained to fill (canvas.FILL_REGIONS): "edit" = an edit's region only."""
        return self.adapter.fill_region if self.adapter else "panel"

    @property
    def masked_content(self) -> str:
        """What the adapter's condition showed under the mask (canvas.MASKED_CONTENTS; sampler.masked_canvas)."""
        return self.adapter.masked_content if self.adapter else "zero"


def load_fill_pipeline(
    base: str | os.PathLike = DEFAULT_BASE,
    adapter: str | os.PathLike | None = None,
    *,
    adapter_scale: float = 1.0,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    offload: str = "none",
    local_files_only: bool = False,
    moe_dispatch: str = "dense",
    max_sequence_length: int = 512,
    quantize: str | None = None,
    compile: bool = False,
    gguf: str | os.PathLike | None = None,
) -> FillModel:
    """Load a Fill model and an optional adapter (plain LoRA or LoRA-MoE, told apart by its keys).

    `base`: a hub id, a local diffusers folder, or `shapes[:FOLDER]` (the built-in model; its `adapter`
    defaults to the shipped LoRA-MoE, `"lora"` is the shipped plain LoRA and `"none"` the bare base).
    `offload`: "none", "model" (each model moves to the accelerator while it runs), "sequential" (layer by
    layer) or "group" (diffusers' group offloading, block by block). `max_sequence_length` is the T5 length of
    FLUX's encoder (the built-in MiniLM has its own).

    Speed and memory modes (`diptych.speed`): `quantize` "int8" (torchao weight-only; any device), "fp8"
    (torchao, CUDA) or "nf4" (bitsandbytes at load, CUDA; not for the built-in model) for the transformer
    (and T5); `compile` compiles the transformer's repeated blocks (regional `torch.compile`, diffusers'
    `compile_repeated_blocks`). Adapters load before quantization and stay in full precision. `gguf`: the
    transformer from a GGUF file instead of the base's own (the rest of the pipeline comes from `base`).
    """
    if offload not in OFFLOAD_MODES:
        raise InputError(f"offload must be one of {', '.join(OFFLOAD_MODES)}, got {offload!r}")
    if moe_dispatch not in DISPATCHES:
        raise InputError(f"moe_dispatch must be one of {', '.join(DISPATCHES)}, got {moe_dispatch!r}")
    device = parse_device(device)
    dtype = parse_dtype(dtype) if dtype is not None else default_dtype(device)
    if offload != "none" and device.type == "cpu":
        raise InputError(f"offload={offload!r} moves models to an accelerator; with device=cpu use 'none'")
    check_quantize(quantize, device.type)
    if gguf is not None and quantize is not None:
        raise InputError("--gguf loads an already quantized transformer; leave out --quantize")
    quantized = "gguf" if gguf is not None else quantize
    if is_builtin_base(str(base)):
        if quantize == "nf4":
            raise InputError("--quantize nf4 quantizes at load from a diffusers folder; the built-in model takes int8")
        model = _load_shapes(
            str(base),
            adapter,
            adapter_scale=adapter_scale,
            device=device,
            dtype=dtype,
            moe_dispatch=moe_dispatch,
            gguf=gguf,
        )
        if model.adapter_kind is not None and gguf is None:
            # Equal up to float rounding and 20% faster on a CPU (benchmarks/shapes_speed.py); before quantizing,
            # which cannot fold an adapter in (nor can GGUF weights: there it stays a separate layer).
            # `Editor.unfuse_adapter()` before changing the adapter's scale.
            fuse_adapter(model.pipe, model.adapter_kind)
            model.adapter_fused = True
        model.quantized = quantized
        _quantize(model.pipe, quantize)
        if compile:
            model.pipe.transformer.compile_repeated_blocks()
        return model

    base = str(base)
    _check_base_exists(base)
    base_local_only = check_hub_access(
        base,
        what="the base model",
        fix=(
            "FLUX.1 Fill dev is gated: accept its licence on the hub page, log in (`huggingface-cli login`), "
            f"then `huggingface-cli download {base}`; or pass a local folder with --base"
        ),
        local_files_only=local_files_only,
    )
    if adapter is not None and not Path(adapter).exists():  # a hub id: fail before the base loads, not after
        check_adapter_hub_access(adapter, local_files_only=local_files_only)
    transformer_cfg = _load_config(FluxTransformer2DModel, base, "transformer", base_local_only)
    vae_cfg = _load_config(AutoencoderKL, base, "vae", base_local_only)
    check_fill_transformer(transformer_cfg, vae_cfg, where=base)
    quantization = None
    if quantize == "nf4":  # bitsandbytes quantizes while loading
        from diffusers.quantizers import PipelineQuantizationConfig

        quantization = PipelineQuantizationConfig(
            quant_backend="bitsandbytes_4bit",
            quant_kwargs={"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": dtype},
            components_to_quantize=["transformer", "text_encoder_2"],
        )
    components = {}
    if gguf is not None:
        components["transformer"] = load_gguf_transformer(
            str(gguf), base, subfolder="transformer", dtype=dtype, local_files_only=base_local_only
        )
    try:
        pipe = FluxFillPipeline.from_pretrained(
            base, dtype=dtype, local_files_only=base_local_only, quantization_config=quantization, **components
        )
    except (OSError, ValueError) as err:
        raise WeightsError(f"cannot load the pipeline from {base}: {err}") from err
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()

    loaded = None
    if adapter is not None:
        loaded = load_adapter(
            pipe, adapter, scale=adapter_scale, local_files_only=local_files_only, moe_dispatch=moe_dispatch
        )
    _quantize(pipe, quantize)  # on the CPU, before the move
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif offload == "group":
        pipe.enable_group_offload(onload_device=device, offload_type="block_level", num_blocks_per_group=1)
    else:
        pipe.to(device)
    if compile:
        pipe.transformer.compile_repeated_blocks()
    encoder = FluxPromptEncoder(pipe, max_sequence_length=max_sequence_length)
    return FillModel(pipe, encoder, adapter=loaded, quantized=quantized)


def fuse_adapter(pipe: FluxFillPipeline, kind: str) -> None:
    """Fold a loaded adapter into the base weights (plain LoRA layers; LoRA-MoE experts stay dynamic)."""
    if kind == "lora":
        pipe.fuse_lora(components=["transformer"], adapter_names=None)
    else:
        from .adapters import fuse_lora

        fuse_lora(pipe.transformer)


def unfuse_adapter(pipe: FluxFillPipeline, kind: str) -> None:
    """Undo `fuse_adapter` (the base weights come back up to rounding)."""
    if kind == "lora":
        pipe.unfuse_lora(components=["transformer"])
    else:
        from .adapters import unfuse_lora

        unfuse_lora(pipe.transformer)


def _quantize(pipe: FluxFillPipeline, mode: str | None) -> None:
    """torchao weight-only quantization (int8 / fp8) of the transformer and, where there is one, T5; nf4 is
    done by bitsandbytes while loading, so nothing is left to do for it here."""
    if mode not in ("int8", "fp8"):
        return
    quantize_transformer(pipe.transformer, mode)
    text_encoder = getattr(pipe, "text_encoder_2", None)
    if text_encoder is not None:
        quantize_transformer(text_encoder, mode)


def _load_shapes(
    base: str,
    adapter,
    *,
    adapter_scale: float,
    device: torch.device,
    dtype: torch.dtype,
    moe_dispatch: str,
    gguf: str | os.PathLike | None = None,
) -> FillModel:
    """The built-in ShapesEdit model (VAE + Fill transformer + MiniLM), by default with its LoRA-MoE."""
    from .encoders import MiniLMPromptEncoder
    from .shapes_core import models as shapes_models

    folder = shapes_models.resolve_folder(base)
    transformer = None
    if gguf is not None:
        transformer = load_gguf_transformer(
            str(gguf), str(folder), subfolder="transformer", dtype=dtype, local_files_only=True
        )
    pipe = shapes_models.load_pipeline(folder, dtype=dtype, transformer=transformer)
    name = None if adapter is None else str(adapter)
    adapter_path = shapes_models.resolve_adapter(folder, name)
    loaded = None
    if adapter_path is not None:
        loaded = load_adapter(pipe, adapter_path, scale=adapter_scale, moe_dispatch=moe_dispatch)
    pipe.to(device)
    encoder = MiniLMPromptEncoder.from_pretrained(
        max_length=shapes_models.TEXT_TOKENS, device=device, **shapes_models.text_encoder_options(folder)
    )
    return FillModel(
        pipe,
        encoder,
        default_width=shapes_models.PANEL,
        builtin=True,
        task_embedding_file=shapes_models.resolve_task_embedding(folder, name),
        adapter=loaded,
    )


def _check_base_exists(base: str) -> None:
    path = Path(base)
    looks_local = path.is_absolute() or base.startswith(".") or base.count("/") != 1 or path.exists()
    if looks_local and not path.is_dir():
        raise WeightsError(f"base model folder {base} does not exist")
    if path.is_dir() and not (path / "model_index.json").is_file():
        raise WeightsError(
            f"{base} is not a diffusers pipeline folder (no model_index.json); save one with "
            "FluxFillPipeline.save_pretrained or download black-forest-labs/FLUX.1-Fill-dev"
        )


def _load_config(model_cls, base: str, subfolder: str, local_files_only: bool) -> dict:
    try:
        return model_cls.load_config(base, subfolder=subfolder, local_files_only=local_files_only)
    except Exception as err:
        if Path(base).is_dir():
            raise WeightsError(f"{base}/{subfolder} has no readable config.json ({err})") from err
        raise WeightsError(
            f"cannot load {base!r}: its weights are not in the local Hugging Face cache and the hub could not "
            f"be reached ({type(err).__name__}). FLUX.1 Fill dev is gated: accept its licence on the hub page, "
            f"log in (`huggingface-cli login`), then `huggingface-cli download {base}`; or pass a local folder"
        ) from err


def check_fill_transformer(transformer_cfg, vae_cfg, *, where: str) -> None:
    """Refuse a transformer that is not a Fill model: its input must take noisy latents, masked-image latents
    and the packed mask (384 channels for FLUX.1 Fill)."""
    latent = vae_cfg["latent_channels"]
    scale = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
    expected = 8 * latent + 4 * scale * scale
    got = transformer_cfg["in_channels"]
    if got != expected:
        hint = " (a text-to-image FLUX model)" if got == 4 * latent else ""
        raise WeightsError(
            f"{where} is not a FLUX Fill model: its transformer takes {got} input channels{hint}, a Fill model "
            f"takes {expected}. Use black-forest-labs/FLUX.1-Fill-dev or a folder saved from it"
        )
