"""Image-editing metrics computed the way the published benchmarks compute them.

Conventions followed (checked against MagicBrush's official ``evaluation/image_eval.py``):

* **L1 / L2** (:func:`l1_distance`, :func:`l2_distance`): both images are converted to RGB, the
  output is resized to the reference's size with ``PIL.Image.resize(size)`` (no filter argument in
  the official script, which for RGB images means bicubic in Pillow >= 7), both become ``[0, 1]``
  tensors (``ToTensor``) and the score is ``nn.L1Loss`` / ``nn.MSELoss``: the mean absolute
  difference and the **mean squared error** (not its root) over all pixels and channels.
* **CLIP-I / CLIP-T / CLIP-out / CLIP-dir** (:class:`ClipMetrics`): cosines of CLIP embeddings
  (projected, ``get_image_features`` / ``get_text_features``), images preprocessed by the model's
  ``CLIPImageProcessor`` (PIL backend: shortest edge bicubic, centre crop, CLIP mean/std) with the
  crop offset rounded as torchvision rounds it, so the pixels equal ``clip.load("ViT-B/32")``'s
  transform. CLIP-dir is InstructPix2Pix's directional similarity,
  which Emu Edit reports: the cosine between ``E_img(out) - E_img(src)`` and
  ``E_txt(out_caption) - E_txt(src_caption)``, on L2-normalised embeddings.
* **DINO** (:class:`DinoMetrics`): cosine of ``dino_vits16`` features. The torch-hub model's
  forward returns the CLS token after the final LayerNorm; in transformers' ``ViTModel`` that is
  ``last_hidden_state[:, 0]`` (``pooler_output`` adds a dense + tanh head that DINO does not have,
  so it is not used). Preprocessing is :func:`dino_preprocess`, the official
  ``Resize(256, bicubic) -> CenterCrop(224) -> ToTensor -> Normalize(ImageNet)`` without torchvision.

Which pair of images a metric compares depends on the benchmark: MagicBrush compares the output
with the ground truth, the Emu Edit test set compares it with the source image.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from diptych.devices import parse_device, parse_dtype
from diptych.errors import DiptychError, InputError, WeightsError, as_sentence
from diptych.hub import check_hub_access, looks_like_hub_id

__all__ = [
    "DEFAULT_CLIP_MODEL",
    "DEFAULT_DINO_MODEL",
    "DINO_CROP_SIZE",
    "DINO_RESIZE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "METRIC_NAMES",
    "ClipMetrics",
    "DinoMetrics",
    "dino_preprocess",
    "l1_distance",
    "l2_distance",
    "psnr",
    "to_unit_tensor",
]

logger = logging.getLogger(__name__)

METRIC_NAMES: tuple[str, ...] = (
    "l1",
    "l2",
    "clip_i",
    "clip_t",
    "clip_out",
    "clip_dir",
    "dino",
    "vie_sc",
    "vie_pq",
    "vie_overall",
)
"""Every metric name ``diptych eval`` reports, in report order."""

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
DEFAULT_DINO_MODEL = "facebook/dino-vits16"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINO_RESIZE = 256
DINO_CROP_SIZE = 224

_T = TypeVar("_T")


# --------------------------------------------------------------------------------------------------
# Images and pixel distances.


def _as_rgb(image: object, name: str) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise InputError(f"{name} must be a PIL image, got {type(image).__name__}")
    if image.width == 0 or image.height == 0:
        raise InputError(f"{name} is empty ({image.width}x{image.height}); pass a real image")
    return image if image.mode == "RGB" else image.convert("RGB")


def to_unit_tensor(image: Image.Image) -> torch.Tensor:
    """An image as a ``(3, H, W)`` float32 tensor in ``[0, 1]`` (RGB), as torchvision's ``ToTensor``."""
    array = np.asarray(_as_rgb(image, "image"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).to(torch.float32).div(255)


def _aligned_pair(output: Image.Image, reference: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    out = _as_rgb(output, "output")
    ref = _as_rgb(reference, "reference")
    if out.size != ref.size:
        # The official script calls resize() without a filter; for RGB that is bicubic.
        out = out.resize(ref.size, Image.Resampling.BICUBIC)
    # float64 accumulation so a score does not depend on the summation order of a device.
    return to_unit_tensor(out).double(), to_unit_tensor(ref).double()


def l1_distance(output: Image.Image, reference: Image.Image) -> float:
    """Mean absolute difference of RGB values in ``[0, 1]`` (``nn.L1Loss``), after resizing ``output``
    to ``reference``'s size with bicubic filtering. Black against white is 1.0."""
    out, ref = _aligned_pair(output, reference)
    return float((out - ref).abs().mean())


def psnr(output: Image.Image, reference: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB of two same-sized 8-bit RGB images (inf when identical): how close a
    speed mode's output stays to the default's at the same seed."""
    a = np.asarray(_as_rgb(output, "output"), dtype=np.float64)
    b = np.asarray(_as_rgb(reference, "reference"), dtype=np.float64)
    if a.shape != b.shape:
        raise InputError(f"psnr needs images of one size, got {output.size} and {reference.size}")
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * float(np.log10(255**2 / mse))


def l2_distance(output: Image.Image, reference: Image.Image) -> float:
    """Mean squared difference of RGB values in ``[0, 1]`` (``nn.MSELoss``; MagicBrush calls this "L2",
    it is not the root), after resizing ``output`` to ``reference``'s size with bicubic filtering."""
    out, ref = _aligned_pair(output, reference)
    return float((out - ref).square().mean())


# --------------------------------------------------------------------------------------------------
# DINO preprocessing, equal to torchvision's Resize(256, BICUBIC) -> CenterCrop(224) -> ToTensor ->
# Normalize(ImageNet mean, std) on a PIL image.


def _resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """torchvision's Resize(int) on a PIL image: the shorter side becomes ``shorter``, the longer one
    ``int(shorter * long / short)`` (truncated, not rounded)."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def _center_crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """torchvision's CenterCrop offsets: ``int(round((side - size) / 2.0))``. Python's round() goes to
    the even neighbour on .5, so an odd margin of 35 starts at 18, where floor division gives 17."""
    left = round((width - size) / 2.0)
    top = round((height - size) / 2.0)
    return left, top, left + size, top + size


def dino_preprocess(image: Image.Image) -> torch.Tensor:
    """The official DINO-metric transform, a ``(3, 224, 224)`` float32 tensor: the shorter side resized
    to 256 (PIL bicubic), a 224 centre crop, ``[0, 1]`` scaling and ImageNet mean/std normalisation."""
    rgb = _as_rgb(image, "image")
    size = _resized_size(rgb.width, rgb.height, DINO_RESIZE)
    if size != rgb.size:
        rgb = rgb.resize(size, Image.Resampling.BICUBIC)
    # After the resize the shorter side is 256 >= 224, so the crop never needs torchvision's padding.
    rgb = rgb.crop(_center_crop_box(rgb.width, rgb.height, DINO_CROP_SIZE))
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    return to_unit_tensor(rgb).sub(mean).div(std)


# --------------------------------------------------------------------------------------------------
# Model loading.


def _parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    # Metrics are compared across papers and runs; full precision unless asked otherwise.
    return torch.float32 if dtype is None else parse_dtype(dtype)


def _load(kind: str, name_or_path: str, loader: Callable[[str, bool], _T], folder_contents: str) -> _T:
    """Run ``loader(path, local_files_only)`` on a local folder or hub id; any failure becomes a WeightsError
    that says how to get the weights. A hub id that is neither reachable nor cached fails at once."""
    if not isinstance(name_or_path, str | os.PathLike) or not str(name_or_path).strip():
        raise InputError(f"the {kind} model must be a hub id or a folder, got {name_or_path!r}")
    name = str(name_or_path)
    path = os.path.expanduser(name)
    if not looks_like_hub_id(name):
        how = f"Pass a folder saved with save_pretrained that holds {folder_contents}."
        if not os.path.isdir(path):
            raise WeightsError(f"{kind} model folder {name!r} does not exist. {how}")
    else:
        how = (
            f"Without network access a hub id loads only from the local Hugging Face cache: download it "
            f"once with `huggingface-cli download {name}` (or `hf download {name} --local-dir DIR` and "
            "pass DIR). Set HF_HUB_OFFLINE=1 to fail at once instead of waiting on the network."
        )
    local = False
    if looks_like_hub_id(name):
        local = check_hub_access(
            name,
            what=f"the {kind} model",
            fix=f"download it once with `huggingface-cli download {name}` (or `hf download {name} --local-dir DIR` "
            "and pass DIR)",
        )
    try:
        return loader(path, local)
    except DiptychError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise WeightsError(f"could not load the {kind} model {name!r}: {as_sentence(exc)} {how}") from exc


def _check_texts(texts: Sequence[str], name: str = "texts") -> list[str]:
    if isinstance(texts, str):
        raise InputError(f"{name} must be a list of strings, got a single string; wrap it in a list")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise InputError(f"{name}[{i}] must be a string, got {type(text).__name__}")
    return out


def _check_images(images: Sequence[Image.Image], name: str = "images") -> list[Image.Image]:
    if isinstance(images, Image.Image):
        raise InputError(f"{name} must be a list of PIL images, got a single image; wrap it in a list")
    return [_as_rgb(image, f"{name}[{i}]") for i, image in enumerate(images)]


def _unzip_pairs(pairs: Sequence[tuple[Image.Image, Image.Image]]) -> tuple[list[Image.Image], list[Image.Image]]:
    firsts, seconds = [], []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise InputError(f"pairs[{i}] must be a pair of images (a, b), got {type(pair).__name__}")
        firsts.append(pair[0])
        seconds.append(pair[1])
    return firsts, seconds


def _rowwise_cosine(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Cosines of matching rows; zero rows (an undefined direction) give 0.0."""
    a = F.normalize(a.double(), dim=-1)
    b = F.normalize(b.double(), dim=-1)
    return (a * b).sum(dim=-1).clamp(-1.0, 1.0).tolist()


def _features(output: Any) -> torch.Tensor:
    # transformers 4.x returns the projected tensor; 5.x an output whose pooler_output is that tensor.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


# --------------------------------------------------------------------------------------------------
# CLIP.


class ClipMetrics:
    """CLIP-I, CLIP-T (CLIP-out) and CLIP-dir with one CLIP model.

    Args:
        model: a transformers ``CLIPModel``.
        image_processor: its ``CLIPImageProcessor`` (the PIL backend gives the official numbers).
        tokenizer: its ``CLIPTokenizer``; texts longer than the model's context are truncated.
        batch_size: most images or texts per forward pass.
    """

    def __init__(self, model: Any, image_processor: Any, tokenizer: Any, *, batch_size: int = 32) -> None:
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.model = model.eval().requires_grad_(False)
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = DEFAULT_CLIP_MODEL,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        batch_size: int = 32,
    ) -> ClipMetrics:
        """Load a CLIP model, its tokenizer and image processor from a folder or a hub id.

        ``device`` defaults to CUDA when available, ``dtype`` to float32. A hub id needs network
        access or the Hugging Face cache; otherwise this raises :class:`WeightsError` saying how to
        download it.
        """
        torch_device, torch_dtype = parse_device(device), _parse_dtype(dtype)

        def load(path: str, local: bool) -> ClipMetrics:
            from transformers import AutoTokenizer, CLIPModel

            model = CLIPModel.from_pretrained(path, dtype=torch_dtype, local_files_only=local)
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
            processor = _clip_image_processor_class().from_pretrained(path, local_files_only=local)
            return cls(model.to(torch_device), processor, tokenizer, batch_size=batch_size)

        return _load(
            "CLIP",
            name_or_path,
            load,
            "config.json, the weights, the tokenizer files and preprocessor_config.json",
        )

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return next(self.model.parameters()).device

    def image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """L2-normalised projected image embeddings, ``(N, D)`` float32 on the CPU."""
        rgb = [self._official_resize_crop(image) for image in _check_images(images)]
        param = next(self.model.parameters())
        chunks = [torch.zeros(0, self.model.config.projection_dim)]
        with torch.inference_mode():
            for start in range(0, len(rgb), self.batch_size):
                batch = self.image_processor(images=rgb[start : start + self.batch_size], return_tensors="pt")
                pixels = batch["pixel_values"].to(device=param.device, dtype=param.dtype)
                chunks.append(_features(self.model.get_image_features(pixel_values=pixels)).float().cpu())
        return F.normalize(torch.cat(chunks), dim=-1)

    def _official_resize_crop(self, image: Image.Image) -> Image.Image:
        """Resize and centre-crop as the official CLIP transform (torchvision) does, before the
        processor: transformers crops at ``(side - crop) // 2`` where torchvision rounds half to even,
        one pixel apart when the margin is odd. The processor then finds the image at its final size
        and only rescales and normalises it. Left to the processor when its settings are not the
        usual shortest-edge resize and square crop."""
        proc = self.image_processor
        size, crop = _size_field(proc, "size", "shortest_edge"), _size_field(proc, "crop_size", "height")
        if (
            not getattr(proc, "do_resize", False)
            or not getattr(proc, "do_center_crop", False)
            or size is None
            or crop is None
            or crop != _size_field(proc, "crop_size", "width")
            or crop > size
        ):
            return image
        target = _resized_size(image.width, image.height, size)
        if target != image.size:
            image = image.resize(target, _pil_filter(getattr(proc, "resample", None)))
        return image.crop(_center_crop_box(image.width, image.height, crop))

    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised projected text embeddings, ``(N, D)`` float32 on the CPU."""
        items = _check_texts(texts)
        max_length = getattr(self.model.config.text_config, "max_position_embeddings", 77)
        chunks = [torch.zeros(0, self.model.config.projection_dim)]
        with torch.inference_mode():
            for start in range(0, len(items), self.batch_size):
                tokens = self.tokenizer(
                    items[start : start + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                )
                tokens = {k: v.to(self.device) for k, v in tokens.items()}
                chunks.append(_features(self.model.get_text_features(**tokens)).float().cpu())
        return F.normalize(torch.cat(chunks), dim=-1)

    def clip_i_many(self, pairs: Sequence[tuple[Image.Image, Image.Image]]) -> list[float]:
        """CLIP-I for each pair ``(a, b)``: the cosine of their image embeddings."""
        firsts, seconds = _unzip_pairs(pairs)
        emb = self.image_embeddings([*firsts, *seconds])
        return _rowwise_cosine(emb[: len(firsts)], emb[len(firsts) :])

    def clip_t_many(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[float]:
        """CLIP-T / CLIP-out for each ``(images[i], texts[i])``: image-text embedding cosine."""
        images, texts = list(images), _check_texts(texts)
        if len(images) != len(texts):
            raise InputError(f"clip_t_many needs one text per image, got {len(images)} images, {len(texts)} texts")
        return _rowwise_cosine(self.image_embeddings(images), self.text_embeddings(texts))

    def clip_dir_many(
        self,
        sources: Sequence[Image.Image],
        outputs: Sequence[Image.Image],
        source_captions: Sequence[str],
        output_captions: Sequence[str],
    ) -> list[float]:
        """CLIP-dir for each sample: ``cos(E(out) - E(src), T(out_caption) - T(src_caption))`` on
        normalised embeddings. A sample whose image (or caption) difference is zero scores 0.0."""
        sources, outputs = list(sources), list(outputs)
        source_captions, output_captions = _check_texts(source_captions), _check_texts(output_captions)
        n = len(sources)
        if not (len(outputs) == len(source_captions) == len(output_captions) == n):
            raise InputError(
                "clip_dir_many needs equally many sources, outputs, source captions and output captions, got "
                f"{n}, {len(outputs)}, {len(source_captions)}, {len(output_captions)}"
            )
        img = self.image_embeddings([*sources, *outputs])
        txt = self.text_embeddings([*source_captions, *output_captions])
        return _rowwise_cosine(img[n:] - img[:n], txt[n:] - txt[:n])

    def clip_i(self, a: Image.Image, b: Image.Image) -> float:
        """CLIP-I: cosine of the two images' CLIP embeddings."""
        return self.clip_i_many([(a, b)])[0]

    def clip_t(self, image: Image.Image, text: str) -> float:
        """CLIP-T (MagicBrush, with the ground-truth caption) or CLIP-out (Emu Edit, with the output
        caption): cosine of the image's and the text's CLIP embeddings."""
        if not isinstance(text, str):
            raise InputError(f"text must be a string, got {type(text).__name__}")
        return self.clip_t_many([image], [text])[0]

    def clip_dir(self, src: Image.Image, out: Image.Image, src_caption: str, out_caption: str) -> float:
        """CLIP-dir: does the change from ``src`` to ``out`` point the way the captions change?"""
        return self.clip_dir_many([src], [out], [src_caption], [out_caption])[0]


def _size_field(processor: Any, attribute: str, key: str) -> int | None:
    """One entry of an image processor's size setting (a dict in transformers 4, a SizeDict in 5)."""
    value = getattr(processor, attribute, None)
    if value is None:
        return None
    item = value.get(key) if hasattr(value, "get") else getattr(value, key, None)
    return item if isinstance(item, int) and item > 0 else None


def _pil_filter(resample: Any) -> Image.Resampling:
    try:
        return Image.Resampling(int(resample))
    except (TypeError, ValueError):
        return Image.Resampling.BICUBIC


def _clip_image_processor_class() -> Any:
    # transformers 5 splits CLIPImageProcessor into a torchvision and a PIL backend; the PIL one
    # resizes as the official CLIP transform does (PIL bicubic). transformers 4's class is PIL-based.
    import transformers

    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


# --------------------------------------------------------------------------------------------------
# DINO.


class DinoMetrics:
    """The DINO metric: cosine of DINO ViT-S/16 CLS features of two images.

    Args:
        model: a transformers ``ViTModel`` holding DINO weights (``facebook/dino-vits16``).
        batch_size: most images per forward pass.
    """

    def __init__(self, model: Any, *, batch_size: int = 32) -> None:
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.model = model.eval().requires_grad_(False)
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = DEFAULT_DINO_MODEL,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        batch_size: int = 32,
    ) -> DinoMetrics:
        """Load a DINO ``ViTModel`` from a folder or a hub id (see :meth:`ClipMetrics.from_pretrained`
        for ``device``, ``dtype`` and errors)."""
        torch_device, torch_dtype = parse_device(device), _parse_dtype(dtype)

        def load(path: str, local: bool) -> DinoMetrics:
            from transformers import AutoConfig, ViTModel

            config = AutoConfig.from_pretrained(path, local_files_only=local)
            if config.model_type != "vit":
                raise ValueError(
                    f"its config is a {config.model_type!r} model; the DINO metric needs DINO v1 ViT weights "
                    f"such as {DEFAULT_DINO_MODEL} (model_type 'vit')"
                )
            # DINO has no pooler head; leaving it out also skips the unused pooler weights.
            model = ViTModel.from_pretrained(
                path, config=config, add_pooling_layer=False, dtype=torch_dtype, local_files_only=local
            )
            return cls(model.to(torch_device), batch_size=batch_size)

        return _load("DINO", name_or_path, load, "config.json and the weights of a DINO ViTModel")

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return next(self.model.parameters()).device

    def embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """L2-normalised CLS features after the final LayerNorm (what torch-hub's ``dino_vits16``
        returns), ``(N, D)`` float32 on the CPU."""
        rgb = _check_images(images)
        param = next(self.model.parameters())
        # A checkpoint trained at another resolution interpolates its position embeddings to 224,
        # as the hub model does.
        interpolate = getattr(self.model.config, "image_size", DINO_CROP_SIZE) != DINO_CROP_SIZE
        chunks = [torch.zeros(0, self.model.config.hidden_size)]
        with torch.inference_mode():
            for start in range(0, len(rgb), self.batch_size):
                pixels = torch.stack([dino_preprocess(im) for im in rgb[start : start + self.batch_size]])
                pixels = pixels.to(device=param.device, dtype=param.dtype)
                hidden = self.model(pixel_values=pixels, interpolate_pos_encoding=interpolate).last_hidden_state
                chunks.append(hidden[:, 0].float().cpu())
        return F.normalize(torch.cat(chunks), dim=-1)

    def dino_many(self, pairs: Sequence[tuple[Image.Image, Image.Image]]) -> list[float]:
        """The DINO score of each pair ``(a, b)``."""
        firsts, seconds = _unzip_pairs(pairs)
        emb = self.embeddings([*firsts, *seconds])
        return _rowwise_cosine(emb[: len(firsts)], emb[len(firsts) :])

    def dino(self, a: Image.Image, b: Image.Image) -> float:
        """Cosine of the DINO features of ``a`` and ``b``."""
        return self.dino_many([(a, b)])[0]
