"""`diptych edit` end to end on a saved tiny pipeline: outputs, batch mode, resume and one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from diptych.cli import main
from diptych.testing import random_image
from test_editor import official_icedit


def run(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().err


def common(base):
    return ["--base", base, "--width", "32", "--steps", "3", "--device", "cpu", "-q"]


def test_edit_writes_png_matching_official(tiny_base, tiny_editor, tmp_path, capsys):
    src = random_image(64, 48, seed=9)
    src.save(tmp_path / "in.png")
    code, err = run(
        capsys,
        "edit",
        str(tmp_path / "in.png"),
        "make it blue",
        "-o",
        str(tmp_path / "out.png"),
        *common(tiny_base),
        "--seed",
        "7",
        "--save-diptych",
        str(tmp_path / "pair.png"),
    )
    assert code == 0, err
    out = Image.open(tmp_path / "out.png")
    assert out.size == (32, 24)
    official = official_icedit(tiny_editor.pipe, src, "make it blue", seed=7, steps=3)
    assert np.array_equal(np.asarray(out), np.asarray(official))
    assert Image.open(tmp_path / "pair.png").size == (64, 24)


def test_batch_mode_and_resume(tiny_base, tmp_path, capsys):
    for i in range(3):
        random_image(40, 40, seed=i).save(tmp_path / f"{i}.png")
    lines = [{"image": f"{i}.png", "instruction": f"edit number {i}", "seed": i} for i in range(3)]
    lines[2]["output"] = "named.png"
    (tmp_path / "edits.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    args = [
        "edit",
        "--batch",
        str(tmp_path / "edits.jsonl"),
        "--out-dir",
        str(tmp_path / "out"),
        *common(tiny_base),
    ]
    code, err = run(capsys, *args)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00001.png", "00002.png", "named.png"]
    stamp = (tmp_path / "out" / "named.png").stat().st_mtime_ns
    code, err = run(capsys, *args)
    assert code == 0 and "nothing to do" in err
    assert (tmp_path / "out" / "named.png").stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    ("setup", "argv_tail", "message"),
    [
        (None, ["missing.png", "make it red", "-o", "o.png"], "not found"),
        ("corrupt", ["in.png", "make it red", "-o", "o.png"], "corrupt"),
        ("ok", ["in.png", "   ", "-o", "o.png"], "empty instruction"),
        ("ok", ["in.png", "make it red", "-o", "o.gif"], "must end in"),
        ("ok", ["in.png", "make it red", "-o", "o.png", "--mask", "small.png"], "size"),
        ("jsonl", ["--batch", "bad.jsonl", "--out-dir", "out"], "line 2"),
        ("ok", ["in.png", "make it red"], "usage"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(tiny_base, tmp_path, capsys, monkeypatch, setup, argv_tail, message):
    monkeypatch.chdir(tmp_path)
    if setup == "ok":
        random_image(40, 40).save("in.png")
        Image.new("L", (5, 5)).save("small.png")
    elif setup == "corrupt":
        (tmp_path / "in.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    elif setup == "jsonl":
        (tmp_path / "bad.jsonl").write_text('{"image": "a.png", "instruction": "x"}\n{not json\n')
    code, err = run(capsys, "edit", *argv_tail, *common(tiny_base))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("diptych: error: ") and message in err


def test_missing_base_exits_2(tmp_path, capsys):
    random_image(40, 40).save(tmp_path / "in.png")
    code, err = run(
        capsys,
        "edit",
        str(tmp_path / "in.png"),
        "make it red",
        "-o",
        str(tmp_path / "o.png"),
        "--base",
        str(tmp_path / "no-model"),
        "-q",
    )
    assert code == 2 and "does not exist" in err


def test_help_has_examples():
    result = subprocess.run(
        [sys.executable, "-m", "diptych.cli", "edit", "--help"], capture_output=True, text=True, check=True
    )
    assert "examples:" in result.stdout and "diptych edit cat.png" in result.stdout
