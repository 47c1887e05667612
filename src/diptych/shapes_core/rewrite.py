"""An instruction rewriter for ShapesEdit: an unfamiliar wording -> the nearest instruction in a seen phrasing.

Real editors put a language model in front of the image model to restate a user's request in the words the
image model was trained on. The built-in model has no LLM, so this does the same job with what it has: the
world's closed vocabulary (colours, shapes, sizes, cells, background colours) finds the slot words of a
request, and the pretrained MiniLM sentence encoder (the model's own text encoder) decides which seen phrasing
the request means. It never reads a held-out phrasing: its candidates are the operations' *seen* phrasings,
filled with the request's own slot words.

    "could you colour the star so it is red"  ->  "make the star red"
    "make the small circle disappear"          ->  "remove the small circle"

The rule, in order:
1. A request already in a seen phrasing (every slot a well-formed value) is returned unchanged, without the
   sentence model.
2. Otherwise every seen phrasing of every operation is filled in every way the request's slot mentions
   allow: the object an edit touches is a definite mention ("the red circle", "the star at the top left"),
   a new value a word outside it ("red", "a star", "the bottom right"; a colour, shape or size inside "the red
   circle" describes that object), an added object an indefinite mention with its place ("a small red star at
   the top left"), and "the white background" names the current background, not a new one.
3. A rewrite keeps what the user asked for: unless some filling uses every vocabulary word of the request (two
   edits in one request, "from navy to beige"), the request is returned unchanged. Of the fillings that do,
   the one whose MiniLM sentence vector is nearest the request's (cosine) is the rewrite.
4. Unless it is nearer than `min_similarity` and than every filling that would need a value the request does
   not say ("make the triangle bigger" is nearer "make the triangle large" than "remove the triangle"): then
   the request means something its own words cannot fill, and is returned unchanged.

Measured (docs/shapes.md, "An instruction rewriter"): every held-out-phrasing edit of 90 validation and 200 test
edits is read as its own operation with its own slot words, and no seen one is changed. What it cannot tell
apart: a request with no slot words is read as the nearest slot-free operation ("rotate the image" -> a mirror).
"""

from __future__ import annotations

import itertools
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .edits import OPS, EditOp
from .world import BACKGROUND_COLORS, OBJECT_COLORS, POSITIONS, SHAPES, SIZES

Embed = Callable[[list[str]], torch.Tensor]
"""Sentences -> (N, D) sentence vectors, L2-normalised (MiniLM's pooled output)."""


def _alternatives(words: Sequence[str]) -> str:
    # longest first, so that "light grey" is tried before "grey" would be
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_COLOR = _alternatives(list(OBJECT_COLORS))
_SHAPE = _alternatives(SHAPES)
_SIZE = _alternatives(list(SIZES))
_POSITION = _alternatives(POSITIONS)
_BACKGROUND = _alternatives(list(BACKGROUND_COLORS))
_WHERE = rf"at the (?:{_POSITION})|in the center"

# Well-formed values of each slot of the operations' phrasings (world.referring_expression, describe, where).
SLOT_VALUES: dict[str, str] = {
    "obj": rf"(?:(?:{_SIZE}) )?(?:(?:{_COLOR}) )?(?:{_SHAPE})(?: (?:{_WHERE}))?",
    "new_color": _COLOR,
    "new_shape": _SHAPE,
    "new_size": _SIZE,
    "new_position": _POSITION,
    "a_new_obj": rf"an? (?:(?:{_SIZE}) )?(?:{_COLOR}) (?:{_SHAPE})",
    "new_where": _WHERE,
    "new_background": _BACKGROUND,
    "background": _BACKGROUND,
}


def _phrasing_pattern(phrasing: str) -> re.Pattern[str]:
    """`phrasing` as a regex whose slots match only well-formed values, captured by name."""
    parts = re.split(r"\{(\w+)\}", phrasing)
    pattern = "".join(
        re.escape(part) if i % 2 == 0 else f"(?P<{part}>{SLOT_VALUES[part]})" for i, part in enumerate(parts)
    )
    return re.compile(pattern)


@dataclass(frozen=True)
class Mention:
    """A slot word or phrase of a request: `kind` is 'object', 'new_object', 'color', 'shape', 'size',
    'position', 'where', 'background' or 'current_background'; `start`/`end` are character offsets."""

    kind: str
    text: str
    start: int
    end: int

    def overlaps(self, other: Mention) -> bool:
        return self.start < other.end and other.start < self.end

    def inside(self, others: Sequence[Mention]) -> bool:
        """Whether this mention lies within one of `others` (and is not one of them)."""
        return any(o != self and o.start <= self.start and self.end <= o.end for o in others)


_MENTIONS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("object", re.compile(rf"\bthe ({SLOT_VALUES['obj']})\b")),
    ("object", re.compile(rf"\bthe ((?:(?:{_SIZE}) )?(?:(?:{_COLOR}) )?(?:{_SHAPE}))\b")),  # without its place
    ("new_object", re.compile(rf"\b({SLOT_VALUES['a_new_obj']})\b")),
    ("current_background", re.compile(rf"\bthe ({_BACKGROUND}) background\b")),
    ("where", re.compile(rf"\b({_WHERE})\b")),
    ("position", re.compile(rf"\b({_POSITION})\b")),
    ("color", re.compile(rf"\b({_COLOR})\b")),
    ("shape", re.compile(rf"\b({_SHAPE})\b")),
    ("size", re.compile(rf"\b({_SIZE})\b")),
    ("background", re.compile(rf"\b({_BACKGROUND})\b")),
)

# Which mention kinds may fill a slot; "obj" must be a definite mention, a new value must not be inside it.
_SLOT_KINDS: dict[str, tuple[str, ...]] = {
    "obj": ("object",),
    "new_color": ("color",),
    "new_shape": ("shape",),
    "new_size": ("size",),
    "new_position": ("position",),
    "a_new_obj": ("new_object",),
    "new_where": ("where",),
    "new_background": ("background",),
    "background": ("current_background",),
}


# The values a guard may try in a slot the request leaves empty (one-word slots only).
_INVENTED: dict[str, tuple[str, ...]] = {
    "new_color": tuple(OBJECT_COLORS),
    "new_shape": SHAPES,
    "new_size": tuple(SIZES),
    "new_position": POSITIONS,
    "new_background": tuple(BACKGROUND_COLORS),
}


_DESCRIBING = ("color", "shape", "size")


def find_mentions(text: str) -> list[Mention]:
    """Every slot mention of `text` (lower case), overlapping ones included."""
    found = {
        Mention(kind, m.group(1), m.start(1), m.end(1)) for kind, pattern in _MENTIONS for m in pattern.finditer(text)
    }
    # "the white background" names the current background: its colour is not a new one
    current = [m for m in found if m.kind == "current_background"]
    found = {m for m in found if m.kind != "background" or not any(m.overlaps(c) for c in current)}
    return sorted(found, key=lambda m: (m.start, -m.end, m.kind))


def _vocabulary_words(text: str, mentions: Sequence[Mention]) -> set[tuple[int, int]]:
    """Character spans of the request's vocabulary words: what a rewrite must keep (all but the colour of the
    current background, which only says which background the request means)."""
    words = rf"\b(?:{_COLOR}|{_SHAPE}|{_SIZE}|{_POSITION}|{_BACKGROUND})\b"
    current = [m for m in mentions if m.kind == "current_background"]
    spans = {(m.start(), m.end()) for m in re.finditer(words, text)}
    return {(s, e) for s, e in spans if not any(c.start <= s and e <= c.end for c in current)}


@dataclass(frozen=True)
class Rewrite:
    """The instruction to edit with, the operation it was read as (None when unchanged) and its similarity."""

    instruction: str
    op: str | None = None
    similarity: float | None = None

    @property
    def changed(self) -> bool:
        return self.op is not None


class InstructionRewriter:
    """Rewrites a ShapesEdit request into the nearest seen phrasing (the module docstring has the rule).

    `embed` maps sentences to L2-normalised vectors (default: the installed MiniLM's pooled output).
    """

    def __init__(
        self,
        embed: Embed | None = None,
        *,
        min_similarity: float = 0.5,
        ops: Sequence[EditOp] = tuple(OPS.values()),
        cache_size: int = 256,
    ):
        self._embed = embed
        self.min_similarity = min_similarity
        self.ops = tuple(ops)
        self._seen = [(op, phrasing, _phrasing_pattern(phrasing)) for op in self.ops for phrasing in op.seen]
        # an edit's instruction is read more than once (the editor, then what the CLI or server echoes back)
        self._cache: OrderedDict[str, Rewrite] = OrderedDict()
        self.cache_size = cache_size

    def embed(self, sentences: list[str]) -> torch.Tensor:
        if self._embed is None:
            from ..encoders import MiniLMPromptEncoder

            self._embed = MiniLMPromptEncoder.from_pretrained().sentence_vectors
        return self._embed(sentences)

    def seen_phrasing(self, instruction: str) -> EditOp | None:
        """The operation whose seen phrasing `instruction` is (every slot well formed), else None."""
        for op, _, pattern in self._seen:
            if pattern.fullmatch(instruction):
                return op
        return None

    def candidates(self, instruction: str, *, invent: bool = False) -> list[tuple[EditOp, str, int]]:
        """(operation, seen phrasing filled with the request's mentions, vocabulary words it keeps).

        `invent`: instead, the fillings that need one new value the request does not say (a colour, shape,
        size, cell or background from the world's vocabulary): what a request outside the vocabulary
        ("make the triangle bigger") is nearest to.
        """
        mentions = find_mentions(instruction)
        vocabulary = _vocabulary_words(instruction, mentions)
        objects = [m for m in mentions if m.kind == "object"]
        out = []
        for op, phrasing, _ in self._seen:
            slots = re.findall(r"\{(\w+)\}", phrasing)
            options = [[m for m in mentions if m.kind in _SLOT_KINDS[slot]] for slot in slots]
            # a colour, shape or size word inside "the red circle" describes an object there, it is not a new value
            # (a cell is not: "the circle at the top left" may be where a circle should go)
            options = [[m for m in o if m.kind not in _DESCRIBING or not m.inside(objects)] for o in options]
            if invent:
                if phrasing != op.seen[0]:  # one phrasing an operation is enough to tell what it means
                    continue
                invented = [i for i, slot in enumerate(slots) if slot in _INVENTED and not options[i]]
                if len(invented) != 1:
                    continue
                options[invented[0]] = [Mention("invented", v, -1, -1) for v in _INVENTED[slots[invented[0]]]]
            for chosen in itertools.product(*options):
                if any(a.overlaps(b) for a, b in itertools.combinations(chosen, 2)):
                    continue
                text = phrasing.format(**{slot: m.text for slot, m in zip(slots, chosen, strict=True)})
                kept = sum(any(m.start <= s and e <= m.end for m in chosen) for s, e in vocabulary)
                out.append((op, text, kept))
        return out

    def rewrite(self, instruction: str) -> Rewrite:
        """The rewrite of one request (the module docstring has the rule); the last `cache_size` are kept."""
        if instruction in self._cache:
            self._cache.move_to_end(instruction)
            return self._cache[instruction]
        result = self._rewrite(instruction)
        self._cache[instruction] = result
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return result

    def _rewrite(self, instruction: str) -> Rewrite:
        text = " ".join(instruction.lower().strip().rstrip(".!?").split())
        if self.seen_phrasing(text) is not None:
            return Rewrite(instruction)
        candidates = self.candidates(text)
        most = max((kept for _, _, kept in candidates), default=0)
        if not candidates or most < len(_vocabulary_words(text, find_mentions(text))):
            return Rewrite(instruction)  # no seen phrasing keeps every slot word: two edits, or a word it lacks
        best = [c for c in candidates if c[2] == most]
        invented = [c[1] for c in self.candidates(text, invent=True)]
        vectors = self.embed([text] + [c[1] for c in best] + invented)
        similarity = vectors[1 : 1 + len(best)] @ vectors[0]
        index = int(similarity.argmax())
        nearest_invented = float((vectors[1 + len(best) :] @ vectors[0]).max()) if invented else -1.0
        if float(similarity[index]) < max(self.min_similarity, nearest_invented):
            return Rewrite(instruction)  # it means something its own words cannot fill ("make it bigger")
        return Rewrite(best[index][1], best[index][0].name, float(similarity[index]))

    def rewrite_many(self, instructions: Sequence[str]) -> list[Rewrite]:
        return [self.rewrite(instruction) for instruction in instructions]

    def __call__(self, instruction: str) -> str:
        return self.rewrite(instruction).instruction
