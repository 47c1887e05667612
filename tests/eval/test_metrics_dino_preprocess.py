"""dino_preprocess against tensors worked out by hand from torchvision's definitions:
Resize(256) makes the shorter side 256 and the longer int(256 * long / short); CenterCrop(224) starts at
int(round((side - 224) / 2)) (round half to even); Normalize uses the ImageNet mean and std."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diptych.errors import InputError
from diptych.eval import dino_preprocess
from diptych.eval.metrics import IMAGENET_MEAN, IMAGENET_STD, _center_crop_box, _resized_size

# (value - mean) / std, worked out by hand for each channel.
WHITE = (2.2489083, 2.4285714, 2.6400000)  # (1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225
BLACK = (-2.1179039, -2.0357143, -1.8044444)  # -0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225
BLUE = (BLACK[0], BLACK[1], WHITE[2])


def test_constants() -> None:
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert IMAGENET_STD == (0.229, 0.224, 0.225)


def test_resized_size_truncates_the_longer_side() -> None:
    assert _resized_size(512, 640, 256) == (256, 320)
    assert _resized_size(640, 320, 256) == (512, 256)
    assert _resized_size(300, 451, 256) == (256, 384)  # 384.85 truncated, not rounded
    assert _resized_size(451, 300, 256) == (384, 256)
    assert _resized_size(100, 100, 256) == (256, 256)


def test_center_crop_rounds_half_to_even() -> None:
    assert _center_crop_box(256, 320, 224) == (16, 48, 240, 272)
    assert _center_crop_box(256, 259, 224) == (16, 18, 240, 242)  # 17.5 -> 18
    assert _center_crop_box(257, 256, 224) == (16, 16, 240, 240)  # 16.5 -> 16
    assert _center_crop_box(224, 224, 224) == (0, 0, 224, 224)


def test_crop_offsets_on_an_image_that_needs_no_resize() -> None:
    # 256 wide, 259 high: the shorter side is already 256, so only the crop acts. It must keep
    # columns 16..239 and rows 18..241 (17.5 rounds to 18); everything outside is another colour.
    array = np.zeros((259, 256, 3), dtype=np.uint8)
    array[:, :] = (0, 0, 255)
    array[:18] = (255, 0, 0)  # rows a floor-division crop would keep
    array[:, :16] = (0, 255, 0)
    array[:, 240:] = (255, 255, 255)
    array[242:] = (255, 255, 0)
    out = dino_preprocess(Image.fromarray(array))
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    for channel in range(3):
        assert torch.allclose(out[channel], torch.full((224, 224), BLUE[channel]), atol=1e-5)


def test_resize_then_crop_on_a_two_colour_image() -> None:
    # 512x640: white where row < 214 and column < 128, black elsewhere. Resize -> 256x320 (white
    # rows < 107, columns < 64), crop from (16, 48) -> white rows < 59, columns < 48 of the output.
    array = np.zeros((640, 512, 3), dtype=np.uint8)
    array[:214, :128] = 255
    out = dino_preprocess(Image.fromarray(array))
    assert out.shape == (3, 224, 224)
    white_points = [(0, 0), (10, 10), (50, 40), (0, 44)]
    black_points = [(0, 60), (70, 10), (200, 200), (223, 223), (10, 223)]
    for row, col in white_points:
        assert out[:, row, col].tolist() == pytest.approx(WHITE, abs=1e-5), (row, col)
    for row, col in black_points:
        assert out[:, row, col].tolist() == pytest.approx(BLACK, abs=1e-5), (row, col)
    # The white block ends near column 48 and row 59 of the output, so the scale and offsets hold.
    white = (out[0] > 0).numpy()
    cols = np.flatnonzero(white[0])
    rows = np.flatnonzero(white[:, 0])
    assert 46 <= cols.max() <= 48
    assert 57 <= rows.max() <= 59


def test_grey_value_and_landscape_orientation() -> None:
    # Mid grey 128 of a 640x320 landscape image: every pixel is (128/255 - mean) / std.
    out = dino_preprocess(Image.new("RGB", (640, 320), (128, 128, 128)))
    expected = [(128 / 255 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    assert out.shape == (3, 224, 224)
    assert out.mean(dim=(1, 2)).tolist() == pytest.approx(expected, abs=1e-5)
    assert float(out.std(dim=(1, 2)).max()) < 1e-6


def test_small_and_non_rgb_images() -> None:
    out = dino_preprocess(Image.new("L", (10, 7), 255))  # grey -> RGB, upscaled to 365x256
    assert out.shape == (3, 224, 224)
    assert out[:, 112, 112].tolist() == pytest.approx(WHITE, abs=1e-5)
    with pytest.raises(InputError, match="PIL image"):
        dino_preprocess(np.zeros((8, 8, 3)))  # type: ignore[arg-type]


def test_equals_torchvision_when_installed() -> None:
    transforms = pytest.importorskip("torchvision.transforms")
    official = transforms.Compose(
        [
            transforms.Resize(256, interpolation=3),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    rng = np.random.default_rng(0)
    for height, width in [(259, 256), (300, 451), (480, 640), (97, 131)]:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        assert torch.allclose(dino_preprocess(image), official(image), atol=1e-6)
