"""The soft mask M: values checked by hand, monotone falloff, validation, and the latent keep grid."""

from __future__ import annotations

import numpy as np
import pytest

from diptych.emu.softmask import bounding_box_mask, dilate, keep_grid, soft_mask
from diptych.errors import InputError


def square(size: int = 40, box: tuple[int, int, int, int] = (15, 25, 15, 25)) -> np.ndarray:
    m = np.zeros((size, size), dtype=np.float32)
    r0, r1, c0, c1 = box
    m[r0:r1, c0:c1] = 1.0
    return m


def test_inside_is_one_far_outside_is_zero():
    m = soft_mask(square(), dilate_px=2, blur_sigma=1.0)
    assert m.dtype == np.float32 and m.shape == (40, 40)
    # Deep inside the object every component is 1.
    assert m[20, 20] == pytest.approx(1.0)
    assert m.max() == pytest.approx(1.0)
    # Dilation 2 + blur truncated at 3 sigma reach 5 px beyond the object; the box is the object.
    assert np.all(m[:, :10] == 0) and np.all(m[:10, :] == 0) and np.all(m[31:, :] == 0)
    assert m.min() >= 0.0 and m.max() <= 1.0


def test_hand_checked_values_without_blur():
    # With no blur the smooth mask is the dilation exactly, so every value is a sum of weights.
    precise = square()
    m = soft_mask(precise, dilate_px=2, blur_sigma=0, weights=(0.5, 0.3, 0.2))
    assert m[20, 20] == pytest.approx(1.0)  # precise + smooth + box
    assert m[20, 25] == pytest.approx(0.3)  # first pixel right of the object: only the dilation
    assert m[20, 26] == pytest.approx(0.3)  # second pixel: still within dilate_px
    assert m[20, 27] == pytest.approx(0.0)  # beyond it
    assert m[13, 13] == pytest.approx(0.3)  # the dilation's window is square (Chebyshev distance)


def test_box_region_gets_the_box_weight():
    # Two blobs at opposite corners: the box spans both, its middle is far from either blob.
    precise = np.zeros((60, 60), dtype=np.float32)
    precise[5:10, 5:10] = 1.0
    precise[50:55, 50:55] = 1.0
    m = soft_mask(precise, dilate_px=1, blur_sigma=1.0, weights=(0.5, 0.3, 0.2))
    assert m[30, 30] == pytest.approx(0.2)
    assert m[30, 57] == 0.0  # outside the box and out of the blobs' reach
    assert m[7, 7] == pytest.approx(1.0)
    # Weights are normalised: doubling them all changes nothing.
    assert np.allclose(m, soft_mask(precise, dilate_px=1, blur_sigma=1.0, weights=(1.0, 0.6, 0.4)))


def test_monotone_falloff_away_from_the_object():
    m = soft_mask(square(), dilate_px=2, blur_sigma=1.5)
    row = m[20, 24:]  # from the object's right edge outwards
    assert np.all(np.diff(row) <= 1e-6)
    assert row[0] > 0.9 and row[-1] == 0.0
    assert len(np.unique(np.round(row[:6], 4))) >= 4  # a gradual ramp, not a step


def test_soft_precise_values_and_bool_input():
    precise = square() * 0.5
    m = soft_mask(precise, dilate_px=0, blur_sigma=0, weights=(1, 0, 0))
    assert np.allclose(m, precise)
    assert np.allclose(
        soft_mask(square() > 0, dilate_px=1, blur_sigma=1), soft_mask(square(), dilate_px=1, blur_sigma=1)
    )


def test_defaults_scale_with_size():
    m = soft_mask(square(64, (20, 40, 20, 40)))  # dilation 2 px, sigma 1.28 px at 64
    assert m[30, 30] == pytest.approx(1.0)
    assert m[30, 50] == 0.0
    assert m[30, 41] > 0.0


@pytest.mark.parametrize(
    ("precise", "kwargs", "match"),
    [
        (np.zeros((8, 8)), {}, "empty"),
        (np.ones((2, 8, 8)), {}, "2-D"),
        (np.full((8, 8), 2.0), {}, r"\[0, 1\]"),
        (square(), {"weights": (1, 1)}, "three"),
        (square(), {"weights": (0, 0, 0)}, "positive sum"),
        (square(), {"weights": (1, -1, 1)}, "non-negative"),
        (square(), {"dilate_px": -1}, "dilate_px"),
        (square(), {"blur_sigma": float("nan")}, "blur_sigma"),
    ],
)
def test_bad_input_is_refused(precise, kwargs, match):
    with pytest.raises(InputError, match=match):
        soft_mask(precise, **kwargs)


def test_dilate_and_box_helpers():
    point = np.zeros((7, 7), dtype=np.float32)
    point[3, 3] = 1.0
    grown = dilate(point, 1)
    assert grown.sum() == 9 and grown[2:5, 2:5].min() == 1.0
    assert np.array_equal(bounding_box_mask(square(10, (2, 4, 3, 8))), square(10, (2, 4, 3, 8)))


def test_keep_grid_is_one_minus_cell_mean():
    m = np.zeros((8, 8), dtype=np.float32)
    m[0:2, 0:2] = 1.0  # cell (0, 0) fully editable
    m[2, 2] = 1.0  # one of four pixels of cell (1, 1)
    grid = keep_grid(m, (8, 8), 2)
    assert grid.shape == (4, 4)
    assert grid[0, 0] == 0.0 and grid[1, 1] == pytest.approx(0.75) and grid[3, 3] == 1.0
    # A mask of another size is resized to the panel first.
    assert keep_grid(np.ones((5, 5), np.float32), (8, 4), 2).shape == (2, 4)
    with pytest.raises(InputError, match="latent cells"):
        keep_grid(m, (7, 8), 2)
