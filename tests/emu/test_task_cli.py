"""`diptych edit --task/--task-file` and `diptych invert-task` through the main CLI."""

import numpy as np
import torch
from diffusers import FluxTransformer2DModel
from PIL import Image

from diptych.cli import main
from diptych.emu.task_embedding import TaskEmbedding, save_task_embedding
from diptych.testing import random_image


def test_edit_with_task_file(tiny_base, tmp_path, capsys):
    transformer = FluxTransformer2DModel.from_pretrained(tiny_base, subfolder="transformer")
    embedding = TaskEmbedding.for_transformer(transformer)
    with torch.no_grad():
        embedding.weight[embedding.index("remove")] = 3.0
    save_task_embedding(embedding, tmp_path / "tasks.safetensors")
    random_image(40, 40, seed=2).save(tmp_path / "in.png")
    common = ["--base", tiny_base, "--width", "32", "--steps", "2", "--device", "cpu", "-q"]
    outs = {}
    for name, extra in {
        "plain": [],
        "remove": ["--task-file", str(tmp_path / "tasks.safetensors"), "--task", "remove"],
        "predicted": ["--task-file", str(tmp_path / "tasks.safetensors")],  # "remove the dog" -> remove
        "other": ["--task-file", str(tmp_path / "tasks.safetensors"), "--task", "style"],  # a zero row
    }.items():
        out = tmp_path / f"{name}.png"
        assert main(["edit", str(tmp_path / "in.png"), "remove the dog", "-o", str(out), *common, *extra]) == 0
        outs[name] = np.asarray(Image.open(out), dtype=np.int16)
    assert np.abs(outs["remove"] - outs["plain"]).max() > 0
    assert np.array_equal(outs["predicted"], outs["remove"])
    assert np.array_equal(outs["other"], outs["plain"])
    capsys.readouterr()
    assert (
        main(["edit", str(tmp_path / "in.png"), "x", "-o", str(tmp_path / "o.png"), *common, "--task", "remove"]) == 2
    )
    assert "needs a task embedding" in capsys.readouterr().err


def test_invert_task_is_a_subcommand(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["invert-task", "--help"])
    assert "invert-task" in capsys.readouterr().out
