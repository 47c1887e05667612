"""select_best: each strategy picks what a deterministic judge prefers, with honest call counts."""

from __future__ import annotations

import threading
import time

import pytest
from PIL import Image

from diptych.errors import InputError
from diptych.scaling import JudgeError, Selection, Verdict, select_best

VALUES = [30, 200, 10, 90, 250, 40, 120]  # brightest is index 4
BEST = 4


def solid(value: int) -> Image.Image:
    return Image.new("RGB", (8, 8), (value, value, value))


def level(image: Image.Image) -> int:
    return image.getpixel((0, 0))[0]


SOURCE = solid(128)


class BrightnessScorer:
    """Scores the brightest image highest; counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    def score(self, source: Image.Image, candidate: Image.Image, instruction: str) -> float:
        self.calls += 1
        return float(level(candidate))


class BatchedScorer(BrightnessScorer):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def score_many(self, source: Image.Image, candidates: list[Image.Image], instruction: str) -> list[float]:
        self.batches.append(len(candidates))
        return [float(level(c)) for c in candidates]


class BrighterWins:
    """Pairwise judge preferring the brighter image, thread-safe call log."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.lock = threading.Lock()
        self.pairs: list[tuple[int, int]] = []
        self.in_flight = 0
        self.max_in_flight = 0

    def compare(self, source: Image.Image, a: Image.Image, b: Image.Image, instruction: str) -> Verdict:
        with self.lock:
            self.pairs.append((level(a), level(b)))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay)
            winner = 1 if level(b) > level(a) else 0
            return Verdict(winner=winner, reason=f"{max(level(a), level(b))} is brighter")
        finally:
            with self.lock:
                self.in_flight -= 1


class AlwaysPosition:
    """A maximally position-biased judge: always picks the image shown at ``position``."""

    def __init__(self, position: int) -> None:
        self.position = position
        self.calls = 0

    def compare(self, source: Image.Image, a: Image.Image, b: Image.Image, instruction: str) -> Verdict:
        self.calls += 1
        return Verdict(winner=self.position, reason="position")


def candidates(values: list[int] = VALUES) -> list[Image.Image]:
    return [solid(v) for v in values]


@pytest.mark.parametrize("strategy", ["knockout", "bubble", "auto"])
def test_pairwise_strategies_pick_the_preferred_candidate(strategy: str) -> None:
    judge = BrighterWins()
    sel = select_best(judge, SOURCE, candidates(), "make it bright", strategy=strategy)  # type: ignore[arg-type]
    assert isinstance(sel, Selection)
    assert sel.index == BEST
    assert sel.strategy == ("bubble" if strategy == "auto" else strategy)
    assert sel.judge_calls == len(VALUES) - 1 == len(judge.pairs) == len(sel.comparisons)
    assert sel.scores is None


@pytest.mark.parametrize("n", [2, 3, 5, 8])
@pytest.mark.parametrize("strategy", ["knockout", "bubble"])
def test_pairwise_strategies_find_the_best_wherever_it_is(n: int, strategy: str) -> None:
    for best in range(n):
        values = [10 + k for k in range(n)]
        values[best] = 250
        sel = select_best(BrighterWins(), SOURCE, candidates(values), "x", strategy=strategy)  # type: ignore[arg-type]
        assert sel.index == best
        assert sel.judge_calls == n - 1


def test_bubble_runs_a_champion_against_each_next_candidate() -> None:
    sel = select_best(BrighterWins(), SOURCE, candidates(), "x", strategy="bubble")
    assert [c.pair for c in sel.comparisons] == [(0, 1), (1, 2), (1, 3), (1, 4), (4, 5), (4, 6)]
    assert [c.winner for c in sel.comparisons] == [1, 1, 1, 4, 4, 4]
    assert sel.comparisons[3].reason == "250 is brighter"


def test_knockout_pairs_in_order_and_gives_the_odd_one_a_bye() -> None:
    sel = select_best(BrighterWins(), SOURCE, candidates(), "x", strategy="knockout", max_workers=1)
    # Round 1: 0-1, 2-3, 4-5 (6 has a bye); round 2: 1-3, 4-6; final: 1-4.
    assert [c.pair for c in sel.comparisons] == [(0, 1), (2, 3), (4, 5), (1, 3), (4, 6), (1, 4)]
    assert sel.index == BEST


@pytest.mark.parametrize("strategy", ["score", "auto"])
def test_score_strategy_takes_the_argmax_with_n_calls(strategy: str) -> None:
    judge = BrightnessScorer()
    sel = select_best(judge, SOURCE, candidates(), "x", strategy=strategy)  # type: ignore[arg-type]
    assert (sel.index, sel.strategy) == (BEST, "score")
    assert sel.scores == [float(v) for v in VALUES]
    assert sel.judge_calls == judge.calls == len(VALUES)
    assert sel.comparisons == []


def test_score_ties_go_to_the_lowest_index() -> None:
    sel = select_best(BrightnessScorer(), SOURCE, candidates([5, 9, 3, 9, 9]), "x", strategy="score")
    assert sel.index == 1


def test_score_uses_score_many_once_and_counts_each_candidate() -> None:
    judge = BatchedScorer()
    sel = select_best(judge, SOURCE, candidates(), "x")
    assert judge.batches == [len(VALUES)] and judge.calls == 0
    assert (sel.index, sel.judge_calls) == (BEST, len(VALUES))


def test_swap_doubles_calls_and_still_finds_the_best() -> None:
    for strategy in ("knockout", "bubble"):
        judge = BrighterWins()
        sel = select_best(judge, SOURCE, candidates(), "x", strategy=strategy, swap=True)  # type: ignore[arg-type]
        assert sel.index == BEST
        assert sel.judge_calls == 2 * (len(VALUES) - 1) == len(judge.pairs)
        assert all(c.agreed and len(c.verdicts) == 2 for c in sel.comparisons)
        # Every pair was shown in both orders.
        for a, b in judge.pairs:
            assert (b, a) in judge.pairs


def test_swap_keeps_the_incumbent_when_a_biased_judge_contradicts_itself() -> None:
    n = len(VALUES)
    # Without swap a judge that always picks the second image crowns the last candidate ...
    assert select_best(AlwaysPosition(1), SOURCE, candidates(), "x", strategy="bubble").index == n - 1
    # ... with swap its two answers disagree every time, so the first champion stays.
    judge = AlwaysPosition(1)
    sel = select_best(judge, SOURCE, candidates(), "x", strategy="bubble", swap=True)
    assert sel.index == 0 and judge.calls == sel.judge_calls == 2 * (n - 1)
    assert not any(c.agreed for c in sel.comparisons)
    assert "incumbent stays" in sel.comparisons[0].reason
    sel = select_best(AlwaysPosition(0), SOURCE, candidates(), "x", strategy="knockout", swap=True)
    assert sel.index == 0


def test_knockout_rounds_run_concurrently_within_the_worker_limit() -> None:
    values = [10, 20, 30, 40, 50, 60, 70, 80]
    judge = BrighterWins(delay=0.05)
    sel = select_best(judge, SOURCE, candidates(values), "x", strategy="knockout", max_workers=3)
    assert sel.index == 7
    assert judge.max_in_flight == 3  # 4 matches in round 1, at most 3 at a time
    # Results are recorded in pairing order whatever order the threads finished in.
    assert [c.pair for c in sel.comparisons][:4] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    serial = BrighterWins(delay=0.01)
    select_best(serial, SOURCE, candidates(values), "x", strategy="knockout", max_workers=1)
    assert serial.max_in_flight == 1


def test_max_workers_defaults_to_the_judges_concurrency() -> None:
    judge = BrighterWins(delay=0.05)
    judge.concurrency = 2  # type: ignore[attr-defined]
    select_best(judge, SOURCE, candidates([1, 2, 3, 4, 5, 6, 7, 8]), "x", strategy="knockout")
    assert judge.max_in_flight == 2


def test_a_single_candidate_wins_without_calls() -> None:
    judge = BrighterWins()
    sel = select_best(judge, SOURCE, [solid(3)], "x")
    assert (sel.index, sel.judge_calls, judge.pairs) == (0, 0, [])


def test_judge_errors_propagate_from_worker_threads() -> None:
    class Failing(BrighterWins):
        def compare(self, source: Image.Image, a: Image.Image, b: Image.Image, instruction: str) -> Verdict:
            if level(a) == 30:
                raise JudgeError("endpoint down")
            return super().compare(source, a, b, instruction)

    with pytest.raises(JudgeError, match="endpoint down"):
        select_best(Failing(), SOURCE, candidates(), "x", strategy="knockout")


def test_bad_judge_outputs_are_reported() -> None:
    class ReturnsInt:
        def compare(self, source: Image.Image, a: Image.Image, b: Image.Image, instruction: str) -> int:
            return 1

    class NanScorer:
        def score(self, source: Image.Image, candidate: Image.Image, instruction: str) -> float:
            return float("nan")

    with pytest.raises(JudgeError, match="must return a Verdict"):
        select_best(ReturnsInt(), SOURCE, candidates(), "x")
    with pytest.raises(JudgeError, match="finite"):
        select_best(NanScorer(), SOURCE, candidates(), "x")


def test_bad_arguments_name_the_problem() -> None:
    with pytest.raises(InputError, match="unknown selection strategy 'best'"):
        select_best(BrighterWins(), SOURCE, candidates(), "x", strategy="best")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="needs a judge with score"):
        select_best(BrighterWins(), SOURCE, candidates(), "x", strategy="score")
    with pytest.raises(InputError, match="needs a judge with compare"):
        select_best(BrightnessScorer(), SOURCE, candidates(), "x", strategy="bubble")
    with pytest.raises(InputError, match="not a judge"):
        select_best(object(), SOURCE, candidates(), "x")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="at least one candidate"):
        select_best(BrighterWins(), SOURCE, [], "x")
    with pytest.raises(InputError, match="PIL image"):
        select_best(BrighterWins(), SOURCE, [solid(1), "x.png"], "x")  # type: ignore[list-item]
    with pytest.raises(InputError, match="instruction"):
        select_best(BrighterWins(), SOURCE, candidates(), "")
    with pytest.raises(InputError, match="max_workers"):
        select_best(BrighterWins(), SOURCE, candidates(), "x", max_workers=0)


def test_non_rgb_candidates_reach_the_judge_as_rgb() -> None:
    seen: list[str] = []

    class ModeSpy:
        def score(self, source: Image.Image, candidate: Image.Image, instruction: str) -> float:
            seen.extend([source.mode, candidate.mode])
            return 0.0

    select_best(ModeSpy(), SOURCE.convert("L"), [solid(1).convert("RGBA"), solid(2).convert("L")], "x")
    assert seen and set(seen) == {"RGB"}
