"""CLIPJudge on a tiny random CLIP saved and loaded back through CLIPJudge.from_pretrained."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diptych.errors import InputError, WeightsError
from diptych.scaling import CLIPJudge, load_judge, select_best
from diptych.testing import save_tiny_clip, tiny_clip_tokenizer

INSTRUCTION = "make the ball red"


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIP whose BPE vocabulary is the letters, word-final letters and two merges."""
    tokenizer = tiny_clip_tokenizer(string.ascii_lowercase, merges=[("r", "e"), ("re", "d</w>")])
    assert tokenizer.tokenize("red") == ["red</w>"]  # the merges were read
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), tokenizer=tokenizer, num_layers=2)


def images() -> tuple[Image.Image, list[Image.Image]]:
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    cands = [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(3)]
    return source, cands


def reference_scores(folder: Path, source: Image.Image, cands: list[Image.Image], weight: float) -> list[float]:
    """The formula computed independently in numpy, on the benchmarks' CLIP embeddings (`ClipMetrics`,
    itself checked against the model's sub-modules in tests/eval/test_metrics_models.py): CLIP-dir towards
    the instruction + weight x CLIP-I, on normalised embeddings."""
    from diptych.metrics import ClipMetrics

    clip = ClipMetrics.from_pretrained(str(folder), device="cpu")
    img_np = clip.image_embeddings([source, *cands]).numpy().astype(np.float64)
    txt_np = clip.text_embeddings([INSTRUCTION])[0].numpy().astype(np.float64)

    def cos(u: np.ndarray, v: np.ndarray) -> float:
        return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))

    src = img_np[0]
    return [cos(e - src, txt_np) + weight * cos(e, src) for e in img_np[1:]]


def test_scores_match_an_independent_computation(clip_dir: Path) -> None:
    source, cands = images()
    judge = CLIPJudge.from_pretrained(str(clip_dir), device="cpu")
    assert judge.preserve_weight == 0.5
    expected = reference_scores(clip_dir, source, cands, 0.5)
    got = judge.score_many(source, cands, INSTRUCTION)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert judge.score(source, cands[1], INSTRUCTION) == pytest.approx(expected[1], abs=1e-5)
    # Batch size does not change the result.
    small = CLIPJudge(judge.model, judge.image_processor, judge.tokenizer, batch_size=1)
    np.testing.assert_allclose(small.score_many(source, cands, INSTRUCTION), got, atol=1e-5)
    # The selection follows the scores.
    sel = select_best(judge, source, cands, INSTRUCTION)
    assert sel.strategy == "score" and sel.index == int(np.argmax(expected))


def test_preserve_weight_and_unchanged_candidate(clip_dir: Path) -> None:
    source, cands = images()
    judge = CLIPJudge.from_pretrained(str(clip_dir), device="cpu", preserve_weight=0.0)
    np.testing.assert_allclose(
        judge.score_many(source, cands, INSTRUCTION), reference_scores(clip_dir, source, cands, 0.0), atol=1e-5
    )
    # No change: the direction is undefined and counts 0; only the preservation term remains.
    weighted = CLIPJudge(judge.model, judge.image_processor, judge.tokenizer, preserve_weight=2.0)
    assert weighted.score(source, source.copy(), INSTRUCTION) == pytest.approx(2.0, abs=1e-4)


def test_load_judge_clip_spec(clip_dir: Path) -> None:
    judge = load_judge(f"clip:{clip_dir}?preserve_weight=0.25&device=cpu&batch_size=2")
    assert isinstance(judge, CLIPJudge)
    assert (judge.preserve_weight, judge.batch_size) == (0.25, 2)


def test_missing_or_broken_weights_explain_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        CLIPJudge.from_pretrained(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsError, match="could not load the CLIP model") as info:
        CLIPJudge.from_pretrained(str(empty))
    assert "save_pretrained" in str(info.value)


def test_bad_inputs(clip_dir: Path) -> None:
    judge = CLIPJudge.from_pretrained(str(clip_dir), device="cpu")
    source, cands = images()
    with pytest.raises(InputError, match="instruction"):
        judge.score(source, cands[0], "")
    with pytest.raises(InputError, match="PIL image"):
        judge.score_many(source, [cands[0], np.zeros((4, 4, 3))], INSTRUCTION)  # type: ignore[list-item]
    assert judge.score_many(source, [], INSTRUCTION) == []
    with pytest.raises(InputError, match="batch_size"):
        CLIPJudge(judge.model, judge.image_processor, judge.tokenizer, batch_size=0)
