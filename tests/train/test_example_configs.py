"""Every config in examples/ works from a clean clone: each training config runs one step as written (only the
size of the run shrunk: 1 step, batch 2, a temporary output folder), and each accelerate config loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from diptych.cli_options import is_builtin_base
from diptych.train.cli import main
from diptych.train.config import build_config

EXAMPLES = Path(__file__).parents[2] / "examples"
ALL_CONFIGS = sorted([*EXAMPLES.rglob("*.yaml"), *EXAMPLES.rglob("*.yml")])


def _is_accelerate(path: Path) -> bool:
    return "compute_environment" in (yaml.safe_load(path.read_text(encoding="utf-8")) or {})


TRAINING = [p for p in ALL_CONFIGS if not _is_accelerate(p)]
ACCELERATE = [p for p in ALL_CONFIGS if _is_accelerate(p)]


def _id(path: Path) -> str:
    return str(path.relative_to(EXAMPLES))


def test_every_example_config_is_covered():
    assert TRAINING and ACCELERATE
    assert {_id(p) for p in TRAINING} >= {"shapes/moe.yaml", "shapes/lora.yaml"}


@pytest.mark.parametrize("path", TRAINING, ids=_id)
def test_training_config_runs_one_step(path, tmp_path, tiny_base, make_pairs, capsys):
    config = build_config(path)  # loads: known keys, valid values
    out = tmp_path / "run"
    args = ["--config", str(path), "--output", str(out), "--max-steps", "1", "--batch-size", "2"]
    args += ["--cache-dir", str(tmp_path / "cache")]  # a config's own cache folder stays untouched
    args += ["--num-validation", "0", "--checkpoint-every", "0", "--cpu", "-q", "--threads", "1"]
    if is_builtin_base(config.base):
        # The built-in model is small enough to run at its own 64 px. ShapesEdit data is generated on the fly
        # (data_format shapes); a config that reads a folder made by `diptych shapes make` gets a tiny one.
        if config.data_format != "shapes":
            from diptych.shapes.dataset import make_dataset

            args += ["--data", str(make_dataset("train", 2, 0, tmp_path / "shapes-data")), "--data-format", "auto"]
    else:  # a FLUX-sized base: the same recipe on the tiny random pipeline and random pairs
        data = make_pairs(tmp_path / "pairs", 2)
        args += ["--base", tiny_base, "--data", str(data), "--data-format", "jsonl", "--resolution", "16"]
        args += ["--max-sequence-length", "64"]
    code = main(args)
    assert code == 0, capsys.readouterr().err
    written = build_config(out / "config.yaml")
    assert written.adapter_signature() == config.adapter_signature() and written.max_steps == 1
    assert any(out.glob("*.safetensors"))


@pytest.mark.parametrize("path", ACCELERATE, ids=_id)
def test_accelerate_config_loads(path):
    from accelerate.commands.config.config_args import ClusterConfig

    cluster = ClusterConfig.from_yaml_file(str(path))
    assert cluster.num_processes >= 1 and cluster.num_machines >= 1
    assert "diptych.train.cli" in path.read_text(encoding="utf-8")  # the comment shows how to launch it
