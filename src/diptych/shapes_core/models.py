"""The ShapesEdit models: a small VAE and a small Fill transformer in FLUX's own classes, conditioned
through MiniLM, so the same `Editor`/`FillSampler` code that runs FLUX.1 Fill runs them.

Sizes (64 x 64 panels): the VAE downsamples 4x to 4 latent channels, so a panel is a 16 x 16 latent grid,
8 x 8 = 64 tokens after Flux's 2 x 2 packing, and a diptych 128 image tokens (+ 48 text tokens). The
transformer is 4 heads x 32 (d = 128) with 2 double and 4 single blocks.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxFillPipeline, FluxTransformer2DModel

from ..cli_options import is_builtin_base
from ..errors import WeightsError
from ..sampler import FLUX_SCHEDULER_CONFIG

PANEL = 64
LATENT_CHANNELS = 4
VAE_LEVELS = 3  # scale factor 2 ** (levels - 1) = 4
TEXT_DIM = 384  # MiniLM
TEXT_TOKENS = 48
#: The shipped weights (package data of `diptych.shapes`, where the training recipes in docs/shapes.md write).
WEIGHTS = Path(__file__).parents[1] / "shapes" / "weights"


def build_vae() -> AutoencoderKL:
    """A fresh (untrained) ShapesEdit VAE; `shift_factor` / `scaling_factor` are set after training."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * VAE_LEVELS,
        up_block_types=["UpDecoderBlock2D"] * VAE_LEVELS,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=16,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0,
        scaling_factor=1.0,
    )


def build_transformer(*, num_layers: int = 2, num_single_layers: int = 4) -> FluxTransformer2DModel:
    """A fresh ShapesEdit Fill transformer (FLUX.1 Fill's architecture, scaled down)."""
    scale = 2 ** (VAE_LEVELS - 1)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=8 * LATENT_CHANNELS + 4 * scale * scale,
        out_channels=4 * LATENT_CHANNELS,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=32,
        num_attention_heads=4,
        joint_attention_dim=TEXT_DIM,
        pooled_projection_dim=TEXT_DIM,
        axes_dims_rope=[8, 12, 12],
        guidance_embeds=False,
    )


def build_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """FLUX's scheduler configuration (resolution-dependent shift)."""
    return FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG)


def load_scheduler(folder: str | Path) -> FlowMatchEulerDiscreteScheduler:
    """The scheduler saved with a ShapesEdit model (`scheduler/scheduler_config.json`, diffusers' layout: the
    shipped one turns on stochastic sampling), or `build_scheduler()`'s for a folder without one."""
    config = Path(folder) / "scheduler" / FlowMatchEulerDiscreteScheduler.config_name
    if not config.is_file():
        return build_scheduler()
    return FlowMatchEulerDiscreteScheduler.from_pretrained(config.parent)


def code_panels_apart(vae: AutoencoderKL, panel: int = PANEL) -> AutoencoderKL:
    """Make `vae` encode and decode each `panel`-pixel square of a canvas on its own: diffusers' tiling with tiles the
    size of a panel and no overlap (so no blending either). The ShapesEdit VAE was trained on single scenes; over a
    two-panel canvas its GroupNorm statistics and mid-block attention mix the panels, which shifts the colours of a
    panel that differs from the other all over: a background change or an inversion keeps only 73-84% of its colour
    change through a round trip of the canvas, 99.5% panel by panel (docs/shapes.md, "The canvas VAE"). Canvases no
    wider or taller than a panel are coded whole, as before."""
    vae.enable_tiling()
    vae.tile_sample_min_size = panel
    vae.tile_latent_min_size = panel // 2 ** (len(vae.config.block_out_channels) - 1)
    vae.tile_overlap_factor = 0.0
    return vae


def assemble_pipeline(
    vae: AutoencoderKL,
    transformer: FluxTransformer2DModel,
    scheduler: FlowMatchEulerDiscreteScheduler | None = None,
) -> FluxFillPipeline:
    """A `FluxFillPipeline` without CLIP/T5: text goes through a `PromptEncoder` (MiniLM) instead. Its VAE codes
    each panel of a canvas on its own (`code_panels_apart`). `scheduler` defaults to `build_scheduler()`."""
    return FluxFillPipeline(
        scheduler=scheduler or build_scheduler(),
        vae=code_panels_apart(vae).eval(),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer.eval(),
    )


def load_pipeline(
    folder: str | Path = WEIGHTS,
    *,
    dtype: torch.dtype = torch.float32,
    transformer: FluxTransformer2DModel | None = None,
) -> FluxFillPipeline:
    """The shipped (or any saved) ShapesEdit VAE + transformer + scheduler as a pipeline (`transformer`: one
    loaded otherwise, e.g. from a GGUF file; a folder without `scheduler/` gets `build_scheduler()`'s)."""
    folder = Path(folder)
    missing = [p for p in ("vae", "transformer") if not (folder / p / "config.json").is_file()]
    if missing:
        raise WeightsError(
            f"the ShapesEdit models are missing from {folder} ({', '.join(missing)}); they ship with the "
            "package once trained: see docs/shapes.md for the training recipe"
        )
    vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=dtype)
    if transformer is None:
        transformer = FluxTransformer2DModel.from_pretrained(folder / "transformer", torch_dtype=dtype)
    return assemble_pipeline(vae, transformer, load_scheduler(folder))


#: Options of the model's MiniLM text encoder (`MiniLMPromptEncoder` keyword arguments), when not the defaults.
TEXT_ENCODER_FILE = "text_encoder.json"


def text_encoder_options(folder: str | Path) -> dict:
    """The text encoder options saved with a ShapesEdit model (`text_encoder.json`, e.g. {"pooling":
    "instruction"}); {} for a folder without the file (the shipped model: prompt pooling)."""
    import json

    path = Path(folder) / TEXT_ENCODER_FILE
    if not path.is_file():
        return {}
    options = json.loads(path.read_text(encoding="utf-8"))
    unknown = sorted(set(options) - {"pooling"})
    if unknown:
        raise WeightsError(f"{path}: unknown text encoder option(s) {', '.join(unknown)}; known: pooling")
    return options


#: Adapters shipped with the built-in model, by name.
ADAPTER_FILES = {"moe": "adapters/moe.safetensors", "lora": "adapters/lora.safetensors"}
#: Emu Edit task embeddings trained jointly with a shipped adapter (`diptych train --task-embedding`).
TASK_EMBEDDING_FILES = {"moe": "adapters/moe_task_embedding.safetensors"}


#: The locator shipped with a ShapesEdit model (`diptych train --objective locate`), used by `mask="auto"`.
LOCATOR_FILE = "adapters/locator.safetensors"


def resolve_locator(base: str) -> Path | None:
    """The locator shipped in a ShapesEdit model's folder; None when there is none or `base` is another model."""
    if not is_builtin_base(base):
        return None
    path = resolve_folder(base) / LOCATOR_FILE
    return path if path.is_file() else None


def resolve_rewriter(base: str, encoder=None):
    """The built-in model's instruction rewriter (`rewrite.InstructionRewriter`), reading sentences with
    `encoder`'s MiniLM when it has one (the built-in model's text encoder); None for any other model."""
    if not is_builtin_base(base):
        return None
    from .rewrite import InstructionRewriter

    return InstructionRewriter(getattr(encoder, "sentence_vectors", None))


def resolve_folder(base: str) -> Path:
    """'shapes' -> the shipped weights; 'shapes:/some/folder' -> a folder in the same layout."""
    if base == "shapes":
        return WEIGHTS
    if base.startswith("shapes:"):
        return Path(base.removeprefix("shapes:"))
    raise ValueError(f"not a ShapesEdit model name: {base!r}")


def resolve_adapter(folder: Path, adapter: str | None) -> Path | None:
    """The adapter file for the built-in model: None -> the MoE adapter if shipped; 'none' -> no adapter;
    'moe' / 'lora' -> the shipped one (an error if missing); anything else is a path."""
    if adapter is None:
        path = folder / ADAPTER_FILES["moe"]
        return path if path.is_file() else None
    if adapter == "none":
        return None
    if adapter in ADAPTER_FILES:
        path = folder / ADAPTER_FILES[adapter]
        if not path.is_file():
            raise WeightsError(f"the built-in {adapter!r} adapter is missing from {folder}; see docs/shapes.md")
        return path
    return Path(adapter)


def resolve_task_embedding(folder: Path, adapter: str | None) -> Path | None:
    """The task embedding trained with the built-in adapter `adapter` (None = the default MoE), if shipped.
    An adapter given as a path brings its own (`task_embedding.safetensors` beside it), if any."""
    from ..conditioning.task_embedding import find_task_embedding

    name = "moe" if adapter is None else adapter
    if name == "none":
        return None
    if name in TASK_EMBEDDING_FILES:
        path = folder / TASK_EMBEDDING_FILES[name]
        return path if path.is_file() else None
    return None if name in ADAPTER_FILES else find_task_embedding(name)
