"""LoRA-MoE through the user-facing paths: `Editor.from_pretrained` / `diptych edit --lora` detect an
official-layout MoE checkpoint and give the official MoE forward; sparse dispatch, routing stats, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import FluxFillPipeline
from PIL import Image
from safetensors.torch import save_file
from test_moe_io import official_checkpoint, reference_model

from diptych.cli import main
from diptych.editor import Editor
from diptych.prompts import build_prompt
from diptych.testing import random_image, save_tiny_fill_pipeline

SOURCE = random_image(48, 32, seed=4)
COMMON = ["--width", "32", "--steps", "3", "--device", "cpu", "-q", "--seed", "5"]


@pytest.fixture(scope="module")
def moe_base(tmp_path_factory):
    """A tiny pipeline with 2 double + 2 single blocks (the modules the MoE fixture checkpoint names)."""
    folder = tmp_path_factory.mktemp("moe")
    base = save_tiny_fill_pipeline(folder / "pipe", num_layers=2, num_single_layers=2)
    transformer = FluxFillPipeline.from_pretrained(base).transformer
    state = official_checkpoint(transformer)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "moe.safetensors"))
    SOURCE.save(folder / "in.png")
    return folder, str(base), state


def official_moe_edit(base: str, state, instruction: str) -> np.ndarray:
    """The official procedure on a pipeline whose adapted layers compute the official MoE forward directly."""
    pipe = FluxFillPipeline.from_pretrained(base)
    pipe.transformer = reference_model(pipe.transformer, state, top_k=1, scaling=1.0)
    # The official canvas layout, at diptych's panel size (48x32 at width 32 -> 32x20: 21.3 rounded to the
    # tiny model's multiple of 4), since the official //8 rounding would give another size.
    panel = SOURCE.resize((32, 20), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (64, 20))
    canvas.paste(panel, (0, 0))
    canvas.paste(panel, (32, 0))
    mask = Image.new("L", (64, 20), 0)
    mask.paste(255, (32, 0, 64, 20))
    out = pipe(
        prompt=build_prompt(instruction),
        image=canvas,
        mask_image=mask,
        height=20,
        width=64,
        guidance_scale=50,
        num_inference_steps=3,
        generator=torch.Generator("cpu").manual_seed(5),
    ).images[0]
    return np.asarray(out.crop((32, 0, 64, 20)), dtype=np.int16)


def test_cli_edit_with_moe_equals_official_moe_forward(moe_base, capsys):
    folder, base, state = moe_base
    out = folder / "moe_out.png"
    code = main(
        [
            "edit",
            str(folder / "in.png"),
            "make it red",
            "-o",
            str(out),
            "--base",
            base,
            "--lora",
            str(folder / "moe.safetensors"),
            *COMMON,
        ]
    )
    assert code == 0, capsys.readouterr().err
    ours = np.asarray(Image.open(out), dtype=np.int16)
    reference = official_moe_edit(base, state, "make it red")
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() <= 1
    plain = Editor.from_pretrained(base, device="cpu").edit(SOURCE, "make it red", seed=5, steps=3, width=32)
    assert np.abs(ours - np.asarray(plain, dtype=np.int16)).max() > 5  # the adapter matters


def test_sparse_dispatch_equals_dense(moe_base):
    folder, base, _ = moe_base
    dense = Editor.from_pretrained(base, adapter=folder / "moe.safetensors", device="cpu")
    sparse = Editor.from_pretrained(base, adapter=folder / "moe.safetensors", device="cpu", moe_dispatch="sparse")
    assert dense.adapter_kind == sparse.adapter_kind == "moe"
    a = np.asarray(dense.edit(SOURCE, "add a hat", steps=3, width=32), dtype=np.int16)
    b = np.asarray(sparse.edit(SOURCE, "add a hat", steps=3, width=32), dtype=np.int16)
    assert np.abs(a - b).max() <= 1


def test_routing_stats_and_export_to_plain_lora(moe_base, capsys):
    folder, base, _ = moe_base
    stats_path, merged = folder / "usage.json", folder / "merged.safetensors"
    code = main(
        [
            "edit",
            str(folder / "in.png"),
            "make it red",
            "-o",
            str(folder / "o.png"),
            "--base",
            base,
            "--lora",
            str(folder / "moe.safetensors"),
            "--routing-stats",
            str(stats_path),
            *COMMON,
        ]
    )
    assert code == 0, capsys.readouterr().err
    stats = json.loads(stats_path.read_text())
    assert set(stats) >= {"transformer_blocks.0.ff.net.2", "single_transformer_blocks.1.proj_out"}
    for usage in stats.values():
        assert len(usage) == 4 and sum(usage) > 0
    for weighting in ("mean", "usage"):
        extra = ["--usage", str(stats_path)] if weighting == "usage" else []
        code = main(
            ["export-lora", str(folder / "moe.safetensors"), "-o", str(merged), "--weighting", weighting, *extra]
        )
        assert code == 0, capsys.readouterr().err
        editor = Editor.from_pretrained(base, adapter=merged, device="cpu")
        assert editor.adapter_kind == "lora"


def test_export_refuses_plain_lora_and_missing_usage(moe_base, tmp_path, capsys):
    folder, _, state = moe_base
    plain = {k: v for k, v in state.items() if "expert" not in k and "route" not in k}
    save_file({k: v.contiguous() for k, v in plain.items()}, str(tmp_path / "plain.safetensors"))
    assert main(["export-lora", str(tmp_path / "plain.safetensors"), "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "plain LoRA already" in capsys.readouterr().err
    assert (
        main(
            [
                "export-lora",
                str(folder / "moe.safetensors"),
                "-o",
                str(tmp_path / "x.safetensors"),
                "--weighting",
                "usage",
            ]
        )
        == 2
    )
    assert "needs --usage" in capsys.readouterr().err


def test_fuse_moe_fuses_plain_layers_only(moe_base):
    from diptych.adapters import LoRALinear, adapter_layers

    folder, base, _ = moe_base
    editor = Editor.from_pretrained(base, adapter=folder / "moe.safetensors", device="cpu")
    before = np.asarray(editor.edit(SOURCE, "make it red", steps=3, width=32), dtype=np.int16)
    editor.fuse_adapter()
    plain = [m for m in adapter_layers(editor.pipe.transformer).values() if isinstance(m, LoRALinear)]
    assert plain and all(m.merged for m in plain)
    after = np.asarray(editor.edit(SOURCE, "make it red", steps=3, width=32), dtype=np.int16)
    assert np.abs(before - after).max() <= 1
