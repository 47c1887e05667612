"""Adapters that fill only an edit's region (`fill_region: edit`) and that see the source under the mask
(`masked_content: source`): the region drawn from an edit mask, the Fill mask and condition laid out from it,
the editor filling exactly that region around the source, and the file metadata that tells the editor an
adapter was trained so. (Training with them: tests/train/test_train.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diptych.canvas import region_fill_mask
from diptych.errors import InputError
from diptych.locator import token_region
from diptych.testing import constant_locator, random_image

SIZE = 16  # the tiny model's panel: VAE scale 2, so a token is 4 px


@pytest.fixture
def editor(tiny_base):
    from diptych.editor import Editor

    editor = Editor.from_pretrained(tiny_base, device="cpu", dtype="fp32")
    editor.default_width = SIZE
    return editor


def mask_of(box: tuple[int, int, int, int], size: int = SIZE) -> Image.Image:
    pixels = np.zeros((size, size), np.uint8)
    x0, y0, x1, y1 = box
    pixels[y0:y1, x0:x1] = 255
    return Image.fromarray(pixels)


def grown_by_half_a_token(tokens: np.ndarray, token: int = 4) -> np.ndarray:
    """Whole `token`-px tokens of a (rows, cols) grid upsampled, then 2 px (half a token) around each pixel."""
    core = np.kron(tokens, np.ones((token, token), dtype=bool))
    grown = np.zeros_like(core)
    for y, x in zip(*np.nonzero(core), strict=True):
        grown[max(0, y - 2) : y + 3, max(0, x - 2) : x + 3] = True
    return grown


def test_token_region_is_whole_tokens_grown_by_half_a_token_never_the_masks_outline():
    # 5 x 5 pixels at (1, 1) on 4-px tokens: 9/16 of the first token and 6/16 of its right and lower neighbours
    # (chosen), 4/16 of the diagonal one (below 30%; its masked pixels lie in the margin of the chosen ones)
    region = np.asarray(token_region(mask_of((1, 1, 6, 6)), 4)) > 0
    tokens = np.zeros((4, 4), bool)
    tokens[0, :2] = tokens[:2, 0] = True
    assert np.array_equal(region, grown_by_half_a_token(tokens))
    # the same region for another outline over the same tokens: the mask's shape does not show through
    corner = np.asarray(mask_of((0, 0, 6, 4))) | np.asarray(mask_of((0, 0, 4, 6)))  # another outline, same tokens
    assert np.array_equal(np.asarray(token_region(Image.fromarray(corner), 4)) > 0, region)
    with pytest.raises(ValueError, match="whole number of 4-pixel tokens"):
        token_region(mask_of((0, 0, 3, 3), size=10), 4)


def test_token_region_adds_the_token_of_a_masked_pixel_its_margin_leaves_out():
    pixels = np.asarray(mask_of((0, 0, 4, 4))).copy()
    pixels[13, 13] = 255  # 1/16 of token (3, 3), far from token (0, 0)
    region = np.asarray(token_region(Image.fromarray(pixels), 4)) > 0
    tokens = np.zeros((4, 4), bool)
    tokens[0, 0] = tokens[3, 3] = True
    assert np.array_equal(region, grown_by_half_a_token(tokens))
    # a mask below the share everywhere still gets the tokens it touches; an empty one, no region
    small = np.asarray(token_region(mask_of((3, 3, 5, 5)), 4)) > 0
    four = np.zeros((4, 4), bool)
    four[:2, :2] = True  # 1 of 16 pixels in each of four tokens
    assert np.array_equal(small, grown_by_half_a_token(four))
    assert not np.asarray(token_region(mask_of((0, 0, 0, 0)), 4)).any()


def test_region_fill_mask_puts_the_region_on_the_right_panel_only():
    mask = np.asarray(region_fill_mask(mask_of((4, 8, 12, 16))))
    assert mask.shape == (SIZE, 2 * SIZE)
    assert not mask[:, :SIZE].any()
    assert np.array_equal(mask[:, SIZE:], np.asarray(mask_of((4, 8, 12, 16))))


def test_an_edit_region_adapter_fills_only_the_region_with_the_source_around_it(editor):
    from diptych.editor import EditRequest

    source = random_image(SIZE, SIZE, seed=5)
    user = mask_of((4, 4, 9, 9))
    panel = editor.edit(source, "make it red", seed=1, steps=3, mask=user, feather=0)
    prepared_panel = editor.prepare(EditRequest(source, "make it red", mask=user))
    assert prepared_panel.keep_grid is not None and np.asarray(prepared_panel.fill_mask)[:, SIZE:].all()

    editor.fill_region = "edit"
    prepared = editor.prepare(EditRequest(source, "make it red", mask=user))
    expected = region_fill_mask(token_region(user, 4))
    assert prepared.keep_grid is None  # the source is in the condition: no blending needed
    assert np.array_equal(np.asarray(prepared.fill_mask), np.asarray(expected))
    filled = np.asarray(editor.edit(source, "make it red", seed=1, steps=3, mask=user, feather=0)).astype(int)
    inside = np.asarray(user) > 0
    assert np.array_equal(filled[~inside], np.asarray(source).astype(int)[~inside])  # outside: the source
    assert np.abs(filled - np.asarray(panel).astype(int)).mean() > 0.5  # another condition: another sample


def test_located_edits_fill_the_located_region(tiny_base, editor):
    from diptych.editor import EditRequest

    editor.fill_region = "edit"
    editor.use_locator(constant_locator(tiny_base, -5.0))  # no token above 0.5: the first token, + 2 px
    source = random_image(SIZE, SIZE, seed=3)
    prepared = editor.prepare(EditRequest(source, "make it red", mask="auto"))
    fill = np.asarray(prepared.fill_mask) > 0
    assert fill[:6, SIZE : SIZE + 6].all() and fill.sum() == 36
    out = np.asarray(editor.edit(source, "make it red", seed=1, steps=3, mask="auto", feather=0)).astype(int)
    assert np.array_equal(out[6:], np.asarray(source).astype(int)[6:])
    # without a mask, an adapter trained on regions edits the located one
    assert editor.prepare(EditRequest(source, "make it red")).located
    editor.fill_region = "panel"
    assert not editor.prepare(EditRequest(source, "make it red")).located


def test_an_unknown_fill_region_is_refused(editor):
    with pytest.raises(InputError, match="fill_region must be one of panel, edit"):
        type(editor)(editor.pipe, fill_region="box")


def test_the_adapter_file_tells_the_editor_how_it_was_trained_to_fill(tiny_base, tiny_lora, tmp_path):
    import shutil

    from diptych.editor import Editor
    from diptych.errors import WeightsError
    from diptych.train.adapters import mark_fill

    def load(adapter):
        return Editor.from_pretrained(tiny_base, adapter=str(adapter), device="cpu", dtype="fp32")

    plain = load(tiny_lora)
    assert (plain.fill_region, plain.sampler.masked_content) == ("panel", "zero")
    marked = tmp_path / "edit.safetensors"
    shutil.copy(tiny_lora, marked)
    mark_fill(marked, region="edit", content="source")
    editor = load(marked)
    assert (editor.fill_region, editor.sampler.masked_content) == ("edit", "source")
    mark_fill(marked, region="box")
    with pytest.raises(WeightsError, match=r"unknown diptych\.fill_region 'box'"):
        load(marked)
    mark_fill(marked, content="noise")
    with pytest.raises(WeightsError, match=r"unknown diptych\.masked_content 'noise'"):
        load(marked)


def test_masked_canvas_zeroes_the_region_or_shows_the_source_in_both_panels():
    import torch

    from diptych.sampler import masked_canvas

    canvas = torch.rand(2, 3, 4, 8)
    fill = torch.zeros(2, 1, 4, 8)
    fill[..., 5:7] = 1
    assert torch.equal(masked_canvas(canvas, fill), canvas * (1 - fill))
    shown = masked_canvas(canvas, fill, "source")
    assert torch.equal(shown[..., :4], canvas[..., :4]) and torch.equal(shown[..., 4:], canvas[..., :4])
    with pytest.raises(InputError, match="masked content must be one of zero, source"):
        masked_canvas(canvas, fill, "noise")


def test_the_source_under_the_mask_changes_the_condition_and_the_edit(editor):
    source = random_image(SIZE, SIZE, seed=7)
    zero = np.asarray(editor.edit(source, "make it red", seed=1, steps=3)).astype(int)
    editor.sampler.masked_content = "source"
    shown = np.asarray(editor.edit(source, "make it red", seed=1, steps=3)).astype(int)
    assert np.abs(shown - zero).mean() > 0.5
    editor.sampler.masked_content = "zero"
    assert np.array_equal(np.asarray(editor.edit(source, "make it red", seed=1, steps=3)).astype(int), zero)


def _square_edit(seed: int = 0):
    """An EditSample whose target differs from its source in one 6 x 6 square only."""
    from diptych.train.data import make_sample

    source = random_image(SIZE, SIZE, seed=seed)
    pixels = np.asarray(source).copy()
    pixels[2:8, 3:9] = 255 - pixels[2:8, 3:9]
    return make_sample(source, "invert the square", Image.fromarray(pixels))


def test_training_layout_fills_the_panel_or_only_the_edits_region():
    from diptych.canvas import PanelSize
    from diptych.train.stream import edit_mask_canvas, training_diptych, training_layout

    sample, panel = _square_edit(), PanelSize(SIZE, SIZE)
    canvas, mask = training_layout(sample, panel)
    expected_canvas, expected_mask = training_diptych(sample.source, sample.target, panel)
    assert canvas.tobytes() == expected_canvas.tobytes() and mask.tobytes() == expected_mask.tobytes()
    canvas, mask = training_layout(sample, panel, fill_region="edit", token=4)
    assert canvas.tobytes() == expected_canvas.tobytes()
    changed = np.asarray(edit_mask_canvas(sample, panel))[:, SIZE:]
    region = np.asarray(mask)
    assert not region[:, :SIZE].any() and region[:, SIZE:][changed > 0].all()  # every changed pixel is filled
    assert 0 < (region > 0).sum() < SIZE * SIZE  # but not the whole panel
    with pytest.raises(InputError, match="fill_region must be one of"):
        training_layout(sample, panel, fill_region="box")


def test_task_inversion_tunes_a_region_adapter_on_its_regions(tiny_base):
    from diptych.canvas import PanelSize
    from diptych.editor import Editor
    from diptych.emu.inversion import _parts, _prepare
    from diptych.train.stream import edit_mask_canvas

    panel_editor = Editor.from_pretrained(tiny_base, device="cpu", dtype="fp32")
    region_editor = Editor(panel_editor.pipe, encoder=panel_editor.encoder, fill_region="edit")
    sample = _square_edit(seed=3)
    whole = _prepare(_parts(panel_editor, None), [sample], SIZE, None).masks[0]
    region = _prepare(_parts(region_editor, None), [sample], SIZE, None).masks[0]
    assert np.asarray(whole)[:, SIZE:].all()
    changed = np.asarray(edit_mask_canvas(sample, PanelSize(SIZE, SIZE))) > 0
    assert np.asarray(region)[changed].all() and not np.asarray(region)[:, SIZE:].all()
