"""`diptych eval` on the command line: full runs with the tiny models, --merge, and one-line errors."""

from __future__ import annotations

import argparse

import pytest
from bench_fixtures import (
    make_emu_edit,
    make_gedit,
    make_magicbrush,
    read_csv,
    read_jsonl,
    save_tiny_clip,
    save_tiny_dino,
)

from diptych.eval.cli import add_eval_parser, main, run_eval


@pytest.fixture(scope="module")
def metric_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("metric-models")
    return str(save_tiny_clip(folder / "clip")), str(save_tiny_dino(folder / "dino"))


def tiny_args(tiny_base: str) -> list[str]:
    return ["--base", tiny_base, "--width", "32", "--steps", "2", "--device", "cpu", "--dtype", "fp32", "-q"]


def test_emu_edit_with_real_metric_models(tiny_base, metric_models, tmp_path, capsys):
    clip, dino = metric_models
    data = make_emu_edit(tmp_path / "emu", n_test=5, n_validation=1)
    out = tmp_path / "run"
    argv = ["--benchmark", "emu-edit", "--data", str(data), "--out", str(out), "--clip", clip, "--dino", dino]
    assert main([*argv, *tiny_args(tiny_base), "--batch-size", "2"]) == 0
    assert "report written to" in capsys.readouterr().err
    records = read_jsonl(out / "samples.jsonl")
    assert [r["id"] for r in records] == ["test-0", "test-3", "test-4"]
    for r in records:
        assert set(r["metrics"]) == {"clip_i", "clip_out", "clip_dir", "dino", "l1"}
        assert -1.0 <= r["metrics"]["clip_i"] <= 1.0 and -1.0 <= r["metrics"]["dino"] <= 1.0
        assert 0.0 < r["metrics"]["l1"] < 1.0
    overall = read_csv(out / "report.csv")[0]
    assert overall["task"] == "overall" and overall["n"] == "3"
    assert float(overall["dino"]) == pytest.approx(sum(r["metrics"]["dino"] for r in records) / 3, rel=1e-12)
    assert (out / "index.html").is_file()

    (out / "report.md").unlink()
    assert main(["--merge", "--out", str(out)]) == 0
    assert (out / "report.md").is_file()


def test_the_subcommand_registers_on_a_parent_parser(tmp_path):
    parser = argparse.ArgumentParser(prog="diptych")
    sub = parser.add_subparsers(dest="command")
    add_eval_parser(sub)
    args = parser.parse_args(["eval", "--benchmark", "shapes", "--data", "d", "--out", str(tmp_path), "--shard", "1/2"])
    assert args.func is run_eval and args.shard == "1/2" and args.caption_filter is True
    from diptych.eval.cli import config_from_args

    config = config_from_args(args)
    assert config.shard == (1, 2) and config.languages == ("en",) and config.clip == "openai/clip-vit-base-patch32"


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("diptych: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--benchmark", "imagenet", "--data", "."], "unknown benchmark 'imagenet'"),
        (["--data", "."], "--benchmark is required"),
        (["--benchmark", "magicbrush"], "--data is required"),
        (["--benchmark", "magicbrush", "--data", "{tmp}/missing", "--base", "x"], "does not exist"),
        (["--benchmark", "emu-edit", "--data", "{tmp}/bad", "--base", "x"], "not a readable parquet file"),
        (["--benchmark", "magicbrush", "--data", "{tmp}/mb", "--base", "x", "--shard", "2/2"], "--shard 2/2"),
        (["--benchmark", "magicbrush", "--data", "{tmp}/mb", "--base", "x", "--predictions", "{tmp}"], "not both"),
        (["--benchmark", "magicbrush", "--data", "{tmp}/mb", "--base", "x", "--metrics", "l1,fid"], "no metric fid"),
        (["--benchmark", "magicbrush", "--data", "{tmp}/mb", "--base", "x", "--protocol", "x"], "protocol must be"),
        (["--benchmark", "emu-edit", "--data", "{tmp}/mb", "--base", "x"], "no .parquet / .arrow files"),
        (["--merge"], "holds no diptych eval run"),
        (["--benchmark", "gedit", "--data", "{tmp}/gedit", "--base", "x"], "VIEScore metrics need a judge"),
        (["--benchmark", "gedit", "--data", "{tmp}/gedit", "--base", "x", "--judge", "vlm:nohost"], "judge"),
        (["--benchmark", "magicbrush", "--data", "{tmp}/mb", "--base", "x", "--clip", "{tmp}/no-clip"], "CLIP"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, extra, message):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/test-00000-of-00001.parquet").write_bytes(b"PAR1 not really PAR1")
    make_magicbrush(tmp_path / "mb", {"1": 1})
    make_gedit(tmp_path / "gedit", n=2)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert message in error_line(capsys)


def test_missing_model_folder_is_one_line_too(tmp_path, capsys):
    data = make_magicbrush(tmp_path / "mb", {"1": 1})
    argv = ["--benchmark", "magicbrush", "--data", str(data), "--base", str(tmp_path / "no-model"), "--out"]
    assert main([*argv, str(tmp_path / "out"), "--metrics", "l1", "-q"]) == 2
    assert "base model folder" in error_line(capsys)
    assert not (tmp_path / "out").exists()  # the model is loaded before anything is written
