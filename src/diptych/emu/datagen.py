"""Emu Edit's data generation: instructions from a caption and a task, pairs from a Fill model guided by a
soft mask, and a filter that drops weak pairs.

The pipeline, per item (an image, its caption, a task and optionally the precise mask of the edited object):

1. An instruction source writes the edit: an OpenAI-compatible LLM (`LLMInstructionSource`, a few-shot
   prompt; the model answers JSON with `instruction`, `edited_object`, `new_caption`, `original_object`),
   any Python callable `(caption, task) -> dict` (`CallableInstructionSource`), or ShapesEdit itself
   (`shapes_items`), which knows the ground truth.
2. The soft mask M (`diptych.emu.softmask.soft_mask`) of the precise mask becomes a fractional keep map
   over the latent grid (keep = 1 - mean of M per cell) and the Editor's in-context edit runs with it:
   after every step the latents are `keep * renoised_source + (1 - keep) * generated`. Outside M's support
   the final pixels are the source's exactly. No mask means the whole image may change.
3. A filter (`CLIPPairFilter`; `ShapesPairFilter`, the built-in ShapesEdit judge, for ShapesEdit data; or
   any callable) keeps or drops the pair; drops are counted and logged in `rejected.ndjson` with their scores.

Output layout (what `diptych train` reads; paths relative to the folder)::

    out/data.jsonl      {"id", "source", "instruction", "target", "task", "mask", "meta": {...}}
    out/images/ID_source.png  ID_target.png  ID_mask.png (L: 255 * M, white = may change)
    out/rejected.ndjson {"id", "reason", "scores"} for pairs the filter dropped

Every image is written atomically and each JSONL line is appended in one write after its images exist, so a
run can stop at any point; running again skips every id already in data.jsonl or rejected.ndjson.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import numpy as np
from PIL import Image

from ..errors import DiptychError
from ..files import JsonlLog, complete_lines
from ..images import load_image, load_mask, save_image_atomic
from ..specs import import_object
from .softmask import DEFAULT_WEIGHTS, check_weights, keep_grid, soft_mask

__all__ = [
    "DEFAULT_LLM_TASKS",
    "FEW_SHOT",
    "INSTRUCTION_FIELDS",
    "CLIPPairFilter",
    "CallableInstructionSource",
    "CallablePairFilter",
    "DatagenError",
    "DatagenItem",
    "DatagenReport",
    "FilterVerdict",
    "GenerationOptions",
    "Instruction",
    "InstructionFormatError",
    "LLMInstructionSource",
    "PairCandidate",
    "ShapesPairFilter",
    "generate_pair",
    "input_items",
    "load_filter",
    "load_instruction_source",
    "parse_instruction",
    "run_datagen",
    "scene_items",
    "shapes_items",
]

INSTRUCTION_FIELDS: tuple[str, ...] = ("instruction", "edited_object", "new_caption", "original_object")
DEFAULT_LLM_TASKS: tuple[str, ...] = ("local", "remove", "add", "background", "global", "style", "texture")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_JSONL = "data.jsonl"
_REJECTED = "rejected.ndjson"  # not .jsonl, so dataset detection never mistakes it for the data


class DatagenError(DiptychError, ValueError):
    """Data generation cannot go on: a bad spec, input file, source answer or option."""


class InstructionFormatError(DatagenError):
    """An instruction source answered something that is not the expected JSON object."""


# ---------------------------------------------------------------------------------------------- instructions


@dataclass(frozen=True)
class Instruction:
    """An edit as Emu Edit's LLM writes it: the instruction, what it edits, and the caption after it."""

    instruction: str
    edited_object: str
    new_caption: str
    original_object: str

    def to_dict(self) -> dict[str, str]:
        """JSON-able form."""
        return {name: getattr(self, name) for name in INSTRUCTION_FIELDS}

    @classmethod
    def from_mapping(cls, data: object, where: str = "the answer") -> Instruction:
        """Validate a mapping: every field present and a non-empty string (extra keys are ignored)."""
        if not isinstance(data, Mapping):
            raise InstructionFormatError(f"{where} must be a JSON object, got {type(data).__name__}")
        missing = [name for name in INSTRUCTION_FIELDS if name not in data]
        if missing:
            raise InstructionFormatError(
                f"{where} lacks the field(s) {', '.join(missing)}; it needs {', '.join(INSTRUCTION_FIELDS)}"
            )
        bad = [name for name in INSTRUCTION_FIELDS if not isinstance(data[name], str) or not data[name].strip()]
        if bad:
            raise InstructionFormatError(f"{where}: field(s) {', '.join(bad)} must be non-empty strings")
        return cls(**{name: " ".join(str(data[name]).split()) for name in INSTRUCTION_FIELDS})


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


def parse_instruction(text: str) -> Instruction:
    """Read an `Instruction` from a model's answer: bare JSON, JSON in a ``` fence, or JSON amid prose."""
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end < start:
        raise InstructionFormatError("the answer holds no JSON object")
    try:
        data = json.loads(body[start : end + 1])
    except json.JSONDecodeError as err:
        raise InstructionFormatError(f"the answer's JSON does not parse ({err.msg} at char {err.pos})") from None
    return Instruction.from_mapping(data)


SYSTEM_PROMPT = (
    "You write instructions for an image editing dataset. Given the caption of an image and an edit task, "
    "invent one plausible edit of that task for that image. Answer with one JSON object and nothing else, "
    'with the string fields "instruction" (an imperative edit instruction), "edited_object" (what the '
    'image shows in the edited region after the edit), "new_caption" (the caption of the edited image) '
    'and "original_object" (what the edited region shows before the edit; "whole image" for global edits).'
)

FEW_SHOT: tuple[tuple[str, str, dict[str, str]], ...] = (
    (
        "a brown dog sitting on a wooden bench in a park",
        "local",
        {
            "instruction": "make the dog white",
            "edited_object": "white dog",
            "new_caption": "a white dog sitting on a wooden bench in a park",
            "original_object": "brown dog",
        },
    ),
    (
        "a bowl of apples and a glass of milk on a kitchen table",
        "remove",
        {
            "instruction": "remove the glass of milk",
            "edited_object": "kitchen table",
            "new_caption": "a bowl of apples on a kitchen table",
            "original_object": "glass of milk",
        },
    ),
    (
        "a lighthouse on a rocky coast at sunset",
        "style",
        {
            "instruction": "turn it into a watercolor painting",
            "edited_object": "watercolor painting of a lighthouse",
            "new_caption": "a watercolor painting of a lighthouse on a rocky coast at sunset",
            "original_object": "whole image",
        },
    ),
)
"""(caption, task, answer) examples shown to the LLM before each request."""


def _user_turn(caption: str, task: str) -> str:
    return f"Caption: {caption}\nTask: {task}"


class InstructionSource(Protocol):
    """Anything that writes an edit for a caption and a task."""

    def __call__(self, caption: str, task: str) -> Instruction: ...


class LLMInstructionSource:
    """Instructions from an OpenAI-compatible chat-completions endpoint (vLLM, SGLang, a hosted API).

    The prompt is `SYSTEM_PROMPT`, then `few_shot` as user/assistant turns, then the caption and task. An
    answer that is not the expected JSON gets a follow-up naming the problem, up to `retries` times; then
    `InstructionFormatError`. Transport failures are retried by the HTTP client (`VLMJudge.chat`) and raise
    `diptych.scaling.judges.JudgeError` when they persist.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        retries: int = 2,
        few_shot: Sequence[tuple[str, str, Mapping[str, str]]] = FEW_SHOT,
        timeout: float = 60.0,
        http_retries: int = 3,
        max_tokens: int = 512,
        api_key_env: str = "DIPTYCH_LLM_API_KEY",
        backoff_base: float = 1.0,
    ) -> None:
        from ..scaling.vlm_http import VLMJudge

        if not isinstance(retries, int) or retries < 0:
            raise DatagenError(f"retries must be an integer >= 0, got {retries!r}")
        for caption, task, answer in few_shot:
            Instruction.from_mapping(answer, where=f"the few-shot answer for {caption!r} ({task})")
        self.retries = retries
        self.few_shot = tuple(few_shot)
        self.client = VLMJudge(
            base_url,
            model,
            timeout=timeout,
            retries=http_retries,
            max_tokens=max_tokens,
            api_key_env=api_key_env,
            backoff_base=backoff_base,
        )

    @classmethod
    def from_spec(cls, spec: str) -> LLMInstructionSource:
        """`llm:http://host:port/v1?model=NAME[&retries=2&timeout=60&max_tokens=512&key_env=VAR]`."""
        target = spec.removeprefix("llm:")
        parts = urlsplit(target)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise DatagenError(f"source spec {spec!r} must look like llm:http://host:port/v1?model=NAME")
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        model = params.pop("model", "")
        if not model:
            raise DatagenError(f"source spec {spec!r} needs the model name: add ?model=NAME")
        types: dict[str, Callable[[str], Any]] = {"retries": int, "timeout": float, "max_tokens": int, "key_env": str}
        unknown = sorted(set(params) - set(types))
        if unknown:
            raise DatagenError(
                f"source spec {spec!r}: unknown option(s) {', '.join(unknown)}; known: {', '.join(types)}"
            )
        try:
            options = {key: types[key](value) for key, value in params.items()}
        except ValueError as err:
            raise DatagenError(f"source spec {spec!r}: bad option value ({err})") from err
        if "key_env" in options:
            options["api_key_env"] = options.pop("key_env")
        return cls(urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), model, **options)

    def messages(self, caption: str, task: str) -> list[dict[str, str]]:
        """The chat messages of the first request for (`caption`, `task`)."""
        messages = [{"role": "system", "content": SYSTEM_PROMPT}]
        for shot_caption, shot_task, answer in self.few_shot:
            messages.append({"role": "user", "content": _user_turn(shot_caption, shot_task)})
            messages.append({"role": "assistant", "content": json.dumps(dict(answer))})
        messages.append({"role": "user", "content": _user_turn(caption, task)})
        return messages

    def __call__(self, caption: str, task: str) -> Instruction:
        """Ask for one edit; retries with the problem fed back, then raises `InstructionFormatError`."""
        messages = self.messages(caption, task)
        problems: list[str] = []
        for _ in range(self.retries + 1):
            answer = self.client.chat(messages)
            try:
                return parse_instruction(answer)
            except InstructionFormatError as err:
                problems.append(str(err))
                messages = [
                    *messages,
                    {"role": "assistant", "content": answer},
                    {
                        "role": "user",
                        "content": f"That answer is unusable: {err}. Reply with only the JSON object, with "
                        f"non-empty string fields {', '.join(INSTRUCTION_FIELDS)}.",
                    },
                ]
        raise InstructionFormatError(
            f"the LLM at {self.client.url} gave no usable JSON in {self.retries + 1} attempt(s) for task "
            f"{task!r}: {'; '.join(problems)}. Try a stronger model or raise ?retries="
        )

    def close(self) -> None:
        """Close the HTTP connections."""
        self.client.close()


class CallableInstructionSource:
    """Instructions from a Python function `fn(caption, task) -> dict` with the `INSTRUCTION_FIELDS`."""

    def __init__(self, fn: Callable[[str, str], Mapping[str, Any]]) -> None:
        if not callable(fn):
            raise DatagenError(f"an instruction source must be callable, got {type(fn).__name__}")
        self.fn = fn

    def __call__(self, caption: str, task: str) -> Instruction:
        """Call the function and validate what it returned."""
        name = getattr(self.fn, "__qualname__", repr(self.fn))
        value = self.fn(caption, task)
        if isinstance(value, Instruction):
            return value
        return Instruction.from_mapping(value, where=f"the result of {name}")


def load_instruction_source(spec: str) -> InstructionSource | None:
    """`shapes` (returns None: ShapesEdit items carry their own instructions), `llm:URL?model=NAME`, or
    `python:package.module:function`."""
    if spec == "shapes":
        return None
    if spec.startswith("llm:"):
        return LLMInstructionSource.from_spec(spec)
    if spec.startswith("python:"):
        return CallableInstructionSource(import_object(spec, kind="source", error=DatagenError))
    raise DatagenError(f"unknown source {spec!r}; use shapes, llm:http://host:port/v1?model=NAME or python:mod:fn")


# ---------------------------------------------------------------------------------------------- items


@dataclass
class DatagenItem:
    """One image to edit.

    `precise` is the (H, W) coverage in [0, 1] of the object to edit at the image's size, or None for the
    whole image. `instruction` is set when the item already knows its edit (ShapesEdit); otherwise the
    instruction source writes it, and `locate`, if set, maps that instruction to a precise mask.
    """

    id: str
    image: Image.Image
    caption: str
    task: str
    precise: np.ndarray | None = None
    instruction: Instruction | None = None
    locate: Callable[[Instruction], np.ndarray | None] | None = field(default=None, repr=False)
    meta: dict[str, Any] = field(default_factory=dict)


def _index_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([0xDA7A_6E17, seed, index]))


def shapes_items(n: int, *, seed: int = 0, tasks: Iterable[str] | None = None, size: int = 64) -> Iterator[DatagenItem]:
    """ShapesEdit edits of the train split with their ground truth: the instruction, the touched objects'
    masks (source and target coverage, united; the whole image for background and invert) and the captions.

    `tasks` restricts the ShapesEdit operations (`diptych.shapes.edits.OPS`); default all.
    """
    from ..shapes_core.dataset import resolve_ops

    _check_count(n)
    # Validated here, not in the generator, so a bad task name fails before a model is loaded.
    return _shapes_gen(n, seed, resolve_ops(list(tasks) if tasks is not None else None), size)


def _check_count(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise DatagenError(f"n must be a positive number of items, got {n!r}")


def _shapes_gen(n: int, seed: int, ops: tuple[str, ...], size: int) -> Iterator[DatagenItem]:
    from ..shapes_core.dataset import sample_edit
    from ..shapes_core.world import caption, describe, object_mask

    for index in range(n):
        example = sample_edit("train", index, seed=seed, ops=ops, size=size)
        edit = example.edit
        masks = [object_mask(edit.source, i, size) for i in edit.touched_source]
        masks += [object_mask(edit.target, i, size) for i in edit.touched_target]
        precise = None if edit.full_image or not masks else np.maximum.reduce(masks)
        before = [describe(edit.source.objects[i]) for i in edit.touched_source]
        after = [describe(edit.target.objects[i]) for i in edit.touched_target]
        background = f"{edit.target.background} background"
        instruction = Instruction(
            instruction=edit.instruction,
            edited_object=" and ".join(after) or ("whole image" if edit.full_image else background),
            new_caption=caption(edit.target),
            original_object=" and ".join(before) or ("whole image" if edit.full_image else background),
        )
        yield DatagenItem(
            id=f"shapes-{seed}-{index:06d}",
            image=example.source_image,
            caption=caption(edit.source),
            task=edit.op,
            precise=precise,
            instruction=instruction,
            meta={"source_scene": edit.source.to_dict(), "target_scene": edit.target.to_dict()},
        )


def _scene_locator(scene: Any, size: int) -> Callable[[Instruction], np.ndarray | None]:
    from ..shapes_core.world import object_mask

    def locate(instruction: Instruction) -> np.ndarray | None:
        # The object the LLM names, if exactly one object of the scene matches its colour and shape.
        text = instruction.original_object.lower()
        hits = [i for i, o in enumerate(scene.objects) if f"{o.color} {o.shape}" in text]
        return object_mask(scene, hits[0], size) if len(hits) == 1 else None

    return locate


def scene_items(
    n: int, *, seed: int = 0, tasks: Sequence[str] = DEFAULT_LLM_TASKS, size: int = 64
) -> Iterator[DatagenItem]:
    """Random ShapesEdit scenes with their captions and a task each, for an LLM or callable source to
    write edits for; the edited object's mask is found from the answer's `original_object` when it names
    exactly one object of the scene by colour and shape, else the whole image may change."""
    _check_count(n)
    return _scene_gen(n, seed, _check_tasks(tasks), size)


def _scene_gen(n: int, seed: int, tasks: tuple[str, ...], size: int) -> Iterator[DatagenItem]:
    from ..shapes_core.world import caption, random_scene, render

    for index in range(n):
        rng = _index_rng(seed, index)
        scene = random_scene(rng)
        yield DatagenItem(
            id=f"scene-{seed}-{index:06d}",
            image=render(scene, size),
            caption=caption(scene),
            task=tasks[int(rng.integers(len(tasks)))],
            locate=_scene_locator(scene, size),
            meta={"source_scene": scene.to_dict()},
        )


def input_items(
    path: str | os.PathLike[str], *, seed: int = 0, tasks: Sequence[str] = DEFAULT_LLM_TASKS, n: int | None = None
) -> Iterator[DatagenItem]:
    """Items from a JSONL file of `{"image": "a.png", "caption": "...", "mask": "m.png"?, "task": "..."?,
    "id": "..."?}` (paths relative to the file; mask white = the object, none = the whole image). A line
    without a task gets one of `tasks` at random (fixed by `seed`). Reads at most `n` lines."""
    tasks = _check_tasks(tasks)
    file = Path(path)
    if not file.is_file():
        raise DatagenError(f"input file {file} does not exist; give a JSONL of image/caption lines")
    if n is not None:
        _check_count(n)
    return _input_gen(file, seed, tasks, n)


def _input_gen(file: Path, seed: int, tasks: tuple[str, ...], n: int | None) -> Iterator[DatagenItem]:
    count = 0
    with file.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if n is not None and count >= n:
                return
            where = f"{file.name} line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatagenError(f"{where}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("image"), str):
                raise DatagenError(f'{where}: expected {{"image": PATH, "caption": TEXT, ...}}')
            text = row.get("caption")
            if not isinstance(text, str) or not text.strip():
                raise DatagenError(f"{where}: needs a non-empty 'caption' for the instruction source")
            item_id = str(row.get("id", f"input-{count:06d}"))
            if not _ID.match(item_id):
                raise DatagenError(f"{where}: id {item_id!r} must be letters, digits, '.', '_' or '-'")
            image = load_image(str(file.parent / row["image"]), what=f"{where} image")
            precise = None
            if row.get("mask"):
                mask = load_mask(str(file.parent / row["mask"]), size=image.size, what=f"{where} mask")
                precise = np.asarray(mask, dtype=np.float32) / 255.0
            task = row.get("task") or tasks[int(_index_rng(seed, count).integers(len(tasks)))]
            yield DatagenItem(id=item_id, image=image, caption=text.strip(), task=str(task), precise=precise)
            count += 1


def _check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    if isinstance(tasks, str):
        raise DatagenError("tasks must be a list of task names, not one string")
    names = tuple(str(t).strip() for t in tasks)
    if not names or not all(names):
        raise DatagenError("give at least one non-empty task name")
    return names


# ---------------------------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class GenerationOptions:
    """How a pair is generated: sampling settings of the Editor and the soft mask's parameters."""

    steps: int = 28
    guidance: float = 50.0
    width: int | None = None  # panel width; None = the editor's default
    dilate_px: int | None = None  # None = softmask.default_dilate_px of the image
    blur_sigma: float | None = None  # None = softmask.default_blur_sigma of the image
    weights: tuple[float, float, float] = DEFAULT_WEIGHTS

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise DatagenError(f"steps must be a positive int, got {self.steps!r}")
        check_weights(self.weights)


def generate_pair(
    editor: Any,
    image: Image.Image,
    instruction: str,
    precise: np.ndarray | None,
    *,
    seed: int,
    options: GenerationOptions = GenerationOptions(),
) -> tuple[Image.Image, Image.Image, np.ndarray]:
    """Edit `image` with the Editor's in-context edit, guided by the soft mask of `precise`.

    Returns (source panel, edited panel, M at the panel's size). With `precise` None, M is 1 everywhere
    (a plain edit).
    """
    from ..editor import EditRequest

    if precise is not None and np.asarray(precise).shape != (image.height, image.width):
        raise DatagenError(f"the mask is {np.asarray(precise).shape[::-1]} but the image is {image.size}")
    item = editor.prepare(EditRequest(image, instruction, seed), width=options.width)
    panel = item.panel_source.size
    if precise is None:
        m = np.ones((panel[1], panel[0]), dtype=np.float32)
    else:
        soft = soft_mask(precise, dilate_px=options.dilate_px, blur_sigma=options.blur_sigma, weights=options.weights)
        m = (
            soft
            if soft.shape == (panel[1], panel[0])
            else np.asarray(Image.fromarray(soft).resize(panel, Image.Resampling.BILINEAR))
        )
        m = np.clip(m, 0.0, 1.0).astype(np.float32)
    right = keep_grid(m, panel, editor.sampler.vae_scale)
    # The left panel is the in-context source, outside the Fill mask: its keep value is never used.
    item.keep_grid = np.concatenate([np.zeros_like(right), right], axis=1)
    state = editor.start([item], steps=options.steps, guidance=options.guidance)
    state = editor.sampler.run(state)
    edited = editor.finish(item, editor.sampler.decode_state(state)[0])
    # Where M is exactly 0 the source was kept in latent space; make it exact in pixels too.
    outside = (m <= 0.0)[..., None]
    pixels = np.where(outside, np.asarray(item.panel_source), np.asarray(edited.convert("RGB")))
    return item.panel_source, Image.fromarray(pixels.astype(np.uint8)), m


# ---------------------------------------------------------------------------------------------- filters


@dataclass(frozen=True)
class PairCandidate:
    """A generated pair and what it was meant to be, as a filter sees it."""

    source: Image.Image
    edited: Image.Image
    instruction: Instruction
    caption: str
    task: str


@dataclass(frozen=True)
class FilterVerdict:
    """A filter's decision, with the scores it used (logged) and a short reason when it drops."""

    keep: bool
    scores: dict[str, float] = field(default_factory=dict)
    reason: str = ""


PairFilter = Callable[[PairCandidate], "FilterVerdict | bool"]


class CLIPPairFilter:
    """Emu Edit's filter with CLIP: keep a pair when

    * CLIP-dir = cos(E(edited) - E(source), T(new caption) - T(caption)) >= `min_direction`: the image
      changed the way the captions did (an unchanged image scores 0 and is dropped), and
    * CLIP-I = cos(E(edited), E(source)) >= `min_image`: the edit stayed faithful to the source.

    CLIP-out = cos(E(edited), T(new caption)) is logged too. All three are the benchmarks' metrics of the
    same names (`diptych.metrics.ClipMetrics`: official preprocessing, normalised embeddings), so a filtered
    set and an evaluation speak the same numbers. Emu Edit does not publish its thresholds;
    the defaults (0.05, 0.70) are diptych's: 0.05 asks for a change that clearly follows the captions,
    0.70 is below the CLIP-I of every method on the Emu Edit test set (0.83-0.91) with a margin for
    large global edits. Tune them on a sample of your own data.
    """

    def __init__(self, clip: Any, *, min_direction: float = 0.05, min_image: float = 0.70) -> None:
        """`clip`: a `diptych.metrics.ClipMetrics` (or a `CLIPJudge`, whose CLIP is used)."""
        for name, value in (("min_direction", min_direction), ("min_image", min_image)):
            if not (isinstance(value, int | float) and math.isfinite(value) and -1 <= value <= 1):
                raise DatagenError(f"{name} must be a cosine threshold in [-1, 1], got {value!r}")
        self.clip = getattr(clip, "clip", clip)
        self.min_direction = float(min_direction)
        self.min_image = float(min_image)

    @classmethod
    def from_pretrained(cls, name_or_path: str = "openai/clip-vit-base-patch32", **kwargs: Any) -> CLIPPairFilter:
        """Load the CLIP model through `ClipMetrics.from_pretrained`; `kwargs` are the thresholds."""
        from ..metrics import ClipMetrics

        return cls(ClipMetrics.from_pretrained(name_or_path), **kwargs)

    def scores(self, candidate: PairCandidate) -> dict[str, float]:
        """CLIP-dir, CLIP-I and CLIP-out of a pair."""
        source, edited = candidate.source, candidate.edited
        caption, new_caption = candidate.caption, candidate.instruction.new_caption
        return {
            "clip_dir": self.clip.clip_dir(source, edited, caption, new_caption),
            "clip_i": self.clip.clip_i(edited, source),
            "clip_out": self.clip.clip_t(edited, new_caption),
        }

    def __call__(self, candidate: PairCandidate) -> FilterVerdict:
        """Score the pair and compare with the thresholds."""
        scores = self.scores(candidate)
        reasons = []
        if scores["clip_dir"] < self.min_direction:
            reasons.append(f"clip_dir {scores['clip_dir']:.3f} < {self.min_direction}")
        if scores["clip_i"] < self.min_image:
            reasons.append(f"clip_i {scores['clip_i']:.3f} < {self.min_image}")
        return FilterVerdict(not reasons, scores, "; ".join(reasons))


class ShapesPairFilter:
    """The built-in ShapesEdit judge (`diptych.shapes.judge`) as a filter: keep a pair when the judge's logit
    that `edited` is `source` correctly edited by the instruction is at least `min_score` (0: probability
    0.5). Its weights ship with the package, so it needs no network; the default filter of `--source shapes`.
    """

    def __init__(self, judge: Any, *, min_score: float = 0.0) -> None:
        if not (isinstance(min_score, int | float) and math.isfinite(min_score)):
            raise DatagenError(f"min_score must be a finite number (a logit), got {min_score!r}")
        self.judge = judge
        self.min_score = float(min_score)

    @classmethod
    def from_pretrained(cls, folder: str | None = None, **kwargs: Any) -> ShapesPairFilter:
        """Load the shipped judge (or one saved in `folder`); `kwargs` is the threshold."""
        from ..shapes_core.judge import ShapesJudge

        return cls(ShapesJudge.from_pretrained(folder) if folder else ShapesJudge.from_pretrained(), **kwargs)

    def __call__(self, candidate: PairCandidate) -> FilterVerdict:
        """Score the pair with the judge and compare with the threshold."""
        score = float(self.judge.score(candidate.source, candidate.edited, candidate.instruction.instruction))
        keep = score >= self.min_score
        reason = "" if keep else f"judge_logit {score:.3f} < {self.min_score}"
        return FilterVerdict(keep, {"judge_logit": score}, reason)


class CallablePairFilter:
    """A filter around `fn(source, edited, info) -> bool | FilterVerdict`, where `info` holds the caption,
    the task and the instruction's fields."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        if not callable(fn):
            raise DatagenError(f"a filter must be callable, got {type(fn).__name__}")
        self.fn = fn

    def __call__(self, candidate: PairCandidate) -> FilterVerdict:
        """Call the function and check what it returned."""
        info = {"caption": candidate.caption, "task": candidate.task, **candidate.instruction.to_dict()}
        value = self.fn(candidate.source, candidate.edited, info)
        return _as_verdict(value, getattr(self.fn, "__qualname__", repr(self.fn)))


def _as_verdict(value: object, name: str) -> FilterVerdict:
    if isinstance(value, FilterVerdict):
        return value
    if isinstance(value, bool | np.bool_):
        return FilterVerdict(bool(value), reason="" if value else "rejected by the filter")
    raise DatagenError(f"filter {name} returned {value!r}; return True (keep), False (drop) or a FilterVerdict")


def load_filter(spec: str) -> PairFilter | None:
    """`none`, `shapes[:FOLDER][?min_score=0]` (the built-in ShapesEdit judge, offline),
    `clip[:PATH_OR_ID][?min_direction=0.05&min_image=0.7]` or `python:package.module:function`."""
    if spec == "none":
        return None
    if spec == "shapes" or spec.startswith(("shapes:", "shapes?")):
        head, _, query = spec.removeprefix("shapes").removeprefix(":").partition("?")
        params = dict(parse_qsl(query, keep_blank_values=True))
        unknown = sorted(set(params) - {"min_score"})
        if unknown:
            raise DatagenError(f"filter spec {spec!r}: unknown option(s) {', '.join(unknown)}; known: min_score")
        try:
            threshold = {key: float(value) for key, value in params.items()}
        except ValueError as err:
            raise DatagenError(f"filter spec {spec!r}: min_score must be a number ({err})") from err
        return ShapesPairFilter.from_pretrained(head or None, **threshold)
    if spec == "clip" or spec.startswith(("clip:", "clip?")):
        head, _, query = spec.removeprefix("clip").removeprefix(":").partition("?")
        params = dict(parse_qsl(query, keep_blank_values=True))
        unknown = sorted(set(params) - {"min_direction", "min_image"})
        if unknown:
            raise DatagenError(f"filter spec {spec!r}: unknown option(s) {', '.join(unknown)}")
        try:
            thresholds = {key: float(value) for key, value in params.items()}
        except ValueError as err:
            raise DatagenError(f"filter spec {spec!r}: thresholds must be numbers ({err})") from err
        return CLIPPairFilter.from_pretrained(head or "openai/clip-vit-base-patch32", **thresholds)
    if spec.startswith("python:"):
        obj = import_object(spec, kind="filter", error=DatagenError)
        return obj if isinstance(obj, CLIPPairFilter | CallablePairFilter) else CallablePairFilter(obj)
    raise DatagenError(f"unknown filter {spec!r}; use shapes, clip, clip:PATH, python:mod:fn or none")


# ---------------------------------------------------------------------------------------------- the run


@dataclass
class DatagenReport:
    """Counts of a run: pairs written, dropped by the filter, skipped as already done, and items whose
    instruction could not be made (retried on the next run)."""

    written: int = 0
    rejected: int = 0
    skipped: int = 0
    failed: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        """One line for the terminal."""
        return (
            f"{self.written} written, {self.rejected} rejected by the filter, {self.skipped} already done, "
            f"{self.failed} without a usable instruction"
        )


def _done_ids(log: JsonlLog) -> set[str]:
    """Ids in an append-only JSONL log (opened, so a torn last line is already cut off)."""
    ids = set()
    for number, line in complete_lines(log.path):
        try:
            ids.add(json.loads(line)["id"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
            raise DatagenError(f"{log.path} line {number} is not a datagen record ({err}); move the file away") from err
    return ids


def run_datagen(
    editor: Any,
    items: Iterable[DatagenItem],
    out_dir: str | os.PathLike[str],
    *,
    source: InstructionSource | None = None,
    pair_filter: PairFilter | None = None,
    options: GenerationOptions = GenerationOptions(),
    seed: int = 0,
    total: int | None = None,
    progress: bool = False,
) -> DatagenReport:
    """Generate, filter and write pairs for `items` into `out_dir` (layout in the module docstring).

    Items that carry an instruction use it; the others ask `source`. Item k of the run uses seed
    `seed + k`. Ids already in data.jsonl or rejected.ndjson are skipped, so an interrupted run resumes.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    busy = "wait for it to finish or use another --out"
    with contextlib.ExitStack() as logs:  # locked: two runs never append to one folder
        data_log = logs.enter_context(JsonlLog(out / _JSONL, error=DatagenError, writer="diptych datagen", busy=busy))
        rejected_log = logs.enter_context(
            JsonlLog(out / _REJECTED, error=DatagenError, writer="diptych datagen", busy=busy)
        )
        done = _done_ids(data_log) | _done_ids(rejected_log)
        report = DatagenReport()
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit="pair", desc="datagen")
        for k, item in enumerate(items):
            if bar is not None:
                bar.update(1)
            if not _ID.match(item.id):
                raise DatagenError(f"item id {item.id!r} must be letters, digits, '.', '_' or '-'")
            if item.id in done:
                report.skipped += 1
                continue
            instruction = item.instruction
            if instruction is None:
                if source is None:
                    raise DatagenError(f"item {item.id} has no instruction and no instruction source was given")
                try:
                    instruction = source(item.caption, item.task)
                except InstructionFormatError as err:
                    report.failed += 1
                    report.reasons["no_instruction"] += 1
                    if bar is not None:
                        bar.write(f"{item.id}: {err}")
                    continue
            precise = item.precise
            if precise is None and item.locate is not None:
                precise = item.locate(instruction)
            src, edited, m = generate_pair(
                editor, item.image, instruction.instruction, precise, seed=seed + k, options=options
            )
            verdict = FilterVerdict(True)
            if pair_filter is not None:
                raw = pair_filter(PairCandidate(src, edited, instruction, item.caption, item.task))
                verdict = _as_verdict(raw, repr(pair_filter))
            if not verdict.keep:
                report.rejected += 1
                report.reasons[verdict.reason.split(" ")[0] or "filter"] += 1
                rejected_log.append({"id": item.id, "reason": verdict.reason, "scores": verdict.scores})
                done.add(item.id)
                continue
            _write_pair(
                out, data_log, item, instruction, src, edited, m, seed=seed + k, scores=verdict.scores, options=options
            )
            done.add(item.id)
            report.written += 1
            if bar is not None:
                bar.set_postfix(kept=report.written, dropped=report.rejected)
        if bar is not None:
            bar.close()
    return report


def _write_pair(
    out: Path,
    data_log: JsonlLog,
    item: DatagenItem,
    instruction: Instruction,
    source: Image.Image,
    edited: Image.Image,
    m: np.ndarray,
    *,
    seed: int,
    scores: dict[str, float],
    options: GenerationOptions,
) -> None:
    names = {kind: f"images/{item.id}_{kind}.png" for kind in ("source", "target", "mask")}
    save_image_atomic(source, out / names["source"])
    save_image_atomic(edited, out / names["target"])
    save_image_atomic(Image.fromarray(np.rint(m * 255).astype(np.uint8)), out / names["mask"])
    record = {
        "id": item.id,
        "source": names["source"],
        "instruction": instruction.instruction,
        "target": names["target"],
        "task": item.task,
        "mask": names["mask"],
        "meta": {
            "caption": item.caption,
            "new_caption": instruction.new_caption,
            "edited_object": instruction.edited_object,
            "original_object": instruction.original_object,
            "seed": seed,
            "steps": options.steps,
            "guidance": options.guidance,
            "soft_mask": {
                "dilate_px": options.dilate_px,
                "blur_sigma": options.blur_sigma,
                "weights": list(options.weights),
            },
            "scores": scores,
            **item.meta,
        },
    }
    data_log.append(record)
