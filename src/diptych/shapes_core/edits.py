"""Edit operations on ShapesEdit scenes, their phrasings, and the success rule.

Every operation maps a source scene to a different target scene (never a no-op) and says in words what
it did. Phrasings are fixed lists per operation: `EditOp.seen` (at least 5) are used for training,
`EditOp.heldout` (at least 2; all of them listed by `heldout_phrasings()`) never appear in the train split
and test language generalisation. Objects are named by the shortest unambiguous referring expression
(`world.referring_expression`).

Success rule
------------
`judge_edit` compares an output image with the ground-truth target render, both as RGB in 0..1.

* The edit region is where pixels may change: the union of the source and target coverage of the
  objects the edit touches, dilated by `REGION_DILATION_PX` pixels; the whole image for the background
  and invert operations.
* The error map is |G * (output - target)| averaged over RGB, where G is a Gaussian of std
  `LOWPASS_SIGMA_PX`. Blurring the *difference* cancels what is fine-grained and zero-mean (pixel noise,
  edges softened or shifted by about a pixel) while a wrong colour, a missing or extra object, or a wrong
  size keeps its full mass. `l1` is the plain mean absolute error, reported but not used for success.
* `inside_error` is the mean error over the edit region, `outside_error` over the rest of the image.
* Success: `inside_error <= min(T_INSIDE, RELATIVE_INSIDE * source_inside_error)` and
  `outside_error <= T_OUTSIDE`, where `source_inside_error` is the inside error of an unedited copy of
  the source. The relative part guarantees that leaving the image unchanged always fails, also for edits
  that change only a few pixels (a small diamond turned into a small cross); the absolute part makes a
  wrong colour fail even when it is closer to the target than the source colour was.
* Lengths are in pixels of a 64 px image and scale with the judged image's size.

Calibration at 64 px, over 5,400 sampled edits of all operations: the exact target passes. With Gaussian
noise of std 2/255 the inside error stays below 0.0014. With a Gaussian blur of std 1 px (PIL
`GaussianBlur(1)`) it stays below 0.022 and below 0.38 x the source's error, and the outside error below
0.006. An unedited source fails by construction. The target with the edited object in any other allowed
colour has an inside error of at least 0.032. `T_INSIDE` sits between 0.022 and 0.032.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar, Literal

import numpy as np
from PIL import Image

from diptych.errors import DiptychError
from diptych.shapes_core.world import (
    BACKGROUND_COLORS,
    MAX_OBJECTS,
    OBJECT_COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    allowed_colors,
    describe,
    object_mask,
    referring_expression,
    render_array,
    where,
    with_article,
)

__all__ = [
    "LOWPASS_SIGMA_PX",
    "OPS",
    "REGION_DILATION_PX",
    "RELATIVE_INSIDE",
    "T_INSIDE",
    "T_OUTSIDE",
    "Edit",
    "EditError",
    "EditOp",
    "EditScore",
    "Phrasings",
    "edit_region",
    "error_map",
    "get_op",
    "heldout_phrasings",
    "judge_edit",
    "op_names",
]

T_INSIDE = 0.026
"""Most low-pass error (mean RGB difference, 0..1) allowed inside the edit region, for any edit."""

RELATIVE_INSIDE = 0.5
"""Inside the region the output must also be this many times closer to the target than the source is."""

T_OUTSIDE = 0.01
"""Most low-pass error allowed outside the edit region."""

LOWPASS_SIGMA_PX = 2.0
"""Std of the Gaussian applied to output - target before taking absolute values, in pixels at 64 px."""

REGION_DILATION_PX = 2
"""Pixels by which the touched objects' coverage is grown to make the edit region, at 64 px."""

Phrasings = Literal["seen", "heldout", "all"]


class EditError(DiptychError, ValueError):
    """An edit cannot be made or judged (operation not applicable, unknown op, bad image...)."""


@dataclass(frozen=True)
class Edit:
    """One edit: source and ground-truth target scenes, the words used, and what it touched.

    `touched_source` / `touched_target` are object indices in the source / target scene whose pixels may
    change; `full_image` marks operations where every pixel may change (background, invert).
    """

    op: str
    source: Scene
    target: Scene
    params: dict[str, Any]
    instruction: str
    phrasing_index: int
    heldout: bool
    touched_source: tuple[int, ...] = ()
    touched_target: tuple[int, ...] = ()
    full_image: bool = False

    @property
    def phrasing(self) -> str:
        """'heldout' if the instruction uses a held-out phrasing, else 'seen'."""
        return "heldout" if self.heldout else "seen"

    def region(self, size: int = 64) -> np.ndarray:
        """Boolean (size, size) mask of pixels this edit may change."""
        return edit_region(self, size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (scenes included)."""
        return {
            "op": self.op,
            "source": self.source.to_dict(),
            "target": self.target.to_dict(),
            "params": dict(self.params),
            "instruction": self.instruction,
            "phrasing_index": self.phrasing_index,
            "heldout": self.heldout,
            "touched_source": list(self.touched_source),
            "touched_target": list(self.touched_target),
            "full_image": self.full_image,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Edit:
        """Inverse of `to_dict`; checks the op exists and the phrasing index is in range."""
        try:
            op = get_op(data["op"])
            edit = cls(
                op=op.name,
                source=Scene.from_dict(data["source"]),
                target=Scene.from_dict(data["target"]),
                params=dict(data["params"]),
                instruction=str(data["instruction"]),
                phrasing_index=int(data["phrasing_index"]),
                heldout=bool(data["heldout"]),
                touched_source=tuple(int(i) for i in data["touched_source"]),
                touched_target=tuple(int(i) for i in data["touched_target"]),
                full_image=bool(data["full_image"]),
            )
        except KeyError as err:
            raise EditError(f"edit record lacks the field {err.args[0]!r}") from None
        if not 0 <= edit.phrasing_index < len(op.phrasings):
            raise EditError(f"phrasing_index {edit.phrasing_index} out of range for op {op.name!r}")
        if edit.heldout != (edit.phrasing_index >= len(op.seen)):
            raise EditError(f"'heldout' disagrees with phrasing_index {edit.phrasing_index} of op {op.name!r}")
        _check_indices(edit.touched_source, edit.source, "touched_source")
        _check_indices(edit.touched_target, edit.target, "touched_target")
        return edit


def _check_indices(indices: tuple[int, ...], scene: Scene, what: str) -> None:
    bad = [i for i in indices if not 0 <= i < len(scene.objects)]
    if bad:
        raise EditError(f"{what} holds indices {bad} outside a scene of {len(scene.objects)} objects")


# --- operations -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Change:
    """What an operation decided, before it is put into words."""

    target: Scene
    params: dict[str, Any]
    slots: dict[str, str]
    touched_source: tuple[int, ...] = ()
    touched_target: tuple[int, ...] = ()


class EditOp(ABC):
    """An edit operation: a name, seen and held-out phrasings, and a way to apply it to a scene.

    Phrasings are `str.format` templates over the slots the operation fills (e.g. `{obj}`, the shortest
    unambiguous referring expression of the touched object). Index i < len(seen) is seen, the rest held out.
    """

    name: ClassVar[str]
    seen: ClassVar[tuple[str, ...]]
    heldout: ClassVar[tuple[str, ...]]
    full_image: ClassVar[bool] = False

    @property
    def phrasings(self) -> tuple[str, ...]:
        """All phrasings, seen first then held out; an Edit's phrasing_index points into this."""
        return self.seen + self.heldout

    @abstractmethod
    def applicable(self, scene: Scene) -> bool:
        """Whether this operation can change `scene` at all."""

    @abstractmethod
    def _change(self, scene: Scene, rng: np.random.Generator) -> _Change:
        """Pick the parameters at random and build the target scene."""

    def apply(self, scene: Scene, rng: np.random.Generator, phrasings: Phrasings = "seen") -> Edit:
        """A random valid edit of `scene`, worded with a phrasing drawn from the `phrasings` pool."""
        if not self.applicable(scene):
            raise EditError(f"op {self.name!r} cannot change this scene; check op.applicable(scene) first")
        change = self._change(scene, rng)
        index = int(rng.choice(self.phrasing_pool(phrasings)))
        return Edit(
            op=self.name,
            source=scene,
            target=change.target,
            params=change.params,
            instruction=self.phrasings[index].format(**change.slots),
            phrasing_index=index,
            heldout=index >= len(self.seen),
            touched_source=change.touched_source,
            touched_target=change.touched_target,
            full_image=self.full_image,
        )

    def phrasing_pool(self, phrasings: Phrasings) -> tuple[int, ...]:
        """Indices of the phrasings in the pool 'seen', 'heldout' or 'all'."""
        n_seen, n_all = len(self.seen), len(self.phrasings)
        pools = {"seen": range(n_seen), "heldout": range(n_seen, n_all), "all": range(n_all)}
        if phrasings not in pools:
            raise EditError(f"phrasings must be 'seen', 'heldout' or 'all', got {phrasings!r}")
        return tuple(pools[phrasings])


def _pick(rng: np.random.Generator, options: list[str] | tuple[str, ...]) -> str:
    return str(options[int(rng.integers(len(options)))])


def _pick_index(rng: np.random.Generator, n: int) -> int:
    return int(rng.integers(n))


def _replace_object(scene: Scene, index: int, new: SceneObject) -> Scene:
    objects = list(scene.objects)
    objects[index] = new
    return scene.with_objects(objects)


class Recolor(EditOp):
    """Give one object another colour (visible on the background)."""

    name = "recolor"
    seen = (
        "make the {obj} {new_color}",
        "change the color of the {obj} to {new_color}",
        "turn the {obj} {new_color}",
        "recolor the {obj} {new_color}",
        "the {obj} should be {new_color}",
    )
    heldout = (
        "paint the {obj} {new_color}",
        "could you colour the {obj} so it is {new_color}",
    )

    def applicable(self, scene: Scene) -> bool:
        return len(allowed_colors(scene.background)) > 1

    def _change(self, scene: Scene, rng: np.random.Generator) -> _Change:
        i = _pick_index(rng, len(scene.objects))
        obj = scene.objects[i]
        new_color = _pick(rng, [c for c in allowed_colors(scene.background) if c != obj.color])
        target = _replace_object(scene, i, obj.replace(color=new_color))
        return _Change(
            target,
            {"object": i, "color": obj.color, "new_color": new_color},
            {"obj": referring_expression(scene, i), "new_color": new_color},
            (i,),
            (i,),
        )


class Reshape(EditOp):
    """Replace one object's shape, keeping its colour, size and place."""

    name = "reshape"
    seen = (
        "turn the {obj} into a {new_shape}",
        "replace the {obj} with a {new_shape}",
        "change the {obj} into a {new_shape}",
        "make the {obj} a {new_shape}",
        "swap the {obj} for a {new_shape}",
    )
    heldout = (
        "transform the {obj} into a {new_shape}",
        "could you reshape the {obj} so it becomes a {new_shape}",
    )

    def applicable(self, scene: Scene) -> bool:
        return True

    def _change(self, scene: Scene, rng: np.random.Generator) -> _Change:
        i = _pick_index(rng, len(scene.objects))
        obj = scene.objects[i]
        new_shape = _pick(rng, [s for s in SHAPES if s != obj.shape])
        target = _replace_object(scene, i, obj.replace(shape=new_shape))
        return _Change(
            target,
            {"object": i, "shape": obj.shape, "new_shape": new_shape},
            {"obj": referring_expression(scene, i), "new_shape": new_shape},
            (i,),
            (i,),
        )


class Remove(EditOp):
    """Remove one object (scenes keep at least one object)."""

    name = "remove"
    seen = (
        "remove the {obj}",
        "delete the {obj}",
        "take away the {obj}",
        "get rid of the {obj}",
        "erase the {obj}",
    )
    heldout = (
        "make the {obj} disappear",
        "could you take the {obj} out of the picture",
    )

    def applicable(self, scene: Scene) -> bool:
        return len(scene.objects) >= 2

    def _change(self, scene: Scene, rng: np.random.Generator) -> _Change:
        i = _pick_index(rng, len(scene.objects))
        target = scene.with_objects([o for j, o in enumerate(scene.objects) if j != i])
        return _Change(target, {"object": i}, {"obj": referring_expression(scene, i)}, (i,), ())


class Add(EditOp):
    """Add a fully specified object in a free cell."""

    name = "add"
    seen = (
        "add {a_new_obj} {new_where}",
        "put {a_new_obj} {new_where}",
        "place {a_new_obj} {new_where}",
        "draw {a_new_obj} {new_where}",
        "insert {a_new_obj} {new_where}",
    )
    heldout = (
        "there should also be {a_new_obj} {new_where}",
        "could you include {a_new_obj} {new_where}",
    )

    def applicable(self, scene: Scene) -> bool:
        return len(scene.objects) < MAX_OBJECTS

    def _change(self, scene: Scene, rng: np.random.Generator) -> _Change:
        new = SceneObject(
            shape=_pick(rng, SHAPES),
            color=_pick(rng, allowed_colors(scene.background)),
            size=_pick(rng, list(SIZES)),
            position=_pick(rng, scene.free_positions()),
        )
        target = scene.with_objects([*scene.objects, new])
        j = target.index_at(new.position)
        return _Change(
            target,
            {"object": j, **new.to_dict()},
            {"a_new_obj": with_article(describe(new)), "new_where": where(new.position)},
            (),
            (j,),
        )


class Move(EditOp):
    """Move one object to a free cell."""

    name = "move"
    seen = (
        "move the {obj} to the {new_position}",
        "put the {obj} at the {new_position}",
        "shift the {obj} to the {new_position}",
        "relocate the {obj} to the {new_position}",
        "drag the {obj} to the {new_position}",
    )
    heldout = (
        "reposition the {obj} so it sits at the {new_position}",
        "could you slide the {obj} over to the {new_position}",
    )

    def applicable(self, scene: Scene) -> bool:
        return bool(scene.free_positions())

    def _change(self, scene: Scene, rng: np.random.Generator) -> _Change:
        i = _pick_index(rng, len(scene.objects))
        obj = scene.objects[i]
        new_position = _pick(rng, scene.free_positions())
        target = _replace_object(scene, i, obj.replace(position=new_position))
        return _Change(
            target,
            {"object": i, "position": obj.position, "new_position": new_position},
            {"obj": referring_expression(scene, i), "new_position": new_position},
            (i,),
            (target.index_at(new_position),),
        )


class Resize(EditOp):
    """Change one object's size."""

    name = "resize"
    seen = (
        "make the {obj} {new_size}",
        "resize the {obj} to {new_size}",
        "change the size of the {obj} to {new_size}",
        "scale the {obj} to {new_size}",
        "turn the {obj} into a {new_size} one",
    )
    heldout = (
        "the {obj} ought to be {new_size}",
        "could you alter the size of the {obj} so it is {new_size}",
    )

    def applicable(self, scene: Scene) -> bool:
        return True

    def _change(self, scene: Scene, rng: np.random.Generator) -> _Change:
        i = _pick_index(rng, len(scene.objects))
        obj = scene.objects[i]
        new_size = _pick(rng, [s for s in SIZES if s != obj.size])
        target = _replace_object(scene, i, obj.replace(size=new_size))
        return _Change(
            target,
            {"object": i, "size": obj.size, "new_size": new_size},
            {"obj": referring_expression(scene, i), "new_size": new_size},
            (i,),
            (i,),
        )


class Background(EditOp):
    """Change the background colour (to one every object stays visible on)."""

    name = "background"
    full_image = True
    seen = (
        "change the background to {new_background}",
        "make the background {new_background}",
        "turn the background {new_background}",
        "use a {new_background} background",
        "set the background color to {new_background}",
    )
    heldout = (
        "paint the background {new_background}",
        "could you swap the {background} background for a {new_background} one",
    )

    @staticmethod
    def _options(scene: Scene) -> list[str]:
        colors = {o.color for o in scene.objects}
        return [b for b in BACKGROUND_COLORS if b != scene.background and colors <= set(allowed_colors(b))]

    def applicable(self, scene: Scene) -> bool:
        return bool(self._options(scene))

    def _change(self, scene: Scene, rng: np.random.Generator) -> _Change:
        new = _pick(rng, self._options(scene))
        target = Scene(new, scene.objects)
        return _Change(
            target,
            {"background": scene.background, "new_background": new},
            {"background": scene.background, "new_background": new},
        )


_INVERSE_OBJECT = {
    name: next(n for n, c in OBJECT_COLORS.items() if c == tuple(255 - v for v in rgb))
    for name, rgb in OBJECT_COLORS.items()
}
_INVERSE_BACKGROUND = {
    name: next(n for n, c in BACKGROUND_COLORS.items() if c == tuple(255 - v for v in rgb))
    for name, rgb in BACKGROUND_COLORS.items()
}


class Invert(EditOp):
    """Invert every colour; the palettes are closed under inversion, so the target is a scene."""

    name = "invert"
    full_image = True
    seen = (
        "invert the colors",
        "invert the image",
        "invert all colors",
        "make it a color negative",
        "apply a color inversion",
    )
    heldout = (
        "turn the picture into its negative",
        "could you flip every colour to its opposite",
    )

    def applicable(self, scene: Scene) -> bool:
        return True

    def _change(self, scene: Scene, rng: np.random.Generator) -> _Change:
        objects = [o.replace(color=_INVERSE_OBJECT[o.color]) for o in scene.objects]
        return _Change(Scene(_INVERSE_BACKGROUND[scene.background], tuple(objects)), {}, {})


_MIRRORED_POSITION = {p: POSITIONS[3 * (i // 3) + 2 - i % 3] for i, p in enumerate(POSITIONS)}


class Mirror(EditOp):
    """Flip the scene left to right. Every shape is left-right symmetric, so only off-centre objects move,
    and the op applies only when the flip changes the image."""

    name = "mirror"
    seen = (
        "flip the image horizontally",
        "mirror the image",
        "mirror the scene left to right",
        "flip it left to right",
        "reflect the image horizontally",
    )
    heldout = (
        "show the mirror image of the scene",
        "could you swap left and right",
    )

    @staticmethod
    def _moved(scene: Scene) -> list[SceneObject]:
        # Objects whose mirror image is not already in the scene: a pair of twins facing each other
        # across the centre column swaps places without changing a pixel.
        return [o for o in scene.objects if _mirrored(o) not in scene.objects]

    def applicable(self, scene: Scene) -> bool:
        return bool(self._moved(scene))

    def _change(self, scene: Scene, rng: np.random.Generator) -> _Change:
        target = scene.with_objects([_mirrored(o) for o in scene.objects])
        moved = self._moved(scene)
        return _Change(
            target,
            {},
            {},
            tuple(scene.objects.index(o) for o in moved),
            tuple(target.objects.index(_mirrored(o)) for o in moved),
        )


def _mirrored(obj: SceneObject) -> SceneObject:
    return obj.replace(position=_MIRRORED_POSITION[obj.position])


OPS: dict[str, EditOp] = {
    op.name: op for op in (Recolor(), Reshape(), Remove(), Add(), Move(), Resize(), Background(), Invert(), Mirror())
}
"""Registry of edit operations by name."""


def heldout_phrasings() -> dict[str, tuple[str, ...]]:
    """The fixed held-out phrasings of every operation (never used by the train split)."""
    return {name: op.heldout for name, op in OPS.items()}


def op_names() -> tuple[str, ...]:
    """Names of all operations, in registry order."""
    return tuple(OPS)


def get_op(name: str) -> EditOp:
    """The operation called `name`; EditError naming the valid ones otherwise."""
    if name not in OPS:
        raise EditError(f"unknown edit op {name!r}; choose one of {list(OPS)}")
    return OPS[name]


# --- edit region and success rule ------------------------------------------------------------------------


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a (2r+1)^2 square, via shifted maxima."""
    out = mask.copy()
    h, w = mask.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
            xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
            out[yd, xd] |= mask[ys, xs]
    return out


def edit_region(edit: Edit, size: int = 64) -> np.ndarray:
    """Boolean (size, size) mask of the pixels `edit` may change (see the module docstring)."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 12:
        raise EditError(f"region size must be an int >= 12 pixels, got {size!r}")
    if edit.full_image:
        return np.ones((size, size), dtype=bool)
    covered = np.zeros((size, size), dtype=bool)
    for i in edit.touched_source:
        covered |= object_mask(edit.source, i, size) > 0
    for i in edit.touched_target:
        covered |= object_mask(edit.target, i, size) > 0
    return _dilate(covered, max(1, round(REGION_DILATION_PX * size / 64)))


@dataclass(frozen=True)
class EditScore:
    """Outcome of `judge_edit`. Errors are in RGB 0..1; `l1` is the plain mean absolute error over the
    whole image, the others are low-pass errors (see the module docstring). `t_inside` is this edit's
    inside threshold, `source_inside_error` the inside error an unedited copy of the source would get."""

    success: bool
    l1: float
    inside_error: float
    outside_error: float
    t_inside: float
    t_outside: float
    source_inside_error: float

    @property
    def inside_ok(self) -> bool:
        """The edited region passes its half of the rule (the edit itself is right)."""
        return self.inside_error <= self.t_inside

    @property
    def outside_ok(self) -> bool:
        """The rest of the image passes its half of the rule (nothing else was changed)."""
        return self.outside_error <= self.t_outside

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def as_unit_rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    """A square RGB image (PIL, or uint8 / float-in-0..1 array) as float64 in 0..1, the success rule's input."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise EditError(f"output must be a PIL image or a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1]:
        raise EditError(f"output must be a square RGB image (H, W, 3), got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255.0
    if np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all() or image.min() < 0 or image.max() > 1:
            raise EditError("a float output must hold finite values in 0..1; scale uint8 images by 1/255")
        return image.astype(np.float64)
    raise EditError(f"output dtype must be uint8 or float, got {image.dtype}")


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return taps / taps.sum()


def _lowpass(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (H, W, C) float array, edges reflected."""
    kernel = _gaussian_kernel(sigma)
    r = len(kernel) // 2
    h, w = image.shape[:2]
    if r >= min(h, w):
        raise EditError(f"image of {h}x{w} px is too small to judge; use at least {2 * r + 1} px")
    padded = np.pad(image, ((r, r), (r, r), (0, 0)), mode="reflect")
    rows = sum(k * padded[i : i + h] for i, k in enumerate(kernel))
    return sum(k * rows[:, i : i + w] for i, k in enumerate(kernel))


def error_map(output: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-pixel judging error (H, W): |low-pass(output - target)| averaged over RGB (inputs in 0..1)."""
    sigma = LOWPASS_SIGMA_PX * output.shape[0] / 64
    return np.abs(_lowpass(output - target, sigma)).mean(axis=2)


def judge_edit(output: Image.Image | np.ndarray, edit: Edit, source_scene: Scene | None = None) -> EditScore:
    """Score `output` against the ground truth of `edit` with the success rule of this module.

    `output` is a square RGB image (PIL, or an array of uint8 or float in 0..1) at the size it should be
    judged at. `source_scene` defaults to `edit.source`; if given it must equal it (a guard against
    mixing up records).
    """
    if source_scene is not None and source_scene != edit.source:
        raise EditError("source_scene is not the source of this edit; pass the matching scene or None")
    out = as_unit_rgb(output)
    size = out.shape[0]
    target = render_array(edit.target, size).astype(np.float64) / 255.0
    source = render_array(edit.source, size).astype(np.float64) / 255.0
    region = edit_region(edit, size)
    error = error_map(out, target)
    inside = float(error[region].mean())
    outside = float(error[~region].mean()) if not region.all() else 0.0
    source_inside = float(error_map(source, target)[region].mean())
    t_inside = min(T_INSIDE, RELATIVE_INSIDE * source_inside)
    score = EditScore(
        success=False,
        l1=float(np.abs(out - target).mean()),
        inside_error=inside,
        outside_error=outside,
        t_inside=t_inside,
        t_outside=T_OUTSIDE,
        source_inside_error=source_inside,
    )
    return replace(score, success=score.inside_ok and score.outside_ok)  # success: both halves pass
