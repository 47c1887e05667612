"""Multi-turn editing: Emu Edit's thresholding, sessions with history and undo, and the CLI's turns."""

import numpy as np
import pytest
from PIL import Image

from diptych.cli import main
from diptych.emu.multiturn import change_map, default_sigma, gaussian_blur, threshold_turn
from diptych.errors import InputError
from diptych.testing import random_image


def test_gaussian_blur_preserves_constants_and_mass():
    flat = np.full((20, 30), 0.25, np.float32)
    assert np.allclose(gaussian_blur(flat, 2.0), 0.25, atol=1e-6)
    spike = np.zeros((41, 41), np.float32)
    spike[20, 20] = 1.0
    blurred = gaussian_blur(spike, 2.0)
    assert blurred.sum() == pytest.approx(1.0, abs=1e-4) and blurred.max() < 0.05


def test_threshold_reverts_small_drift_and_keeps_real_edits():
    prev = Image.new("RGB", (64, 64), (100, 100, 100))
    new = np.full((64, 64, 3), 103, np.uint8)  # drift of 3/255 everywhere: below alpha
    new[20:40, 20:40] = (250, 0, 0)  # a real edit
    out = np.asarray(threshold_turn(prev, Image.fromarray(new)))
    assert (out[0, 0] == 100).all() and (out[50, 5] == 100).all()
    assert (out[30, 30] == (250, 0, 0)).all()
    assert np.array_equal(np.asarray(threshold_turn(prev, Image.fromarray(new), alpha=0.0)), new)


def test_isolated_pixels_are_judged_after_the_low_pass_filter():
    # At 64 px sigma is 1 px: one pixel keeps 1 / (2 pi) = 0.159 of its change after the filter.
    prev = Image.new("RGB", (64, 64), "black")
    new = np.zeros((64, 64, 3), np.uint8)
    new[10, 10] = 40  # d = 0.157 -> d_bar = 0.025 < 0.03: reverted, though d alone is far above alpha
    new[40, 40] = 255  # d = 1 -> d_bar = 0.159: kept
    d_bar = change_map(prev, Image.fromarray(new))
    assert d_bar[10, 10] == pytest.approx(0.157 / (2 * np.pi), rel=0.05)
    out = np.asarray(threshold_turn(prev, Image.fromarray(new)))
    assert out[10, 10].max() == 0 and out[40, 40].min() == 255


def test_default_sigma_scales_with_size():
    assert default_sigma((512, 384)) == pytest.approx(3.84) and default_sigma((64, 64)) == 1.0


def test_threshold_rejects_bad_input():
    with pytest.raises(InputError, match="size"):
        threshold_turn(Image.new("RGB", (4, 4)), Image.new("RGB", (5, 4)))
    with pytest.raises(InputError, match="alpha"):
        threshold_turn(Image.new("RGB", (4, 4)), Image.new("RGB", (4, 4)), alpha=2)


def test_session_history_undo_redo(tiny_editor):
    source = random_image(64, 48, seed=7)
    session = tiny_editor.session(source, steps=2, seed=10)
    first = session.edit("make it red")
    assert first.size == (32, 24) and len(session.history) == 1 and session.history[0].seed == 10
    second = session.edit("add a hat")
    assert session.history[1].seed == 11 and session.history[1].instruction == "add a hat"
    # Turn 2 edited turn 1's output: the same as editing it directly, then thresholding.
    raw = tiny_editor.edit(first, "add a hat", seed=11, steps=2)
    assert np.array_equal(np.asarray(session.history[1].raw), np.asarray(raw))
    assert np.array_equal(np.asarray(second), np.asarray(threshold_turn(first, raw)))
    assert np.array_equal(np.asarray(session.undo()), np.asarray(first))
    assert np.array_equal(np.asarray(session.redo()), np.asarray(second))
    session.undo()
    session.undo()
    assert session.image.size == source.size and not session.history
    with pytest.raises(InputError, match="nothing to undo"):
        session.undo()


def test_session_without_threshold_keeps_raw_output(tiny_editor):
    session = tiny_editor.session(random_image(32, 32), steps=2, threshold=None)
    out = session.edit("make it blue")
    assert np.array_equal(np.asarray(out), np.asarray(session.history[0].raw))


def test_cli_several_instructions(tiny_base, tiny_editor, tmp_path, capsys):
    source = random_image(64, 48, seed=3)
    source.save(tmp_path / "in.png")
    code = main(
        [
            "edit",
            str(tmp_path / "in.png"),
            "make it red",
            "-i",
            "add a hat",
            "-o",
            str(tmp_path / "o.png"),
            "--base",
            tiny_base,
            "--width",
            "32",
            "--steps",
            "2",
            "--device",
            "cpu",
            "-q",
            "--seed",
            "5",
            "--save-turns",
            str(tmp_path / "turns"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    session = tiny_editor.session(source, steps=2, seed=5)
    session.edit("make it red")
    expected = session.edit("add a hat")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o.png")), np.asarray(expected))
    assert sorted(p.name for p in (tmp_path / "turns").iterdir()) == ["turn_1.png", "turn_2.png"]
