"""Multi-turn editing: a session keeps the current image, the history of turns, and undo/redo.

Each turn edits the current image; with thresholding on (Emu Edit's rule, `conditioning.thresholding`), pixels the
turn barely changed are reset to their previous values, so drift does not accumulate over turns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from .conditioning.thresholding import DEFAULT_ALPHA, threshold_turn
from .errors import InputError
from .images import ImageSource, load_image


class TurnEditor(Protocol):
    """What a session needs of its editor: `diptych.Editor` is one (and builds sessions with
    `editor.session(image)`). Typed by shape, so this module does not import the editor, which imports it."""

    def edit(self, image: Image.Image, instruction: str, *, seed: int, **options: Any) -> Image.Image: ...


@dataclass
class Turn:
    """One turn: the instruction, its seed, the model's raw output and the image after thresholding."""

    instruction: str
    seed: int
    raw: Image.Image
    image: Image.Image
    options: dict[str, Any] = field(default_factory=dict)


class EditSession:
    """A sequence of edits of one image, with history and undo.

        >>> session = editor.session("room.png")
        >>> session.edit("add a plant in the corner")
        >>> session.edit("make the walls blue")
        >>> session.undo()          # back to the plant
        >>> session.image.save("out.png")

    `threshold` is Emu Edit's alpha (default 0.03); None turns thresholding off. `sigma` is the low-pass
    filter's width in pixels (default 1% of the shorter side). Turn k uses seed `seed + k` unless given.
    Options given here (steps, guidance, width, template, ...) apply to every turn unless overridden.
    """

    def __init__(
        self,
        editor: TurnEditor,
        image: ImageSource,
        *,
        threshold: float | None = DEFAULT_ALPHA,
        sigma: float | None = None,
        seed: int = 42,
        **edit_options: Any,
    ):
        if "mask" in edit_options:
            raise InputError("a mask belongs to one turn: pass it to session.edit(..., mask=...)")
        self.editor = editor
        self.threshold = threshold
        self.sigma = sigma
        self.seed = seed
        self.options = edit_options
        self.source = load_image(image)
        self._turns: list[Turn] = []
        self._undone: list[Turn] = []

    @property
    def image(self) -> Image.Image:
        """The current image (the source before any turn)."""
        return self._turns[-1].image if self._turns else self.source

    @property
    def history(self) -> list[Turn]:
        """The turns in effect, oldest first."""
        return list(self._turns)

    def edit(self, instruction: str, *, seed: int | None = None, **options: Any) -> Image.Image:
        """Apply one more edit to the current image; returns the new current image."""
        seed = self.seed + len(self._turns) if seed is None else seed
        merged = {**self.options, **options}
        previous = self.image
        raw = self.editor.edit(previous, instruction, seed=seed, **merged)
        if raw.size != previous.size:
            # Turn 1 resizes the source to the model's panel; later turns keep that size.
            previous = previous.resize(raw.size, Image.Resampling.BICUBIC)
        image = raw if self.threshold is None else threshold_turn(previous, raw, alpha=self.threshold, sigma=self.sigma)
        self._turns.append(Turn(instruction, seed, raw, image, merged))
        self._undone.clear()
        return image

    def undo(self) -> Image.Image:
        """Drop the last turn; returns the image before it."""
        if not self._turns:
            raise InputError("nothing to undo: the session has no turns")
        self._undone.append(self._turns.pop())
        return self.image

    def redo(self) -> Image.Image:
        """Re-apply the last undone turn (without recomputing it)."""
        if not self._undone:
            raise InputError("nothing to redo")
        self._turns.append(self._undone.pop())
        return self.image
