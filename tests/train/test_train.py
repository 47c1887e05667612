"""End-to-end training on the tiny model: the CLI, adapters that load in the Editor, exact resume, crash
safety of checkpoints, skipped samples, and two processes agreeing with one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diptych import checkpoints as ckpt
from diptych.testing import random_image
from diptych.train import trainer as trainer_module
from diptych.train.cli import main
from diptych.train.config import TrainConfig
from diptych.train.trainer import Trainer


def edit(editor, image, seed=0):
    return np.asarray(editor.edit(image, "edit number 0", steps=3, seed=seed, width=16)).astype(np.int16)


def test_cli_training_lowers_the_loss_and_the_adapter_loads_in_the_editor(
    tiny_base, tmp_path, make_pairs, read_metrics
):
    from diptych.editor import Editor

    data = make_pairs(tmp_path / "pairs", 2)
    out = tmp_path / "run"
    args = ["--base", tiny_base, "--data", str(data), "--output", str(out), "--max-steps", "40"]
    args += ["--resolution", "16", "--rank", "8", "--alpha", "16", "--batch-size", "2", "--optimizer", "adamw"]
    args += ["--lr", "1e-2", "--prompt-dropout", "0", "--max-sequence-length", "64", "--cpu", "-q"]
    args += ["--num-validation", "2", "--validation-steps", "2", "--validate-every", "20", "--checkpoint-every", "20"]
    assert main(args) == 0
    losses = [r["loss"] for r in read_metrics(out)]
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])
    assert {"lr", "grad_norm", "samples_per_s", "skipped", "epoch"} <= set(read_metrics(out)[-1])
    assert sorted(p.name for p in (out / "validation").iterdir()) == ["step-0000020.png", "step-0000040.png"]
    assert (out / "config.yaml").is_file() and (out / "pytorch_lora_weights.safetensors").is_file()

    source = random_image(16, 16, seed=0)
    plain = Editor.from_pretrained(tiny_base, device="cpu", dtype="fp32")
    trained = Editor.from_pretrained(tiny_base, adapter=str(out), device="cpu", dtype="fp32")
    assert np.abs(edit(plain, source) - edit(trained, source)).mean() > 1.0
    # the exported file reproduces the trained model exactly (alpha / rank folded into B)
    from diptych.train.adapters import add_lora

    manual = Editor.from_pretrained(tiny_base, device="cpu", dtype="fp32")
    add_lora(manual.pipe.transformer, TrainConfig(rank=8, alpha=16))
    weights = load_file(str(out / "checkpoints/ckpt-40/trainable.safetensors"))
    params = dict(manual.pipe.transformer.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    manual.pipe.transformer.eval()
    assert np.array_equal(edit(manual, source), edit(trained, source))
    # every checkpoint is itself loadable as an adapter
    mid = Editor.from_pretrained(tiny_base, adapter=str(out / "checkpoints/ckpt-20"), device="cpu", dtype="fp32")
    assert not np.array_equal(edit(mid, source), edit(trained, source))


def test_moe_training_logs_routing_and_saves_the_official_layout(tiny_base, tmp_path, make_pairs, read_metrics, fast):
    from diptych.adapters.moe_io import is_moe_state_dict, load_moe_adapter
    from diptych.editor import Editor

    config = TrainConfig(
        base=tiny_base,
        data=str(make_pairs(tmp_path / "pairs", 2)),
        output=str(tmp_path / "moe"),
        max_steps=6,
        adapter="moe",
        gate="learned",
        balance_loss_weight=0.01,
        optimizer="adamw",
        lr=1e-2,
        batch_size=2,
        **{**fast, "num_validation": 1, "validation_steps": 2},
    )
    result = Trainer(config, show_progress=False).train()
    assert result.adapter == tmp_path / "moe" / "adapter.safetensors"
    record = read_metrics(tmp_path / "moe")[-1]
    assert len(record["expert_usage"]) == 4 and abs(sum(record["expert_usage"]) - 1) < 1e-4
    assert record["balance_loss"] >= 1.0 - 1e-4  # E * sum f_e P_e >= 1, equal when balanced
    state = load_file(str(result.adapter))
    assert is_moe_state_dict(state)
    assert any(k.endswith("ff.net.2.lora_A.expert_3.weight") for k in state)
    assert any(k.endswith("ff.net.2.lora_route.weight") for k in state)

    source = random_image(16, 16, seed=0)
    plain = Editor.from_pretrained(tiny_base, device="cpu", dtype="fp32")
    trained = Editor.from_pretrained(tiny_base, adapter=str(tmp_path / "moe"), device="cpu", dtype="fp32")
    assert trained.adapter_kind == "moe"
    assert np.abs(edit(trained, source) - edit(plain, source)).mean() > 0.5
    # the saved routing options come back with the weights
    manual = Editor.from_pretrained(tiny_base, device="cpu", dtype="fp32")
    loaded = load_moe_adapter(manual.pipe.transformer, result.adapter)
    assert (loaded.num_experts, loaded.rank, loaded.top_k, loaded.gate) == (4, 4, 1, "learned")
    assert np.array_equal(edit(manual, source), edit(trained, source))


def resume_config(root: Path, data: Path, tiny_base: str, fast: dict, **extra) -> TrainConfig:
    options = {
        **fast,
        "base": tiny_base,
        "data": str(data),
        "output": str(root),
        "max_steps": 6,
        "batch_size": 1,
        "grad_accum": 2,
        "ema_decay": 0.9,
        "prompt_dropout": 0.5,
        "checkpoint_every": 2,
        "keep_checkpoints": 2,
        "lr_scheduler": "cosine",
        "warmup_steps": 2,
    }
    options.update(extra)
    return TrainConfig(**options)


@pytest.fixture(scope="module")
def pairs3(tmp_path_factory, make_pairs) -> Path:
    return make_pairs(tmp_path_factory.mktemp("pairs3"), 3)


OPTIMIZERS = {"adamw": {"optimizer": "adamw", "lr": 1e-2}, "prodigy": {}}


@pytest.fixture(scope="module", params=sorted(OPTIMIZERS))
def straight(request, tiny_base, tmp_path_factory, pairs3, fast, read_metrics):
    """An uninterrupted 6-step run (accumulation 2, EMA, cosine schedule with warm-up) per optimizer."""
    root = tmp_path_factory.mktemp("straight")
    options = OPTIMIZERS[request.param]
    result = Trainer(resume_config(root, pairs3, tiny_base, fast, **options), show_progress=False).train()
    return options, read_metrics(root), load_file(str(result.adapter))


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=rtol, atol=1e-12 + rtol * b[key].abs().max().item())


def assert_same_run(root: Path, straight, read_metrics) -> None:
    _, records, adapter = straight
    resumed = read_metrics(root)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "lr", "grad_norm", "prodigy_d"):
        if key not in records[0]:
            continue
        expected = [r[key] for r in records]
        assert [r[key] for r in resumed] == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert_close(load_file(str(root / "pytorch_lora_weights.safetensors")), adapter, rtol=1e-6)


def test_the_straight_runs_learn_something(straight):
    options, records, adapter = straight
    assert max(t.abs().max().item() for k, t in adapter.items() if "lora_B" in k) > 0
    if options.get("optimizer") == "adamw":
        # big enough steps that a wrong resume (weights, optimizer, schedule, data) shows in the losses
        assert max(t.abs().max().item() for k, t in adapter.items() if "lora_B" in k) > 1e-3
        assert len({r["lr"] for r in records}) > 3  # warm-up then cosine decay
    else:
        assert all(r["prodigy_d"] > 0 for r in records)


def test_stopping_and_resuming_equals_an_uninterrupted_run(tiny_base, tmp_path, pairs3, fast, straight, read_metrics):
    config = resume_config(tmp_path, pairs3, tiny_base, fast, **straight[0])
    first = Trainer(config, show_progress=False).train(stop_at=3)
    assert first.step == 3 and first.adapter is None and first.checkpoint.name == "ckpt-3"
    assert [s for s, _ in ckpt.list_checkpoints(config.checkpoint_dir)] == [2, 3]
    assert first.losses == pytest.approx([r["loss"] for r in straight[1][:3]], rel=1e-6)
    second = Trainer(config, show_progress=False).train()  # resumes from ckpt-3 on its own
    assert second.step == 6 and len(second.losses) == 3
    assert_same_run(tmp_path, straight, read_metrics)
    assert [s for s, _ in ckpt.list_checkpoints(config.checkpoint_dir)] == [4, 6]  # keep_checkpoints=2


def test_a_crash_while_saving_leaves_the_previous_checkpoint(
    tiny_base, tmp_path, pairs3, fast, straight, read_metrics, monkeypatch
):
    config = resume_config(tmp_path, pairs3, tiny_base, fast, **straight[0])
    real_export = trainer_module.export_adapter

    def failing_export(model, cfg, folder):
        if folder.name == "ckpt-4.tmp":
            raise OSError("disk full (simulated)")
        return real_export(model, cfg, folder)

    monkeypatch.setattr(trainer_module, "export_adapter", failing_export)
    with pytest.raises(OSError, match="simulated"):
        Trainer(config, show_progress=False).train()
    partial = config.checkpoint_dir / "ckpt-4.tmp"
    assert (partial / "trainable.safetensors").is_file() and not (partial / "trainer.json").exists()
    assert ckpt.latest_checkpoint(config.checkpoint_dir).name == "ckpt-2"
    monkeypatch.setattr(trainer_module, "export_adapter", real_export)
    result = Trainer(config, show_progress=False).train()
    assert result.step == 6 and len(result.losses) == 4  # resumed from step 2
    assert not partial.exists()
    assert_same_run(tmp_path, straight, read_metrics)


def test_resume_checks_and_refusals(tiny_base, tmp_path, pairs3, fast, capsys):
    config = resume_config(tmp_path, pairs3, tiny_base, fast, max_steps=2, ema_decay=None, grad_accum=1)
    Trainer(config, show_progress=False).train()
    args = ["--base", tiny_base, "--data", str(pairs3), "--output", str(tmp_path), "--max-steps", "3", "--cpu"]
    args += ["--resolution", "16", "--rank", "4", "--alpha", "4", "--num-validation", "0", "-q"]
    assert main([*args, "--no-resume"]) == 2
    assert "resuming was turned off" in capsys.readouterr().err
    assert main([*args, "--rank", "8"]) == 2
    assert "trained with" in capsys.readouterr().err
    assert main([*args, "--max-sequence-length", "64"]) == 0  # resumes and finishes step 3


def test_bad_samples_are_skipped_counted_and_bucketing_runs(tiny_base, tmp_path, make_pairs, fast, read_metrics):
    data = make_pairs(tmp_path / "pairs", 3)
    random_image(24, 12, seed=7).save(data / "img/wide_s.png")
    random_image(24, 12, seed=8).save(data / "img/wide_t.png")
    (data / "img/bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with (data / "data.jsonl").open("a") as handle:
        handle.write(json.dumps({"source": "img/wide_s.png", "instruction": "wide", "target": "img/wide_t.png"}) + "\n")
        handle.write(json.dumps({"source": "img/bad.png", "instruction": "x", "target": "img/t0.png"}) + "\n")
        handle.write("{broken json\n")
    config = TrainConfig(
        base=tiny_base,
        data=str(data),
        output=str(tmp_path / "run"),
        max_steps=4,
        batch_size=2,
        bucketing=True,
        bucket_aspects=[1.0, 2.0],
        **fast,
    )
    result = Trainer(config, show_progress=False).train()
    assert result.step == 4
    assert read_metrics(tmp_path / "run")[-1]["skipped"] >= 2


def test_bf16_mixed_precision_runs(tiny_base, tmp_path, make_pairs, fast):
    config = TrainConfig(
        base=tiny_base,
        data=str(make_pairs(tmp_path / "pairs", 2)),
        output=str(tmp_path / "run"),
        max_steps=2,
        mixed_precision="bf16",
        gradient_checkpointing=True,
        **fast,
    )
    result = Trainer(config, show_progress=False).train()
    weights = load_file(str(result.adapter))
    assert all(t.dtype == torch.float32 for t in weights.values())  # adapters train in fp32
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_the_pixel_loss_adds_to_the_flow_loss_in_a_run(tiny_base, tmp_path, make_pairs, fast, read_metrics):
    """`--pixel-loss-weight`: the same first batch (same seed, same weights) logs the flow loss plus a positive
    pixel term, and the run trains and exports a finite adapter."""
    data = str(make_pairs(tmp_path / "pairs", 2))
    losses = {}
    for weight in (0.0, 1.0):
        output = tmp_path / f"run-{weight}"
        config = TrainConfig(
            base=tiny_base, data=data, output=str(output), max_steps=2, log_every=1, pixel_loss_weight=weight, **fast
        )
        result = Trainer(config, show_progress=False).train()
        losses[weight] = read_metrics(output)[0]["loss"]
        assert all(torch.isfinite(t).all() for t in load_file(str(result.adapter)).values())
    assert losses[1.0] > losses[0.0] + 1e-3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_agree_with_one_on_the_same_global_batch(tiny_base, tmp_path, make_pairs, fast, read_metrics):
    data = make_pairs(tmp_path / "pairs", 4)
    common = ["--base", tiny_base, "--data", str(data), "--max-steps", "3", "--resolution", "16", "--rank", "4"]
    common += ["--alpha", "4", "--num-validation", "1", "--validation-steps", "2", "--validate-every", "2"]
    common += ["--max-sequence-length", "64", "--checkpoint-every", "2"]
    common += ["--cpu", "-q", "--prompt-dropout", "0.5", "--optimizer", "adamw", "--lr", "1e-2"]
    single = TrainConfig(
        **{**fast, "base": tiny_base, "data": str(data), "output": str(tmp_path / "one"), "max_steps": 3},
        batch_size=4,
        prompt_dropout=0.5,
        optimizer="adamw",
        lr=1e-2,
    )
    Trainer(single, show_progress=False).train()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "diptych.train.cli"]
    command += [*common, "--output", str(tmp_path / "two"), "--batch-size", "2"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    one = [r["loss"] for r in read_metrics(tmp_path / "one")]
    two = [r["loss"] for r in read_metrics(tmp_path / "two")]
    np.testing.assert_allclose(two, one, rtol=1e-6, atol=1e-6)
    a = load_file(str(tmp_path / "one/pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "two/pytorch_lora_weights.safetensors"))
    assert max(t.abs().max().item() for k, t in a.items() if "lora_B" in k) > 1e-3  # the steps were real
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    files = set(os.listdir(tmp_path / "two/checkpoints/ckpt-3"))
    assert {"data-0.json", "data-1.json", "rng-0.json", "rng-1.json", "trainer.json"} <= files
    assert sorted(os.listdir(tmp_path / "two/validation")) == ["step-0000002.png", "step-0000003.png"]


def test_bad_resolution_and_data_fail_before_the_model_loads(tiny_base, tmp_path, make_pairs, capsys, monkeypatch):
    import diptych.loading

    def no_load(*args, **kwargs):
        raise AssertionError("the model should not be loaded")

    monkeypatch.setattr(diptych.loading, "load_fill_pipeline", no_load)
    data = make_pairs(tmp_path / "pairs", 1)
    args = ["--base", tiny_base, "--output", str(tmp_path / "run"), "--cpu", "-q"]
    assert main([*args, "--data", str(data), "--resolution", "18"]) == 2
    assert "multiples of 4" in capsys.readouterr().err
    assert main([*args, "--data", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    missing = tmp_path / "gone" / "adapter.safetensors"
    assert main([*args, "--data", str(data), "--init-adapter", str(missing)]) == 2
    assert f"adapter {missing} does not exist" in capsys.readouterr().err
    assert main([*args, "--data", str(data), "--task-share", "mirror=1/2"]) == 2
    assert "task share for mirror: no row of JSONL" in capsys.readouterr().err
    tasks = make_pairs(tmp_path / "tasks", 4)
    rows = [json.loads(line) for line in (tasks / "data.jsonl").read_text().splitlines()]
    for row, task in zip(rows, ["mirror", "move", "mirror", "mirror"], strict=True):
        row["task"] = task
    (tasks / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    thinned = TrainConfig(
        base=tiny_base, data=str(tasks), output=str(tmp_path / "t"), cpu=True, task_shares={"mirror": "1/3"}
    )
    trainer = Trainer(thinned, show_progress=False)
    with pytest.raises(AssertionError, match="should not be loaded"):
        trainer._setup()  # the data is opened and thinned, then the model load is reached
    assert [sample.instruction for sample in trainer.dataset] == ["edit number 1", "edit number 3"]
    config = TrainConfig(base=tiny_base, data=str(data), output=str(tmp_path / "x"), cpu=True)
    trainer = Trainer(config, show_progress=False)
    trainer.accelerator = object()
    with pytest.raises(RuntimeError, match="trains once"):
        trainer.train()


@pytest.mark.parametrize("adapter", ["lora", "moe"])
def test_text_stream_targets_train_export_and_load(tiny_base, tmp_path, make_pairs, fast, adapter):
    from diptych.adapters.moe import DEFAULT_LORA_TARGETS, DEFAULT_MOE_TARGETS, TEXT_STREAM_TARGETS
    from diptych.editor import Editor
    from diptych.train.adapters import trainable_parameters

    targets = [*DEFAULT_LORA_TARGETS, *DEFAULT_MOE_TARGETS, *TEXT_STREAM_TARGETS]
    options = {**fast, "optimizer": "adamw", "lr": 1e-2, "max_steps": 3, "batch_size": 2}
    config = TrainConfig(
        base=tiny_base,
        data=str(make_pairs(tmp_path / "pairs", 2)),
        output=str(tmp_path / adapter),
        adapter=adapter,
        lora_targets=targets,
        **options,
    )
    run = Trainer(config, show_progress=False)
    result = run.train()
    names = list(trainable_parameters(run.unwrapped))
    assert any(n.startswith("context_embedder.") for n in names) and any("add_k_proj" in n for n in names)
    trained = Editor.from_pretrained(tiny_base, adapter=str(result.adapter), device="cpu", dtype="fp32")
    weights = dict(trained.pipe.transformer.named_parameters())
    plain = dict(Editor.from_pretrained(tiny_base, device="cpu", dtype="fp32").pipe.transformer.named_parameters())
    changed = [n for n in weights if n in plain and not torch.equal(weights[n], plain[n])]
    assert "context_embedder.weight" in changed or any("context_embedder" in n for n in weights if n not in plain)


@pytest.mark.parametrize("adapter", ["lora", "moe"])
def test_trained_qk_norms_are_saved_with_the_adapter_and_loaded_back(tiny_base, tmp_path, make_pairs, fast, adapter):
    from diptych.adapters.lora import qk_norm_parameters
    from diptych.adapters.moe import remove_moe
    from diptych.editor import Editor

    options = {**fast, "optimizer": "adamw", "lr": 5e-2, "max_steps": 3, "batch_size": 2}
    config = TrainConfig(
        base=tiny_base,
        data=str(make_pairs(tmp_path / "pairs", 2)),
        output=str(tmp_path / adapter),
        adapter=adapter,
        train_norms=True,
        **options,
    )
    run = Trainer(config, show_progress=False)
    result = run.train()
    assert set(qk_norm_parameters(run.unwrapped)) <= set(run.param_names)
    trained = {name: p.detach().clone() for name, p in qk_norm_parameters(run.unwrapped).items()}
    stored = load_file(str(result.adapter))
    assert {f"transformer.{name}" for name in trained} <= set(stored)
    bare = Editor.from_pretrained(tiny_base, device="cpu", dtype="fp32").pipe.transformer
    original = {name: p.detach().clone() for name, p in qk_norm_parameters(bare).items()}
    assert all(not torch.equal(trained[name], original[name]) for name in trained)  # they did train

    loaded = Editor.from_pretrained(tiny_base, adapter=str(result.adapter), device="cpu", dtype="fp32")
    gains = qk_norm_parameters(loaded.pipe.transformer)
    assert all(torch.allclose(gains[name], trained[name]) for name in trained)
    if adapter == "moe":  # taking the adapter off puts the base's gains back
        remove_moe(loaded.pipe.transformer)
        assert all(torch.equal(gains[name], original[name]) for name in trained)


def test_qk_norms_that_do_not_fit_the_model_are_refused(tiny_base):
    from diptych.adapters.lora import check_lora_keys, load_qk_norms, qk_norm_parameters
    from diptych.editor import Editor
    from diptych.errors import WeightsError

    transformer = Editor.from_pretrained(tiny_base, device="cpu", dtype="fp32").pipe.transformer
    name, gain = next(iter(qk_norm_parameters(transformer).items()))
    with pytest.raises(WeightsError, match="shape"):
        check_lora_keys(transformer, {f"transformer.{name}": torch.ones(gain.numel() + 1)})
    with pytest.raises(WeightsError, match="no attention norm"):
        load_qk_norms(transformer, {"transformer.transformer_blocks.99.attn.norm_q.weight": torch.ones_like(gain)})
    assert torch.equal(gain, qk_norm_parameters(transformer)[name])  # nothing copied


def test_a_fill_layout_adapter_records_it_and_the_editor_lays_out_edits_so(tiny_base, tmp_path, make_pairs, fast):
    from safetensors import safe_open

    from diptych.adapters.load import FILL_REGION_KEY, MASKED_CONTENT_KEY
    from diptych.editor import Editor

    options = {**fast, "optimizer": "adamw", "lr": 1e-2, "max_steps": 2, "batch_size": 2}
    options |= {"num_validation": 1, "validation_steps": 2, "validate_every": 2}
    config = TrainConfig(
        base=tiny_base,
        data=str(make_pairs(tmp_path / "pairs", 2)),
        output=str(tmp_path / "run"),
        fill_region="edit",
        masked_content="source",
        **options,
    )
    result = Trainer(config, show_progress=False).train()
    with safe_open(str(result.adapter), framework="pt") as f:
        assert (f.metadata()[FILL_REGION_KEY], f.metadata()[MASKED_CONTENT_KEY]) == ("edit", "source")
    assert (tmp_path / "run/validation/step-0000002.png").is_file()  # validated with the samples' own regions
    editor = Editor.from_pretrained(tiny_base, adapter=str(result.adapter), device="cpu", dtype="fp32")
    assert (editor.fill_region, editor.sampler.masked_content) == ("edit", "source")


@pytest.mark.parametrize("adapter", ["lora", "moe"])
def test_a_run_can_start_from_an_exported_adapter(tiny_base, tmp_path, make_pairs, fast, adapter):
    from diptych.errors import WeightsError

    folder = make_pairs(tmp_path / "pairs", 2)
    rows = [json.loads(line) | {"task": "background"} for line in (folder / "data.jsonl").read_text().splitlines()]
    (folder / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))  # task vectors train
    options = {**fast, "base": tiny_base, "data": str(folder), "adapter": adapter, "optimizer": "adamw"}
    options |= {"task_embedding": adapter == "moe", "weight_decay": 0.0, "batch_size": 2, "prompt_dropout": 0.0}
    first = Trainer(TrainConfig(output=str(tmp_path / "first"), lr=5e-2, max_steps=3, **options), show_progress=False)
    exported = first.train().adapter
    # a second run started from the export, with a step too small to move anything, exports the same weights
    config = TrainConfig(output=str(tmp_path / "second"), lr=1e-12, max_steps=1, init_adapter=str(exported), **options)
    again = Trainer(config, show_progress=False).train().adapter
    before, after = load_file(str(exported)), load_file(str(again))
    assert before.keys() == after.keys()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)
    assert max(v.abs().max() for k, v in before.items() if "lora_B" in k) > 1e-3  # not the zero-initialised B
    if adapter == "moe":  # the task vectors came along
        vectors = [load_file(str(p / "task_embedding.safetensors"))["weight"] for p in (exported.parent, again.parent)]
        assert vectors[0].abs().max() > 0 and torch.allclose(*vectors, atol=1e-6)
    # an adapter of another rank is refused, naming what differs
    other = TrainConfig(
        output=str(tmp_path / "third"), lr=1e-3, max_steps=1, init_adapter=str(exported), **(options | {"rank": 2})
    )
    with pytest.raises(WeightsError, match=r"(does not fit|here)"):
        Trainer(other, show_progress=False).train()
