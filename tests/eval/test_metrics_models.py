"""ClipMetrics and DinoMetrics on tiny random models saved to disk and loaded back through
from_pretrained, each checked against the same quantity computed plainly from the model's parts."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diptych.errors import InputError, WeightsError
from diptych.eval import ClipMetrics, DinoMetrics
from diptych.eval.metrics import IMAGENET_MEAN, IMAGENET_STD
from diptych.testing import save_tiny_clip, tiny_clip_tokenizer


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIP whose BPE vocabulary is the letters, word-final letters and two merges."""
    tokenizer = tiny_clip_tokenizer(string.ascii_lowercase, merges=[("r", "e"), ("re", "d</w>")])
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), tokenizer=tokenizer, num_layers=1)


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import ViTConfig, ViTModel

    folder = tmp_path_factory.mktemp("tiny-dino")
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=224,
        patch_size=16,
    )
    torch.manual_seed(0)
    # Saved with the pooler (dense + tanh), as the hub checkpoint is: the metric must not use it.
    ViTModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip(clip_dir: Path) -> ClipMetrics:
    return ClipMetrics.from_pretrained(str(clip_dir), device="cpu")


@pytest.fixture(scope="module")
def dino(vit_dir: Path) -> DinoMetrics:
    return DinoMetrics.from_pretrained(str(vit_dir), device="cpu")


def random_images(n: int, seed: int = 0, size: tuple[int, int] = (40, 30)) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


# --------------------------------------------------------------------------------------------------
# Independent references: the model's sub-modules called directly, numpy for the rest.


def official_clip_crop(image: Image.Image, size: int = 32) -> Image.Image:
    """The official CLIP transform's Resize(size, bicubic) + CenterCrop(size), spelled out: the crop
    offset is round((side - size) / 2), which rounds half to even."""
    w, h = image.size
    new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = round((new_w - size) / 2), round((new_h - size) / 2)
    return image.crop((left, top, left + size, top + size))


def reference_clip_image(folder: Path, image: Image.Image, *, official_crop: bool = True) -> np.ndarray:
    from transformers import CLIPImageProcessorPil, CLIPModel

    model = CLIPModel.from_pretrained(folder).eval()
    image = official_clip_crop(image) if official_crop else image
    pixels = CLIPImageProcessorPil.from_pretrained(folder)(images=[image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        pooled = model.vision_model(pixel_values=pixels).pooler_output
        return model.visual_projection(pooled)[0].double().numpy()


def reference_clip_text(folder: Path, text: str) -> np.ndarray:
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(folder).eval()
    tokens = CLIPTokenizer.from_pretrained(folder)([text], return_tensors="pt")
    with torch.no_grad():
        pooled = model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).pooler_output
        return model.text_projection(pooled)[0].double().numpy()


def reference_dino_pixels(image: Image.Image) -> torch.Tensor:
    """Resize(256, bicubic) -> CenterCrop(224) -> ToTensor -> Normalize, spelled out for a portrait
    image whose sizes give exact halves."""
    w, h = image.size
    assert w <= h
    new_w, new_h = 256, int(256 * h / w)
    resized = image.convert("RGB").resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = round((new_w - 224) / 2), round((new_h - 224) / 2)
    array = np.asarray(resized.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255
    array = (array - np.array(IMAGENET_MEAN, dtype=np.float32)) / np.array(IMAGENET_STD, dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def reference_dino(folder: Path, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """The CLS token after the final LayerNorm, and (for contrast) the tanh-pooler output."""
    from transformers import ViTModel

    model = ViTModel.from_pretrained(folder).eval()
    with torch.no_grad():
        out = model(pixel_values=reference_dino_pixels(image), output_hidden_states=True)
        # The last block's output, before the final LayerNorm, normalised here by hand.
        cls = model.layernorm(out.hidden_states[-1])[:, 0]
        pooled = out.pooler_output
    return cls[0].double().numpy(), pooled[0].double().numpy()


# --------------------------------------------------------------------------------------------------
# CLIP.


def test_clip_image_and_text_embeddings_match_the_model(clip: ClipMetrics, clip_dir: Path) -> None:
    images = random_images(3)
    emb = clip.image_embeddings(images)
    assert emb.shape == (3, 16) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-6)
    for i, image in enumerate(images):
        np.testing.assert_allclose(emb[i].numpy(), unit(reference_clip_image(clip_dir, image)), atol=1e-5)
    texts = ["a red ball", "make it red"]
    temb = clip.text_embeddings(texts)
    assert temb.shape == (2, 16)
    for i, text in enumerate(texts):
        np.testing.assert_allclose(temb[i].numpy(), unit(reference_clip_text(clip_dir, text)), atol=1e-5)


def test_clip_crop_offset_rounds_like_torchvision(clip: ClipMetrics, clip_dir: Path) -> None:
    # 32 wide, 35 high: a 3-pixel margin. The official crop starts at row round(1.5) = 2;
    # transformers alone would start at row 3 // 2 = 1.
    image = random_images(1, seed=11, size=(32, 35))[0]
    emb = clip.image_embeddings([image])[0].numpy()
    np.testing.assert_allclose(emb, unit(reference_clip_image(clip_dir, image)), atol=1e-5)
    plain = unit(reference_clip_image(clip_dir, image, official_crop=False))
    assert np.abs(emb - plain).max() > 1e-3


def test_clip_i_clip_t_clip_dir(clip: ClipMetrics, clip_dir: Path) -> None:
    src, out = random_images(2, seed=3)
    e_src, e_out = unit(reference_clip_image(clip_dir, src)), unit(reference_clip_image(clip_dir, out))
    t_src, t_out = unit(reference_clip_text(clip_dir, "a ball")), unit(reference_clip_text(clip_dir, "a red ball"))

    assert clip.clip_i(src, out) == pytest.approx(float(e_src @ e_out), abs=1e-5)
    assert clip.clip_i(src, src) == pytest.approx(1.0, abs=1e-6)
    assert clip.clip_t(out, "a red ball") == pytest.approx(float(e_out @ t_out), abs=1e-5)
    d_img, d_txt = e_out - e_src, t_out - t_src
    expected_dir = float(d_img @ d_txt / (np.linalg.norm(d_img) * np.linalg.norm(d_txt)))
    assert clip.clip_dir(src, out, "a ball", "a red ball") == pytest.approx(expected_dir, abs=1e-5)
    # Swapping the captions flips the direction.
    assert clip.clip_dir(src, out, "a red ball", "a ball") == pytest.approx(-expected_dir, abs=1e-5)
    # An unchanged image has no direction: 0, not NaN.
    assert clip.clip_dir(src, src, "a ball", "a red ball") == 0.0


def test_clip_batched_helpers_equal_single_calls(clip_dir: Path) -> None:
    metrics = ClipMetrics.from_pretrained(str(clip_dir), device="cpu", batch_size=2)  # forces 3 batches
    images = random_images(6, seed=5)
    pairs = [(images[0], images[1]), (images[2], images[3]), (images[4], images[5])]
    texts = ["a ball", "red", "make it red"]
    many_i = metrics.clip_i_many(pairs)
    assert many_i == pytest.approx([metrics.clip_i(a, b) for a, b in pairs], abs=1e-6)
    many_t = metrics.clip_t_many(images[:3], texts)
    assert many_t == pytest.approx([metrics.clip_t(im, t) for im, t in zip(images[:3], texts, strict=True)], abs=1e-6)
    many_dir = metrics.clip_dir_many(images[:3], images[3:], texts, texts[::-1])
    singles = [
        metrics.clip_dir(s, o, a, b) for s, o, a, b in zip(images[:3], images[3:], texts, texts[::-1], strict=True)
    ]
    assert many_dir == pytest.approx(singles, abs=1e-6)
    assert metrics.clip_i_many([]) == []
    assert metrics.image_embeddings([]).shape == (0, 16)


def test_clip_truncates_long_texts(clip: ClipMetrics) -> None:
    long_text = "red " * 100  # far past the 32-token context of the tiny model
    assert clip.text_embeddings([long_text]).shape == (1, 16)


def test_clip_bad_inputs(clip: ClipMetrics) -> None:
    image = random_images(1)[0]
    with pytest.raises(InputError, match="list"):
        clip.text_embeddings("a ball")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="list of PIL images"):
        clip.image_embeddings(image)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="one text per image"):
        clip.clip_t_many([image, image], ["a ball"])
    with pytest.raises(InputError, match="text must be a string"):
        clip.clip_t(image, 3)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"pairs\[0\]"):
        clip.clip_i_many([image])  # type: ignore[list-item]


# --------------------------------------------------------------------------------------------------
# DINO.


def test_dino_uses_the_cls_token_after_layernorm(dino: DinoMetrics, vit_dir: Path) -> None:
    a = random_images(1, seed=7, size=(240, 300))[0]
    b = Image.new("RGB", (240, 300), (200, 30, 60))
    (ca, pa), (cb, pb) = reference_dino(vit_dir, a), reference_dino(vit_dir, b)
    emb = dino.embeddings([a, b])
    assert emb.shape == (2, 32)
    np.testing.assert_allclose(emb[0].numpy(), unit(ca), atol=1e-5)
    expected = float(unit(ca) @ unit(cb))
    assert dino.dino(a, b) == pytest.approx(expected, abs=1e-5)
    # The tanh pooler gives other features, so the checks above tell the two apart.
    assert np.abs(emb[0].numpy() - unit(pa)).max() > 0.05
    assert np.abs(emb[1].numpy() - unit(pb)).max() > 0.05
    assert dino.dino(a, a) == pytest.approx(1.0, abs=1e-6)


def test_dino_many_in_batches(vit_dir: Path) -> None:
    metrics = DinoMetrics.from_pretrained(str(vit_dir), device="cpu", batch_size=3)
    images = random_images(4, seed=9)
    pairs = [(images[0], images[1]), (images[2], images[3])]
    assert metrics.dino_many(pairs) == pytest.approx([metrics.dino(a, b) for a, b in pairs], abs=1e-6)


# --------------------------------------------------------------------------------------------------
# Loading.


@pytest.mark.parametrize(
    ("cls", "name"), [(ClipMetrics, "openai/clip-vit-base-patch32"), (DinoMetrics, "facebook/dino-vits16")]
)
def test_hub_id_offline_says_how_to_download(cls, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as info:
        cls.from_pretrained(name, device="cpu")
    message = str(info.value)
    assert name in message
    assert f"huggingface-cli download {name}" in message
    assert "HF_HUB_OFFLINE=1" in message


def test_default_names() -> None:
    import inspect

    clip_default = inspect.signature(ClipMetrics.from_pretrained).parameters["name_or_path"].default
    dino_default = inspect.signature(DinoMetrics.from_pretrained).parameters["name_or_path"].default
    assert clip_default == "openai/clip-vit-base-patch32"
    assert dino_default == "facebook/dino-vits16"


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        ClipMetrics.from_pretrained(str(tmp_path / "nope"))
    with pytest.raises(WeightsError, match="does not exist"):
        DinoMetrics.from_pretrained(str(tmp_path / "nope"))


def test_dino_rejects_a_non_vit_folder(clip_dir: Path) -> None:
    with pytest.raises(WeightsError, match="'clip'"):
        DinoMetrics.from_pretrained(str(clip_dir), device="cpu")


def test_folder_without_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(WeightsError, match="could not load the CLIP model"):
        ClipMetrics.from_pretrained(str(tmp_path), device="cpu")


def test_dtype_and_device_options(vit_dir: Path) -> None:
    metrics = DinoMetrics.from_pretrained(str(vit_dir), device="cpu", dtype="bf16")
    assert next(metrics.model.parameters()).dtype == torch.bfloat16
    assert metrics.embeddings(random_images(1)).dtype == torch.float32
    assert metrics.device == torch.device("cpu")
    with pytest.raises(InputError, match="dtype"):
        DinoMetrics.from_pretrained(str(vit_dir), dtype="int8")
    with pytest.raises(InputError, match="batch_size"):
        DinoMetrics.from_pretrained(str(vit_dir), device="cpu", batch_size=0)
