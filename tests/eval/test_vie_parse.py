"""Reading VIEScore answers in the shapes VLMs give them, the prompts and the overall formula."""

from __future__ import annotations

import math

import pytest

from diptych.errors import InputError
from diptych.eval import JudgeError, parse_vie_answer, vie_overall
from diptych.eval.vie import PQ_PROMPT, SC_PROMPT


@pytest.mark.parametrize(
    ("answer", "scores", "reasoning"),
    [
        ('{"score": [7, 9], "reasoning": "good edit"}', [7, 9], "good edit"),
        ('{\n"score" : [7, 9],\n"reasoning" : "good edit"\n}', [7, 9], "good edit"),
        ('```json\n{"score": [4, 8], "reasoning": "half done"}\n```', [4, 8], "half done"),
        ('```\n{"score": [4, 8], "reasoning": "x"}\n```\nHope this helps!', [4, 8], "x"),
        ('Sure! Here is my evaluation: {"score": [6, 10], "reasoning": "ok"} Let me know.', [6, 10], "ok"),
        ('{"score": ["7", "8"], "reasoning": "strings"}', [7, 8], "strings"),
        ('{"score": "[3, 5]", "reasoning": "one string"}', [3, 5], "one string"),
        ('{"score": ["7/10", "9/10"], "reasoning": "out of ten"}', [7, 9], "out of ten"),
        ('{"score": [7.5, 8], "reasoning": "fractions"}', [7.5, 8], "fractions"),
        ('{"Score": [1, 2], "Reasoning": "capitals"}', [1, 2], "capitals"),
        ('{"scores": [1, 2], "reason": "other keys"}', [1, 2], "other keys"),
        ("{'score': [5, 6], 'reasoning': 'python quotes'}", [5, 6], "python quotes"),
        ('{"score": [5, 6], "reasoning": "trailing comma",}', [5, 6], "trailing comma"),
        ('||V^=^V||\n{\n"score" : [2, 3],\n"reasoning" : "delimited"\n}\n||V^=^V||', [2, 3], "delimited"),
        ('{"result": {"score": [0, 10], "reasoning": "nested"}}', [0, 10], "nested"),
        ('{"score": [8, 7], "reasoning": "braces {like this} inside"}', [8, 7], "braces {like this} inside"),
        ("[6, 0]", [6, 0], ""),
        # Broken JSON (unescaped quotes in the reasoning) still shows its score list.
        ('{"score": [5, 9], "reasoning": "the "hat" is there"}', [5, 9], 'the "hat" is there'),
    ],
)
def test_readable_answers(answer: str, scores: list[float], reasoning: str) -> None:
    got_scores, got_reasoning = parse_vie_answer(answer)
    assert got_scores == scores
    assert all(isinstance(s, float) for s in got_scores)
    assert got_reasoning == reasoning


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ("", "empty"),
        ("The edit looks fine to me.", "no JSON object"),
        ('{"reasoning": "no score"}', "no JSON object"),
        ('{"score": [7], "reasoning": "one"}', "1 score"),
        ('{"score": [7, 8, 9], "reasoning": "three"}', "3 score"),
        ('{"score": [70, 90], "reasoning": "percent"}', "outside 0-10"),
        ('{"score": [-1, 5], "reasoning": "negative"}', "outside 0-10"),
        ('{"score": "great", "reasoning": "words"}', "no number"),
        ('{"score": true, "reasoning": "bool"}', "boolean"),
    ],
)
def test_unreadable_answers(answer: str, problem: str) -> None:
    with pytest.raises(JudgeError, match=problem):
        parse_vie_answer(answer)


def test_expected_count_is_configurable() -> None:
    assert parse_vie_answer('{"score": [4], "reasoning": "t2i"}', expected=1) == ([4.0], "t2i")


def test_overall_is_the_geometric_mean() -> None:
    assert vie_overall(4, 9) == 6.0
    assert vie_overall(0, 10) == 0.0
    assert vie_overall(7.0, 8.0) == pytest.approx(math.sqrt(56))
    with pytest.raises(InputError):
        vie_overall(-1, 4)
    with pytest.raises(InputError):
        vie_overall(float("nan"), 4)


def test_prompts_follow_viescore() -> None:
    # The SC prompt: context, the two-image editing rule, the rubric, then the instruction placeholder.
    assert SC_PROMPT.startswith("You are a professional digital artist.")
    assert '"score" : [...],\n"reasoning" : "..."' in SC_PROMPT
    assert "The first being the original AI-generated image and the second being an edited version" in SC_PROMPT
    assert "rate the degree of overediting in the second image" in SC_PROMPT
    assert "output score = [score1, score2]" in SC_PROMPT
    assert SC_PROMPT.rstrip().endswith("Editing instruction: <instruction>")
    # The PQ prompt: context and the naturalness / artifacts rubric, no instruction.
    assert PQ_PROMPT.startswith("You are a professional digital artist.")
    assert "output score = [naturalness, artifacts]" in PQ_PROMPT
    assert "<instruction>" not in PQ_PROMPT
    assert "||V^=^V||" not in SC_PROMPT + PQ_PROMPT  # the delimiter-free context VIEScore now uses
