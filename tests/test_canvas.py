import numpy as np
import pytest
from PIL import Image

from diptych import canvas as cv
from diptych.errors import InputError


@pytest.mark.parametrize(
    ("size", "expected_height"),
    [
        ((512, 512), 512),
        ((1024, 768), 384),
        ((640, 481), 384),  # 384.8 -> 384 (the official //8 gives 384 too)
        ((513, 770), 768),  # 768.5 -> 768; official int(770*512/513)//8*8 = 768
        ((1000, 563), 288),  # 288.3 -> 288; official 288//8*8 = 288
        ((300, 171), 288),  # 291.8 -> 288; official gives 288 as well
        ((1200, 697), 304),  # 297.4 -> 304; official gives 296, not a multiple of 16 (the black line)
        ((4000, 10), 16),  # extreme panorama: never below one token row
    ],
)
def test_plan_panel_rounds_height_to_multiple_of_16(size, expected_height):
    panel = cv.plan_panel(size, 512)
    assert panel == cv.PanelSize(512, expected_height)
    assert panel.height % 16 == 0
    assert panel.canvas == (1024, expected_height)


def test_larger_width_allowed_and_budget_enforced():
    assert cv.plan_panel((1024, 1024), 1024) == cv.PanelSize(1024, 1024)
    with pytest.raises(InputError, match="budget"):
        cv.plan_panel((1024, 2048), 1024)
    assert cv.plan_panel((1024, 2048), 1024, max_canvas_pixels=4 * 1024 * 1024).height == 2048


@pytest.mark.parametrize("width", [0, -16, 500, 17])
def test_width_must_be_positive_multiple(width):
    with pytest.raises(InputError, match="multiple of 16"):
        cv.plan_panel((512, 512), width)


def test_compose_and_crop():
    src = Image.new("RGB", (32, 24), (10, 200, 30))
    canvas, mask = cv.compose_diptych(src)
    assert canvas.size == (64, 24) and mask.size == (64, 24)
    m = np.asarray(mask)
    assert (m[:, :32] == 0).all() and (m[:, 32:] == 255).all()
    assert np.array_equal(np.asarray(cv.crop_right(canvas)), np.asarray(src))


def test_keep_map_is_conservative():
    mask = Image.new("L", (16, 8), 0)
    mask.putpixel((5, 3), 1)  # a single faint pixel makes its whole 4x4 cell editable
    keep = cv.keep_map(mask, (4, 2))
    expected = np.ones((2, 4), np.float32)
    expected[0, 1] = 0
    assert np.array_equal(keep, expected)


def test_feathered_composite_keeps_outside_exactly():
    rng = np.random.default_rng(0)
    src = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    edit = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    mask = Image.new("L", (40, 40), 0)
    mask.paste(255, (10, 10, 30, 30))
    out = np.asarray(cv.feathered_composite(src, edit, mask, feather=3))
    m = np.asarray(mask)
    assert np.array_equal(out[m == 0], np.asarray(src)[m == 0])
    # 2 * feather pixels in from the edge, the edit is taken as it is.
    assert np.array_equal(out[16:24, 16:24], np.asarray(edit)[16:24, 16:24])


def test_feather_ramps_from_the_mask_edge_inwards():
    src, edit = Image.new("RGB", (40, 40), "black"), Image.new("RGB", (40, 40), "white")
    mask = Image.new("L", (40, 40), 0)
    mask.paste(255, (10, 10, 30, 30))
    row = np.asarray(cv.feathered_composite(src, edit, mask, feather=3))[20, :, 0].astype(int)
    assert (row[:10] == 0).all() and (row[30:] == 0).all()
    ramp = row[10:17]
    assert (np.diff(ramp) >= 0).all() and 0 <= ramp[0] < 128 < ramp[-1] == 255
    assert (row[16:24] == 255).all()


def test_feather_zero_is_a_hard_composite():
    src, edit = Image.new("RGB", (8, 8), "black"), Image.new("RGB", (8, 8), "white")
    mask = Image.new("L", (8, 8), 0)
    mask.paste(255, (4, 0, 8, 8))
    out = np.asarray(cv.feathered_composite(src, edit, mask, feather=0))
    assert (out[:, :4] == 0).all() and (out[:, 4:] == 255).all()
