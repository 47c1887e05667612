"""ShapesEdit edit operations, phrasings, edit regions and the success rule."""

from __future__ import annotations

import json
import string
from functools import cache

import numpy as np
import pytest
from PIL import Image, ImageFilter

from diptych.shapes.edits import (
    OPS,
    T_OUTSIDE,
    Edit,
    EditError,
    EditScore,
    edit_region,
    get_op,
    judge_edit,
)
from diptych.shapes.world import (
    Scene,
    SceneObject,
    allowed_colors,
    random_scene,
    referring_expression,
    render,
    render_array,
)

SINGLE_OBJECT_OPS = ("recolor", "reshape", "add", "move", "resize")
PER_OP = 24  # 9 ops x 24 = 216 sampled edits


@cache
def sampled_edits() -> tuple[Edit, ...]:
    rng = np.random.default_rng(1234)
    edits = []
    for op in OPS.values():
        for _ in range(PER_OP):
            scene = random_scene(rng)
            while not op.applicable(scene):
                scene = random_scene(rng)
            edits.append(op.apply(scene, rng, "all"))
    return tuple(edits)


def test_registry_has_the_required_ops() -> None:
    required = {"recolor", "reshape", "remove", "add", "move", "resize", "background", "invert"}
    assert required <= set(OPS)
    assert len(OPS) >= 8
    assert all(name == op.name for name, op in OPS.items())
    with pytest.raises(EditError, match="unknown edit op"):
        get_op("blur")


@pytest.mark.parametrize("name", list(OPS))
def test_phrasings(name: str) -> None:
    op = OPS[name]
    assert len(op.seen) >= 5 and len(op.heldout) >= 2
    assert len(set(op.phrasings)) == len(op.phrasings)
    assert op.phrasings == op.seen + op.heldout
    assert op.phrasing_pool("seen") == tuple(range(len(op.seen)))
    assert op.phrasing_pool("heldout") == tuple(range(len(op.seen), len(op.phrasings)))
    with pytest.raises(EditError, match="phrasings must be"):
        op.phrasing_pool("some")  # type: ignore[arg-type]


def test_every_edit_changes_the_image_and_only_inside_its_region() -> None:
    for edit in sampled_edits():
        assert edit.target != edit.source, edit
        source, target = render_array(edit.source), render_array(edit.target)
        changed = (source != target).any(axis=2)
        assert changed.any(), edit
        region = edit.region(64)
        assert region.dtype == bool and region.shape == (64, 64)
        assert not (changed & ~region).any(), f"{edit.op} changes pixels outside its region"
        if edit.op in ("background", "invert"):
            assert region.all()
        else:
            assert not region.all()


def test_edit_parameters_are_valid() -> None:
    for edit in sampled_edits():
        p, src, tgt = edit.params, edit.source, edit.target
        if edit.op == "recolor":
            assert p["new_color"] != p["color"] and p["new_color"] in allowed_colors(src.background)
            assert tgt.objects[p["object"]].color == p["new_color"]
        elif edit.op == "reshape":
            assert p["new_shape"] != p["shape"] == src.objects[p["object"]].shape
        elif edit.op == "resize":
            assert p["new_size"] != p["size"] == src.objects[p["object"]].size
        elif edit.op == "remove":
            assert len(tgt.objects) == len(src.objects) - 1 >= 1
        elif edit.op == "add":
            assert p["position"] in src.free_positions()
            assert len(tgt.objects) == len(src.objects) + 1
        elif edit.op == "move":
            assert p["new_position"] in src.free_positions()
            assert tgt.objects[edit.touched_target[0]].position == p["new_position"]
        elif edit.op == "background":
            assert p["new_background"] != p["background"] == src.background
        assert json.loads(json.dumps(p)) == p


def test_instructions_are_filled_and_name_the_object() -> None:
    for edit in sampled_edits():
        op = OPS[edit.op]
        text = edit.instruction
        assert "{" not in text and "}" not in text
        assert edit.heldout == (edit.phrasing_index >= len(op.seen))
        template = op.phrasings[edit.phrasing_index]
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
        if "obj" in fields:
            obj = referring_expression(edit.source, edit.params["object"])
            assert f"the {obj}" in text


def test_edit_dict_round_trip() -> None:
    for edit in sampled_edits()[::7]:
        again = Edit.from_dict(json.loads(json.dumps(edit.to_dict())))
        assert again == edit
        assert np.array_equal(again.region(64), edit.region(64))


def test_inapplicable_ops_raise() -> None:
    rng = np.random.default_rng(0)
    lone = Scene("white", (SceneObject("circle", "red", "small", "center"),))
    assert not OPS["remove"].applicable(lone)
    with pytest.raises(EditError, match="cannot change this scene"):
        OPS["remove"].apply(lone, rng)
    assert not OPS["mirror"].applicable(lone)
    full = Scene(
        "white",
        tuple(SceneObject("circle", "red", "small", p) for p in ("top left", "top center", "center", "bottom right")),
    )
    assert not OPS["add"].applicable(full)


def test_held_out_pool_only_gives_held_out_phrasings() -> None:
    rng = np.random.default_rng(5)
    scene = Scene(
        "white", (SceneObject("circle", "red", "small", "top left"), SceneObject("star", "blue", "large", "center"))
    )
    for op in OPS.values():
        for _ in range(10):
            assert op.apply(scene, rng, "heldout").heldout
            assert not op.apply(scene, rng, "seen").heldout


def test_invert_is_pixelwise_inversion_and_mirror_is_a_flip() -> None:
    rng = np.random.default_rng(6)
    for _ in range(20):
        scene = random_scene(rng)
        inverted = OPS["invert"].apply(scene, rng)
        diff = render_array(inverted.target).astype(int) - (255 - render_array(scene).astype(int))
        assert np.abs(diff).max() <= 1
        if OPS["mirror"].applicable(scene):
            mirrored = OPS["mirror"].apply(scene, rng)
            flipped = render_array(scene)[:, ::-1]
            assert np.abs(render_array(mirrored.target).astype(int) - flipped).mean() < 0.05


# --- success rule ---------------------------------------------------------------------------------------


def _noisy(image: Image.Image, rng: np.random.Generator) -> np.ndarray:
    arr = np.asarray(image, dtype=np.float64) / 255.0
    return np.clip(arr + rng.normal(0.0, 2 / 255, arr.shape), 0.0, 1.0)


def _wrong_colour(edit: Edit, rng: np.random.Generator) -> Image.Image:
    j = edit.touched_target[0]
    obj = edit.target.objects[j]
    options = [c for c in allowed_colors(edit.target.background) if c != obj.color]
    wrong = obj.replace(color=options[int(rng.integers(len(options)))])
    objects = [wrong if i == j else o for i, o in enumerate(edit.target.objects)]
    return render(edit.target.with_objects(objects))


def test_success_rule_over_sampled_edits() -> None:
    rng = np.random.default_rng(99)
    for edit in sampled_edits():
        target = render(edit.target)
        exact = judge_edit(target, edit, edit.source)
        assert exact.success and exact.inside_error == 0 and exact.outside_error == 0 and exact.l1 == 0
        unedited = judge_edit(render(edit.source), edit)
        assert not unedited.success, f"unedited source passes for {edit.op}: {unedited}"
        assert not unedited.inside_ok and unedited.outside_ok, edit.op  # the edit is missing, nothing else
        assert unedited.inside_error == pytest.approx(unedited.source_inside_error)
        assert judge_edit(_noisy(target, rng), edit).success, edit.op
        blurred = judge_edit(target.filter(ImageFilter.GaussianBlur(1)), edit)
        assert blurred.success, f"1-px blur fails for {edit.op}: {blurred}"
        if edit.op in SINGLE_OBJECT_OPS:
            wrong = judge_edit(_wrong_colour(edit, rng), edit)
            assert not wrong.success, f"wrong colour passes for {edit.op}: {wrong}"
            assert not wrong.inside_ok and wrong.outside_ok, edit.op


def test_collateral_damage_outside_the_region_fails() -> None:
    # The right object is recoloured, but the output also wipes out the other, far-away object.
    scene = Scene(
        "white",
        (SceneObject("circle", "red", "large", "top left"), SceneObject("square", "black", "large", "bottom right")),
    )
    edit = OPS["recolor"].apply(scene, np.random.default_rng(0))
    untouched = 1 - edit.params["object"]
    damaged = edit.target.with_objects([o for i, o in enumerate(edit.target.objects) if i != untouched])
    score = judge_edit(render(damaged), edit)
    assert score.inside_error <= score.t_inside
    assert score.outside_error > T_OUTSIDE and not score.success and not score.outside_ok


def test_judge_accepts_pil_uint8_and_float_alike() -> None:
    edit = sampled_edits()[0]
    img = render(edit.target)
    a = judge_edit(img, edit)
    b = judge_edit(np.asarray(img), edit)
    c = judge_edit(np.asarray(img, dtype=np.float32) / 255.0, edit)
    assert isinstance(a, EditScore)
    assert a == b
    assert c.success and c.inside_error == pytest.approx(0.0, abs=1e-6)
    assert set(a.to_dict()) >= {"success", "l1", "inside_error", "outside_error", "t_inside", "t_outside"}


def test_judge_at_another_size() -> None:
    for edit in sampled_edits()[::9]:
        assert judge_edit(render(edit.target, 96), edit).success
        assert not judge_edit(render(edit.source, 96), edit).success
        assert edit_region(edit, 96).shape == (96, 96)


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (np.zeros((64, 64), dtype=np.uint8), "square RGB"),
        (np.zeros((64, 32, 3), dtype=np.uint8), "square RGB"),
        (np.full((64, 64, 3), 2.0), "0..1"),
        (np.zeros((64, 64, 3), dtype=np.int32), "dtype"),
        ("image.png", "PIL image or a numpy array"),
    ],
)
def test_judge_rejects_bad_outputs(output: object, message: str) -> None:
    with pytest.raises(EditError, match=message):
        judge_edit(output, sampled_edits()[0])  # type: ignore[arg-type]


def test_judge_rejects_a_mismatched_source() -> None:
    edit = sampled_edits()[0]
    other = sampled_edits()[1].source
    assert other != edit.source
    with pytest.raises(EditError, match="source_scene"):
        judge_edit(render(edit.target), edit, other)


def test_mirror_of_a_symmetric_scene_is_not_offered() -> None:
    twins = Scene(
        "white",
        (SceneObject("circle", "red", "small", "top left"), SceneObject("circle", "red", "small", "top right")),
    )
    assert not OPS["mirror"].applicable(twins)
    lopsided = twins.with_objects([*twins.objects, SceneObject("star", "blue", "large", "bottom left")])
    edit = OPS["mirror"].apply(lopsided, np.random.default_rng(0))
    assert edit.touched_source == (lopsided.index_at("bottom left"),)
    assert edit.touched_target == (edit.target.index_at("bottom right"),)
    assert not judge_edit(render(lopsided), edit).success
