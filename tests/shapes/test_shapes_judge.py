"""The learned ShapesEdit judge: training runs and resumes, the spec loads it, and it scores candidates."""

import numpy as np
import pytest

from diptych.scaling import can_score, load_judge, select_best
from diptych.shapes.dataset import sample_edit
from diptych.shapes.judge import ShapesJudge, degrade, judge_batch, train_judge


def test_judge_batches_are_balanced_and_labelled():
    rng = np.random.default_rng(0)
    sources, candidates, instructions, labels = judge_batch(rng, 40)
    assert len(sources) == len(candidates) == len(instructions) == 40
    assert 5 < labels.sum() < 35 and set(labels.tolist()) <= {0.0, 1.0}
    assert all(c.size == (64, 64) for c in candidates)


def test_degrade_changes_pixels_but_keeps_size():
    ex = sample_edit("train", 0)
    out = degrade(ex.target_image, np.random.default_rng(3))
    assert out.size == ex.target_image.size


@pytest.mark.slow
def test_train_resume_load_and_use_as_early_filter_judge(tmp_path):
    train_judge(tmp_path / "run", steps=2, batch=8, checkpoint_every=1, log_every=1)
    folder = train_judge(tmp_path / "run", steps=3, batch=8, checkpoint_every=1, log_every=1)
    assert (tmp_path / "run" / "log.jsonl").read_text().count("\n") == 3  # resumed at 2, not restarted
    judge = load_judge(f"shapes:{folder}")
    assert isinstance(judge, ShapesJudge) and can_score(judge)
    ex = sample_edit("test", 0, phrasings="all")
    scores = judge.score_many(ex.source_image, [ex.target_image, ex.source_image], ex.instruction)
    assert len(scores) == 2 and all(np.isfinite(scores))
    assert judge.score(ex.source_image, ex.target_image, ex.instruction) == pytest.approx(scores[0], abs=1e-5)
    choice = select_best(judge, ex.source_image, [ex.source_image, ex.target_image], ex.instruction)
    assert choice.index == int(np.argmax(choice.scores)) and choice.judge_calls == 2
