"""Pick the best of N candidate edits with a judge.

Strategies:

* ``"bubble"`` — the paper's "bubble-sort" tournament: a running champion (candidate 0 to start)
  meets each next candidate in turn; N-1 comparisons, necessarily one after another.
* ``"knockout"`` — single elimination: candidates are paired in order (0-1, 2-3, ...) each round,
  the odd one out (the last) gets a bye; N-1 comparisons, those of one round run concurrently.
* ``"score"`` — score every candidate and take the argmax; ties go to the lowest index; N scores.
* ``"auto"`` — ``"score"`` when the judge can score, else ``"bubble"``.

Position bias: VLMs lean towards one position. With ``swap=True`` every pairwise comparison is
asked in both orders (two judge calls); when the two answers disagree the judge has no real
preference and the incumbent stays — the running champion in ``bubble``, the lower-index (first
seeded) candidate of the pair in ``knockout``. In a pair, the incumbent is always shown first.

``Selection.judge_calls`` counts individual judgements: one per ``compare`` call and one per
candidate scored, whether scored one by one or through a batched ``score_many``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from PIL import Image

from diptych.errors import InputError
from diptych.scaling.judges import (
    Judge,
    JudgeError,
    Verdict,
    _check_image,
    _check_instruction,
    can_compare,
    can_score,
)

__all__ = ["STRATEGIES", "Comparison", "Selection", "Strategy", "select_best"]

Strategy = Literal["auto", "knockout", "bubble", "score"]
STRATEGIES: tuple[str, ...] = ("auto", "knockout", "bubble", "score")
_DEFAULT_WORKERS = 4
_T = TypeVar("_T")


@dataclass(frozen=True)
class Comparison:
    """One pairwise match between candidates ``pair[0]`` (shown first) and ``pair[1]``.

    Attributes:
        pair: the two candidate indices, incumbent first.
        winner: the index of the candidate that went on.
        reason: the judge's explanation(s).
        verdicts: the judge's verdict(s): one, or two with ``swap`` (shown in order, then swapped).
        agreed: False when the two orders of a swapped comparison disagreed (the incumbent stayed).
    """

    pair: tuple[int, int]
    winner: int
    reason: str
    verdicts: tuple[Verdict, ...]
    agreed: bool = True


@dataclass(frozen=True)
class Selection:
    """The outcome of :func:`select_best`.

    Attributes:
        index: the winning candidate's index.
        strategy: the strategy that ran (``"auto"`` resolved).
        judge_calls: how many judgements were made (see the module docstring).
        scores: every candidate's score with ``"score"``, else None.
        comparisons: the pairwise matches in the order they were decided.
    """

    index: int
    strategy: str
    judge_calls: int
    scores: list[float] | None = None
    comparisons: list[Comparison] = field(default_factory=list)


def _resolve(judge: Judge, strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise InputError(f"unknown selection strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if strategy == "auto":
        if can_score(judge):
            return "score"
        if can_compare(judge):
            return "bubble"
        raise InputError(
            f"{type(judge).__name__} is not a judge: it needs a compare(source, a, b, instruction) "
            "or a score(source, candidate, instruction) method"
        )
    if strategy == "score" and not can_score(judge):
        raise InputError(
            f"strategy 'score' needs a judge with score(); {type(judge).__name__} only compares pairs. "
            "Use strategy 'bubble' or 'knockout' (or 'auto')."
        )
    if strategy in ("bubble", "knockout") and not can_compare(judge):
        raise InputError(
            f"strategy {strategy!r} needs a judge with compare(); {type(judge).__name__} only scores. "
            "Use strategy 'score' (or 'auto')."
        )
    return strategy


class _Runner:
    """Runs a batch of independent judge calls, concurrently when a pool is available, and returns
    the results in submission order so that outcomes never depend on thread timing."""

    def __init__(self, pool: ThreadPoolExecutor | None) -> None:
        self.pool = pool

    def map(self, tasks: Sequence[Callable[[], _T]]) -> list[_T]:
        if self.pool is None or len(tasks) < 2:
            return [task() for task in tasks]
        futures: list[Future[_T]] = [self.pool.submit(task) for task in tasks]
        try:
            return [f.result() for f in futures]
        except BaseException:
            # Do not leave queued judge calls running after the tournament has failed.
            for f in futures:
                f.cancel()
            raise


class _Match:
    """Pairwise matches for one tournament: asks the judge (in one or both orders) and records."""

    def __init__(
        self,
        judge: Any,
        source: Image.Image,
        candidates: list[Image.Image],
        instruction: str,
        swap: bool,
        runner: _Runner,
    ) -> None:
        self.judge = judge
        self.source = source
        self.candidates = candidates
        self.instruction = instruction
        self.swap = swap
        self.runner = runner
        self.calls = 0
        self.comparisons: list[Comparison] = []

    def _ask(self, first: int, second: int) -> Verdict:
        verdict = self.judge.compare(self.source, self.candidates[first], self.candidates[second], self.instruction)
        if not isinstance(verdict, Verdict):
            raise JudgeError(
                f"{type(self.judge).__name__}.compare returned {type(verdict).__name__}; it must return a Verdict"
            )
        return verdict

    def play(self, pairs: Sequence[tuple[int, int]]) -> list[int]:
        """Decide each (incumbent, challenger) pair; all questions of the batch run concurrently."""
        orders: list[tuple[int, int]] = []
        for i, j in pairs:
            orders.append((i, j))
            if self.swap:
                orders.append((j, i))
        verdicts = self.runner.map([lambda o=o: self._ask(*o) for o in orders])
        self.calls += len(orders)
        per_pair = 2 if self.swap else 1
        winners = []
        for k, (i, j) in enumerate(pairs):
            got = verdicts[k * per_pair : (k + 1) * per_pair]
            forward = (i, j)[got[0].winner]
            if not self.swap:
                winner, agreed, reason = forward, True, got[0].reason
            else:
                backward = (j, i)[got[1].winner]
                agreed = forward == backward
                winner = forward if agreed else i
                reason = f"shown in order: {got[0].reason} | shown swapped: {got[1].reason}"
                if not agreed:
                    reason += " | the two orders disagreed, so the incumbent stays"
            self.comparisons.append(Comparison((i, j), winner, reason, tuple(got), agreed))
            winners.append(winner)
        return winners


def _bubble(match: _Match, n: int) -> int:
    champion = 0
    for challenger in range(1, n):
        (champion,) = match.play([(champion, challenger)])
    return champion


def _knockout(match: _Match, n: int) -> int:
    alive = list(range(n))
    while len(alive) > 1:
        pairs = [(alive[k], alive[k + 1]) for k in range(0, len(alive) - 1, 2)]
        bye = [alive[-1]] if len(alive) % 2 else []
        alive = match.play(pairs) + bye
    return alive[0]


def _score(
    judge: Any, source: Image.Image, candidates: list[Image.Image], instruction: str, runner: _Runner
) -> list[float]:
    score_many = getattr(judge, "score_many", None)
    if callable(score_many):
        raw = list(score_many(source, candidates, instruction))
    else:
        raw = runner.map([lambda c=c: judge.score(source, c, instruction) for c in candidates])
    if len(raw) != len(candidates):
        raise JudgeError(f"{type(judge).__name__} returned {len(raw)} scores for {len(candidates)} candidates")
    scores = []
    for k, value in enumerate(raw):
        try:
            number = float(value)
        except (TypeError, ValueError) as exc:
            raise JudgeError(f"{type(judge).__name__} scored candidate {k} as {value!r}, not a number") from exc
        if not math.isfinite(number):
            raise JudgeError(f"{type(judge).__name__} scored candidate {k} as {number}; scores must be finite")
        scores.append(number)
    return scores


def select_best(
    judge: Judge,
    source: Image.Image,
    candidates: Sequence[Image.Image],
    instruction: str,
    strategy: Strategy = "auto",
    *,
    swap: bool = False,
    max_workers: int | None = None,
) -> Selection:
    """Ask ``judge`` which of ``candidates`` (edits of ``source``) best performs ``instruction``.

    Args:
        judge: a pairwise judge (``compare``), a scoring judge (``score``), or both.
        source: the image being edited.
        candidates: the candidate edits (e.g. x0 previews of N seeds after K steps).
        instruction: the edit instruction.
        strategy: ``"auto"``, ``"knockout"``, ``"bubble"`` or ``"score"`` (see the module docstring).
        swap: ask each pairwise comparison in both orders to cancel position bias (twice the calls).
        max_workers: most judge calls in flight at once; defaults to the judge's ``concurrency``
            attribute when it has one, else 4. 1 runs everything in the calling thread.

    Returns:
        A :class:`Selection`; with a single candidate it wins without any judge call.
    """
    resolved = _resolve(judge, strategy)
    src = _check_image(source, "source")
    if isinstance(candidates, Image.Image) or not isinstance(candidates, Sequence):
        raise InputError("candidates must be a list of PIL images")
    images = [_check_image(c, f"candidates[{k}]") for k, c in enumerate(candidates)]
    if not images:
        raise InputError("select_best needs at least one candidate image")
    text = _check_instruction(instruction)
    if max_workers is None:
        max_workers = int(getattr(judge, "concurrency", _DEFAULT_WORKERS))
    if not (isinstance(max_workers, int) and max_workers >= 1):
        raise InputError(f"max_workers must be an integer >= 1, got {max_workers!r}")
    if len(images) == 1:
        return Selection(index=0, strategy=resolved, judge_calls=0, scores=None)

    pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="judge") if max_workers > 1 else None
    try:
        runner = _Runner(pool)
        if resolved == "score":
            scores = _score(judge, src, images, text, runner)
            best = max(range(len(scores)), key=lambda k: (scores[k], -k))
            return Selection(index=best, strategy=resolved, judge_calls=len(images), scores=scores)
        match = _Match(judge, src, images, text, swap, runner)
        winner = _bubble(match, len(images)) if resolved == "bubble" else _knockout(match, len(images))
        return Selection(index=winner, strategy=resolved, judge_calls=match.calls, comparisons=match.comparisons)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
