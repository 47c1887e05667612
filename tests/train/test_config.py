"""TrainConfig defaults (the official recipe), YAML loading, CLI precedence and errors."""

from __future__ import annotations

import argparse

import pytest

from diptych.train.cli import add_train_parser, config_from_args, main
from diptych.train.config import ConfigError, TrainConfig, build_config, parse_resolution


def parse(argv):
    parser = argparse.ArgumentParser(prog="diptych")
    add_train_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["train", *argv])


def test_defaults_are_the_official_recipe():
    cfg = TrainConfig()
    assert (cfg.rank, cfg.alpha, cfg.num_experts, cfg.top_k) == (32, 32.0, 4, 1)
    assert (cfg.optimizer, cfg.learning_rate, cfg.weight_decay, cfg.max_grad_norm) == ("prodigy", 1.0, 0.01, 0.5)
    assert cfg.resolution == (512, 512) and cfg.prompt_dropout == 0.1 and cfg.loss_region == "all"
    assert TrainConfig(optimizer="adamw").learning_rate == 1e-4


def test_yaml_then_command_line(tmp_path):
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text("adapter: moe\nlr: 1e-4\noptimizer: adamw\nresolution: 256x128\nrank: 8\nbase: m\n")
    args = parse(["--config", str(yaml_file), "--rank", "16", "--data", "d", "--output", "o", "--resolution", "64"])
    cfg = config_from_args(args)
    assert cfg.adapter == "moe" and cfg.lr == 1e-4 and cfg.rank == 16 and cfg.resolution == (64, 64)
    assert cfg.base == "m" and cfg.resume is None and cfg.gradient_checkpointing is False
    assert config_from_args(parse(["--no-resume"])).resume is False
    assert config_from_args(parse(["--resume"])).resume is True
    assert config_from_args(parse(["--resume", "ckpt-4"])).resume == "ckpt-4"
    assert config_from_args(parse(["--gradient-checkpointing", "--experts", "6", "--top-k", "2"])).num_experts == 6
    (tmp_path / "bad.yaml").write_text("learning_rate: 3\n")
    with pytest.raises(ConfigError, match=r"unknown option.*learning_rate"):
        build_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        build_config(tmp_path / "list.yaml")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"adapter": "dora"}, "adapter must be one of"),
        ({"top_k": 5}, "top_k=5 is more than"),
        ({"rank": 0}, "rank must be a positive integer"),
        ({"prompt_dropout": 1.5}, "prompt_dropout"),
        ({"lr": "fast"}, "lr must be a number"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"template": "no placeholder"}, "instruction"),
        ({"resolution": "big"}, "WIDTHxHEIGHT"),
        ({"fill_region": "box"}, "fill_region must be one of"),
        ({"masked_content": "noise"}, "masked_content must be one of"),
        ({"objective": "locate", "fill_region": "edit"}, "a locator reads the canvas the editor builds"),
        ({"objective": "locate", "masked_content": "source"}, "a locator reads the canvas the editor builds"),
    ],
)
def test_bad_options_name_the_problem(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**options)


def test_parse_resolution():
    assert parse_resolution(512) == (512, 512)
    assert parse_resolution("512x384") == (512, 384)
    assert parse_resolution([32, 16]) == (32, 16)


def test_task_shares_from_the_command_line_and_yaml(tmp_path):
    cfg = config_from_args(parse(["--task-share", "mirror=1/3", "--task-share", " remove = 0.5"]))
    assert cfg.task_shares == {"mirror": "1/3", "remove": "0.5"}
    yaml_file = tmp_path / "t.yaml"
    yaml_file.write_text("task_shares: {mirror: 1/3, invert: 0.25}\n")
    assert build_config(yaml_file).task_shares == {"mirror": "1/3", "invert": 0.25}
    with pytest.raises(ConfigError, match="TASK=SHARE"):
        config_from_args(parse(["--task-share", "mirror"]))
    with pytest.raises(ConfigError, match=r"task_shares\['mirror'\]: a task share must be above 0"):
        TrainConfig(task_shares={"mirror": 2}).validate()
    with pytest.raises(ConfigError, match="must map tasks to shares"):
        TrainConfig(task_shares=["mirror"]).validate()


def test_cli_errors_are_one_line_with_exit_code_2(capsys, tmp_path):
    assert main(["--data", "d", "--output", str(tmp_path)]) == 2
    assert "base is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "accelerate launch" in out and "--lora" in out


def test_the_fill_layout_is_part_of_the_adapter_signature_only_when_not_the_default():
    assert TrainConfig(fill_region="edit").adapter_signature()["fill_region"] == "edit"
    assert TrainConfig(masked_content="source").adapter_signature()["masked_content"] == "source"
    assert not {"fill_region", "masked_content"} & set(TrainConfig().adapter_signature())
