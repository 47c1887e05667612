"""L1 / L2 distances and to_unit_tensor against answers known by hand or computed plainly in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diptych.errors import InputError
from diptych.eval import METRIC_NAMES, l1_distance, l2_distance, to_unit_tensor


def solid(rgb: tuple[int, int, int], size: tuple[int, int] = (8, 6), mode: str = "RGB") -> Image.Image:
    return Image.new("RGB", size, rgb).convert(mode)


def test_metric_names() -> None:
    assert METRIC_NAMES == (
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


def test_to_unit_tensor_layout_and_scale() -> None:
    array = np.zeros((2, 3, 3), dtype=np.uint8)  # H=2, W=3
    array[0, 2] = (255, 51, 0)
    array[1, 0] = (0, 0, 102)
    tensor = to_unit_tensor(Image.fromarray(array))
    assert tensor.shape == (3, 2, 3) and tensor.dtype == torch.float32
    assert tensor[:, 0, 2].tolist() == pytest.approx([1.0, 0.2, 0.0])
    assert tensor[:, 1, 0].tolist() == pytest.approx([0.0, 0.0, 0.4])
    assert float(tensor.sum()) == pytest.approx(1.6)


def test_to_unit_tensor_converts_to_rgb() -> None:
    grey = Image.new("L", (4, 4), 255)
    assert to_unit_tensor(grey).shape == (3, 4, 4)
    assert float(to_unit_tensor(grey).min()) == 1.0


@pytest.mark.parametrize(
    ("a", "b", "l1", "l2"),
    [
        ((0, 0, 0), (255, 255, 255), 1.0, 1.0),
        ((255, 255, 255), (0, 0, 0), 1.0, 1.0),
        ((51, 51, 51), (0, 0, 0), 0.2, 0.04),
        # One channel differs by 1.0, the others not at all: mean over channels.
        ((255, 0, 0), (0, 0, 0), 1 / 3, 1 / 3),
        ((10, 20, 30), (10, 20, 30), 0.0, 0.0),
    ],
)
def test_known_values(a, b, l1, l2) -> None:
    assert l1_distance(solid(a), solid(b)) == pytest.approx(l1, abs=1e-7)
    assert l2_distance(solid(a), solid(b)) == pytest.approx(l2, abs=1e-7)


def test_l2_is_mean_squared_error_not_its_root() -> None:
    # Half the pixels differ by 0.4, half by 0: MSE 0.08, RMS would be 0.283.
    out = np.zeros((4, 4, 3), dtype=np.uint8)
    out[:2] = 102
    ref = np.zeros((4, 4, 3), dtype=np.uint8)
    assert l2_distance(Image.fromarray(out), Image.fromarray(ref)) == pytest.approx(0.08, abs=1e-7)
    assert l1_distance(Image.fromarray(out), Image.fromarray(ref)) == pytest.approx(0.2, abs=1e-7)


def test_random_images_match_numpy() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    diff = a.astype(np.float64) / 255 - b.astype(np.float64) / 255
    assert l1_distance(Image.fromarray(a), Image.fromarray(b)) == pytest.approx(np.abs(diff).mean(), rel=1e-6)
    assert l2_distance(Image.fromarray(a), Image.fromarray(b)) == pytest.approx((diff**2).mean(), rel=1e-6)


def test_output_is_resized_to_the_reference_with_bicubic() -> None:
    rng = np.random.default_rng(2)
    output = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))  # 16x12
    reference = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))  # 8x6
    resized = np.asarray(output.resize((8, 6), Image.Resampling.BICUBIC), dtype=np.float64) / 255
    ref = np.asarray(reference, dtype=np.float64) / 255
    assert l1_distance(output, reference) == pytest.approx(np.abs(resized - ref).mean(), rel=1e-6)
    assert l2_distance(output, reference) == pytest.approx(((resized - ref) ** 2).mean(), rel=1e-6)
    # Not another filter: nearest-neighbour gives a different answer on random pixels.
    nearest = np.asarray(output.resize((8, 6), Image.Resampling.NEAREST), dtype=np.float64) / 255
    assert l1_distance(output, reference) != pytest.approx(np.abs(nearest - ref).mean(), rel=1e-6)


def test_resize_goes_output_to_reference_not_back() -> None:
    # A 2x2 checkerboard output against a 1x1 grey reference: resized down it is near grey; the
    # reference resized up instead would leave the full black/white difference.
    board = Image.fromarray(np.array([[[0] * 3, [255] * 3], [[255] * 3, [0] * 3]], dtype=np.uint8))
    grey = solid((128, 128, 128), (1, 1))
    expected = np.abs(np.asarray(board.resize((1, 1), Image.Resampling.BICUBIC), dtype=np.float64) - 128).mean()
    assert l1_distance(board, grey) == pytest.approx(expected / 255, abs=1e-7)
    assert l1_distance(board, grey) < 0.1
    assert l1_distance(grey, board) == pytest.approx(np.abs(128.0 - np.asarray(board)).mean() / 255, abs=1e-7)


def test_modes_are_converted_to_rgb() -> None:
    assert l1_distance(solid((255, 255, 255), mode="L"), solid((255, 255, 255))) == 0.0
    rgba = Image.new("RGBA", (8, 6), (255, 0, 0, 0))  # alpha is dropped, as convert("RGB") does
    assert l1_distance(rgba, solid((255, 0, 0))) == 0.0


def test_bad_inputs() -> None:
    with pytest.raises(InputError, match="output must be a PIL image"):
        l1_distance(np.zeros((4, 4, 3)), solid((0, 0, 0)))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="reference must be a PIL image"):
        l2_distance(solid((0, 0, 0)), "ref.png")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="empty"):
        l1_distance(Image.new("RGB", (0, 0)), solid((0, 0, 0)))


def test_psnr():
    from diptych.metrics import psnr

    black = Image.new("RGB", (4, 4))
    grey = Image.new("RGB", (4, 4), (1, 1, 1))
    assert psnr(black, black) == float("inf")
    assert psnr(black, grey) == pytest.approx(20 * np.log10(255))  # MSE 1
    with pytest.raises(InputError, match="one size"):
        psnr(black, Image.new("RGB", (2, 2)))
