"""The locator: which part of the source an instruction names, predicted by the Fill transformer itself.

Why: an edit adapter trained on ShapesEdit learns *what* to change (the new colour) long before it learns
*where* (which object the instruction names), and recolours every object. The binding it lacks is easy to
learn on its own as a per-token segmentation — a LoRA on the same transformer and a linear head on the
image tokens after the last block, trained to say "this token is in the edited region" — and compositing
the edit inside that region after sampling turns the adapter's outputs into edits (docs/shapes.md,
"Locate, then edit").

A locator reads the diptych the editor builds (the source in both panels, the right half masked), noised to
`LOCATE_TIMESTEP`, with the instruction's prompt, in one forward pass. It has its own copy of the base
transformer (with its LoRA), so it neither sees nor disturbs the edit adapter, fused or not. Trained with
`diptych train --objective locate` (`diptych.train.locate`); used by `Editor.edit(..., mask="auto")`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import FluxFillPipeline, FluxTransformer2DModel
from PIL import Image, ImageFilter
from safetensors import safe_open

from .errors import InputError, WeightsError

#: The noise level the locator reads its input at: high, so the clean source barely shows through the noise
#: and training (where the right panel holds the target) and inference (the source) look alike.
LOCATE_TIMESTEP = 0.95
#: A token is in the named region when the locator's probability is above this; a locator file may save its own
#: (chosen on the validation edits: `examples/shapes/probes/locator_threshold.py`).
LOCATE_THRESHOLD = 0.5
#: A token is in an edit's region when at least this share of its pixels is (a token is 8 px on ShapesEdit).
REGION_SHARE = 0.3
#: The head's parameters in a locator file, beside the LoRA's diffusers keys (`transformer.*`).
HEAD_PREFIX = "referent_head."
#: The metadata key that marks a locator file; its value is JSON of the locator's options
#: ({"timestep": ..., "threshold": ...}; a file without "threshold" uses LOCATE_THRESHOLD).
LOCATOR_METADATA_KEY = "diptych.locator"
LOCATOR_WEIGHT_NAME = "locator.safetensors"


class ReferentHead(torch.nn.Module):
    """Per image token, the logit that it lies in the region the instruction names: a linear map of the
    token's hidden state after the last block, layer-normalised (without affine: the linear map has it)."""

    def __init__(self, width: int):
        super().__init__()
        self.proj = torch.nn.Linear(width, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = torch.nn.functional.layer_norm(hidden.float(), hidden.shape[-1:])
        return self.proj(hidden.to(self.proj.weight.dtype)).squeeze(-1)


@contextlib.contextmanager
def captured_image_stream(transformer: torch.nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """While active, each forward of `transformer` leaves its image tokens after the last block (the input
    of `norm_out`, (B, tokens, width)) in the yielded dict under "hidden". A hook on `norm_out`, which
    regional compilation leaves alone (it compiles the repeated blocks)."""
    captured: dict[str, torch.Tensor] = {}
    handle = transformer.norm_out.register_forward_pre_hook(lambda _m, args: captured.update(hidden=args[0]))
    try:
        yield captured
    finally:
        handle.remove()


def referent_logits(
    transformer: torch.nn.Module,
    head: ReferentHead,
    x_t: torch.Tensor,
    condition: torch.Tensor,
    prompt_embeds: torch.Tensor,
    pooled_prompt_embeds: torch.Tensor,
    *,
    latent_size: tuple[int, int],
    timestep: float = LOCATE_TIMESTEP,
    guidance: float = 1.0,
) -> torch.Tensor:
    """(B, tokens) logits of every image token of the canvas (in packing order: rows of the canvas's token
    grid, both panels) from one transformer pass on noised latents `x_t` at `timestep`. Training and
    inference both call this, so they cannot drift apart."""
    batch, device, dtype = x_t.shape[0], x_t.device, x_t.dtype
    lat_h, lat_w = latent_size
    image_ids = FluxFillPipeline._prepare_latent_image_ids(None, lat_h // 2, lat_w // 2, device, dtype)
    text_ids = torch.zeros(prompt_embeds.shape[1], 3, device=device, dtype=dtype)
    model = getattr(transformer, "module", transformer)  # DDP wraps the model
    with captured_image_stream(model) as captured:
        transformer(
            hidden_states=torch.cat((x_t, condition.to(dtype)), dim=2),
            timestep=torch.full((batch,), timestep, device=device, dtype=dtype),
            guidance=torch.full((batch,), guidance, device=device) if model.config.guidance_embeds else None,
            pooled_projections=pooled_prompt_embeds.to(dtype),
            encoder_hidden_states=prompt_embeds.to(dtype),
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )
    return head(captured["hidden"])


def source_panel(tokens: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """(B, rows, cols) of the left panel from per-token values (B, tokens) of the whole canvas."""
    rows, cols = latent_size[0] // 2, latent_size[1] // 2
    return tokens.view(tokens.shape[0], rows, cols)[:, :, : cols // 2]


def region_mask(
    probabilities: np.ndarray, size: tuple[int, int], *, threshold: float = LOCATE_THRESHOLD, dilate: int = 2
) -> Image.Image:
    """The 'L' mask (white = edit here) of `size` from a panel's (rows, cols) token probabilities: tokens above
    `threshold` (or, when none is, the most likely one: the instruction names something), nearest-upsampled
    and dilated by `dilate` pixels (the tokens are coarse: 8 px on ShapesEdit, 16 on FLUX)."""
    chosen = probabilities > threshold
    if not chosen.any():
        chosen = np.zeros_like(chosen)
        chosen[np.unravel_index(probabilities.argmax(), chosen.shape)] = True
    mask = Image.fromarray((chosen * 255).astype(np.uint8)).resize(size, Image.Resampling.NEAREST)
    if dilate > 0:
        mask = mask.filter(ImageFilter.MaxFilter(2 * dilate + 1))
    return mask


def token_grid(mask: Image.Image, token: int, *, share: float = REGION_SHARE) -> np.ndarray:
    """The (rows, cols) tokens a locator should mark for an edit mask (one panel, 'L', white = changed): those
    holding at least `share` of the mask's pixels, and any other token holding a masked pixel that half a token
    of margin around those leaves out (nothing the edit changes is left outside). `token_region` draws it."""
    pixels = np.asarray(mask.convert("L")) > 0
    h, w = pixels.shape
    if w % token or h % token:
        raise ValueError(f"a {w}x{h} mask is not a whole number of {token}-pixel tokens")
    chosen = pixels.reshape(h // token, token, w // token, token).mean(axis=(1, 3)) >= share
    if not pixels.any():
        return chosen
    stray = pixels & ~(np.asarray(draw_token_grid(chosen, (w, h), token)) > 0)
    return chosen | stray.reshape(h // token, token, w // token, token).any(axis=(1, 3))


def token_region(mask: Image.Image, token: int, *, share: float = REGION_SHARE) -> Image.Image:
    """The region a locator marks for an edit mask (`token_grid`), drawn as `region_mask` draws a locator's
    prediction: whole tokens, nearest-upsampled and dilated by half a token. What an adapter trained with
    `fill_region: edit` fills.

    Whole tokens only, never the mask's pixel outline: a Fill mask that traces the target's outline tells an
    adapter the new shape and position, which it learns to copy, and a locator (per token) cannot give it
    (docs/shapes.md, "The region's outline")."""
    return draw_token_grid(token_grid(mask, token, share=share), mask.size, token)


def draw_token_grid(grid: np.ndarray, size: tuple[int, int], token: int) -> Image.Image:
    """The 'L' region of a (rows, cols) token grid at `size`: nothing for an empty grid, else `region_mask`'s
    drawing (half a token of margin)."""
    if not grid.any():
        return Image.new("L", size, 0)
    return region_mask(grid.astype(np.float32), size, dilate=token // 2)


class Locator:
    """A transformer with the locator's LoRA, its head, and the one-pass prediction (see the module docstring)."""

    def __init__(
        self,
        transformer: FluxTransformer2DModel,
        head: ReferentHead,
        *,
        timestep: float = LOCATE_TIMESTEP,
        threshold: float = LOCATE_THRESHOLD,
    ):
        # Used as given (the trainer's validation passes its training model): from_pretrained freezes its own.
        self.transformer = transformer
        self.head = head
        self.timestep = timestep
        self.threshold = threshold

    @property
    def threshold(self) -> float:
        """A token is in the located region when its probability is above this (strictly between 0 and 1)."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._threshold = check_threshold(value)

    @classmethod
    def from_pretrained(
        cls,
        base: str | os.PathLike,
        locator: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        local_files_only: bool = False,
    ) -> Locator:
        """The base's transformer (a hub id, a diffusers folder or `shapes[:FOLDER]`) with the locator file's
        LoRA (and q/k norm gains, if trained) fused into it, and its head."""
        path = Path(locator)
        if path.is_dir():
            path = path / LOCATOR_WEIGHT_NAME
        if not path.is_file():
            raise WeightsError(f"locator file {path} does not exist; train one with `diptych train --objective locate`")
        state, metadata = read_locator_file(path)
        from .cli_options import is_builtin_base

        if is_builtin_base(str(base)):
            from .shapes_core.models import resolve_folder

            transformer = FluxTransformer2DModel.from_pretrained(
                resolve_folder(str(base)) / "transformer", torch_dtype=dtype
            )
        else:
            transformer = FluxTransformer2DModel.from_pretrained(
                str(base), subfolder="transformer", torch_dtype=dtype, local_files_only=local_files_only
            )
        lora_state, head_state = split_locator_state(state)
        head = ReferentHead(transformer.config.num_attention_heads * transformer.config.attention_head_dim)
        try:
            head.load_state_dict(head_state)
        except RuntimeError as err:
            raise WeightsError(f"{path}: its head does not fit this transformer ({err})") from err
        load_locator_adapter(transformer, lora_state)
        if getattr(transformer, "peft_config", None):
            # The locator's transformer is its own, so its LoRA never comes off: merge it into the base weights
            # (diffusers' fuse, then drop the peft layers) and each locating pass is a plain forward.
            transformer.fuse_lora(adapter_names=["locator"])
            transformer.unload_lora()
        transformer = transformer.to(device).eval().requires_grad_(False)
        head = head.to(device).eval().requires_grad_(False)
        try:
            threshold = check_threshold(float(metadata.get("threshold", LOCATE_THRESHOLD)))
        except (InputError, TypeError, ValueError) as err:
            raise WeightsError(f"{path}: its saved threshold is not a probability between 0 and 1 ({err})") from err
        return cls(transformer, head, timestep=float(metadata.get("timestep", LOCATE_TIMESTEP)), threshold=threshold)

    @torch.no_grad()
    def probabilities(
        self,
        pipe: FluxFillPipeline,
        canvases: Sequence[Image.Image],
        fill_masks: Sequence[Image.Image],
        prompt_embeds: torch.Tensor,
        pooled_prompt_embeds: torch.Tensor,
        *,
        seed: int = 0,
    ) -> np.ndarray:
        """(B, rows, cols) probabilities that each token of the source panel is in the named region, for the
        editor's diptychs (`pipe` supplies the VAE and the Fill pipeline's latent packing)."""
        from .sampler import FillSampler

        sampler = FillSampler(pipe)
        dtype, device = self.transformer.dtype, self.transformer.device
        state = sampler.prepare(
            canvases,
            fill_masks,
            prompt_embeds.to(device, dtype),
            pooled_prompt_embeds.to(device, dtype),
            seeds=[seed] * len(canvases),
            steps=1,
            guidance=1.0,
        )
        clean = sampler.clean_latents(canvases).to(device, dtype)
        x_t = (1 - self.timestep) * clean + self.timestep * state.noise.to(device, dtype)
        token = 2 * sampler.vae_scale  # pixels per packed token
        size = (2 * (state.height // token), 2 * (state.width // token))  # the latent grid
        logits = referent_logits(
            self.transformer,
            self.head,
            x_t,
            state.condition.to(device, dtype),
            state.prompt_embeds,
            state.pooled_prompt_embeds,
            latent_size=size,
            timestep=self.timestep,
        )
        return torch.sigmoid(source_panel(logits.float(), size)).cpu().numpy()


def check_threshold(threshold: float) -> float:
    """`threshold` if it is a probability strictly between 0 and 1 (0 or 1 would mark every token or none)."""
    if not 0 < threshold < 1:
        raise InputError(f"a locator threshold must lie strictly between 0 and 1, got {threshold}")
    return float(threshold)


def save_locator_file(
    path: str | os.PathLike,
    lora: dict[str, torch.Tensor],
    head: ReferentHead,
    *,
    timestep: float = LOCATE_TIMESTEP,
    threshold: float = LOCATE_THRESHOLD,
) -> Path:
    """Write a locator file atomically: the LoRA (and q/k norm gains) under diffusers keys (`transformer.*`),
    the head under `referent_head.*`, the options (the noise level it reads at, the probability above which a
    token is in the region) in the metadata."""
    from safetensors.torch import save

    from .files import write_atomic

    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in lora.items()}
    tensors |= {HEAD_PREFIX + k: v.detach().to("cpu", torch.float32).contiguous() for k, v in head.state_dict().items()}
    options = {"timestep": timestep, "threshold": check_threshold(threshold)}
    metadata = {"format": "pt", LOCATOR_METADATA_KEY: json.dumps(options)}
    return write_atomic(path, save(tensors, metadata=metadata))


def read_locator_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """A locator file's tensors and options; refuses files that are not locators (e.g. an edit adapter)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open has no iteration)
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise WeightsError(f"{path} is not a readable safetensors file ({err})") from err
    if LOCATOR_METADATA_KEY not in metadata or not any(k.startswith(HEAD_PREFIX) for k in state):
        raise WeightsError(
            f"{path} is not a locator (no {HEAD_PREFIX}* weights); train one with `diptych train --objective locate`"
        )
    try:
        options = json.loads(metadata[LOCATOR_METADATA_KEY])
    except json.JSONDecodeError as err:
        raise WeightsError(f"{path}: unreadable locator options in its metadata ({err})") from err
    return state, options


def split_locator_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A locator file's tensors (`read_locator_file`) as (its LoRA under diffusers keys, its head's state dict)."""
    lora = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)}
    head = {k.removeprefix(HEAD_PREFIX): v for k, v in state.items() if k.startswith(HEAD_PREFIX)}
    return lora, head


def load_locator_adapter(transformer: FluxTransformer2DModel, state: dict[str, torch.Tensor]) -> None:
    """Load the locator's LoRA (diffusers keys) into its own transformer through diffusers/peft, and its q/k norm
    gains if it trained them; a key that names no module of the base raises `WeightsError`."""
    from .adapters.lora import check_lora_keys, is_qk_norm_key, load_qk_norms

    check_lora_keys(transformer, state)
    norms = {k: v for k, v in state.items() if is_qk_norm_key(k)}
    lora = {k: v for k, v in state.items() if k not in norms}
    if lora:
        transformer.load_lora_adapter(lora, prefix="transformer", adapter_name="locator")
    if norms:
        load_qk_norms(transformer, norms)
