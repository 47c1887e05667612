"""The answer parser and the pairwise prompt layout."""

from __future__ import annotations

import pytest

from diptych.errors import InputError
from diptych.scaling import PAIRWISE_PROMPT, Verdict, pairwise_parts, parse_choice, verdict_from_answer
from diptych.scaling.judges import JudgeError


@pytest.mark.parametrize(
    ("answer", "choice"),
    [
        ("1", 1),
        ("2", 2),
        (" 2\n", 2),
        ("2.", 2),
        ("Image 2", 2),
        ("image 1", 1),
        ("**2**", 2),
        ("**Image 1** is better: the sky is red.", 1),
        ("The second image is better because the sky is red.", 2),
        ("The first one.", 1),
        ("Image two", 2),
        ('{"choice": 2}', 2),
        ('{"choice": "Image 1", "reason": "sharper"}', 1),
        ('```json\n{"answer": 2, "reasoning": "fewer artifacts"}\n```', 2),
        ("Answer: 1 because the cat is red", 1),
        ("Final answer: **Image 2**", 2),
        ("answer: 1. Image 2 has artifacts", 1),
        ("(2) because it keeps the background", 2),
        ("2 - it keeps the background", 2),
        ("Image 1 has artifacts, so Image 2 is better.", 2),
        ("Image 2 better aligns with the edit prompt.", 2),
        ("I prefer the first image.", 1),
        ("I choose 2.", 2),
        ("First, let me look closely. Image 2 wins.", 2),
        ("The change is subtle; only image 2 turns the sky red.", 2),
        ("1.5 times brighter overall; image 2", 2),
        ("The answer is 2.", 2),
        ("Image 2 is the better one.", 2),
        ("I would go with image 1", 1),
        ("Image 1 is clearly worse: the ball stays blue.", 2),
        ("Image 1 is worse and image 2 is better.", 2),
    ],
)
def test_parse_choice_reads_common_answer_shapes(answer: str, choice: int) -> None:
    assert parse_choice(answer) == choice


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "Neither.",
        "Both look the same to me.",
        "Both image 1 and image 2 are fine.",
        "Image 1 is better in colour but image 2 is better overall.",
        "Answer: 1. Final answer: 2",
        "Answer: 3",
        '{"choice": 3}',
        "12",
        "Image 1 is worse, but image 1 is better in colour.",
    ],
)
def test_parse_choice_returns_none_without_a_clear_choice(answer: str) -> None:
    assert parse_choice(answer) is None


def test_verdict_from_answer_maps_image_number_to_winner_and_keeps_reason() -> None:
    v = verdict_from_answer("Answer: 1 because the cat is red")
    assert v == Verdict(winner=0, reason="because the cat is red", raw="Answer: 1 because the cat is red")
    v = verdict_from_answer('{"choice": 2, "reason": "sharper"}')
    assert v is not None and (v.winner, v.reason) == (1, "sharper")
    v = verdict_from_answer("The sky is red only here. Answer: 2")
    assert v is not None and (v.winner, v.reason) == (1, "The sky is red only here")
    assert verdict_from_answer("no idea") is None


@pytest.mark.parametrize("winner", [2, -1, True, 0.0])
def test_verdict_rejects_winners_other_than_0_or_1(winner: object) -> None:
    with pytest.raises(JudgeError, match="winner"):
        Verdict(winner=winner)  # type: ignore[arg-type]


def test_pairwise_parts_orders_edited_1_edited_2_original_then_prompt() -> None:
    parts = pairwise_parts("make it {red}")
    assert [p for p in parts if p[0] == "image"] == [("image", 0), ("image", 1), ("image", 2)]
    texts = [p[1] for p in parts if p[0] == "text"]
    assert texts[:3] == ["Edited image 1:", "Edited image 2:", "Original image:"]
    # Braces in the instruction survive (no str.format), and the prompt is the paper's.
    assert texts[3] == PAIRWISE_PROMPT.replace("{instruction}", "make it {red}")
    assert "'make it {red}'" in texts[3]
    for phrase in ("higher quality", "fewer artifacts", "stay identical", "Answer 1 or 2"):
        assert phrase in texts[3]


def test_pairwise_parts_rejects_empty_instruction_and_template_without_placeholder() -> None:
    with pytest.raises(InputError, match="instruction"):
        pairwise_parts("  ")
    with pytest.raises(InputError, match="placeholder"):
        pairwise_parts("make it red", template="Which is better?")
