"""CallableJudge and the judge spec parser."""

from __future__ import annotations

import functools
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diptych.errors import InputError, WeightsError
from diptych.scaling import (
    KNOWN_SCHEMES,
    CallableJudge,
    JudgeError,
    JudgeSpecError,
    Verdict,
    can_compare,
    can_score,
    load_judge,
    select_best,
)
from diptych.scaling.judges import CallableCompareJudge, CallableScoreJudge


def solid(value: int) -> Image.Image:
    return Image.new("RGB", (4, 4), (value, value, value))


SOURCE = solid(0)


def brightness(source: Image.Image, candidate: Image.Image, instruction: str) -> float:
    return float(candidate.getpixel((0, 0))[0])


def brighter(source: Image.Image, a: Image.Image, b: Image.Image, instruction: str) -> int:
    return int(b.getpixel((0, 0))[0] > a.getpixel((0, 0))[0])


def test_three_parameter_function_becomes_a_scoring_judge() -> None:
    judge = CallableJudge(brightness)
    assert isinstance(judge, CallableScoreJudge) and isinstance(judge, CallableJudge)
    assert can_score(judge) and not can_compare(judge)
    assert judge.score(SOURCE, solid(7), "x") == 7.0
    assert select_best(judge, SOURCE, [solid(3), solid(9), solid(1)], "x").index == 1


def test_four_parameter_function_becomes_a_pairwise_judge() -> None:
    judge = CallableJudge(brighter)
    assert isinstance(judge, CallableCompareJudge)
    assert can_compare(judge) and not can_score(judge)
    assert judge.compare(SOURCE, solid(9), solid(3), "x") == Verdict(winner=0)
    sel = select_best(judge, SOURCE, [solid(3), solid(9), solid(1)], "x")
    assert (sel.strategy, sel.index) == ("bubble", 1)


def test_signature_detection_handles_partials_lambdas_and_defaults() -> None:
    def scored(source: Image.Image, candidate: Image.Image, instruction: str, scale: float = 2.0) -> float:
        return scale * brightness(source, candidate, instruction)

    assert CallableJudge(scored).score(SOURCE, solid(2), "x") == 4.0  # type: ignore[attr-defined]
    assert isinstance(CallableJudge(functools.partial(scored, scale=3.0)), CallableScoreJudge)
    assert isinstance(CallableJudge(lambda s, a, b, i: 0), CallableCompareJudge)


def test_ambiguous_signatures_need_an_explicit_mode() -> None:
    def anything(*args: object) -> float:
        return 1.0

    with pytest.raises(InputError, match="mode='score' or mode='compare'"):
        CallableJudge(anything)
    with pytest.raises(InputError, match="2 positional"):
        CallableJudge(lambda a, b: 0)
    assert CallableJudge(anything, mode="score").score(SOURCE, SOURCE, "x") == 1.0  # type: ignore[attr-defined]
    with pytest.raises(InputError, match="needs a callable"):
        CallableJudge(3)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="mode must be"):
        CallableJudge(brightness, mode="rank")  # type: ignore[arg-type]


def test_callable_results_are_checked() -> None:
    assert CallableJudge(lambda s, a, b, i: np.int64(1)).compare(SOURCE, SOURCE, SOURCE, "x").winner == 1  # type: ignore[attr-defined]
    verdict = Verdict(winner=1, reason="why")
    assert CallableJudge(lambda s, a, b, i: verdict).compare(SOURCE, SOURCE, SOURCE, "x") is verdict  # type: ignore[attr-defined]
    for bad in (2, True, 0.5, "1"):
        judge = CallableJudge(lambda s, a, b, i, bad=bad: bad)
        with pytest.raises(JudgeError, match="must return 0"):
            judge.compare(SOURCE, SOURCE, SOURCE, "x")  # type: ignore[attr-defined]
    for bad in ("high", None, float("inf")):
        judge = CallableJudge(lambda s, c, i, bad=bad: bad)
        with pytest.raises(JudgeError, match="number"):
            judge.score(SOURCE, SOURCE, "x")  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------------
# load_judge


@pytest.fixture
def judge_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = "diptych_test_judges_mod"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            NOT_CALLABLE = 3

            def score_fn(source, candidate, instruction):
                return float(candidate.getpixel((0, 0))[0])

            def compare_fn(source, a, b, instruction):
                return 1

            def two_args(a, b):
                return 0

            class MyJudge:
                def compare(self, source, a, b, instruction):
                    from diptych.scaling import Verdict
                    return Verdict(winner=0, reason="class")

            class NeedsArgs:
                def __init__(self, x):
                    self.x = x

                def score(self, source, candidate, instruction):
                    return 0.0

            judge_obj = MyJudge()

            class Plain:
                pass
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_python_spec_imports_functions_classes_and_objects(judge_module: str) -> None:
    judge = load_judge(f"python:{judge_module}:score_fn")
    assert isinstance(judge, CallableScoreJudge)
    assert judge.score(SOURCE, solid(5), "x") == 5.0
    assert isinstance(load_judge(f"python:{judge_module}:compare_fn"), CallableCompareJudge)
    from_class = load_judge(f"python:{judge_module}:MyJudge")
    assert type(from_class).__name__ == "MyJudge"
    assert from_class.compare(SOURCE, SOURCE, SOURCE, "x").reason == "class"  # type: ignore[union-attr]
    obj = load_judge(f"python:{judge_module}:judge_obj")
    assert obj is __import__(judge_module).judge_obj


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
        ("{mod}:missing", "has no attribute 'missing'"),
        ("{mod}:NOT_CALLABLE", "is a int, not a function or judge"),
        ("{mod}:two_args", "2 positional"),
        ("{mod}:Plain", "neither compare"),
        ("{mod}:NeedsArgs", "constructible without arguments"),
        ("just_a_module", "python:package.module:function"),
    ],
)
def test_python_spec_errors_are_clear(judge_module: str, target: str, message: str) -> None:
    with pytest.raises(JudgeSpecError, match=message):
        load_judge("python:" + target.format(mod=judge_module))


def test_vlm_spec_parses_url_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY_VAR", "secret-from-env")
    judge = load_judge(
        "vlm:http://127.0.0.1:8000/v1?model=Qwen/Qwen2.5-VL-72B-Instruct&timeout=30&retries=5"
        "&concurrency=2&max_tokens=64&key_env=MY_KEY_VAR"
    )
    try:
        assert judge.url == "http://127.0.0.1:8000/v1/chat/completions"  # type: ignore[union-attr]
        assert (judge.model, judge.timeout, judge.retries, judge.concurrency, judge.max_tokens) == (  # type: ignore[union-attr]
            "Qwen/Qwen2.5-VL-72B-Instruct",
            30.0,
            5,
            2,
            64,
        )
        assert judge._headers()["Authorization"] == "Bearer secret-from-env"  # type: ignore[union-attr]
        assert "secret" not in repr(judge)
    finally:
        judge.close()  # type: ignore[union-attr]
    defaults = load_judge("vlm:https://api.example.com/v1/?model=m")
    assert defaults.url == "https://api.example.com/v1/chat/completions"  # type: ignore[union-attr]
    assert (defaults.retries, defaults.concurrency) == (3, 4)  # type: ignore[union-attr]
    defaults.close()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("vlm:http://localhost:8000/v1", r"needs the model name: add \?model=NAME"),
        ("vlm:localhost:8000?model=m", "vlm:http://host:port/v1"),
        ("vlm:http://h/v1?model=m&timeout=-1", "timeout=.* is not valid"),
        ("vlm:http://h/v1?model=m&retries=two", "retries=.* is not valid"),
        ("vlm:http://h/v1?model=m&concurrency=0", "concurrency=.* is not valid"),
        ("vlm:http://h/v1?model=m&temperature=1", "unknown option.*temperature.*known: timeout"),
        ("vlm:http://h/v1?model=m&model=n", "gives 'model' twice"),
        ("clip?colour=red", "unknown option"),
        ("local-vlm:", "needs the model folder"),
    ],
)
def test_spec_option_errors(spec: str, message: str) -> None:
    with pytest.raises(JudgeSpecError, match=message):
        load_judge(spec)


def test_unknown_scheme_lists_the_known_ones_and_shapes_names_missing_weights(tmp_path: Path) -> None:
    with pytest.raises(JudgeSpecError, match="unknown judge spec 'gpt4'") as info:
        load_judge("gpt4")
    for scheme in KNOWN_SCHEMES:
        assert scheme + ":" in str(info.value)
    with pytest.raises(WeightsError, match="ShapesEdit judge is missing"):
        load_judge(f"shapes:{tmp_path}")
    with pytest.raises(JudgeSpecError, match="non-empty"):
        load_judge("  ")


def test_clip_and_local_vlm_specs_report_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        load_judge(f"clip:{tmp_path / 'nope'}")
    with pytest.raises(WeightsError, match="does not exist"):
        load_judge(f"local-vlm:{tmp_path / 'nope'}")
