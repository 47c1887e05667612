"""VIEScore (TIGER-AI-Lab, ACL 2024) for instruction-based editing, through an OpenAI-compatible VLM.

The design follows the released ``viescore`` package, task ``tie`` (text-guided image editing),
zero-shot, as GEdit-Bench also uses it:

* **SC** (semantic consistency): the context, the two-image editing rule and the editing rubric,
  with the source and the edited image; the VLM gives ``[editing success, over-editing]``, each 0-10
  (10 is best for both); SC is the smaller.
* **PQ** (perceptual quality): the context and the quality rubric, with the edited image alone; the
  VLM gives ``[naturalness, artifacts]``, each 0-10; PQ is the smaller.
* **Overall** = ``sqrt(SC * PQ)`` per sample.

The prompt texts are VIEScore's, word for word (typos included), so scores stay comparable with
published GEdit-Bench numbers; the answer is JSON ``{"score": [...], "reasoning": "..."}``. As in
VIEScore's OpenAI backend, the text comes before the images in the message.

Answers are parsed leniently (code fences, text around the JSON, scores as strings, Python-style
quotes, VIEScore's ``||V^=^V||`` delimiters, a bare ``[7, 9]``). An unreadable answer gets a
follow-up asking for the JSON alone, up to ``retries`` times; VIEScore itself guesses a random score
after one failure, which this does not do: it raises :class:`JudgeError`.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from diptych.errors import InputError
from diptych.eval.vlm_chat import VLMChat, user_message
from diptych.scaling.judges import JudgeError
from diptych.scaling.vlm_http import VLMJudge

__all__ = [
    "CLARIFY_PROMPT",
    "PQ_PROMPT",
    "SC_PROMPT",
    "ChatClient",
    "JudgeError",
    "VieScore",
    "VieScorer",
    "parse_vie_answer",
    "vie_overall",
]

# --------------------------------------------------------------------------------------------------
# Prompts: VIEScore's _context_no_delimit, _prompts_0shot_two_image_edit_rule,
# _prompts_0shot_tie_rule_SC and _prompts_0shot_rule_PQ, joined with "\n" as VIEScore joins them.

_CONTEXT = """You are a professional digital artist. You will have to evaluate the effectiveness of the AI-generated image(s) based on given rules.
All the input images are AI-generated. All human in the images are AI-generated too. so you need not worry about the privacy confidentials.

You will have to give your output in this way (Keep your reasoning concise and short.):
{
"score" : [...],
"reasoning" : "..."
}"""  # noqa: E501

_TWO_IMAGE_EDIT_RULE = """RULES:

Two images will be provided: The first being the original AI-generated image and the second being an edited version of the first.
The objective is to evaluate how successfully the editing instruction has been executed in the second image.

Note that sometimes the two images might look identical due to the failure of image edit.
"""  # noqa: E501

_TIE_RULE_SC = """
From scale 0 to 10: 
A score from 0 to 10 will be given based on the success of the editing. (0 indicates that the scene in the edited image does not follow the editing instruction at all. 10 indicates that the scene in the edited image follow the editing instruction text perfectly.)
A second score from 0 to 10 will rate the degree of overediting in the second image. (0 indicates that the scene in the edited image is completely different from the original. 10 indicates that the edited image can be recognized as a minimal edited yet effective version of original.)
Put the score in a list such that output score = [score1, score2], where 'score1' evaluates the editing success and 'score2' evaluates the degree of overediting.

Editing instruction: <instruction>
"""  # noqa: E501, W291

_RULE_PQ = """RULES:

The image is an AI-generated image.
The objective is to evaluate how successfully the image has been generated.

From scale 0 to 10: 
A score from 0 to 10 will be given based on image naturalness. 
(
    0 indicates that the scene in the image does not look natural at all or give a unnatural feeling such as wrong sense of distance, or wrong shadow, or wrong lighting. 
    10 indicates that the image looks natural.
)
A second score from 0 to 10 will rate the image artifacts. 
(
    0 indicates that the image contains a large portion of distortion, or watermark, or scratches, or blurred faces, or unusual body parts, or subjects not harmonized. 
    10 indicates the image has no artifacts.
)
Put the score in a list such that output score = [naturalness, artifacts]
"""  # noqa: E501, W291

SC_PROMPT = "\n".join([_CONTEXT, _TWO_IMAGE_EDIT_RULE, _TIE_RULE_SC])
"""The SC question; ``<instruction>`` is replaced by the edit instruction. Images: source, edited."""

PQ_PROMPT = "\n".join([_CONTEXT, _RULE_PQ])
"""The PQ question. Image: the edited one."""

CLARIFY_PROMPT = (
    "Your answer could not be read: {problem}. Reply with only the JSON object "
    '{{"score": [{slots}], "reasoning": "..."}}, with {count} scores from 0 to 10.'
)
"""The follow-up sent after an unreadable answer; ``{problem}``, ``{slots}`` and ``{count}`` are filled in."""

_SCORES_PER_PROMPT = 2
_DELIMITER = "||V^=^V||"


def vie_overall(sc: float, pq: float) -> float:
    """VIEScore's overall score of one sample: ``sqrt(SC * PQ)``."""
    for name, value in (("sc", sc), ("pq", pq)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise InputError(f"{name} must be a finite number >= 0, got {value!r}")
    return math.sqrt(sc * pq)


# --------------------------------------------------------------------------------------------------
# Answer parsing.

_FENCE_RE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)
_SCORE_KEYS = ("score", "scores")
_REASON_KEYS = ("reasoning", "reason", "explanation", "rationale")
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")
_OUT_OF_TEN_RE = re.compile(r"\s*/\s*10(?:\.0+)?\b")
_LOOSE_SCORE_RE = re.compile(r"""["']?scores?["']?\s*[:=]\s*\[([^\[\]]*)\]""", re.IGNORECASE)
_LOOSE_REASON_RE = re.compile(r"""["']?reasoning["']?\s*:\s*["'](.*?)["']?\s*[,}]?\s*$""", re.IGNORECASE | re.DOTALL)
_BARE_LIST_RE = re.compile(r"^\s*\[\s*(-?\d+(?:\.\d+)?\s*(?:,\s*-?\d+(?:\.\d+)?\s*)*)\]\s*$")
_TRAILING_COMMA_RE = re.compile(r",\s*([}\]])")
_MAX_BRACES = 32


class _Unreadable(Exception):
    """Why an answer could not be read; the text goes into the follow-up and the final error."""


def _numbers(value: Any) -> list[float]:
    """Scores from a JSON value: a list of numbers or numeric strings, one number, or a string such
    as "[7, 8]", "7, 8" or "7/10"."""
    if isinstance(value, bool):
        raise _Unreadable(f"the score is a boolean ({value!r})")
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, str):
        found = _NUMBER_RE.findall(_OUT_OF_TEN_RE.sub("", value))
        if not found:
            raise _Unreadable(f"the score {value!r} holds no number")
        return [float(x) for x in found]
    if isinstance(value, list | tuple):
        out: list[float] = []
        for item in value:
            out.extend(_numbers(item))
        return out
    raise _Unreadable(f"the score is a {type(value).__name__}, not a list of numbers")


def _dicts_in(text: str) -> Iterable[dict[str, Any]]:
    """Every JSON (or Python-literal) object found in ``text``, outermost first."""
    decoder = json.JSONDecoder()
    # Bounded: a long, brace-heavy answer must not turn parsing into thousands of attempts.
    for start in [m.start() for m in re.finditer(r"\{", text)][:_MAX_BRACES]:
        try:
            obj, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            obj = _lenient_object(text, start)
        if isinstance(obj, dict):
            yield obj


def _lenient_object(text: str, start: int) -> Any:
    """The object starting at ``start`` when strict JSON fails: trailing commas, single quotes,
    Python literals. Tried on each closing brace, nearest first."""
    for end in [m.end() for m in re.finditer(r"\}", text[start:])][:_MAX_BRACES]:
        chunk = _TRAILING_COMMA_RE.sub(r"\1", text[start : start + end])
        for parse in (json.loads, ast.literal_eval):
            try:
                return parse(chunk)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
    return None


def _from_dict(obj: dict[str, Any]) -> tuple[list[float], str] | None:
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    key = next((k for k in _SCORE_KEYS if k in lowered), None)
    if key is None:
        return None
    reasoning = next((lowered[k] for k in _REASON_KEYS if k in lowered), "")
    return _numbers(lowered[key]), reasoning if isinstance(reasoning, str) else json.dumps(reasoning)


def _candidates(text: str) -> list[str]:
    """Where the answer may be: inside code fences, between VIEScore's delimiters, the whole text."""
    found = [m.group(1) for m in _FENCE_RE.finditer(text)]
    if text.count(_DELIMITER) >= 2:
        found.append(text.split(_DELIMITER)[1])
    found.append(text)
    return found


def _validated(scores: list[float], expected: int) -> list[float]:
    if len(scores) != expected:
        raise _Unreadable(f"it gave {len(scores)} score(s) {scores}, expected {expected}")
    for value in scores:
        if not (math.isfinite(value) and 0 <= value <= 10):
            raise _Unreadable(f"the score {value:g} is outside 0-10")
    return scores


def _parse(answer: str, expected: int) -> tuple[list[float], str]:
    if not isinstance(answer, str) or not answer.strip():
        raise _Unreadable("the answer is empty")
    problem: _Unreadable | None = None
    for candidate in _candidates(answer):
        for obj in _dicts_in(candidate):
            try:
                found = _from_dict(obj)
                if found is not None:
                    return _validated(found[0], expected), found[1].strip()
            except _Unreadable as exc:
                problem = problem or exc
    if problem is not None:
        raise problem
    # Broken JSON (e.g. an unescaped quote in the reasoning) still shows "score": [a, b].
    loose = _LOOSE_SCORE_RE.search(answer)
    if loose is not None:
        reason = _LOOSE_REASON_RE.search(answer[loose.end() :])
        return _validated(_numbers(loose.group(1)), expected), (reason.group(1).strip() if reason else "")
    # VIEScore accepts an answer that is only a list of scores.
    for candidate in _candidates(answer):
        bare = _BARE_LIST_RE.match(candidate)
        if bare is not None:
            return _validated(_numbers(bare.group(1)), expected), ""
    raise _Unreadable('no JSON object with a "score" list was found')


def parse_vie_answer(answer: str, expected: int = _SCORES_PER_PROMPT) -> tuple[list[float], str]:
    """Read ``(scores, reasoning)`` from a VLM's VIEScore answer.

    Raises:
        JudgeError: no score list could be found, or it does not hold ``expected`` numbers in 0-10.
    """
    try:
        return _parse(answer, expected)
    except _Unreadable as exc:
        raise JudgeError(f"unreadable VIEScore answer ({exc}): {_excerpt(answer)!r}") from None


def _excerpt(text: object, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


# --------------------------------------------------------------------------------------------------
# Results and the scorer.


@dataclass
class VieScore:
    """VIEScore of one edit.

    Attributes:
        sc: semantic consistency, ``min(sc_scores)``, 0-10.
        pq: perceptual quality, ``min(pq_scores)``, 0-10.
        overall: ``sqrt(sc * pq)``.
        sc_scores: ``[editing success, over-editing]`` as the VLM gave them.
        pq_scores: ``[naturalness, artifacts]`` as the VLM gave them.
        reasoning: the VLM's reasons, ``"SC: ...\\nPQ: ..."``.
        raw: every answer and the attempts each prompt took (``{"sc": {...}, "pq": {...}}``).
    """

    sc: float
    pq: float
    overall: float
    sc_scores: list[float]
    pq_scores: list[float]
    reasoning: str
    raw: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return asdict(self)


@runtime_checkable
class ChatClient(Protocol):
    """Anything that answers chat-completions messages (OpenAI format, images as data URLs) with text,
    such as :class:`diptych.eval.vlm_chat.VLMChat`."""

    def complete(self, messages: list[dict[str, Any]]) -> str:
        """Return the assistant's answer to ``messages``."""
        ...


class _CallableClient:
    def __init__(self, fn: Callable[[list[dict[str, Any]]], str]) -> None:
        self.fn = fn

    def complete(self, messages: list[dict[str, Any]]) -> str:
        answer = self.fn(messages)
        if not isinstance(answer, str):
            raise JudgeError(f"the VLM function returned {type(answer).__name__}, not the answer text")
        return answer


def _client(spec: Any, max_tokens: int) -> Any:
    if isinstance(spec, str):
        return VLMChat.from_spec(spec, max_tokens=max_tokens)
    if isinstance(spec, VLMJudge):
        return VLMChat(spec)
    if isinstance(spec, ChatClient):
        return spec
    if callable(spec):
        return _CallableClient(spec)
    raise InputError(
        "VieScorer needs a VLM: a spec 'vlm:http://host:port/v1?model=NAME', a VLMJudge, a VLMChat, an object "
        f"with complete(messages) -> str, or a function messages -> str; got {type(spec).__name__}"
    )


def _check_image(image: object, name: str) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise InputError(f"{name} must be a PIL image, got {type(image).__name__}")
    return image if image.mode == "RGB" else image.convert("RGB")


class VieScorer:
    """Scores edits with VIEScore through an OpenAI-compatible VLM (GPT-4o/4.1, Qwen2.5-VL on vLLM...).

    Args:
        client_or_judge_spec: ``"vlm:http://host:port/v1?model=NAME"`` (options as
            :func:`diptych.scaling.load_judge` takes them), a :class:`~diptych.scaling.VLMJudge`, a
            :class:`~diptych.eval.vlm_chat.VLMChat`, any object with ``complete(messages) -> str``, or
            a function ``messages -> str``.
        retries: follow-ups per prompt after an unreadable answer before :class:`JudgeError`.
            Transport failures are retried separately by the HTTP client.
        max_tokens: answer length when a spec string is given and sets no ``max_tokens``.
        images_first: put the images before the text in each message (VIEScore puts the text first).
        sc_prompt, pq_prompt: replace VIEScore's questions (the SC one must contain ``<instruction>``);
            each must ask for two scores.
    """

    def __init__(
        self,
        client_or_judge_spec: Any,
        *,
        retries: int = 2,
        max_tokens: int = 1024,
        images_first: bool = False,
        sc_prompt: str = SC_PROMPT,
        pq_prompt: str = PQ_PROMPT,
    ) -> None:
        if not (isinstance(retries, int) and retries >= 0):
            raise InputError(f"retries must be an integer >= 0, got {retries!r}")
        if "<instruction>" not in sc_prompt:
            raise InputError("sc_prompt must contain the placeholder '<instruction>'")
        if not pq_prompt.strip():
            raise InputError("pq_prompt must not be empty")
        self.client = _client(client_or_judge_spec, max_tokens)
        self.retries = retries
        self.images_first = bool(images_first)
        self.sc_prompt = sc_prompt
        self.pq_prompt = pq_prompt

    @property
    def concurrency(self) -> int:
        """How many samples :meth:`score_many` scores at once by default (the client's limit, else 1)."""
        value = getattr(self.client, "concurrency", 1)
        return value if isinstance(value, int) and value >= 1 else 1

    def _ask(self, which: str, prompt: str, images: Sequence[Image.Image]) -> tuple[list[float], str, dict[str, Any]]:
        messages: list[dict[str, Any]] = [user_message(prompt, images, images_first=self.images_first)]
        answers: list[str] = []
        problems: list[str] = []
        for _ in range(self.retries + 1):
            answer = self.client.complete(messages)
            answers.append(answer)
            try:
                scores, reasoning = _parse(answer, _SCORES_PER_PROMPT)
            except _Unreadable as exc:
                problems.append(str(exc))
                follow_up = CLARIFY_PROMPT.format(
                    problem=exc,
                    slots=", ".join(f"s{i + 1}" for i in range(_SCORES_PER_PROMPT)),
                    count=_SCORES_PER_PROMPT,
                )
                messages = [
                    *messages,
                    {"role": "assistant", "content": answer},
                    {"role": "user", "content": follow_up},
                ]
                continue
            return scores, reasoning, {"answers": answers, "attempts": len(answers), "reasoning": reasoning}
        shown = "; ".join(f"{_excerpt(a, 200)!r} ({p})" for a, p in zip(answers, problems, strict=True))
        raise JudgeError(
            f"the VLM gave no readable VIEScore {which} answer in {len(answers)} attempt(s): {shown}. "
            "Use a model that follows JSON instructions, or raise retries."
        )

    def score(self, source: Image.Image, edited: Image.Image, instruction: str) -> VieScore:
        """VIEScore of one edit: the SC question with ``(source, edited)`` and the instruction, the PQ
        question with ``edited`` alone.

        Raises:
            JudgeError: the endpoint failed, or its answers stayed unreadable after the retries.
        """
        source = _check_image(source, "source")
        edited = _check_image(edited, "edited")
        if not isinstance(instruction, str) or not instruction.strip():
            raise InputError(f"the edit instruction must be a non-empty string, got {instruction!r}")
        # str.replace, not format(): the rubric and instructions hold braces.
        sc_question = self.sc_prompt.replace("<instruction>", instruction.strip())
        sc_scores, sc_reason, sc_raw = self._ask("SC", sc_question, [source, edited])
        pq_scores, pq_reason, pq_raw = self._ask("PQ", self.pq_prompt, [edited])
        sc, pq = min(sc_scores), min(pq_scores)
        return VieScore(
            sc=sc,
            pq=pq,
            overall=vie_overall(sc, pq),
            sc_scores=sc_scores,
            pq_scores=pq_scores,
            reasoning=f"SC: {sc_reason}\nPQ: {pq_reason}",
            raw={"sc": sc_raw, "pq": pq_raw},
        )

    def score_many(
        self,
        samples: Iterable[tuple[Image.Image, Image.Image, str]],
        *,
        max_workers: int | None = None,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Score ``(source, edited, instruction)`` samples on ``max_workers`` threads (default: the
        client's concurrency), in input order. With ``return_exceptions`` a failed sample's
        :class:`JudgeError` takes its place in the list instead of being raised."""
        items = list(samples)
        for i, item in enumerate(items):
            if not isinstance(item, tuple | list) or len(item) != 3:
                raise InputError(f"samples[{i}] must be (source, edited, instruction)")
        workers = self.concurrency if max_workers is None else max_workers
        if not (isinstance(workers, int) and workers >= 1):
            raise InputError(f"max_workers must be an integer >= 1, got {max_workers!r}")

        def one(item: Sequence[Any]) -> VieScore | JudgeError:
            try:
                return self.score(*item)
            except JudgeError as exc:
                if return_exceptions:
                    return exc
                raise

        if workers == 1 or len(items) <= 1:
            return [one(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
            return list(pool.map(one, items))

    def close(self) -> None:
        """Close the client's connections, when it has any."""
        close = getattr(self.client, "close", None)
        if callable(close):
            close()

    def __enter__(self) -> VieScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
