"""The ShapesEdit training loops run, resume from their checkpoints, and produce loadable models."""

import json
import math
import shutil

import pytest

from diptych.errors import WeightsError
from diptych.shapes.models import load_pipeline
from diptych.shapes.train_base import random_fill_mask, train_base
from diptych.shapes.train_vae import train_vae


@pytest.mark.slow
def test_vae_and_base_train_resume_and_load(tmp_path):
    vae = train_vae(tmp_path / "vae-run", steps=2, batch=2, checkpoint_every=1, log_every=1)
    assert json.loads((vae / "config.json").read_text())["scaling_factor"] != 1.0  # set from latent stats
    train_vae(tmp_path / "vae-run", steps=3, batch=2, checkpoint_every=1, log_every=1)  # resumes at 2
    steps = [json.loads(line)["step"] for line in (tmp_path / "vae-run" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]

    transformer = train_base(vae, tmp_path / "base-run", steps=2, batch=2, checkpoint_every=1, log_every=1)
    assert sorted(p.name for p in (tmp_path / "base-run").glob("ckpt-*")) == ["ckpt-1", "ckpt-2"]
    folder = tmp_path / "model"
    shutil.copytree(vae, folder / "vae")
    shutil.copytree(transformer, folder / "transformer")
    pipe = load_pipeline(folder)
    assert pipe.transformer.config.in_channels == 96 and pipe.vae_scale_factor == 4


def test_base_trains_and_resumes_with_the_object_head(tmp_path):
    from safetensors.torch import load_file

    vae = train_vae(tmp_path / "vae-run", steps=1, batch=2, checkpoint_every=1, log_every=1)
    run = tmp_path / "base-run"
    train_base(vae, run, steps=2, batch=2, checkpoint_every=1, log_every=1, object_loss=1.0)
    # resumes at 2, with the frozen encoders under bf16 autocast
    train_base(vae, run, steps=3, batch=2, checkpoint_every=1, log_every=1, object_loss=1.0, bf16_encoders=True)
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in rows)
    # six shapes and three sizes: an untrained head's cross-entropies are near ln 6 and ln 3
    assert all(1.0 < r["shape_loss"] < 3.0 and 0.5 < r["size_loss"] < 2.0 for r in rows)
    checkpoint = run / "ckpt-3"
    assert any("head" in name for f in checkpoint.glob("*.safetensors") for name in load_file(str(f)))
    saved = load_file(str(run / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert not any("head" in name for name in saved)  # the saved base is FLUX's class alone


def test_object_head_labels_each_token_with_its_objects_shape_and_size():
    import torch

    from diptych.shapes.models import build_transformer
    from diptych.shapes.train_base import HEAD_ATTRIBUTES, ObjectHead
    from diptych.shapes_core.world import Scene, SceneObject

    transformer = build_transformer()
    head = ObjectHead(transformer)
    scene = Scene(background="white", objects=(SceneObject("star", "red", "large", "center"),))
    head._stream = torch.zeros(1, 128, transformer.inner_dim)

    def predict(shape: str, size: str) -> dict[str, float]:
        with torch.no_grad():
            for attr, value in (("shape", shape), ("size", size)):
                torch.nn.init.zeros_(head.linears[attr].weight)
                logits = [10.0 if c == value else 0.0 for c in HEAD_ATTRIBUTES[attr]]
                head.linears[attr].bias.copy_(torch.tensor(logits))
        return {attr: loss.item() for attr, loss in head.losses([scene], 8).items()}

    # every labelled token is the large star; background tokens are ignored
    assert all(loss < 1e-3 for loss in predict("star", "large").values())
    wrong_shape = predict("circle", "large")
    assert wrong_shape["shape"] > 5 and wrong_shape["size"] < 1e-3
    assert predict("star", "small")["size"] > 5


def test_load_pipeline_names_missing_models(tmp_path):
    with pytest.raises(WeightsError, match="missing"):
        load_pipeline(tmp_path)


def test_random_fill_masks_cover_every_kind():
    import numpy as np

    def kind(m: np.ndarray) -> str:
        left, right = m[:, :64], m[:, 64:]
        if left.all() and right.all():
            return "canvas"  # generated from the caption alone
        if right.all() and not left.any():
            return "right"
        if left.all() and not right.any():
            return "left"
        if np.array_equal(left, right):
            return "both panels"  # the same region hidden in both copies: the caption must fill it
        return "boxes"

    def shares(caption_share: float) -> dict[str, float]:
        rng = np.random.default_rng(0)
        kinds = []
        for _ in range(1000):
            m = np.asarray(random_fill_mask(rng, caption_share=caption_share)) > 0
            assert m.shape == (64, 128) and m.any()
            kinds.append(kind(m))
        return {k: kinds.count(k) / len(kinds) for k in set(kinds)}

    default = shares(0.3)
    assert set(default) == {"canvas", "right", "left", "both panels", "boxes"}
    assert default["canvas"] + default["both panels"] == pytest.approx(0.3, abs=0.04)
    assert default["right"] == pytest.approx(0.4, abs=0.04)  # the in-context task stays the largest share
    grounded = shares(0.6)  # more caption-only fills, the rest in the same proportions
    assert grounded["canvas"] + grounded["both panels"] == pytest.approx(0.6, abs=0.04)
    assert grounded["right"] / grounded["boxes"] == pytest.approx(default["right"] / default["boxes"], rel=0.3)
    with pytest.raises(ValueError, match="caption_share"):
        random_fill_mask(np.random.default_rng(0), caption_share=1.5)


def test_train_base_cli_rejects_a_caption_share_outside_0_1(monkeypatch, capsys, tmp_path):
    from diptych.shapes import train_base as module

    monkeypatch.setattr("sys.argv", ["train_base", "--vae", "v", "--out", str(tmp_path), "--caption-share", "1.5"])
    with pytest.raises(SystemExit):
        module.main()
    assert "--caption-share must be between 0 and 1" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before any training


def test_the_shipped_adapter_recipes_are_valid_configs():
    """examples/shapes/*.yaml: the configs the shipped adapters were trained with, and the best probe recipe
    (docs/shapes.md)."""
    from pathlib import Path

    from diptych.train.config import build_config

    folder = Path(__file__).parents[2] / "examples" / "shapes"
    configs = {p.stem: build_config(p) for p in sorted(folder.glob("*.yaml"))}
    # (the shipped adapters are these runs resumed to 4800 steps; no config resumes a checkpoint that a new
    # user does not have: tests/train/test_example_configs.py runs each one)
    expected = {"moe", "lora", "moe-noinvert", "probe-recolor", "moe-edit", "locator", "moe-located", "lora-located"}
    assert set(configs) == expected
    assert configs["moe"].adapter == "moe" and configs["moe"].task_embedding and configs["moe"].gate == "learned"
    assert configs["lora"].adapter == "lora" and configs["lora"].rank == 64
    assert all(config.resume is None for config in configs.values())
    assert configs["moe-noinvert"].data == "runs/shapes-train-noinvert" and configs["moe-noinvert"].task_embedding
    # the best recolor probe (docs/shapes.md, probe ladder): edit weighting and the text stream adapted
    probe = configs["probe-recolor"]
    assert probe.loss_weighting == "edit" and "context_embedder" in probe.lora_targets and probe.cache_dir
    # rung 3: the shipped architecture with the probe recipe (p14: batch 8, edit weight 30) on all nine ops
    rung3 = configs["moe-edit"]
    assert rung3.adapter == "moe" and rung3.task_embedding and rung3.gate == "learned"
    assert rung3.lora_targets == probe.lora_targets and rung3.loss_weighting == "edit" and rung3.edit_weight == 30
    # the locator for `--mask auto` (docs/training.md, "Locators"): the probe's LoRA layout, a plain LoRA
    locator = configs["locator"]
    assert locator.objective == "locate" and locator.adapter == "lora" and locator.lora_targets == probe.lora_targets
    assert rung3.batch_size == 8 and rung3.timestep_shift == probe.timestep_shift
    # located edits (docs/shapes.md, "Fill only the region"): rung 3 filling only each edit's region, and its
    # plain-LoRA counterpart with about as many trainable parameters
    located, plain = configs["moe-located"], configs["lora-located"]
    assert located.fill_region == plain.fill_region == "edit" and located.task_embedding and not plain.task_embedding
    assert located.lora_targets == plain.lora_targets == probe.lora_targets and (located.rank, plain.rank) == (32, 48)
    assert {c.max_steps for c in (located, plain)} == {12000} and located.data == plain.data
