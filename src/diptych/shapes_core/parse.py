"""Read an image back into the world's vocabulary: the scene it shows, and how cleanly it shows it.

ShapesEdit scenes are discrete: a background colour and, in each of the nine grid cells, nothing or one object
of a known shape, colour and size, rendered exactly (`world.render_array`). `parse_scene` inverts the renderer
cell by cell: the background is the palette colour nearest the image's median, and each cell is the option
(empty, or any object the background allows) whose rendered crop is nearest in mean absolute error. Objects
stay inside their cell by construction (the largest reaches 0.9 of half a cell), so cells parse independently.

`render_residual` is the success rule's low-pass error (`edits.error_map`) between an image and the render of
its own parse. A model's edit can show the right scene and still fail the rule by drawing it badly (a
star's points rounded off, a square's edges smeared): those near misses are most of the built-in model's
failures, and this residual sees them without knowing the target or the instruction. It is the "higher quality,
fewer artifacts" half of ICEdit's judge prompt, for a world whose vocabulary is known; the "follows the
instruction" half stays with the learned judge (`judge.ShapesJudge`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from .edits import as_unit_rgb, error_map
from .world import (
    BACKGROUND_COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    allowed_colors,
    render_array,
)

#: The resolution images are parsed at: the world's native 64 px (others are resized to it).
PARSE_SIZE = 64


def _cell_box(cell: int) -> tuple[slice, slice]:
    """Rows and columns of grid cell `cell` (row-major) in a PARSE_SIZE image."""
    edges = [round(i * PARSE_SIZE / 3) for i in range(4)]
    row, col = divmod(cell, 3)
    return slice(edges[row], edges[row + 1]), slice(edges[col], edges[col + 1])


@lru_cache(maxsize=len(BACKGROUND_COLORS) * len(POSITIONS))
def _cell_options(background: str, cell: int) -> tuple[tuple[SceneObject | None, ...], np.ndarray]:
    """What cell `cell` may hold on `background` (None: empty) and each option's rendered crop (N, h, w, 3)."""
    rows, cols = _cell_box(cell)
    options: list[SceneObject | None] = [None]
    crops = [np.broadcast_to(np.asarray(BACKGROUND_COLORS[background], dtype=np.uint8), (PARSE_SIZE, PARSE_SIZE, 3))]
    for shape in SHAPES:
        for color in allowed_colors(background):
            for size in SIZES:
                obj = SceneObject(shape, color, size, POSITIONS[cell])
                options.append(obj)
                crops.append(render_array(Scene(background, (obj,)), PARSE_SIZE))
    return tuple(options), np.stack([crop[rows, cols] for crop in crops]).astype(np.float32)


def _as_parse_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """The image as RGB in 0..1 (float64, the success rule's input) at PARSE_SIZE."""
    array = as_unit_rgb(image)  # validates type, shape and range
    if array.shape[0] != PARSE_SIZE:
        image = Image.fromarray(np.rint(array * 255).astype(np.uint8))
        array = as_unit_rgb(image.resize((PARSE_SIZE, PARSE_SIZE), Image.Resampling.BILINEAR))
    return array


def parse_scene(image: Image.Image | np.ndarray) -> Scene:
    """The scene `image` shows, read cell by cell against the renderer (see the module docstring).

    An image with no object anywhere (which no scene is) reads as the closest one-object scene.
    """
    return _read_scene(_as_parse_array(image))


def _read_scene(array: np.ndarray) -> Scene:
    """`parse_scene` of an image already in `_as_parse_array`'s form."""
    x = (array * 255).astype(np.float32)  # the rendered crops' scale
    median = np.median(x.reshape(-1, 3), axis=0)
    background = min(BACKGROUND_COLORS, key=lambda name: float(np.abs(median - BACKGROUND_COLORS[name]).sum()))
    objects, best_object = [], (np.inf, None)
    for cell in range(len(POSITIONS)):
        rows, cols = _cell_box(cell)
        options, crops = _cell_options(background, cell)
        errors = np.abs(crops - x[rows, cols]).mean(axis=(1, 2, 3))
        choice = int(np.argmin(errors))
        if options[choice] is not None:
            objects.append(options[choice])
        nearest_object = 1 + int(np.argmin(errors[1:]))
        best_object = min(best_object, (float(errors[nearest_object]), options[nearest_object]), key=lambda t: t[0])
    return Scene(background, tuple(objects) if objects else (best_object[1],))


def render_residual(image: Image.Image | np.ndarray) -> tuple[Scene, float]:
    """The parsed scene and the mean low-pass error (RGB 0..1) between `image` and that scene's render."""
    x = _as_parse_array(image)  # prepared once for both the parse and the residual
    scene = _read_scene(x)
    clean = render_array(scene, PARSE_SIZE).astype(np.float64) / 255.0
    return scene, float(error_map(x, clean).mean())
