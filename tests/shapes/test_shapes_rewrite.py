"""The built-in model's instruction rewriter (`shapes_core.rewrite`): seen phrasings pass untouched, held-out
ones are restated in a seen phrasing with the same slot words, and requests it cannot restate whole stay as
they are."""

import re

import pytest
import torch

from diptych.encoders import MiniLMPromptEncoder
from diptych.shapes_core.dataset import sample_edit
from diptych.shapes_core.edits import get_op
from diptych.shapes_core.rewrite import InstructionRewriter, find_mentions


@pytest.fixture(scope="module")
def rewriter():
    return InstructionRewriter(MiniLMPromptEncoder.from_pretrained().sentence_vectors)


def slot_values(op_name: str, text: str, phrasings: tuple[str, ...]) -> dict[str, str] | None:
    """The slot values of `text` read with one of `phrasings` of the operation (None when none matches)."""
    for phrasing in phrasings:
        pattern = "^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>.+?)", re.escape(phrasing)) + "$"
        if match := re.match(pattern, text):
            return match.groupdict()
    return None


def test_seen_phrasings_pass_unchanged_without_reading_them():
    def no_model(_sentences):
        raise AssertionError("a seen phrasing needs no sentence model")

    rewriter = InstructionRewriter(no_model)
    edits = [sample_edit("train", i, phrasings="seen") for i in range(300)]
    assert {e.task for e in edits} == set(get_op(e.task).name for e in edits) and len({e.task for e in edits}) == 9
    for edit in edits:
        result = rewriter.rewrite(edit.instruction)
        assert result.instruction == edit.instruction and not result.changed
    assert rewriter("Make the circle red.") == "Make the circle red."  # case and final stop are not a new wording


def test_heldout_phrasings_become_a_seen_phrasing_of_the_same_edit(rewriter):
    edits = [sample_edit("test", i, phrasings="heldout") for i in range(90)]
    assert len({e.task for e in edits}) == 9
    results = rewriter.rewrite_many([e.instruction for e in edits])
    for edit, result in zip(edits, results, strict=True):
        op = get_op(edit.task)
        asked = slot_values(edit.task, edit.instruction, op.heldout)
        read = slot_values(edit.task, result.instruction, op.seen)
        assert result.op == edit.task, (edit.instruction, result)
        # the same slot words; a seen phrasing may omit the current background ("swap the white background...")
        assert read is not None and read == {k: v for k, v in asked.items() if k in read}, (edit.instruction, result)
        assert rewriter.seen_phrasing(result.instruction) is op


def test_definite_mentions_name_the_object_not_the_new_value(rewriter):
    assert rewriter("could you colour the red star so it is blue") in {
        p.format(obj="red star", new_color="blue") for p in get_op("recolor").seen
    }
    # "the beige background" is the current one: the new colour is the other
    assert rewriter("could you swap the beige background for a navy one").endswith("navy")
    kinds = {(m.kind, m.text) for m in find_mentions("move the circle at the top left to the center")}
    assert {("object", "circle at the top left"), ("object", "circle"), ("position", "center")} <= kinds


def test_requests_it_cannot_restate_whole_are_left_as_given(rewriter):
    for request in (
        "make the triangle bigger",  # nearer to a resize it has no size word for than to any filling
        "make the star green and the circle red",  # two edits: no one seen phrasing keeps every word
        "turn the background from navy to beige",
        "hello",
    ):
        result = rewriter.rewrite(request)
        assert result.instruction == request and not result.changed, result
    assert rewriter("could you make the cross vanish") in {p.format(obj="cross") for p in get_op("remove").seen}


def test_candidates_fill_only_well_formed_slots():
    rewriter = InstructionRewriter(lambda s: torch.eye(len(s), 4))
    texts = {text for _, text, _ in rewriter.candidates("please paint the small star magenta")}
    assert "make the small star magenta" in texts
    assert not any("small star small" in t for t in texts)  # "small" describes the star: not a new size


def test_a_request_is_read_once_while_it_is_in_the_bounded_cache():
    calls = []

    def embed(sentences):
        calls.append(sentences[0])
        return torch.nn.functional.normalize(torch.randn(len(sentences), 8), dim=-1)

    rewriter = InstructionRewriter(embed, cache_size=2)
    asked = ["could you make the cross vanish"] * 2 + ["could you make the star vanish", "make the circle vanish"]
    for text in [*asked, "could you make the cross vanish"]:
        rewriter.rewrite(text)
    # the second request came from the cache; the last one had been pushed out by the two between
    assert calls == [asked[0], asked[2], asked[3], asked[0]]
