"""Training a locator (`--objective locate`): on pairs where the edit recolours a red square, it learns to
mark the square wherever it is, exports a file the editor loads, and refuses adapters it cannot train."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from diptych.train.config import ConfigError, TrainConfig
from diptych.train.locate import region_labels
from diptych.train.objective import EncodedBatch
from diptych.train.trainer import Trainer

SIZE = 16
QUADRANTS = [(0, 0), (8, 0), (0, 8), (8, 8)]  # (x, y) of an 8 x 8 square: 2 x 2 tokens of 4 px


def square_scene(corner: tuple[int, int], colour: tuple[int, int, int], seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(90, 140, (SIZE, SIZE, 3)).astype(np.uint8)  # grey noise
    x, y = corner
    pixels[y : y + 8, x : x + 8] = colour
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def squares(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("squares")
    rows = []
    for i in range(12):
        corner = QUADRANTS[i % 4]
        square_scene(corner, (220, 30, 30), i).save(folder / f"s{i}.png")
        square_scene(corner, (30, 30, 220), i).save(folder / f"t{i}.png")
        rows.append({"source": f"s{i}.png", "instruction": "make the red square blue", "target": f"t{i}.png"})
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_a_locator_learns_where_the_named_square_is_and_the_editor_loads_it(
    tiny_base, squares, tmp_path, fast, read_metrics
):
    from peft.tuners.tuners_utils import BaseTunerLayer

    from diptych.editor import Editor, EditRequest
    from diptych.locator import Locator
    from diptych.train.locate import HEAD_ATTRIBUTE

    out = tmp_path / "locator"
    options = fast | {"num_validation": 2, "checkpoint_every": 150, "rank": 8, "alpha": 8.0}
    config = TrainConfig(
        base=tiny_base, data=str(squares), output=str(out), objective="locate", max_steps=300, batch_size=4,
        optimizer="adamw", lr=1e-2, max_grad_norm=1.0, prompt_dropout=0.0, **options,
    )  # fmt: skip
    trainer = Trainer(config, show_progress=False)
    trainer.train()
    losses = [r["loss"] for r in read_metrics(out)]
    assert np.mean(losses[-30:]) < 0.7 * np.mean(losses[:30])
    weights = load_file(str(out / "locator.safetensors"))
    assert {"referent_head.proj.weight", "referent_head.proj.bias"} <= set(weights)
    assert any(".lora_A." in k for k in weights)
    assert all(k.startswith(("transformer.", "referent_head.")) for k in weights)
    assert "referent_head.proj.weight" in load_file(str(out / "checkpoints/ckpt-300/trainable.safetensors"))
    assert (out / "validation/step-0000300.png").is_file()

    editor = Editor.from_pretrained(tiny_base, device="cpu", dtype="fp32", locator=out)
    editor.default_width = SIZE
    # the LoRA is fused into the locator's own transformer: no peft layers left to run
    assert not any(isinstance(m, BaseTunerLayer) for m in editor.locator.transformer.modules())
    trained = trainer.unwrapped.eval()
    in_training = Locator(trained, getattr(trained, HEAD_ATTRIBUTE))
    margins = []
    for index, (x, y) in enumerate(QUADRANTS):  # new scenes (other noise), the square in each quadrant
        item = editor.prepare(EditRequest(square_scene((x, y), (220, 30, 30), 100 + index), "make the red square blue"))
        embeds, pooled = editor.encoder.encode([item.prompt])
        located = editor.locator.probabilities(editor.pipe, [item.canvas], [item.fill_mask], embeds, pooled)[0]
        # the file reproduces the model as trained (LoRA with alpha folded in, head, q/k norms if any)
        expected = in_training.probabilities(trainer.pipe, [item.canvas], [item.fill_mask], embeds, pooled)[0]
        np.testing.assert_allclose(located, expected, atol=1e-4)
        square = np.zeros((4, 4), bool)  # tokens of 4 px
        square[y // 4 : y // 4 + 2, x // 4 : x // 4 + 2] = True
        margins.append(located[square].mean() - located[np.roll(square, (2, 2), axis=(0, 1))].mean())
    # the tiny random model learns slowly; a wrong label layout (e.g. panels swapped) gives no margin at all
    assert np.mean(margins) > 0.15, margins

    # a run started from the exported file (`init_adapter`), with a step too small to move anything, exports the
    # same locator: LoRA and head both came along (a fresh head would be random, a fresh LoRA zero)
    again = TrainConfig(
        base=tiny_base, data=str(squares), output=str(tmp_path / "again"), objective="locate", max_steps=1,
        batch_size=4, optimizer="adamw", lr=1e-12, weight_decay=0.0, prompt_dropout=0.0,
        init_adapter=str(out / "locator.safetensors"), **(options | {"num_validation": 0}),
    )  # fmt: skip
    Trainer(again, show_progress=False).train()
    continued = load_file(str(tmp_path / "again/locator.safetensors"))
    assert continued.keys() == weights.keys()
    assert all(torch.allclose(continued[k], weights[k], atol=1e-6) for k in weights)


def test_region_labels_mark_the_edited_tokens_in_both_panels():
    edit = np.zeros((2, 4), np.float32)  # a canvas of 2 x 4 tokens: panels of 2 x 2
    edit[0, 3] = 1.0  # the target panel's top-right token is wholly edited
    edit[1, 2] = 0.2  # this one too little to count
    encoded = EncodedBatch(
        x0=None, condition=None, mask_tokens=None, latent_height=4, latent_width=8,
        edit_tokens=torch.tensor(edit).view(1, -1),
    )  # fmt: skip
    labels = region_labels(encoded).view(2, 4).numpy()
    assert np.array_equal(labels, [[0, 1, 0, 1], [0, 0, 0, 0]])


def test_locate_trains_a_plain_lora_only():
    with pytest.raises(ConfigError, match="objective 'locate'"):
        TrainConfig(objective="locate", adapter="moe")
    with pytest.raises(ConfigError, match="objective must be one of flow, locate"):
        TrainConfig(objective="segment")
    assert "objective" in TrainConfig(objective="locate").adapter_signature()
    assert "objective" not in TrainConfig().adapter_signature()
