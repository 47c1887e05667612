"""Early filter: the judge's preferred seed wins, and resuming it equals a plain edit with that seed."""

import json

import numpy as np
import pytest

from diptych.cli import main
from diptych.editor import EditRequest
from diptych.errors import InputError
from diptych.scaling.early_filter import edit_with_early_filter
from diptych.scaling.judges import CallableJudge
from diptych.testing import random_image

SOURCE = random_image(64, 48, seed=11)


def brightness(source, candidate, instruction):
    """A deterministic judge for tests: prefers the brightest candidate."""
    return float(np.asarray(candidate, dtype=np.float64).mean())


def darkness_compare(source, a, b, instruction):
    """A pairwise judge preferring the darker image."""
    return 0 if np.asarray(a).mean() <= np.asarray(b).mean() else 1


def test_winner_is_the_judges_choice_and_equals_plain_edit(tiny_editor):
    result = edit_with_early_filter(
        tiny_editor,
        EditRequest(SOURCE, "make it brighter", seed=10),
        judge=CallableJudge(brightness),
        candidates=4,
        early_steps=2,
        steps=5,
        batch_size=1,  # one candidate per batch: bit-exact against single edits
    )
    means = [np.asarray(p, dtype=np.float64).mean() for p in result.previews]
    assert result.selection.index == int(np.argmax(means))
    assert result.seed == 10 + result.selection.index
    assert result.selection.judge_calls == 4
    plain = tiny_editor.edit(SOURCE, "make it brighter", seed=result.seed, steps=5)
    assert np.array_equal(np.asarray(result.image), np.asarray(plain))
    assert result.nfe == 4 * 2 + 3 and result.restart_nfe == 4 * 2 + 5


@pytest.mark.parametrize("own", [False, True])
def test_candidates_with_each_sampler_resume_as_they_started(tiny_editor, own, monkeypatch):
    monkeypatch.setattr(tiny_editor, "stochastic", own)  # restored after the test: the fixture is shared
    result = edit_with_early_filter(
        tiny_editor,
        EditRequest(SOURCE, "make it brighter", seed=10),
        judge=CallableJudge(brightness),
        candidates=2,
        early_steps=2,
        steps=5,
        batch_size=1,
        samplers=("stochastic", "euler"),
    )
    assert tiny_editor.stochastic is own  # the editor's own sampling is restored
    assert result.seeds == [10, 11, 10, 11] and result.samplers == ["stochastic"] * 2 + ["euler"] * 2
    means = [np.asarray(p, dtype=np.float64).mean() for p in result.previews]
    assert result.selection.index == int(np.argmax(means))
    assert not np.array_equal(np.asarray(result.previews[0]), np.asarray(result.previews[2]))  # same seed, other way
    assert result.nfe == 4 * 2 + 3
    # the winner equals a plain edit with its seed and its sampler
    tiny_editor.stochastic = result.samplers[result.selection.index] == "stochastic"
    plain = tiny_editor.edit(SOURCE, "make it brighter", seed=result.seed, steps=5)
    assert np.array_equal(np.asarray(result.image), np.asarray(plain))
    summary = result.summary()
    assert summary["winner_sampler"] == result.samplers[result.selection.index]


def test_batched_candidates_agree_with_plain_edit(tiny_editor):
    result = edit_with_early_filter(
        tiny_editor,
        EditRequest(SOURCE, "add a hat", seed=0),
        judge=CallableJudge(darkness_compare),
        candidates=3,
        early_steps=2,
        steps=4,
    )
    assert result.selection.judge_calls == 2  # bubble: N - 1 comparisons
    means = [np.asarray(p, dtype=np.float64).mean() for p in result.previews]
    assert result.selection.index == int(np.argmin(means))
    plain = tiny_editor.edit(SOURCE, "add a hat", seed=result.seed, steps=4)
    assert np.abs(np.asarray(result.image, dtype=int) - np.asarray(plain, dtype=int)).max() <= 1


def test_editor_edit_with_candidates_uses_the_judge(tiny_editor):
    image = tiny_editor.edit(
        SOURCE, "make it red", seed=3, steps=4, candidates=3, early_steps=1, judge=CallableJudge(brightness)
    )
    options = [tiny_editor.edit(SOURCE, "make it red", seed=s, steps=4) for s in (3, 4, 5)]
    assert any(np.abs(np.asarray(image, dtype=int) - np.asarray(o, dtype=int)).max() <= 1 for o in options)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"candidates": 0, "early_steps": 1}, "candidates"),
        ({"candidates": 2, "early_steps": 9}, "early steps"),
        ({"candidates": 2, "early_steps": 1, "samplers": ["euler", "ddim"]}, "samplers must be"),
        ({"candidates": 2, "early_steps": 1, "samplers": ["euler", "euler"]}, "samplers must be"),
    ],
)
def test_bad_arguments(tiny_editor, kwargs, match):
    with pytest.raises(InputError, match=match):
        edit_with_early_filter(
            tiny_editor, EditRequest(SOURCE, "x"), judge=CallableJudge(brightness), steps=4, **kwargs
        )


def test_editor_refuses_candidates_without_judge(tiny_editor):
    with pytest.raises(InputError, match="needs a judge"):
        tiny_editor.edit(SOURCE, "x", candidates=2)


def test_cli_candidates_with_python_judge(tiny_base, tiny_editor, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "my_judge.py").write_text(
        "import numpy as np\n"
        "def score(source, candidate, instruction):\n"
        "    return float(np.asarray(candidate, dtype=np.float64).mean())\n"
    )
    SOURCE.save(tmp_path / "in.png")
    code = main(
        [
            "edit",
            str(tmp_path / "in.png"),
            "make it red",
            "-o",
            str(tmp_path / "out.png"),
            "--base",
            tiny_base,
            "--width",
            "32",
            "--steps",
            "4",
            "--device",
            "cpu",
            "-q",
            "--candidates",
            "4",
            "--early-steps",
            "3",
            "--judge",
            "python:my_judge:score",
            "--batch-size",
            "1",
            "--save-candidates",
            str(tmp_path / "cands"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    summary = json.loads((tmp_path / "cands" / "selection.json").read_text())
    assert summary["judge_calls"] == 4 and summary["nfe"] == 4 * 3 + 1
    winner = summary["winner_seed"]
    assert f"kept seed {winner}" in err
    from PIL import Image

    plain = tiny_editor.edit(SOURCE, "make it red", seed=winner, steps=4)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), np.asarray(plain))
    assert len(list((tmp_path / "cands").glob("candidate_*_seed*.png"))) == 4


def test_cli_candidates_need_a_judge(tiny_base, tmp_path, capsys):
    SOURCE.save(tmp_path / "in.png")
    code = main(
        [
            "edit",
            str(tmp_path / "in.png"),
            "x",
            "-o",
            str(tmp_path / "o.png"),
            "--base",
            tiny_base,
            "--candidates",
            "3",
            "-q",
        ]
    )
    assert code == 2 and "needs --judge" in capsys.readouterr().err
