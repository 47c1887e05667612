"""The ShapesEdit world: scenes, a deterministic anti-aliased renderer, captions and referring expressions.

A scene is a background colour and 1-4 objects. Each object has a shape, a colour, a size and one of the
nine cells of a 3x3 grid; a cell holds at most one object, so objects never overlap and can always be named
by where they are.

Colours are the eight corners of the RGB cube with every channel either `_LO` or `_HI`, where
`_LO + _HI == 255`; the background palette is closed under `c -> 255 - c` as well. So "invert the colours"
maps a scene to a scene, and its render is the pixel-wise inversion of the source render (up to rounding).
An object colour may sit on a background only if their mean absolute channel difference is at least
`MIN_CONTRAST`, which forbids "white on white" and every other hard-to-see pair.

Rendering samples each pixel on a `SUPERSAMPLE` x `SUPERSAMPLE` grid of points, tests every point against the
exact geometry of each shape with numpy, and averages: the coverage of each object is a multiple of
1/SUPERSAMPLE**2, and the image is the background blended with each object colour by its coverage. No
drawing library is involved, so the same scene gives the same bytes on every machine and in every process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any

import numpy as np
from PIL import Image

from diptych.errors import DiptychError

__all__ = [
    "BACKGROUND_COLORS",
    "MAX_OBJECTS",
    "MIN_CONTRAST",
    "OBJECT_COLORS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "Scene",
    "SceneError",
    "SceneObject",
    "allowed_colors",
    "caption",
    "contrast",
    "describe",
    "object_mask",
    "random_scene",
    "referring_expression",
    "render",
    "render_array",
    "where",
    "with_article",
]


class SceneError(DiptychError, ValueError):
    """A scene or scene object is malformed (unknown name, two objects in one cell, invisible colour...)."""


_LO, _HI = 25, 230  # channel levels of object colours; _LO + _HI == 255 keeps the palette invertible

OBJECT_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (_HI, _LO, _LO),
    "green": (_LO, _HI, _LO),
    "blue": (_LO, _LO, _HI),
    "yellow": (_HI, _HI, _LO),
    "cyan": (_LO, _HI, _HI),
    "magenta": (_HI, _LO, _HI),
    "white": (_HI, _HI, _HI),
    "black": (_LO, _LO, _LO),
}
"""Object colours by name, RGB 0..255; each one's inversion is also in the palette."""

BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "black": (5, 5, 5),
    "light grey": (180, 180, 180),
    "dark grey": (75, 75, 75),
    "beige": (235, 215, 175),
    "navy": (20, 40, 80),
}
"""Background colours by name; closed under inversion (white/black, light/dark grey, beige/navy)."""

MIN_CONTRAST = 0.3
"""Least mean absolute RGB difference (0..1) between an object colour and the background it sits on."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "cross")
"""Shape names. A hexagon is left out on purpose: at 64 px its corners are within 1 px of a circle's edge."""

SIZES: dict[str, float] = {"small": 0.55, "medium": 0.75, "large": 0.9}
"""Size name -> radius of the shape's bounding circle, as a fraction of half a grid cell."""

POSITIONS: tuple[str, ...] = (
    "top left",
    "top center",
    "top right",
    "center left",
    "center",
    "center right",
    "bottom left",
    "bottom center",
    "bottom right",
)
"""Grid cells in row-major order; index i is row i // 3, column i % 3."""

MAX_OBJECTS = 4
SUPERSAMPLE = 4
"""Sample points per pixel along each axis; coverage is exact to 1/16."""


def contrast(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """Mean absolute channel difference of two RGB colours, in 0..1."""
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / (3 * 255)


def allowed_colors(background: str) -> tuple[str, ...]:
    """Object colours that are visible enough (>= MIN_CONTRAST) on `background`, in palette order."""
    bg = _lookup(BACKGROUND_COLORS, background, "background colour")
    return tuple(name for name, rgb in OBJECT_COLORS.items() if contrast(rgb, bg) >= MIN_CONTRAST)


def _lookup(table: dict[str, Any], name: str, what: str) -> Any:
    if name not in table:
        raise SceneError(f"unknown {what} {name!r}; choose one of {sorted(table)}")
    return table[name]


def _check_name(name: object, names: tuple[str, ...] | dict[str, Any], what: str) -> None:
    if not isinstance(name, str) or name not in names:
        raise SceneError(f"unknown {what} {name!r}; choose one of {list(names)}")


@dataclass(frozen=True)
class SceneObject:
    """One object: a shape of some colour and size in one grid cell."""

    shape: str
    color: str
    size: str
    position: str

    def __post_init__(self) -> None:
        _check_name(self.shape, SHAPES, "shape")
        _check_name(self.color, OBJECT_COLORS, "object colour")
        _check_name(self.size, SIZES, "size")
        _check_name(self.position, POSITIONS, "position")

    @property
    def cell(self) -> int:
        """Row-major index of the object's grid cell."""
        return POSITIONS.index(self.position)

    def replace(self, **changes: str) -> SceneObject:
        """A copy with some attributes changed (validated)."""
        return SceneObject(**{**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, str]:
        """JSON-able form."""
        return {"shape": self.shape, "color": self.color, "size": self.size, "position": self.position}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SceneObject:
        """Inverse of `to_dict`; raises SceneError on missing or extra keys."""
        _check_keys(data, {"shape", "color", "size", "position"}, "scene object")
        return cls(**data)


@dataclass(frozen=True)
class Scene:
    """A background colour and 1-4 objects in distinct cells.

    Objects are kept sorted by cell (row-major), so two scenes with the same content compare equal and
    an object's index is stable: it is the rank of its cell among the occupied ones.
    """

    background: str
    objects: tuple[SceneObject, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        _check_name(self.background, BACKGROUND_COLORS, "background colour")
        objects = tuple(self.objects)
        if not all(isinstance(o, SceneObject) for o in objects):
            raise SceneError("Scene.objects must hold SceneObject instances")
        if not 1 <= len(objects) <= MAX_OBJECTS:
            raise SceneError(f"a scene holds 1 to {MAX_OBJECTS} objects, got {len(objects)}")
        cells = [o.cell for o in objects]
        if len(set(cells)) != len(cells):
            raise SceneError("two objects share a grid cell; give each object its own position")
        visible = allowed_colors(self.background)
        for o in objects:
            if o.color not in visible:
                raise SceneError(
                    f"a {o.color} object is too hard to see on a {self.background} background; "
                    f"use one of {list(visible)}"
                )
        object.__setattr__(self, "objects", tuple(sorted(objects, key=lambda o: o.cell)))

    def free_positions(self) -> tuple[str, ...]:
        """Cells with no object, in row-major order."""
        taken = {o.position for o in self.objects}
        return tuple(p for p in POSITIONS if p not in taken)

    def index_at(self, position: str) -> int:
        """Index of the object in `position`; SceneError if the cell is empty."""
        for i, o in enumerate(self.objects):
            if o.position == position:
                return i
        raise SceneError(f"no object at the {position}")

    def with_objects(self, objects: tuple[SceneObject, ...] | list[SceneObject]) -> Scene:
        """Same background, new objects (validated and sorted)."""
        return Scene(self.background, tuple(objects))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"background": self.background, "objects": [o.to_dict() for o in self.objects]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        """Inverse of `to_dict`; raises SceneError on malformed data."""
        _check_keys(data, {"background", "objects"}, "scene")
        if not isinstance(data["objects"], list | tuple):
            raise SceneError("scene 'objects' must be a list of objects")
        return cls(data["background"], tuple(SceneObject.from_dict(o) for o in data["objects"]))


def _check_keys(data: object, keys: set[str], what: str) -> None:
    if not isinstance(data, dict):
        raise SceneError(f"a {what} must be a JSON object, got {type(data).__name__}")
    if set(data) != keys:
        raise SceneError(f"a {what} needs exactly the keys {sorted(keys)}, got {sorted(data)}")


def random_scene(rng: np.random.Generator, n_objects: int | None = None) -> Scene:
    """A uniformly random valid scene: background, object count (1-4 unless given), then each object."""
    background = str(rng.choice(list(BACKGROUND_COLORS)))
    n = int(rng.integers(1, MAX_OBJECTS + 1)) if n_objects is None else n_objects
    if not 1 <= n <= MAX_OBJECTS:
        raise SceneError(f"n_objects must be in 1..{MAX_OBJECTS}, got {n}")
    colors = allowed_colors(background)
    cells = rng.choice(len(POSITIONS), size=n, replace=False)
    objects = [
        SceneObject(
            shape=str(rng.choice(SHAPES)),
            color=str(rng.choice(colors)),
            size=str(rng.choice(list(SIZES))),
            position=POSITIONS[int(c)],
        )
        for c in cells
    ]
    return Scene(background, tuple(objects))


# --- geometry -------------------------------------------------------------------------------------------


def _regular_polygon(n: int, radius: float, start_deg: float = 90.0) -> np.ndarray:
    angles = np.deg2rad(start_deg + 360.0 * np.arange(n) / n)
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _star(points: int = 5, outer: float = 1.0, inner: float = 0.45) -> np.ndarray:
    angles = np.deg2rad(90.0 + 180.0 * np.arange(2 * points) / points)
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _centre_bbox(poly: np.ndarray) -> np.ndarray:
    # Centre the bounding box on the cell so triangles and stars do not sit high in their cells.
    return poly - (poly.max(axis=0) + poly.min(axis=0)) / 2


@cache
def _unit_polygon(shape: str) -> np.ndarray | None:
    """Vertices (x right, y up) within the unit circle, or None for the circle. Read-only array."""
    a = 0.78  # half side of the square; its corners reach 1.1, kept inside the cell by the size table
    t = 0.3  # half width of the cross's arms
    polys = {
        "circle": None,
        "square": np.array([[a, a], [-a, a], [-a, -a], [a, -a]]),
        "triangle": _centre_bbox(_regular_polygon(3, 1.12)),
        "star": _centre_bbox(_star(outer=1.1)),
        "diamond": np.array([[0.0, 1.05], [-0.78, 0.0], [0.0, -1.05], [0.78, 0.0]]),
        "cross": np.array(
            [[t, 1], [-t, 1], [-t, t], [-1, t], [-1, -t], [-t, -t], [-t, -1], [t, -1], [t, -t], [1, -t], [1, t], [t, t]]
        ),
    }
    poly = polys[shape]
    if poly is not None:
        poly = poly.astype(np.float64)
        poly.setflags(write=False)
    return poly


def _inside_polygon(x: np.ndarray, y: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule point-in-polygon test, vectorised over points."""
    inside = np.zeros(x.shape, dtype=bool)
    x0, y0 = poly[-1]
    for x1, y1 in poly:
        crosses = (y1 > y) != (y0 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x1 + (y - y1) * (x0 - x1) / (y0 - y1)
        inside ^= crosses & (x < x_at)
        x0, y0 = x1, y1
    return inside


def _check_size(size: int) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or size < 12:
        raise SceneError(f"render size must be an int >= 12 pixels, got {size!r}")


def object_mask(scene: Scene, index: int, size: int = 64) -> np.ndarray:
    """Soft coverage (float32, 0..1, shape (size, size)) of object `index` of `scene` at `size` pixels."""
    _check_size(size)
    if not 0 <= index < len(scene.objects):
        raise SceneError(f"object index {index} out of range for a scene with {len(scene.objects)} objects")
    return _coverage(scene.objects[index], size).copy()


def token_objects(scene: Scene, size: int, cell: int, *, min_share: float = 0.4) -> np.ndarray:
    """(grid, grid) index of the object covering at least `min_share` of each `cell`-pixel token of a panel
    (the one covering most, where two do), -1 for tokens over background."""
    grid = size // cell
    cover = np.stack([object_mask(scene, k, size) for k in range(len(scene.objects))]).astype(np.float32)
    cover = cover.reshape(len(scene.objects), grid, cell, grid, cell).mean(axis=(2, 4))
    return np.where(cover.max(axis=0) >= min_share, cover.argmax(axis=0), -1)


def _coverage(obj: SceneObject, size: int) -> np.ndarray:
    return _shape_coverage(obj.shape, obj.size, obj.position, size)


@lru_cache(maxsize=2048)
def _shape_coverage(shape: str, size_name: str, position: str, size: int) -> np.ndarray:
    # Pure function of geometry and image size (not colour), so memoised; callers get read-only arrays
    # or copies.
    cell = size / 3
    row, col = divmod(POSITIONS.index(position), 3)
    cx, cy = (col + 0.5) * cell, (row + 0.5) * cell
    radius = SIZES[size_name] * cell / 2
    reach = radius * 1.2 + 1  # every unit polygon lies within radius 1.12
    x_lo, x_hi = max(0, math.floor(cx - reach)), min(size, math.ceil(cx + reach))
    y_lo, y_hi = max(0, math.floor(cy - reach)), min(size, math.ceil(cy + reach))
    ss = SUPERSAMPLE
    xs = (np.arange(x_lo * ss, x_hi * ss) + 0.5) / ss
    ys = (np.arange(y_lo * ss, y_hi * ss) + 0.5) / ss
    # Unit coordinates: x to the right, y up, so shape tables read like maths.
    ux = (xs[None, :] - cx) / radius
    uy = (cy - ys[:, None]) / radius
    ux, uy = np.broadcast_arrays(ux, uy)
    poly = _unit_polygon(shape)
    hit = ux**2 + uy**2 <= 1.0 if poly is None else _inside_polygon(ux, uy, poly)
    h, w = y_hi - y_lo, x_hi - x_lo
    cover = hit.reshape(h, ss, w, ss).mean(axis=(1, 3))
    out = np.zeros((size, size), dtype=np.float32)
    out[y_lo:y_hi, x_lo:x_hi] = cover
    out.setflags(write=False)
    return out


def render_array(scene: Scene, size: int = 64) -> np.ndarray:
    """The scene as a uint8 array of shape (size, size, 3)."""
    _check_size(size)
    img = np.empty((size, size, 3), dtype=np.float64)
    img[:] = BACKGROUND_COLORS[scene.background]
    for obj in scene.objects:
        alpha = _coverage(obj, size).astype(np.float64)[..., None]
        img = img * (1.0 - alpha) + np.asarray(OBJECT_COLORS[obj.color], dtype=np.float64) * alpha
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render(scene: Scene, size: int = 64) -> Image.Image:
    """Render `scene` as an RGB image of `size` x `size` pixels (deterministic, anti-aliased)."""
    return Image.fromarray(render_array(scene, size), mode="RGB")


# --- language --------------------------------------------------------------------------------------------


def where(position: str) -> str:
    """Locative phrase for a cell: 'in the center', 'at the top left'."""
    _check_name(position, POSITIONS, "position")
    return "in the center" if position == "center" else f"at the {position}"


def describe(obj: SceneObject) -> str:
    """Noun phrase without article; medium is the unmarked size: 'small red circle', 'blue square'."""
    size = "" if obj.size == "medium" else f"{obj.size} "
    return f"{size}{obj.color} {obj.shape}"


def with_article(phrase: str) -> str:
    """`phrase` with its indefinite article ('a red circle'; 'an' before a vowel)."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def caption(scene: Scene) -> str:
    """One sentence listing every object (row-major) and the background.

    Example: 'a red circle at the top left and a small blue square in the center on a white background'.
    """
    parts = [f"{with_article(describe(o))} {where(o.position)}" for o in scene.objects]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{listed} on {with_article(scene.background)} background"


# Candidate descriptions in order of preference among equally short ones.
_REFERRING_FORMS: tuple[tuple[str, ...], ...] = (
    ("shape",),
    ("color", "shape"),
    ("size", "shape"),
    ("size", "color", "shape"),
    ("shape", "position"),
)


def _phrase(obj: SceneObject, form: tuple[str, ...]) -> str:
    words = [getattr(obj, attr) for attr in form if attr != "position"]
    text = " ".join(words)
    return f"{text} {where(obj.position)}" if "position" in form else text


def _matches(obj: SceneObject, other: SceneObject, form: tuple[str, ...]) -> bool:
    return all(getattr(obj, attr) == getattr(other, attr) for attr in form)


def referring_expression(scene: Scene, index: int) -> str:
    """Shortest description (no article) that picks out object `index` and no other object.

    Forms tried: 'circle', 'red circle', 'small circle', 'small red circle', 'circle at the top left';
    the fewest words wins, ties go to the earlier form. The last form is always unique (one object per cell).
    """
    if not 0 <= index < len(scene.objects):
        raise SceneError(f"object index {index} out of range for a scene with {len(scene.objects)} objects")
    obj = scene.objects[index]
    best: str | None = None
    for form in _REFERRING_FORMS:
        if sum(_matches(obj, o, form) for o in scene.objects) != 1:
            continue
        text = _phrase(obj, form)
        if best is None or len(text.split()) < len(best.split()):
            best = text
    assert best is not None  # the position form always matches exactly one object
    return best
