"""Reading images back into the world's vocabulary, and the judge that ranks candidates by how cleanly they render."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from diptych.scaling import load_judge, select_best
from diptych.shapes_core.dataset import sample_edit
from diptych.shapes_core.judge import RenderCheckedJudge
from diptych.shapes_core.parse import parse_scene, render_residual
from diptych.shapes_core.world import random_scene, render


def test_every_rendered_scene_parses_back_exactly_and_renders_cleanly():
    rng = np.random.default_rng(0)
    for _ in range(60):
        scene = random_scene(rng)
        image = render(scene)
        assert parse_scene(image) == scene
        assert render_residual(np.asarray(image))[1] < 1e-6
        assert parse_scene(image.resize((128, 128))) == scene  # other sizes are read at 64 px


def test_a_blurred_scene_still_parses_and_the_residual_grows_with_the_blur():
    scene = random_scene(np.random.default_rng(5), n_objects=4)
    residuals = []
    for radius in (0.0, 0.7, 1.5):
        scene_read, residual = render_residual(render(scene).filter(ImageFilter.GaussianBlur(radius)))
        assert scene_read == scene
        residuals.append(residual)
    assert residuals[0] < residuals[1] < residuals[2]


def test_an_object_drawn_off_its_shape_leaves_a_residual():
    ex = sample_edit("test", 3, phrasings="all")
    target = np.asarray(ex.target_image).copy()
    smeared = target.copy()
    smeared[20:44, 20:44] = np.asarray(Image.fromarray(target[20:44, 20:44]).filter(ImageFilter.BoxBlur(3)))
    assert render_residual(smeared)[1] > render_residual(target)[1] + 1e-3


def test_parse_refuses_what_is_not_an_rgb_image():
    with pytest.raises(ValueError, match="square RGB"):
        parse_scene(np.zeros((64, 32, 3), dtype=np.uint8))


def test_the_render_checked_judge_vetoes_a_wrong_edit_and_prefers_the_clean_one():
    judge = load_judge("shapes?render=1&veto=4")
    assert isinstance(judge, RenderCheckedJudge) and judge.veto == 4.0
    ex = sample_edit("test", 0, phrasings="all")
    blurred = ex.target_image.filter(ImageFilter.GaussianBlur(1.2))
    # the clean target beats the same edit drawn blurrily, and the unedited source (clean, but vetoed) beats neither
    candidates = [blurred, ex.source_image, ex.target_image]
    scores = judge.score_many(ex.source_image, candidates, ex.instruction)
    assert scores[2] > scores[0] > scores[1]
    assert select_best(judge, ex.source_image, candidates, ex.instruction).index == 2
    assert judge.score(ex.source_image, blurred, ex.instruction) == pytest.approx(-render_residual(blurred)[1])


def test_the_shapes_spec_checks_its_options():
    with pytest.raises(ValueError, match="render"):
        load_judge("shapes?render=yes")
    with pytest.raises(ValueError, match="veto only applies"):
        load_judge("shapes?veto=2")
