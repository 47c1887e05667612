"""The weights shipped with the package load and do their job."""

import numpy as np

from diptych.scaling import load_judge, select_best
from diptych.shapes.dataset import sample_edit
from diptych.shapes.judge import ShapesJudge, degrade


def test_shipped_judge_prefers_correct_edits_on_test_scenes():
    judge = load_judge("shapes")
    assert isinstance(judge, ShapesJudge)
    rng = np.random.default_rng(0)
    wins = 0
    for index in range(40):
        ex = sample_edit("test", index, phrasings="all")
        candidates = [degrade(ex.source_image, rng), degrade(ex.target_image, rng)]
        wins += select_best(judge, ex.source_image, candidates, ex.instruction).index == 1
    assert wins >= 36  # measured 99% over 300 test edits (python -m diptych.shapes.judge)
