"""The built-in model's plumbing on a random (untrained) model folder in the shipped layout:
`Editor.from_pretrained("shapes:FOLDER")`, `diptych edit --base shapes:...`, `diptych shapes make/bench`."""

import json

import pytest
import torch
from PIL import Image

from diptych.adapters import MoEConfig, inject_moe, remove_moe, save_moe_adapter
from diptych.cli import main
from diptych.editor import Editor
from diptych.shapes.models import build_transformer, build_vae
from diptych.testing import save_random_lora


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes-model")
    torch.manual_seed(0)
    build_vae().save_pretrained(folder / "vae")
    transformer = build_transformer()
    transformer.save_pretrained(folder / "transformer")
    (folder / "adapters").mkdir()
    save_random_lora(folder / "adapters" / "lora.safetensors", transformer, rank=4, std=0.05)
    inject_moe(transformer, MoEConfig(num_experts=4, rank=4, alpha=4.0))
    save_moe_adapter(transformer, folder / "adapters" / "moe.safetensors")
    remove_moe(transformer)
    return folder


def test_editor_loads_shapes_with_default_moe(shapes_folder):
    editor = Editor.from_pretrained(f"shapes:{shapes_folder}", device="cpu")
    assert editor.adapter_kind == "moe" and editor.default_width == 64
    out = editor.edit(Image.new("RGB", (100, 80), "white"), "make the red circle blue", steps=2)
    assert out.size == (64, 48)  # any image is resized to the world's panel width
    assert Editor.from_pretrained(f"shapes:{shapes_folder}", adapter="lora", device="cpu").adapter_kind == "lora"
    assert Editor.from_pretrained(f"shapes:{shapes_folder}", adapter="none", device="cpu").adapter_kind is None


def test_missing_builtin_adapter_is_named(shapes_folder, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shapes_folder, copy)
    (copy / "adapters" / "lora.safetensors").unlink()
    from diptych.errors import WeightsError

    with pytest.raises(WeightsError, match="built-in 'lora' adapter is missing"):
        Editor.from_pretrained(f"shapes:{copy}", adapter="lora", device="cpu")


def test_cli_edit_make_and_bench(shapes_folder, tmp_path, capsys):
    Image.new("RGB", (64, 64), "white").save(tmp_path / "in.png")
    assert (
        main(
            [
                "edit",
                str(tmp_path / "in.png"),
                "add a red star",
                "-o",
                str(tmp_path / "o.png"),
                "--base",
                f"shapes:{shapes_folder}",
                "--steps",
                "2",
                "-q",
            ]
        )
        == 0
    )
    assert Image.open(tmp_path / "o.png").size == (64, 64)

    assert main(["shapes", "make", "--split", "test", "--n", "6", "--out", str(tmp_path / "data")]) == 0
    lines = (tmp_path / "data" / "data.jsonl").read_text().splitlines()
    assert len(lines) == 6 and {"source", "instruction", "target", "task"} <= set(json.loads(lines[0]))
    capsys.readouterr()
    assert (
        main(
            [
                "shapes",
                "bench",
                "--data",
                str(tmp_path / "data"),
                "--base",
                f"shapes:{shapes_folder}",
                "--steps",
                "2",
                "--json",
                "-q",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["cases"] == 6
    for name in ("base", "lora", "moe", "moe+filter"):  # moe+filter: the shipped learned judge
        overall = report["variants"][name]["overall"]
        assert overall["n"] == 6 and 0.0 <= overall["success"] <= 1.0 and overall["l1"] > 0
    assert (
        main(
            [
                "shapes",
                "bench",
                "--data",
                str(tmp_path / "data"),
                "--base",
                f"shapes:{shapes_folder}",
                "--steps",
                "2",
                "--variants",
                "base",
                "-q",
            ]
        )
        == 0
    )
    assert "| overall |" in capsys.readouterr().out


def test_demo_writes_before_after_and_scores(shapes_folder, tmp_path, capsys):
    assert (
        main(["shapes", "demo", "--out", str(tmp_path / "demo"), "--base", f"shapes:{shapes_folder}", "--steps", "2"])
        == 0
    )
    out = capsys.readouterr().out
    assert "ShapesEdit success rule:" in out and "wrote" in out
    for name in ("before", "after", "target"):
        assert Image.open(tmp_path / "demo" / f"{name}.png").size == (64, 64)


def test_train_an_adapter_on_the_builtin_model(shapes_folder, tmp_path, capsys):
    assert main(["shapes", "make", "--split", "train", "--n", "4", "--out", str(tmp_path / "train")]) == 0
    code = main(
        [
            "train",
            "--base",
            f"shapes:{shapes_folder}",
            "--data",
            str(tmp_path / "train"),
            "--output",
            str(tmp_path / "run"),
            "--max-steps",
            "2",
            "--adapter",
            "moe",
            "--rank",
            "4",
            "--resolution",
            "64",
            "--batch-size",
            "2",
            "--optimizer",
            "adamw",
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    adapter = next((tmp_path / "run").rglob("adapter.safetensors"))
    editor = Editor.from_pretrained(f"shapes:{shapes_folder}", adapter=str(adapter), device="cpu")
    assert editor.adapter_kind == "moe"
