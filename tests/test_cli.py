"""`diptych edit` end to end on a saved tiny pipeline: outputs, batch mode, resume and one-line errors."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diptych.cli import build_parser, main
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
    # named after their sources (0.png, 1.png) unless the line names its output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.png", "1.png", "named.png"]
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
        ("ok", ["in.png", "", "-o", "o.png"], "empty instruction"),
        ("ok", ["in.png", ""], "empty instruction"),
        ("ok", ["in.png", "make it red", "-o", "o.png", "-i", " "], "empty instruction"),
        ("ok", ["in.png", "make it red", "-o", "o.png", "--threads", "0"], "--threads"),
        ("ok", ["in.png", "make it red", "-o", "o.png", "--mask", "auto"], "--locator FILE"),
        ("ok", ["in.png", "make it red", "-o", "o.png", "--locator-threshold", "0.7"], "needs a locator"),
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


# ------------------------------------------------------------------ the first hour (issue 17)
SHAPES_ADAPTERS = Path(__file__).parents[1] / "src/diptych/shapes/weights/adapters"


@pytest.fixture
def scene(tmp_path):
    from diptych.shapes.dataset import sample_edit

    path = tmp_path / "scene.png"
    sample_edit("test", 0, phrasings="all").source_image.save(path)
    return path


def test_builtin_panel_is_the_shapes_models_panel():
    from diptych.cli_options import BUILTIN_PANEL
    from diptych.shapes.models import PANEL

    assert BUILTIN_PANEL == PANEL == 64


def test_candidates_with_the_builtin_model_use_its_own_filter(scene, tmp_path, capsys):
    # No --judge: the built-in model's own judge, Euler candidates, judged after half of --steps.
    out = tmp_path / "out.png"
    args = ["edit", str(scene), "make the circle red", "-o", str(out), "--base", "shapes", "--candidates", "2"]
    code, err = run(capsys, *args, "--steps", "4", "-q", "--threads", "1", "--save-candidates", str(tmp_path / "c"))
    assert code == 0, err
    assert "kept seed" in err and Image.open(out).size == (64, 64)
    summary = json.loads((tmp_path / "c" / "selection.json").read_text())
    assert summary["samplers"] == ["euler", "euler"] and summary["nfe"] == 2 * 2 + 2
    # an explicit sampler and early step count are kept
    code, err = run(
        capsys,
        *args,
        "--steps",
        "4",
        "-q",
        "--samplers",
        "stochastic",
        "--early-steps",
        "1",
        "--save-candidates",
        str(tmp_path / "d"),
    )
    summary = json.loads((tmp_path / "d" / "selection.json").read_text())
    assert code == 0 and summary["samplers"] == ["stochastic", "stochastic"] and summary["nfe"] == 2 * 1 + 3
    # an explicit value out of range is still an error, naming the value
    code, err = run(capsys, *args, "--steps", "2", "--early-steps", "5", "-q")
    assert code == 2 and "--early-steps 5 must be between 1 and --steps (2)" in err and err.count("\n") == 1


def test_quiet_silences_weight_loading(scene, tmp_path, capsys):
    args = ["edit", str(scene), "make the circle red", "-o", str(tmp_path / "o.png"), "--base", "shapes"]
    code, err = run(capsys, *args, "--steps", "1", "-q")
    assert code == 0 and err.strip().splitlines() == [f"wrote 1 edit to {tmp_path / 'o.png'}"], err
    code, err = run(capsys, *args, "--steps", "1")
    assert code == 0 and "Loading weights" in err  # the bar the -q run hid


def test_builtin_model_widths_are_multiples_of_8(scene, tmp_path, capsys):
    args = ["edit", str(scene), "make the circle red", "-o", str(tmp_path / "o.png"), "--base", "shapes", "-q"]
    code, err = run(capsys, *args, "--steps", "1", "--width", "72")
    assert code == 0 and Image.open(tmp_path / "o.png").size == (72, 72)
    code, err = run(capsys, *args, "--steps", "1", "--width", "68")
    assert code == 2 and "multiple of 8" in err
    # what --help and the README say agrees with it (FLUX: multiples of 16)
    help_text = build_parser()._subparsers._group_actions[0].choices["edit"].format_help()
    assert "multiple of 16 for FLUX, of 8 for the built-in model" in " ".join(help_text.split())
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    assert "a multiple of 16 (8 for the built-in model)" in readme


def test_hub_ids_fail_at_once_offline(tiny_base, scene, tmp_path, capsys):
    # conftest sets HF_HUB_OFFLINE=1: a hub id that is not cached fails in one line, without touching the network
    args = ["edit", str(scene), "make it red", "-o", str(tmp_path / "o.png"), "-q"]
    for extra, name in [
        (["--base", "shapes", "--candidates", "2", "--judge", "clip"], "openai/clip-vit-base-patch32"),
        (["--base", tiny_base, "--lora", "someone/some-lora"], "someone/some-lora"),
        (["--base", "someone/some-fill-model"], "someone/some-fill-model"),
    ]:
        start = time.monotonic()
        code, err = run(capsys, *args, *extra)
        assert code == 2 and err.count("\n") == 1, err
        assert name in err and "HF_HUB_OFFLINE=1" in err and "download" in err
        assert time.monotonic() - start < 10


def test_unreachable_hub_fails_at_once_without_retries(scene, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    from diptych import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: connection refused
    monkeypatch.setattr(hub, "_probed", {})
    start = time.monotonic()
    args = ["edit", str(scene), "make it red", "-o", str(tmp_path / "o.png"), "--base", "shapes"]
    code, err = run(capsys, *args, "--candidates", "2", "--judge", "clip", "-q")
    assert code == 2 and err.count("\n") == 1, err
    assert "hub cannot be reached" in err and "openai/clip-vit-base-patch32" in err
    assert time.monotonic() - start < 10  # the hub libraries alone retry for about a minute


def test_datagen_shapes_source_filters_with_the_builtin_judge_offline(tmp_path, capsys):
    out = tmp_path / "gen"
    args = ["datagen", "--source", "shapes", "--n", "2", "--out", str(out), "--base", "shapes", "--steps", "2"]
    code, err = run(capsys, *args, "-q", "--threads", "1")
    assert code == 0, err
    records = [
        json.loads(line)
        for name in ("data.jsonl", "rejected.ndjson")
        if (out / name).is_file()
        for line in (out / name).read_text().splitlines()
    ]
    assert len(records) == 2
    assert all("judge_logit" in (r.get("meta", {}).get("scores") or r.get("scores", {})) for r in records)


def test_batch_outputs_are_named_after_their_sources(tmp_path):
    from diptych.cli import read_batch

    lines = [
        {"image": "a.png", "instruction": "one"},
        {"image": "photos/a.jpg", "instruction": "two"},
        {"image": "b.png", "instruction": "three", "output": "a.png"},
        {"image": "c.webp", "instruction": "four"},
    ]
    (tmp_path / "edits.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    jobs = read_batch(tmp_path / "edits.jsonl", tmp_path / "out")
    assert [j.output.name for j in jobs] == ["a-2.png", "a-3.png", "a.png", "c.png"]


def test_adapter_for_another_model_gets_a_short_line(tiny_base, scene, tmp_path, capsys):
    args = ["edit", str(scene), "make it red", "-o", str(tmp_path / "o.png"), "--base", tiny_base, "-q"]
    for adapter in ("lora.safetensors", "moe.safetensors"):  # the built-in model's adapters on the tiny model
        code, err = run(capsys, *args, "--width", "32", "--lora", str(SHAPES_ADAPTERS / adapter))
        assert code == 2 and err.count("\n") == 1 and len(err) < 330, err
        assert "does not fit this model: mismatched keys: " in err and " more. " in err


def test_every_model_command_takes_threads(capsys):
    commands = build_parser()._subparsers._group_actions[0].choices
    parsers = [commands[name] for name in ("edit", "train", "eval", "serve", "datagen", "invert-task")]
    shapes = commands["shapes"]._subparsers._group_actions[0].choices
    parsers += [p for name, p in shapes.items() if name != "make"]
    for parser in parsers:
        assert "--threads" in parser._option_string_actions, parser.prog


def test_threads_are_set_before_the_command_runs(monkeypatch):
    import argparse

    import torch

    from diptych.cli import run_guarded

    seen = []
    before = torch.get_num_threads()

    def command(args):
        seen.append(torch.get_num_threads())
        return 0

    assert run_guarded(command, argparse.Namespace(threads=1)) == 0
    assert seen == [1] and torch.get_num_threads() == before


def test_help_documents_the_builtin_judge():
    commands = build_parser()._subparsers._group_actions[0].choices
    for name in ("edit", "serve"):
        text = " ".join(commands[name].format_help().split())
        assert "shapes (the built-in model's learned judge, offline; with ?render=1" in text, name
        assert "--threads" in text
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert '--judge "shapes?render=1"' in readme and "--threads" in readme


def test_builtin_base_defaults_to_64_px_training(tmp_path):
    from diptych.train.cli import config_from_args

    def resolution(*argv):
        return config_from_args(build_parser().parse_args(["train", *argv])).resolution

    assert resolution("--base", "shapes") == (64, 64)
    assert resolution("--base", "shapes:runs/my-base") == (64, 64)
    assert resolution("--base", "shapes", "--resolution", "32") == (32, 32)  # explicit values win
    assert resolution("--base", "black-forest-labs/FLUX.1-Fill-dev") == (512, 512)
    (tmp_path / "a.yaml").write_text("base: shapes\n")
    (tmp_path / "b.yaml").write_text("base: shapes\nresolution: 128\n")
    assert resolution("--config", str(tmp_path / "a.yaml")) == (64, 64)
    assert resolution("--config", str(tmp_path / "b.yaml")) == (128, 128)
    assert resolution("--config", str(tmp_path / "b.yaml"), "--base", "other/model") == (128, 128)


def test_invert_task_on_the_builtin_model_defaults_to_64_px(tmp_path, capsys, monkeypatch):
    from diptych.emu import inversion
    from diptych.shapes.dataset import make_dataset

    examples = make_dataset("train", 2, 0, tmp_path / "examples", ops=["recolor"])
    seen = []
    real = inversion.invert_task

    def spy(*args, **kwargs):
        seen.append(kwargs["resolution"])
        return real(*args, **kwargs)

    monkeypatch.setattr(inversion, "invert_task", spy)
    out = tmp_path / "task.safetensors"
    args = ["invert-task", "--base", "shapes", "--examples", str(examples), "--name", "newtask", "--output", str(out)]
    code, err = run(capsys, *args, "--steps", "1", "--batch-size", "1", "-q", "--threads", "1")
    assert code == 0, err
    assert seen == [(64, 64)] and out.is_file()
