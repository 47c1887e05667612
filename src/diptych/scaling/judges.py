"""Judges for early-filter inference-time scaling: the protocol, the paper's pairwise prompt, a robust
parser for a VLM's answer, and the judges that run in-process (a Python callable, CLIP, a local VLM).

A judge implements one or both of:

* ``compare(source, a, b, instruction) -> Verdict``: which of two edited candidates is the better edit
  (``Verdict.winner`` is 0 for ``a``, 1 for ``b``);
* ``score(source, candidate, instruction) -> float``: higher is better; optionally a batched
  ``score_many(source, candidates, instruction) -> list[float]``.

All images are PIL images; judges convert them to RGB themselves. The OpenAI-compatible HTTP judge
lives in :mod:`diptych.scaling.vlm_http`.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeAlias, runtime_checkable

from PIL import Image

from diptych.errors import DiptychError, InputError, WeightsError, as_sentence
from diptych.hub import check_hub_access, looks_like_hub_id

__all__ = [
    "CLARIFY_PROMPT",
    "PAIRWISE_PROMPT",
    "CLIPJudge",
    "CallableJudge",
    "Judge",
    "JudgeError",
    "LocalVLMJudge",
    "PairwiseJudge",
    "PromptPart",
    "ScoringJudge",
    "Verdict",
    "can_compare",
    "can_score",
    "pairwise_parts",
    "parse_choice",
    "verdict_from_answer",
]


class JudgeError(DiptychError):
    """A judge failed: it answered something unusable, its endpoint failed, or it returned a bad value."""


@dataclass(frozen=True)
class Verdict:
    """The outcome of one pairwise comparison.

    Attributes:
        winner: 0 when the first candidate (``a``, shown as "image 1") wins, 1 when the second does.
        reason: the judge's short explanation (may be empty).
        raw: the judge's full answer, verbatim (empty for judges that do not produce text).
    """

    winner: int
    reason: str = ""
    raw: str = ""

    def __post_init__(self) -> None:
        # Plain ints only: True or 0.0 as a winner is almost certainly a caller bug.
        if type(self.winner) is not int or self.winner not in (0, 1):
            raise JudgeError(f"Verdict.winner must be 0 (first candidate) or 1 (second), got {self.winner!r}")


@runtime_checkable
class PairwiseJudge(Protocol):
    """A judge that says which of two candidate edits of ``source`` better performs ``instruction``."""

    def compare(self, source: Image.Image, a: Image.Image, b: Image.Image, instruction: str) -> Verdict:
        """Return the verdict: ``winner`` 0 for ``a``, 1 for ``b``."""
        ...


@runtime_checkable
class ScoringJudge(Protocol):
    """A judge that rates one candidate edit of ``source`` on its own; higher is better."""

    def score(self, source: Image.Image, candidate: Image.Image, instruction: str) -> float:
        """Return the candidate's score; only the order of scores matters."""
        ...


Judge: TypeAlias = PairwiseJudge | ScoringJudge


def can_compare(judge: object) -> bool:
    """True when ``judge`` offers ``compare``."""
    return isinstance(judge, PairwiseJudge)


def can_score(judge: object) -> bool:
    """True when ``judge`` offers ``score``."""
    return isinstance(judge, ScoringJudge)


# --------------------------------------------------------------------------------------------------
# The paper's pairwise prompt (ICEdit appendix B.3, reconstructed; the authors did not release it).

PAIRWISE_PROMPT = (
    "Given edited image 1, edited image 2 and the original image, which edited image better aligns "
    "with the edit prompt '{instruction}', has higher quality and fewer artifacts? Areas that are not "
    "meant to be edited should stay identical to the original image. "
    "Answer 1 or 2, then briefly explain why."
)
"""The judge prompt; ``{instruction}`` is replaced by the edit instruction."""

CLARIFY_PROMPT = "Your answer did not clearly choose one image. Reply with only the number 1 or 2."
"""The follow-up sent when an answer does not choose an image, before the judge gives up."""

# Labels shown before each image; the images go in the order edited 1, edited 2, original.
_IMAGE_LABELS = ("Edited image 1:", "Edited image 2:", "Original image:")

PromptPart: TypeAlias = tuple[Literal["text"], str] | tuple[Literal["image"], int]
"""One piece of the pairwise message: ``("text", str)`` or ``("image", k)`` where k indexes
``(a, b, source)``."""


def pairwise_parts(instruction: str, template: str = PAIRWISE_PROMPT) -> list[PromptPart]:
    """Lay out the pairwise question: a label and an image for edited 1, edited 2 and the original,
    then the prompt. Every VLM judge maps these parts onto its own message format, so the question
    is worded the same everywhere."""
    instruction = _check_instruction(instruction)
    if "{instruction}" not in template:
        raise InputError("the judge prompt template must contain the placeholder '{instruction}'")
    parts: list[PromptPart] = []
    for k, label in enumerate(_IMAGE_LABELS):
        parts.append(("text", label))
        parts.append(("image", k))
    # str.replace, not str.format: instructions may contain braces.
    parts.append(("text", template.replace("{instruction}", instruction)))
    return parts


def _check_instruction(instruction: object) -> str:
    if not isinstance(instruction, str) or not instruction.strip():
        raise InputError(f"the edit instruction must be a non-empty string, got {instruction!r}")
    return instruction.strip()


def _check_image(image: object, name: str) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise InputError(f"{name} must be a PIL image, got {type(image).__name__}")
    return image if image.mode == "RGB" else image.convert("RGB")


# --------------------------------------------------------------------------------------------------
# Answer parsing. A VLM answers in many shapes: "1", "Image 2", "**2**", "The second image ...",
# {"choice": 2}, "Answer: 1 because ...". The rules go from the most explicit signal to the least,
# and an answer that names both images without a clear choice (or neither) is "no choice" (None).

_WORD_TO_CHOICE = {"1": 1, "2": 2, "one": 1, "two": 2, "first": 1, "second": 2}
_NUM = r"(?:[12](?![\d.]\d|\d)|one\b|two\b)"
_ORD = r"(?:first|second)\b"
_IMG = r"(?:edited\s+)?(?:image|picture|img)\s*#?\s*"
_NOUN = r"(?:\s+(?:edited\s+)?(?:image|one|edit|picture|option|candidate)\b)"
# A value after an explicit marker such as "Answer:": "1", "Image 2", "the second (image)".
_VALUE = rf"(?:{_IMG}{_NUM}|(?:the\s+)?{_ORD}{_NOUN}?|{_NUM})"
_MARKER_RE = re.compile(
    r"\b(?:final\s+answer|answer|choice|verdict|winner|decision|selection|preferred\s+image|"
    r"better\s+image|best\s+image|better\s+edit)\s*(?:is|would\s+be|:|=|-)?\s*:?\s*"
    rf"(?P<v>{_VALUE})",
    re.IGNORECASE,
)
# The answer opens with its choice: "2", "2.", "Image 1 because", "The second image ...".
_LEADING_NUM_RE = re.compile(
    rf"^\s*[(\[]?(?:{_IMG})?(?P<v>{_NUM})[)\]]?(?=\s*$|\s*[.,!)\]\-–—]|\s+(?:because|since|as)\b)",
    re.IGNORECASE,
)
_LEADING_ORD_RE = re.compile(rf"^\s*(?:the\s+)?(?P<v>{_ORD}){_NOUN}", re.IGNORECASE)
# A comparative or preference statement: "image 2 is better", "I prefer the first image".
_COMPARATIVE_RE = re.compile(
    rf"(?P<v>{_IMG}{_NUM}|(?:the\s+)?{_ORD}{_NOUN})\s+(?:is\s+|looks\s+|seems\s+|does\s+)?"
    r"(?:clearly\s+|much\s+|slightly\s+|significantly\s+|definitely\s+)?"
    r"(?:better|superior|preferable|preferred|the\s+better|the\s+winner|wins)\b",
    re.IGNORECASE,
)
# "Image 1 is worse" chooses the other image.
_WORSE_RE = re.compile(
    rf"(?P<v>{_IMG}{_NUM}|(?:the\s+)?{_ORD}{_NOUN})\s+(?:is\s+|looks\s+|seems\s+)?"
    r"(?:clearly\s+|much\s+|slightly\s+|significantly\s+|definitely\s+)?(?:worse|inferior|the\s+worse)\b",
    re.IGNORECASE,
)
_PREFER_RE = re.compile(
    r"\b(?:prefer|choose|chose|select|pick|go\s+with)\s+(?:the\s+)?"
    rf"(?P<v>{_IMG}{_NUM}|{_ORD}{_NOUN}?|{_NUM})",
    re.IGNORECASE,
)
# Any mention of one of the two edited images (the last resort: a single distinct mention wins).
_MENTION_RE = re.compile(rf"(?P<v>{_IMG}{_NUM}|{_ORD}{_NOUN})", re.IGNORECASE)
_JSON_RE = re.compile(r"\{[^{}]*\}", re.DOTALL)
_JSON_CHOICE_KEYS = ("choice", "answer", "winner", "better", "best", "image", "preferred", "selection")
_JSON_REASON_KEYS = ("reason", "reasoning", "explanation", "why", "rationale")


def _value_to_choice(value: str) -> int | None:
    words = re.findall(r"[12]|one|two|first|second", value.lower())
    choices = {_WORD_TO_CHOICE[w] for w in words}
    return choices.pop() if len(choices) == 1 else None


def _unique(
    matches: list[re.Match[str]], inverted: Sequence[re.Match[str]] = ()
) -> tuple[int, re.Match[str]] | Literal["conflict"] | None:
    """The one choice the matches agree on; ``inverted`` matches name the image that lost."""
    choices = {_value_to_choice(m.group("v")) for m in matches}
    choices |= {3 - c for c in (_value_to_choice(m.group("v")) for m in inverted) if c is not None}
    choices -= {None}
    if not choices:
        return None
    if len(choices) > 1:
        return "conflict"
    return choices.pop(), [*matches, *inverted][0]


def _from_json(text: str) -> tuple[int, str] | None:
    for blob in _JSON_RE.findall(text):
        try:
            obj = json.loads(blob)
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        lowered = {str(k).lower(): v for k, v in obj.items()}
        for key in _JSON_CHOICE_KEYS:
            value = lowered.get(key)
            if isinstance(value, bool) or value is None:
                continue
            choice = _value_to_choice(str(value))
            if choice is not None:
                reason = next((str(lowered[k]) for k in _JSON_REASON_KEYS if k in lowered), "")
                return choice, reason
    return None


def _parse(text: str) -> tuple[int, str] | None:
    found = _from_json(text)
    if found is not None:
        return found
    # Markdown emphasis and code marks carry no meaning here and break the patterns ("**2**").
    clean = re.sub(r"[*_`]+", "", text).strip()
    clean = re.sub(r"\s+", " ", clean)
    if not clean:
        return None

    def after(match: re.Match[str]) -> str:
        # The explanation usually follows the choice; if it came first, keep that instead.
        strip = " .,:;!-–—()[]"
        return clean[match.end() :].strip(strip) or clean[: match.start()].strip(strip)

    # An explicit "Answer: N" overrides everything; conflicting explicit answers are no answer.
    marked = _unique(list(_MARKER_RE.finditer(clean)))
    if marked == "conflict":
        return None
    if marked is not None:
        return marked[0], after(marked[1])
    for leading_re in (_LEADING_NUM_RE, _LEADING_ORD_RE):
        lead = leading_re.match(clean)
        if lead is not None:
            choice = _value_to_choice(lead.group("v"))
            if choice is not None:
                return choice, after(lead)
    stated = _unique(
        list(_COMPARATIVE_RE.finditer(clean)) + list(_PREFER_RE.finditer(clean)),
        inverted=list(_WORSE_RE.finditer(clean)),
    )
    if stated == "conflict":
        return None
    if stated is not None:
        return stated[0], clean
    mentioned = _unique(list(_MENTION_RE.finditer(clean)))
    if mentioned is not None and mentioned != "conflict":
        return mentioned[0], clean
    return None


def parse_choice(answer: str) -> int | None:
    """Read which image a VLM chose: 1 or 2 as the model numbers them, or None when the answer
    makes no clear choice (it names neither image, or both without saying which is better)."""
    found = _parse(answer)
    return None if found is None else found[0]


def verdict_from_answer(answer: str) -> Verdict | None:
    """Turn a VLM's answer into a :class:`Verdict` (image 1 -> winner 0), or None when it makes no
    clear choice."""
    found = _parse(answer)
    if found is None:
        return None
    choice, reason = found
    return Verdict(winner=choice - 1, reason=reason.strip(), raw=answer)


def unclear_answer_error(answers: Sequence[str]) -> JudgeError:
    """The error raised when every attempt gave an answer without a clear choice."""
    shown = "; ".join(repr(a[:300]) for a in answers)
    return JudgeError(
        f"the judge did not choose image 1 or 2 in {len(answers)} attempt(s); it answered: {shown}. "
        "Use a stronger judge model or raise its retry limit."
    )


# --------------------------------------------------------------------------------------------------
# A judge from any Python callable.

ScoreFn: TypeAlias = Callable[[Image.Image, Image.Image, str], float]
CompareFn: TypeAlias = Callable[[Image.Image, Image.Image, Image.Image, str], Any]


def _required_positional(fn: Callable[..., Any]) -> int | None:
    """How many positional arguments ``fn`` needs, or None when that cannot be told (``*args``,
    builtins without a signature)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    count = 0
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            return None
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty:
            count += 1
    return count


class CallableJudge:
    """A judge around a plain Python function.

    * ``fn(source, candidate, instruction) -> float`` (3 parameters) makes a scoring judge;
    * ``fn(source, a, b, instruction) -> 0 | 1`` (4 parameters) makes a pairwise judge (it may also
      return a :class:`Verdict`).

    The kind is read from the signature; pass ``mode="score"`` or ``mode="compare"`` when the
    signature cannot tell (``*args``, builtins). ``CallableJudge(fn)`` returns a
    :class:`CallableScoreJudge` or :class:`CallableCompareJudge`, so each instance offers exactly the
    method its function supports and ``select_best(strategy="auto")`` picks the right strategy.
    """

    fn: Callable[..., Any]

    def __new__(cls, fn: Callable[..., Any], mode: Literal["score", "compare"] | None = None) -> CallableJudge:
        if cls is not CallableJudge:
            return super().__new__(cls)
        if not callable(fn):
            raise InputError(f"CallableJudge needs a callable, got {type(fn).__name__}")
        if mode is None:
            n = _required_positional(fn)
            if n == 3:
                mode = "score"
            elif n == 4:
                mode = "compare"
            else:
                name = getattr(fn, "__qualname__", repr(fn))
                raise InputError(
                    f"cannot tell what kind of judge {name} is: a scoring function takes "
                    "(source, candidate, instruction) and a pairwise one takes (source, a, b, instruction); "
                    f"it needs {'an unknown number of' if n is None else n} positional arguments. "
                    "Pass mode='score' or mode='compare'."
                )
        if mode == "score":
            return super().__new__(CallableScoreJudge)
        if mode == "compare":
            return super().__new__(CallableCompareJudge)
        raise InputError(f"mode must be 'score' or 'compare', got {mode!r}")

    def __init__(self, fn: Callable[..., Any], mode: Literal["score", "compare"] | None = None) -> None:
        self.fn = fn

    def __repr__(self) -> str:
        return f"{type(self).__name__}({getattr(self.fn, '__qualname__', self.fn)!r})"


class CallableScoreJudge(CallableJudge):
    """A scoring judge around ``fn(source, candidate, instruction) -> float``."""

    def score(self, source: Image.Image, candidate: Image.Image, instruction: str) -> float:
        """Call the function and check it returned a finite number."""
        value = self.fn(
            _check_image(source, "source"),
            _check_image(candidate, "candidate"),
            _check_instruction(instruction),
        )
        try:
            result = float(value)
        except (TypeError, ValueError) as exc:
            raise JudgeError(f"{self!r} returned {value!r}; a scoring judge must return a number") from exc
        if not math.isfinite(result):
            raise JudgeError(f"{self!r} returned {result}; a scoring judge must return a finite number")
        return result


class CallableCompareJudge(CallableJudge):
    """A pairwise judge around ``fn(source, a, b, instruction) -> 0 | 1 | Verdict``."""

    def compare(self, source: Image.Image, a: Image.Image, b: Image.Image, instruction: str) -> Verdict:
        """Call the function; 0 means ``a`` wins, 1 means ``b`` wins."""
        value = self.fn(
            _check_image(source, "source"),
            _check_image(a, "a"),
            _check_image(b, "b"),
            _check_instruction(instruction),
        )
        if isinstance(value, Verdict):
            return value
        # Accept numpy/torch integer scalars, but not bools or floats such as 0.7.
        if not isinstance(value, bool) and hasattr(value, "__index__"):
            index = value.__index__()
            if index in (0, 1):
                return Verdict(winner=index)
        raise JudgeError(
            f"{self!r} returned {value!r}; a pairwise judge must return 0 (first wins), 1 (second wins) or a Verdict"
        )


# --------------------------------------------------------------------------------------------------
# CLIP scoring judge.


class CLIPJudge:
    """Scores a candidate edit with CLIP, without captions (only the instruction is known)::

        score = cos(E(candidate) - E(source), T(instruction)) + preserve_weight * cos(E(candidate), E(source))

    on the L2-normalised embeddings of `diptych.metrics.ClipMetrics` (the benchmarks' CLIP, with the
    official preprocessing), so the first term is CLIP-dir with the instruction standing in for the caption
    difference and the second is CLIP-I. The first asks whether the change from source to candidate points
    towards the instruction's text embedding; the second rewards keeping the rest of the image, standing in for
    the paper's "areas not meant to be edited should stay identical"; without it a candidate that changes
    everything can win. ``preserve_weight`` defaults to 0.5. When the candidate equals the source the direction
    is undefined and the first term counts as 0.

    The paper found CLIP a weak judge (GPT score 0.65 vs 0.80 for Qwen2.5-VL-72B); it is here as a
    cheap, local, deterministic baseline.
    """

    def __init__(
        self,
        model: Any,
        image_processor: Any,
        tokenizer: Any,
        *,
        preserve_weight: float = 0.5,
        batch_size: int = 16,
    ) -> None:
        from diptych.metrics import ClipMetrics

        if not math.isfinite(preserve_weight):
            raise InputError(f"preserve_weight must be a finite number, got {preserve_weight}")
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        self.clip = ClipMetrics(model, image_processor, tokenizer, batch_size=int(batch_size))
        self.preserve_weight = float(preserve_weight)

    @property
    def model(self) -> Any:
        return self.clip.model

    @property
    def image_processor(self) -> Any:
        return self.clip.image_processor

    @property
    def tokenizer(self) -> Any:
        return self.clip.tokenizer

    @property
    def batch_size(self) -> int:
        return self.clip.batch_size

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = "openai/clip-vit-base-patch32",
        *,
        device: str | None = None,
        dtype: Any = None,
        **kwargs: Any,
    ) -> CLIPJudge:
        """Load a ``CLIPModel`` with its tokenizer and image processor from a local folder or the hub through
        `ClipMetrics.from_pretrained` (hub ids need network access or a populated cache; fp32 unless `dtype`).
        ``kwargs`` go to :class:`CLIPJudge`."""
        from diptych.metrics import ClipMetrics

        clip = ClipMetrics.from_pretrained(name_or_path, device=device, dtype=dtype)
        return cls(clip.model, clip.image_processor, clip.tokenizer, **kwargs)

    def score_many(self, source: Image.Image, candidates: Sequence[Image.Image], instruction: str) -> list[float]:
        """Score every candidate in batches; one source and one text embedding are shared."""
        import torch.nn.functional as F

        instruction = _check_instruction(instruction)
        images = [_check_image(source, "source")]
        images += [_check_image(c, f"candidates[{i}]") for i, c in enumerate(candidates)]
        if len(images) == 1:
            return []
        emb = self.clip.image_embeddings(images).double()
        text = self.clip.text_embeddings([instruction])[0].double()
        src, cands = emb[0], emb[1:]
        # A zero difference (an unchanged candidate) normalises to zero: its direction term is 0.
        direction = F.normalize(cands - src, dim=-1) @ text
        preserve = cands @ src
        return (direction + self.preserve_weight * preserve).tolist()

    def score(self, source: Image.Image, candidate: Image.Image, instruction: str) -> float:
        """Score one candidate (see the class docstring for the formula)."""
        return self.score_many(source, [candidate], instruction)[0]


# --------------------------------------------------------------------------------------------------
# A local VLM through transformers (Qwen2.5-VL and other image-text-to-text models).


class LocalVLMJudge:
    """Asks a local vision-language model (e.g. Qwen2.5-VL) the paper's pairwise question.

    The prompt goes through the processor's chat template with the images in the order edited 1,
    edited 2, original; decoding is greedy with ``max_new_tokens`` new tokens. Greedy decoding would
    repeat an unclear answer, so a retry shows the model its answer and asks for just "1" or "2"
    (up to ``retries`` times) before raising :class:`JudgeError`. Calls are serialised with a lock:
    one model on one device generates one answer at a time.
    """

    concurrency = 1

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        max_new_tokens: int = 64,
        retries: int = 2,
        prompt_template: str = PAIRWISE_PROMPT,
    ) -> None:
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if retries < 0:
            raise InputError(f"retries must be 0 or more, got {retries}")
        pairwise_parts("x", prompt_template)  # validates the template early
        self.model = model
        self.processor = processor
        self.max_new_tokens = int(max_new_tokens)
        self.retries = int(retries)
        self.prompt_template = prompt_template
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        device: str | None = None,
        dtype: Any = None,
        *,
        processor: Any = None,
        **kwargs: Any,
    ) -> LocalVLMJudge:
        """Load an image-text-to-text model (Qwen2.5-VL picks ``Qwen2_5_VLForConditionalGeneration``)
        and its processor from ``path``. ``device`` defaults to CUDA when available; ``"auto"`` spreads
        a large model over the GPUs with accelerate. ``dtype`` defaults to bfloat16 on CUDA, float32
        on CPU; it may be a torch dtype or its name. ``kwargs`` go to :class:`LocalVLMJudge`."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from diptych.devices import default_dtype, parse_device, parse_dtype

        if not os.path.isdir(os.path.expanduser(path)) and not looks_like_hub_id(path):
            raise WeightsError(
                f"local VLM folder {path!r} does not exist; download the model first, e.g. "
                "`hf download Qwen/Qwen2.5-VL-72B-Instruct --local-dir DIR`, and pass that folder"
            )
        local = check_hub_access(
            path,
            what="the local VLM judge model",
            fix=f"download it where the hub is reachable (`hf download {path} --local-dir DIR`) and pass that folder",
        )
        path = os.path.expanduser(path)
        if device != "auto":
            device = parse_device(device)
        dtype = parse_dtype(dtype) if dtype is not None else default_dtype("cuda" if device == "auto" else device)
        try:
            if device == "auto":
                model = AutoModelForImageTextToText.from_pretrained(
                    path, dtype=dtype, device_map="auto", local_files_only=local
                )
            else:
                model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, local_files_only=local).to(
                    device
                )
        except (OSError, ValueError, KeyError) as exc:
            raise WeightsError(f"could not load the local VLM judge from {path!r}: {as_sentence(exc)}") from exc
        if processor is None:
            try:
                processor = AutoProcessor.from_pretrained(path, local_files_only=local)
            except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
                raise WeightsError(
                    f"could not load the processor of the local VLM judge from {path!r}: {as_sentence(exc)} "
                    "Qwen2.5-VL's processor also needs torchvision (`pip install torchvision`)."
                ) from exc
        return cls(model.eval(), processor, **kwargs)

    def _messages(self, instruction: str) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = []
        for kind, value in pairwise_parts(instruction, self.prompt_template):
            content.append({"type": "text", "text": value} if kind == "text" else {"type": "image"})
        return [{"role": "user", "content": content}]

    def _generate(self, messages: list[dict[str, Any]], images: list[Image.Image]) -> str:
        import torch

        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = self.processor(text=[text], images=images, return_tensors="pt")
        inputs = inputs.to(self.model.device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        return str(self.processor.batch_decode(new_tokens, skip_special_tokens=True)[0]).strip()

    def compare(self, source: Image.Image, a: Image.Image, b: Image.Image, instruction: str) -> Verdict:
        """Ask the model which edit is better; 0 means ``a`` (image 1), 1 means ``b`` (image 2)."""
        images = [_check_image(a, "a"), _check_image(b, "b"), _check_image(source, "source")]
        messages = self._messages(instruction)
        answers: list[str] = []
        for _ in range(self.retries + 1):
            with self._lock:
                answer = self._generate(messages, images)
            answers.append(answer)
            verdict = verdict_from_answer(answer)
            if verdict is not None:
                return verdict
            messages = [
                *messages,
                {"role": "assistant", "content": [{"type": "text", "text": answer}]},
                {"role": "user", "content": [{"type": "text", "text": CLARIFY_PROMPT}]},
            ]
        raise unclear_answer_error(answers)
