"""The locator at inference: `mask="auto"` composites the edit inside the predicted region and nowhere else;
locator files are told from other files; the bench's +locate variants. (Training: tests/train/test_locate.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from diptych.editor import EditRequest
from diptych.errors import InputError, WeightsError
from diptych.locator import Locator, region_mask
from diptych.shapes.bench import variant_options
from diptych.testing import constant_locator, random_image

SIZE = 16  # the tiny model's panel: VAE scale 2, so a token is 4 px and the locator's margin 2 px


@pytest.fixture
def editor(tiny_base):
    from diptych.editor import Editor

    editor = Editor.from_pretrained(tiny_base, device="cpu", dtype="fp32")
    editor.default_width = SIZE
    return editor


def pixels(image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def test_auto_mask_edits_inside_the_located_region_and_keeps_every_pixel_outside(tiny_base, editor):
    source = random_image(SIZE, SIZE, seed=3)
    plain = pixels(editor.edit(source, "make it red", seed=1, steps=3))
    # No token above 0.5: the most likely one (all tie: the first, top left), 4 px plus a 2 px margin.
    editor.use_locator(constant_locator(tiny_base, -5.0))
    region = np.asarray(editor.locate(source, "make it red")) > 0
    expected = np.zeros((SIZE, SIZE), bool)
    expected[:6, :6] = True
    assert np.array_equal(region, expected)
    auto = pixels(editor.edit(source, "make it red", seed=1, steps=3, mask="auto", feather=0))
    assert np.array_equal(auto[~region], pixels(source)[~region])  # outside: the source, bit for bit
    assert np.array_equal(auto[region], plain[region])  # inside: the edit as sampled without a mask
    assert np.abs(plain[region] - pixels(source)[region]).mean() > 1  # (so the two checks above can differ)
    # a feather ramps outside the region, so the region itself is edited in full
    feathered = pixels(editor.edit(source, "make it red", seed=1, steps=3, mask="auto", feather=2))
    assert np.array_equal(feathered[region], plain[region])
    grown = np.zeros_like(expected)
    grown[:14, :14] = True  # the region dilated by 4 x feather: the ramp's outer edge
    assert np.array_equal(feathered[~grown], pixels(source)[~grown])
    # every token above 0.5: the whole panel, the unmasked edit
    editor.use_locator(constant_locator(tiny_base, 5.0))
    assert np.array_equal(pixels(editor.edit(source, "make it red", seed=1, steps=3, mask="auto", feather=0)), plain)


class WordPredictor:
    """A task predictor that answers "color_filter" for instructions with "invert" in them, else "local"."""

    def predict(self, instructions):
        return ["color_filter" if "invert" in text else "local" for text in instructions]


def test_whole_image_tasks_are_not_located(tiny_base, editor):
    from diptych.conditioning.task_embedding import TaskEmbedding
    from diptych.images import AUTO_MASK

    source = random_image(SIZE, SIZE, seed=3)
    editor.use_locator(constant_locator(tiny_base, -5.0))  # the locator's region: the top-left token
    corner = np.asarray(editor.locate(source, "invert the colours")) > 0
    assert corner.sum() == 36  # without task conditioning the locator decides, whatever the task
    editor.use_task_embedding(TaskEmbedding.for_transformer(editor.pipe.transformer), predictor=WordPredictor())
    assert np.array_equal(np.asarray(editor.locate(source, "make it red")) > 0, corner)  # a local task: located
    assert (np.asarray(editor.locate(source, "invert the colours")) > 0).all()  # predicted color_filter: all
    given = editor.prepare(EditRequest(source, "make it red", mask=AUTO_MASK, task="background"), width=SIZE)
    assert (np.asarray(given.mask) > 0).all() and given.located  # a given task counts as well
    # the whole image is the Fill mask of an adapter trained on edit regions: the unmasked, whole-panel edit
    editor.fill_region = "edit"
    whole = editor.edit(source, "invert the colours", seed=1, steps=3, feather=0)
    editor.use_locator(None)
    assert np.array_equal(pixels(whole), pixels(editor.edit(source, "invert the colours", seed=1, steps=3)))


def test_auto_mask_without_a_locator_says_how_to_get_one(editor):
    with pytest.raises(InputError, match=r"needs a locator.*--objective locate"):
        editor.edit(random_image(SIZE, SIZE), "make it red", steps=2, mask="auto")


def test_region_mask_thresholds_upsamples_and_dilates():
    probabilities = np.array([[0.1, 0.9], [0.2, 0.4]])
    mask = np.asarray(region_mask(probabilities, (8, 8), dilate=1)) > 0
    expected = np.zeros((8, 8), bool)
    expected[:5, 3:] = True  # the top-right 4 x 4 token grown by one pixel (inside the image)
    assert np.array_equal(mask, expected)
    assert np.asarray(region_mask(probabilities, (8, 8), threshold=0.95, dilate=0))[0, 4] == 255  # the argmax


def test_a_file_that_is_not_a_locator_is_refused(tiny_base, tiny_lora, tmp_path):
    with pytest.raises(WeightsError, match="is not a locator"):
        Locator.from_pretrained(tiny_base, tiny_lora)
    with pytest.raises(WeightsError, match="does not exist"):
        Locator.from_pretrained(tiny_base, tmp_path / "none.safetensors")


def test_bench_locate_variants_add_the_auto_mask():
    assert variant_options("moe+locate") == {"adapter": "moe", "mask": "auto"}
    assert variant_options("moe+filter+locate") == variant_options("moe+filter") | {"mask": "auto"}
    assert variant_options("lora+true-region") == {"adapter": "lora", "mask": "true-region", "feather": 0}


def test_bench_sampler_suffixes_set_a_filters_candidates_and_a_plain_edits_sampling():
    assert variant_options("moe+euler") == {"adapter": "moe", "stochastic": False}
    assert variant_options("moe+filter+stochastic") == variant_options("moe+filter") | {"samplers": ["stochastic"]}


def test_the_true_region_variant_gives_each_edit_its_own_region_unfeathered():
    from diptych.shapes.bench import run_variant, val_cases
    from diptych.shapes_core.edits import edit_region

    class Recorder:  # an editor that returns the source and keeps what it was asked
        def edit_many(self, requests, **options):
            self.requests, self.options = list(requests), options
            return [r.image for r in self.requests]

    editor, cases = Recorder(), val_cases(1, ops=["recolor", "remove"])
    rows = run_variant(editor, cases, variant_options("lora+true-region"), steps=2, seed=0, batch_size=4)
    assert editor.options["feather"] == 0 and len(rows) == 2
    for request, case in zip(editor.requests, cases, strict=True):
        assert np.array_equal(np.asarray(request.mask) > 0, edit_region(case.edit, case.source.size[0]))
    assert not any(row["success"] for row in rows)  # the source back is no edit


def test_the_locator_threshold_is_the_locators_own_and_a_request_can_override_it(tiny_base, editor):
    source = random_image(SIZE, SIZE, seed=3)
    editor.use_locator(constant_locator(tiny_base, float(np.log(0.6 / 0.4))))  # every token at probability 0.6
    assert (np.asarray(editor.locate(source, "make it red")) > 0).all()  # above the default 0.5: the whole panel
    request = EditRequest(source, "make it red", mask="auto")
    corner = np.asarray(editor.prepare(request, locator_threshold=0.7, width=SIZE).mask) > 0
    assert corner.sum() == 36  # none above 0.7: the most likely token (the first) and its margin
    editor.locator.threshold = 0.7
    assert np.array_equal(np.asarray(editor.locate(source, "make it red")) > 0, corner)
    assert (np.asarray(editor.prepare(request, locator_threshold=0.55, width=SIZE).mask) > 0).all()
    with pytest.raises(InputError, match="strictly between 0 and 1"):
        editor.prepare(request, locator_threshold=1.0, width=SIZE)
    with pytest.raises(InputError, match="strictly between 0 and 1"):
        editor.locator.threshold = 0.0
    assert editor.locator.threshold == 0.7  # a refused value leaves the locator's own


def test_a_locator_file_saves_its_threshold(tiny_base, tmp_path):
    import json

    from safetensors.torch import save_file

    from diptych.editor import Editor
    from diptych.locator import LOCATOR_METADATA_KEY, ReferentHead, save_locator_file

    head = ReferentHead(constant_locator(tiny_base, 0.0).head.proj.in_features)
    saved = save_locator_file(tmp_path / "locator.safetensors", {}, head, threshold=0.7)
    assert Locator.from_pretrained(tiny_base, saved).threshold == 0.7
    assert Editor.from_pretrained(tiny_base, locator=saved).locator.threshold == 0.7
    assert Editor.from_pretrained(tiny_base, locator=saved, locator_threshold=0.3).locator.threshold == 0.3
    tensors = {f"referent_head.{k}": v.contiguous() for k, v in head.state_dict().items()}
    older = tmp_path / "older.safetensors"  # written before locators saved a threshold: the default, 0.5
    save_file(tensors, older, metadata={LOCATOR_METADATA_KEY: json.dumps({"timestep": 0.95})})
    assert Locator.from_pretrained(tiny_base, older).threshold == 0.5
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, broken, metadata={LOCATOR_METADATA_KEY: json.dumps({"threshold": 2})})
    with pytest.raises(WeightsError, match="saved threshold is not a probability"):
        Locator.from_pretrained(tiny_base, broken)
    with pytest.raises(InputError, match="strictly between 0 and 1"):
        Editor.from_pretrained(tiny_base, locator=saved, locator_threshold=0.0)
    with pytest.raises(InputError, match="needs a locator"):
        Editor.from_pretrained(tiny_base, locator_threshold=0.5)


def test_diptych_edit_passes_the_locator_threshold(tiny_base, tmp_path, monkeypatch):
    from diptych.cli import main
    from diptych.editor import Editor
    from diptych.locator import ReferentHead, save_locator_file

    thresholds = []
    original = Editor.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        editor = original(cls, *args, **kwargs)
        thresholds.append(editor.locator.threshold)
        return editor

    monkeypatch.setattr(Editor, "from_pretrained", classmethod(spy))
    head = ReferentHead(constant_locator(tiny_base, 0.0).head.proj.in_features)
    locator = save_locator_file(tmp_path / "locator.safetensors", {}, head, threshold=0.6)
    random_image(SIZE, SIZE).save(tmp_path / "in.png")
    line = ["edit", str(tmp_path / "in.png"), "make it red", "--base", tiny_base, "--locator", str(locator)]
    line += ["--mask", "auto", "--steps", "1", "--width", str(SIZE), "-q"]
    assert main([*line, "-o", str(tmp_path / "a.png")]) == 0
    assert main([*line, "-o", str(tmp_path / "b.png"), "--locator-threshold", "0.3"]) == 0
    assert thresholds == [0.6, 0.3]  # the file's own, then the option's
