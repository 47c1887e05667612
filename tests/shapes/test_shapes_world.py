"""ShapesEdit world: scenes, renderer, captions, referring expressions."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from diptych.errors import DiptychError
from diptych.shapes.world import (
    BACKGROUND_COLORS,
    MIN_CONTRAST,
    OBJECT_COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    SceneError,
    SceneObject,
    allowed_colors,
    caption,
    contrast,
    object_mask,
    random_scene,
    referring_expression,
    render,
    render_array,
)

RED = OBJECT_COLORS["red"]
WHITE_BG = BACKGROUND_COLORS["white"]


def _scene(*objects: tuple[str, str, str, str], background: str = "white") -> Scene:
    return Scene(background, tuple(SceneObject(*o) for o in objects))


def _cell_centre(position: str, size: int) -> tuple[int, int]:
    row, col = divmod(POSITIONS.index(position), 3)
    return int((row + 0.5) * size / 3), int((col + 0.5) * size / 3)


def test_render_is_deterministic_within_a_process() -> None:
    rng = np.random.default_rng(0)
    for _ in range(10):
        scene = random_scene(rng)
        assert render(scene).tobytes() == render(scene).tobytes()
        # A structurally equal but separately built scene renders the same too (no identity caching).
        twin = Scene.from_dict(json.loads(json.dumps(scene.to_dict())))
        assert render(twin, 48).tobytes() == render(scene, 48).tobytes()


def test_render_is_identical_across_processes() -> None:
    scene = _scene(("star", "red", "large", "top left"), ("cross", "blue", "small", "center"))
    code = (
        "import json, sys, hashlib\n"
        "from diptych.shapes.world import Scene, render\n"
        "scene = Scene.from_dict(json.loads(sys.argv[1]))\n"
        "print(hashlib.sha256(render(scene, 64).tobytes()).hexdigest())\n"
    )
    outputs = [
        subprocess.run(
            [sys.executable, "-c", code, json.dumps(scene.to_dict())], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    ]
    import hashlib

    here = hashlib.sha256(render(scene, 64).tobytes()).hexdigest()
    assert outputs == [here, here]


def test_render_pixel_colours() -> None:
    scene = _scene(("circle", "red", "large", "top left"))
    img = render(scene, 64)
    assert img.mode == "RGB" and img.size == (64, 64)
    arr = np.asarray(img)
    y, x = _cell_centre("top left", 64)
    assert tuple(arr[y, x]) == RED
    for corner in [(63, 63), (0, 63), (63, 0)]:
        assert tuple(arr[corner]) == WHITE_BG
    # Anti-aliased: the circle's edge holds colours strictly between red and the background.
    greens = arr[..., 1]
    assert ((greens > RED[1]) & (greens < WHITE_BG[1])).any()


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_covers_its_cell_centre_and_stays_in_its_cell(shape: str) -> None:
    for position in ("center", "bottom right"):
        scene = _scene((shape, "blue", "large", position), background="light grey")
        arr = render_array(scene, 96)
        y, x = _cell_centre(position, 96)
        assert tuple(arr[y, x]) == OBJECT_COLORS["blue"]
        mask = object_mask(scene, 0, 96)
        row, col = divmod(POSITIONS.index(position), 3)
        outside = mask.copy()
        outside[row * 32 : (row + 1) * 32, col * 32 : (col + 1) * 32] = 0
        assert outside.max() == 0, "shapes must not spill into a neighbouring cell"


def test_object_mask_is_soft_coverage_matching_the_render() -> None:
    scene = _scene(("circle", "red", "medium", "center"), ("square", "black", "small", "top right"))
    circle = scene.index_at("center")
    mask = object_mask(scene, circle, 64)
    assert mask.dtype == np.float32 and mask.shape == (64, 64)
    assert mask.min() == 0.0 and mask.max() == 1.0
    assert ((mask > 0) & (mask < 1)).any()
    radius = SIZES["medium"] * (64 / 3) / 2
    assert mask.sum() == pytest.approx(math.pi * radius**2, rel=0.02)
    # The render is the background blended with each colour by its coverage.
    expected = np.asarray(WHITE_BG, dtype=np.float64) * np.ones((64, 64, 3))
    for i, obj in enumerate(scene.objects):
        alpha = object_mask(scene, i, 64)[..., None].astype(np.float64)
        expected = expected * (1 - alpha) + np.asarray(OBJECT_COLORS[obj.color]) * alpha
    assert np.abs(render_array(scene, 64).astype(float) - expected).max() <= 0.5 + 1e-9
    # Callers may scribble on the mask without corrupting the cache.
    mask[:] = 0
    assert object_mask(scene, circle, 64).max() == 1.0
    with pytest.raises(SceneError, match="out of range"):
        object_mask(scene, 2, 64)


def test_sizes_are_ordered() -> None:
    areas = [object_mask(_scene(("star", "red", size, "center")), 0, 64).sum() for size in ("small", "medium", "large")]
    assert areas[0] < areas[1] < areas[2]


def test_scene_json_round_trip() -> None:
    rng = np.random.default_rng(1)
    for _ in range(100):
        scene = random_scene(rng)
        again = Scene.from_dict(json.loads(json.dumps(scene.to_dict())))
        assert again == scene
        assert again.to_dict() == scene.to_dict()


def test_objects_are_kept_in_cell_order() -> None:
    a = SceneObject("circle", "red", "small", "bottom right")
    b = SceneObject("square", "blue", "large", "top left")
    assert Scene("white", (a, b)) == Scene("white", (b, a))
    assert Scene("white", (a, b)).objects == (b, a)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: SceneObject("hexagon", "red", "small", "center"), "unknown shape"),
        (lambda: SceneObject("circle", "teal", "small", "center"), "unknown object colour"),
        (lambda: SceneObject("circle", "red", "huge", "center"), "unknown size"),
        (lambda: SceneObject("circle", "red", "small", "middle"), "unknown position"),
        (lambda: Scene("pink", (SceneObject("circle", "red", "small", "center"),)), "unknown background"),
        (lambda: Scene("white", ()), "1 to 4 objects"),
        (
            lambda: Scene("white", tuple(SceneObject("circle", "red", "small", p) for p in POSITIONS[:5])),
            "1 to 4 objects",
        ),
        (
            lambda: Scene(
                "white",
                (SceneObject("circle", "red", "small", "center"), SceneObject("star", "blue", "small", "center")),
            ),
            "share a grid cell",
        ),
        (lambda: Scene("white", (SceneObject("circle", "white", "small", "center"),)), "too hard to see"),
        (lambda: Scene.from_dict({"background": "white"}), "exactly the keys"),
        (lambda: Scene.from_dict({"background": "white", "objects": "circle"}), "must be a list"),
        (lambda: render(_scene(("circle", "red", "small", "center")), 4), "render size"),
    ],
)
def test_bad_scenes_raise_clear_errors(build: object, message: str) -> None:
    with pytest.raises(SceneError, match=message) as info:
        build()  # type: ignore[operator]
    assert isinstance(info.value, DiptychError) and isinstance(info.value, ValueError)


def test_palettes_are_closed_under_inversion_and_visible() -> None:
    for palette in (OBJECT_COLORS, BACKGROUND_COLORS):
        values = set(palette.values())
        assert len(values) == len(palette)
        assert all(tuple(255 - c for c in rgb) in values for rgb in values)
    names = list(OBJECT_COLORS)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert contrast(OBJECT_COLORS[a], OBJECT_COLORS[b]) >= 0.25
    for background in BACKGROUND_COLORS:
        visible = allowed_colors(background)
        assert len(visible) >= 5
        assert background not in visible
        assert all(contrast(OBJECT_COLORS[c], BACKGROUND_COLORS[background]) >= MIN_CONTRAST for c in visible)


def test_caption_lists_objects_in_reading_order() -> None:
    scene = _scene(("square", "blue", "small", "center"), ("circle", "red", "medium", "top left"))
    assert caption(scene) == (
        "a red circle at the top left and a small blue square in the center on a white background"
    )
    three = _scene(
        ("star", "green", "large", "bottom right"),
        ("cross", "black", "small", "top center"),
        ("diamond", "magenta", "medium", "center left"),
        background="light grey",
    )
    assert caption(three) == (
        "a small black cross at the top center, a magenta diamond at the center left and "
        "a large green star at the bottom right on a light grey background"
    )


def _referents(scene: Scene, text: str) -> list[int]:
    """Indices of the objects a referring expression produced by the world can denote."""
    position = max((p for p in POSITIONS if text.endswith(f" {p}")), key=len, default=None)
    words = set(text.split())
    return [
        i
        for i, o in enumerate(scene.objects)
        if o.shape in words
        and (o.color in words or not words & set(OBJECT_COLORS))
        and (o.size in words or not words & set(SIZES))
        and (position is None or o.position == position)
    ]


def test_referring_expressions_examples() -> None:
    one = _scene(("circle", "red", "small", "center"), ("square", "red", "small", "top left"))
    assert referring_expression(one, one.index_at("center")) == "circle"
    by_colour = _scene(("circle", "red", "small", "center"), ("circle", "blue", "small", "top left"))
    assert referring_expression(by_colour, by_colour.index_at("center")) == "red circle"
    by_size = _scene(("circle", "red", "small", "center"), ("circle", "red", "large", "top left"))
    assert referring_expression(by_size, by_size.index_at("center")) == "small circle"
    both = _scene(
        ("circle", "red", "small", "center"),
        ("circle", "red", "large", "top left"),
        ("circle", "blue", "small", "top right"),
    )
    assert referring_expression(both, both.index_at("center")) == "small red circle"
    twins = _scene(("circle", "red", "small", "center"), ("circle", "red", "small", "top left"))
    assert referring_expression(twins, twins.index_at("center")) == "circle in the center"
    assert referring_expression(twins, twins.index_at("top left")) == "circle at the top left"


def test_referring_expressions_are_unambiguous_and_shortest() -> None:
    rng = np.random.default_rng(2)
    for _ in range(300):
        scene = random_scene(rng, n_objects=int(rng.integers(2, 5)))
        for i in range(len(scene.objects)):
            text = referring_expression(scene, i)
            assert _referents(scene, text) == [i], (scene, i, text)
            obj = scene.objects[i]
            shorter = [obj.shape, f"{obj.color} {obj.shape}", f"{obj.size} {obj.shape}"]
            for candidate in shorter:
                if len(candidate.split()) < len(text.split()):
                    assert len(_referents(scene, candidate)) > 1, (scene, i, text, candidate)
