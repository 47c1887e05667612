"""The one loader (`diptych.loading`), device/dtype defaults (`diptych.devices`) and the shared model options."""

from __future__ import annotations

import argparse

import pytest
import torch

from diptych.cli_options import MOE_DISPATCH_CHOICES, RenamedOption, add_model_options, model_options
from diptych.devices import DTYPE_CHOICES, OFFLOAD_MODES, default_dtype, parse_device, parse_dtype
from diptych.errors import InputError, WeightsError
from diptych.loading import FillModel, load_fill_pipeline


def test_dtype_and_device_parsing():
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype("FLOAT16") is torch.float16
    assert parse_dtype(torch.float32) is torch.float32
    assert [parse_dtype(name) for name in DTYPE_CHOICES] == [torch.bfloat16, torch.float16, torch.float32]
    with pytest.raises(InputError, match="dtype must be one of bf16, fp16, fp32"):
        parse_dtype("int4")
    assert parse_device("cpu") == torch.device("cpu") and parse_device("cuda:1").index == 1
    with pytest.raises(InputError, match="device must be"):
        parse_device("gpu-please")
    assert default_dtype("cuda") is torch.bfloat16 and default_dtype(torch.device("cpu")) is torch.float32


def test_the_cli_choices_are_the_loaders():
    from diptych.adapters.moe import DISPATCHES

    assert MOE_DISPATCH_CHOICES == DISPATCHES


def test_builtin_model_loads_bare_and_with_its_adapter():
    bare = load_fill_pipeline("shapes", adapter="none", device="cpu")
    assert isinstance(bare, FillModel) and bare.builtin and bare.adapter_kind is None
    assert bare.default_width == 64 and bare.task_embedding_file is None
    assert bare.pipe.transformer.dtype == torch.float32  # the CPU default
    moe = load_fill_pipeline("shapes", device="cpu")
    assert moe.adapter_kind == "moe" and moe.task_embedding_file is not None
    embeds, _pooled = moe.encoder.encode(["make the circle red"])
    assert embeds.shape[-1] == bare.pipe.transformer.config.joint_attention_dim


def test_diffusers_folder_loads_with_the_fill_check(tiny_base, tmp_path):
    model = load_fill_pipeline(tiny_base, device="cpu", dtype="fp32")
    assert not model.builtin and model.adapter_kind is None and model.default_width == 512
    with pytest.raises(WeightsError, match="does not exist"):
        load_fill_pipeline(str(tmp_path / "missing"), device="cpu")
    with pytest.raises(InputError, match="offload must be one of"):
        load_fill_pipeline(tiny_base, offload="disk")
    with pytest.raises(InputError, match="moe_dispatch must be one of"):
        load_fill_pipeline(tiny_base, moe_dispatch="fast")
    with pytest.raises(InputError, match="with device=cpu use 'none'"):
        load_fill_pipeline(tiny_base, device="cpu", offload="model")


def test_model_options_mean_the_same_on_every_command(capsys):
    """edit, serve, eval, datagen and invert-task take the same model options and give the loader the same
    keywords; the old `--adapter` of datagen and the ShapesEdit lab still works, with a warning."""
    from diptych.cli import build_parser

    parser = build_parser()
    line = ["--lora", "a.safetensors", "--lora-scale", "0.5", "--moe-dispatch", "sparse", "--dtype", "fp32"]
    line += ["--device", "cpu", "--offload", "none", "--local-files-only", "--threads", "1"]
    commands = {
        "edit": ["edit", "in.png", "make it red", "--base", "shapes"],
        "serve": ["serve", "--base", "shapes"],
        "eval": ["eval", "--benchmark", "shapes", "--out", "o", "--base", "shapes"],
        "datagen": ["datagen", "--source", "shapes", "--out", "o", "--base", "shapes"],
        "invert-task": ["invert-task", "--base", "shapes", "--examples", "e", "--name", "n", "--output", "t"],
    }
    expected = {
        "adapter_scale": 0.5,
        "device": "cpu",
        "dtype": "fp32",
        "offload": "none",
        "local_files_only": True,
        "moe_dispatch": "sparse",
    }
    speed = {"cache": "fbcache:0.1", "quantize": "int8", "compile": True, "gguf": "t.gguf"}
    speed_line = ["--cache", "fbcache:0.1", "--quantize", "int8", "--compile", "--gguf", "t.gguf"]
    for name, head in commands.items():
        sampling = name != "invert-task"  # the speed modes are for commands that sample, not for training
        args = parser.parse_args([*head, *line, *(speed_line if sampling else [])])
        assert (args.base, args.lora, args.threads) == ("shapes", "a.safetensors", 1), name
        assert model_options(args) == {**expected, **(speed if sampling else {})}, name
    args = parser.parse_args(["datagen", "--source", "shapes", "--out", "o", "--base", "shapes", "--adapter", "x"])
    assert args.lora == "x" and "--adapter is deprecated, use --lora" in capsys.readouterr().err
    assert parser.parse_args(["serve", "-q"]).quiet  # every model command has -q
    with pytest.raises(SystemExit):
        parser.parse_args([*commands["serve"], "--dtype", "int4"])
    assert "invalid choice: 'int4'" in capsys.readouterr().err


def test_renamed_option_and_offload_choices():
    parser = argparse.ArgumentParser()
    add_model_options(parser, base_default="shapes")
    parser.add_argument("--old", dest="lora", action=RenamedOption, new="--lora")
    assert parser.parse_args([]).base == "shapes" and parser.parse_args(["--old", "z"]).lora == "z"
    assert parser._option_string_actions["--offload"].choices == OFFLOAD_MODES


def test_importing_diptych_quiets_only_the_known_import_time_warnings():
    import logging
    import subprocess
    import sys

    code = (
        "import logging; logging.getLogger('torchao').setLevel(logging.DEBUG); import diptych; "
        "print(logging.getLogger('torchao').level, logging.getLogger('torch.utils._pytree').level, "
        "logging.getLogger('diffusers').level)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    # a level the user set is kept; the others are raised to errors only; unrelated loggers are left alone
    assert out == [str(logging.DEBUG), str(logging.ERROR), str(logging.NOTSET)]
