"""Task embeddings on the tiny Fill transformer: injection through temb (per sample, no-op at zero),
attach / detach, MoE router feeding, files, inference helpers and `diptych train --task-embedding`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from diptych.editor import EditRequest
from diptych.emu.task_embedding import (
    TASK_EMBEDDING_FILE,
    TaskEmbedding,
    attach_task_embedding,
    attached_task_embedding,
    detach_task_embedding,
    find_task_embedding,
    load_task_embedding,
    save_task_embedding,
    task_conditioning,
    taxonomy_task,
)
from diptych.emu.tasks import TASK_NAMES
from diptych.errors import InputError, WeightsError
from diptych.testing import build_tiny_fill_pipeline, random_image

TOKENS, TEXT = 16, 8


@pytest.fixture(scope="module")
def transformer():
    return build_tiny_fill_pipeline(0).transformer


def inputs(transformer, batch: int = 2, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    cfg = transformer.config
    return dict(
        hidden_states=torch.randn(batch, TOKENS, cfg.in_channels, generator=gen),
        encoder_hidden_states=torch.randn(batch, TEXT, cfg.joint_attention_dim, generator=gen),
        pooled_projections=torch.randn(batch, cfg.pooled_projection_dim, generator=gen),
        timestep=torch.full((batch,), 0.4),
        img_ids=torch.zeros(TOKENS, 3),
        txt_ids=torch.zeros(TEXT, 3),
        guidance=torch.ones(batch),
        return_dict=False,
    )


@torch.no_grad()
def run(transformer, **overrides) -> torch.Tensor:
    return transformer(**{**inputs(transformer), **overrides})[0]


def random_rows(embedding: TaskEmbedding, *names: str, seed: int = 0) -> TaskEmbedding:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in names:
            embedding.weight[embedding.index(name)] = torch.randn(embedding.dim, generator=gen)
    return embedding


def test_a_fresh_embedding_changes_nothing(transformer):
    embedding = TaskEmbedding.for_transformer(transformer)
    assert embedding.names == list(TASK_NAMES) and embedding.dim == transformer.inner_dim
    assert not embedding.weight.any()
    reference = run(transformer)
    with task_conditioning(transformer, embedding, ["add", "remove"]):
        conditioned = run(transformer)
    assert torch.equal(reference, conditioned)


def test_a_vector_changes_only_the_samples_it_is_assigned_to(transformer):
    embedding = random_rows(TaskEmbedding.for_transformer(transformer), "add")
    reference = run(transformer)
    with task_conditioning(transformer, embedding, ["add", "remove"]):
        mixed = run(transformer)
    assert not torch.equal(mixed[0], reference[0])
    assert torch.equal(mixed[1], reference[1])  # "remove" is still zero
    with task_conditioning(transformer, embedding, [None, "add"]):
        swapped = run(transformer)
    assert torch.equal(swapped[0], reference[0])
    assert not torch.equal(swapped[1], reference[1])
    # the same vectors given directly, as rows, or as one name for the whole batch
    vectors = embedding(["add", "remove"]).detach()
    with task_conditioning(transformer, embedding, vectors):
        assert torch.equal(run(transformer), mixed)
    with task_conditioning(transformer, embedding, torch.tensor([2, 1])):
        assert torch.equal(run(transformer), mixed)
    with task_conditioning(transformer, embedding, "add"):
        both = run(transformer)
    assert torch.equal(both[0], mixed[0]) and not torch.equal(both[1], reference[1])
    # leaving the block removes the conditioning
    assert torch.equal(run(transformer), reference)


def test_gradients_reach_only_the_rows_in_use(transformer):
    embedding = TaskEmbedding.for_transformer(transformer)
    with task_conditioning(transformer, embedding, ["style", None]):
        out = transformer(**inputs(transformer))[0]
    out.pow(2).mean().backward()
    grad = embedding.weight.grad
    used = grad.abs().sum(-1) > 0
    assert used.tolist() == [name == "style" for name in embedding.names]
    transformer.zero_grad(set_to_none=True)


def test_bad_tasks_are_refused_with_clear_messages(transformer):
    embedding = TaskEmbedding.for_transformer(transformer)
    with pytest.raises(InputError, match="unknown task 'sketch'"), task_conditioning(transformer, embedding, "sketch"):
        pass
    with task_conditioning(transformer, embedding, ["add", "add", "add"]), pytest.raises(InputError, match="3 task"):
        run(transformer)
    with pytest.raises(InputError, match="width"), task_conditioning(transformer, TaskEmbedding(["a"], 7), "a"):
        pass
    with pytest.raises(InputError, match="float tensor"):
        embedding(torch.zeros(2, 5))
    with pytest.raises(InputError, match="unique"):
        TaskEmbedding(["a", "a"], 4)


def test_attach_registers_the_embedding_and_detach_restores_the_model(transformer):
    reference = run(transformer)
    embedding = random_rows(TaskEmbedding.for_transformer(transformer), "global")
    attach_task_embedding(transformer, embedding)
    try:
        assert attached_task_embedding(transformer) is embedding
        assert "diptych_task_embedding.table.weight" in dict(transformer.named_parameters())
        assert torch.equal(run(transformer), reference)  # attached but no task set: no change
        with task_conditioning(transformer, embedding, "global"):
            assert not torch.equal(run(transformer), reference)
        other = TaskEmbedding.for_transformer(transformer)
        with pytest.raises(InputError, match="another task embedding"), task_conditioning(transformer, other, "add"):
            pass
        with pytest.raises(InputError, match="already has"):
            attach_task_embedding(transformer, TaskEmbedding.for_transformer(transformer))
    finally:
        assert detach_task_embedding(transformer) is embedding
    assert attached_task_embedding(transformer) is None
    assert "diptych_task_embedding.table.weight" not in dict(transformer.named_parameters())
    with task_conditioning(transformer, embedding, "global"):
        pass
    assert torch.equal(run(transformer), reference)


def test_route_feeds_the_vectors_to_the_moe_router():
    from diptych.adapters.moe import MoEConfig, inject_moe, moe_layers

    transformer = build_tiny_fill_pipeline(0).transformer
    inject_moe(transformer, MoEConfig(num_experts=4, rank=4, router_context_dim=transformer.inner_dim))
    layers = list(moe_layers(transformer).values())
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in layers:
            layer.lora_route_context.weight.copy_(torch.randn(layer.lora_route_context.weight.shape, generator=gen))
            for p in layer.parameters():
                if p.dim() >= 2 and not p.any():
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)  # non-zero LoRA up weights
    embedding = random_rows(TaskEmbedding.for_transformer(transformer), "add", seed=4)
    seen = []
    hook = layers[0].register_forward_pre_hook(lambda m, _args: seen.append(m.router_context))
    with task_conditioning(transformer, embedding, ["add", None]):
        temb_only = run(transformer)
    with task_conditioning(transformer, embedding, ["add", None], route=True):
        routed = run(transformer)
    hook.remove()
    assert seen[0] is None and torch.equal(seen[1], embedding(["add", None]))
    assert all(layer.router_context is None for layer in layers)
    assert not torch.equal(routed[0], temb_only[0]) and torch.equal(routed[1], temb_only[1])
    plain = build_tiny_fill_pipeline(0).transformer
    fresh = TaskEmbedding.for_transformer(plain)
    with pytest.raises(Exception, match="router context"), task_conditioning(plain, fresh, "add", route=True):
        pass


def test_save_load_round_trip_and_adding_a_task(tmp_path, transformer):
    embedding = random_rows(TaskEmbedding.for_transformer(transformer), "add", "style")
    path = save_task_embedding(embedding, tmp_path / "te.safetensors")
    loaded = load_task_embedding(path)
    assert loaded.names == embedding.names and torch.equal(loaded.weight, embedding.weight)
    assert load_task_embedding(tmp_path / "te.safetensors").dim == embedding.dim
    grown = loaded.with_task("sketch", init=torch.ones(loaded.dim))
    assert grown.names == [*embedding.names, "sketch"]
    assert torch.equal(grown.weight[:-1], embedding.weight) and torch.equal(grown.weight[-1], torch.ones(loaded.dim))
    assert len(loaded.names) == len(TASK_NAMES)  # the original is untouched
    with pytest.raises(InputError, match="already exists"):
        grown.with_task("sketch")
    save_file({"weight": torch.zeros(2, 3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(WeightsError, match="not a diptych task embedding"):
        load_task_embedding(tmp_path / "other.safetensors")
    with pytest.raises(WeightsError, match="does not exist"):
        load_task_embedding(tmp_path / "missing.safetensors")
    (tmp_path / "run").mkdir()
    save_task_embedding(embedding, tmp_path / "run" / TASK_EMBEDDING_FILE)
    assert find_task_embedding(tmp_path / "run") == tmp_path / "run" / TASK_EMBEDDING_FILE
    assert find_task_embedding(tmp_path / "run" / "adapter.safetensors") == tmp_path / "run" / TASK_EMBEDDING_FILE
    assert find_task_embedding(tmp_path) is None and find_task_embedding(None) is None
    # the built-in model's layout: NAME_task_embedding.safetensors beside the adapter file NAME.safetensors
    sibling = tmp_path / "run" / "moe_task_embedding.safetensors"
    (tmp_path / "run" / "moe.safetensors").touch()
    save_task_embedding(embedding, sibling)
    assert find_task_embedding(tmp_path / "run" / "moe.safetensors") == sibling
    assert load_task_embedding(tmp_path / "run").names == embedding.names


def test_labels_map_onto_the_taxonomy():
    assert taxonomy_task("removal") == "remove" and taxonomy_task("recolor") == "local"
    assert taxonomy_task(None) is None and taxonomy_task("no-such-label") is None


class FixedPredictor:
    def __init__(self, answer: str):
        self.answer = answer

    def predict(self, instructions: list[str]) -> list[str]:
        return [self.answer] * len(instructions)


def edit_array(editor, image, instruction="make it red", seed=0):
    return np.asarray(editor.edit(image, instruction, steps=2, seed=seed, width=16))


def test_editing_under_a_task(tiny_editor):
    image = random_image(16, 16, seed=1)
    embedding = TaskEmbedding.for_transformer(tiny_editor.pipe.transformer)
    plain = edit_array(tiny_editor, image)
    with pytest.raises(InputError, match="no task embedding"):
        tiny_editor.edit(image, "make it red", steps=2, width=16, task="add")
    tiny_editor.use_task_embedding(embedding, predictor=FixedPredictor("add"))
    try:
        assert np.array_equal(edit_array(tiny_editor, image), plain)  # zero vectors: the same edit
        random_rows(embedding, "add", seed=5)
        random_rows(embedding, "local", seed=6)
        added = np.asarray(tiny_editor.edit(image, "make it red", steps=2, seed=0, width=16, task="add"))
        assert not np.array_equal(added, plain)
        assert np.array_equal(edit_array(tiny_editor, image), added)  # predicted: "add"
        assert tiny_editor.resolve_tasks(["a", "b"], [None, "style"]) == ["add", "style"]
        with pytest.raises(InputError, match="unknown task"):
            tiny_editor.edit(image, "make it red", steps=2, width=16, task="no-such-task")
        tiny_editor.task_predictor = FixedPredictor("not-a-row")
        with pytest.raises(InputError, match="has no vector"):
            tiny_editor.resolve_tasks(["a"], [None])
        # a batch mixing tasks: each row gets its own vector, equal to the edits one by one
        requests = [(image, "make it red", 0, None, "local"), (image, "add a dot", 1, None, "add")]
        calls = []
        many = tiny_editor.edit_many(
            requests, steps=2, width=16, progress=lambda done, total: calls.append((done, total))
        )
        single = np.asarray(tiny_editor.edit(image, "add a dot", steps=2, seed=1, width=16, task="add"))
        assert np.abs(np.asarray(many[1]).astype(int) - single).max() <= 1
        local = np.asarray(tiny_editor.edit(image, "make it red", steps=2, seed=0, width=16, task="local"))
        assert np.abs(np.asarray(many[0]).astype(int) - local).max() <= 1
        assert not np.array_equal(local, added)
        assert calls[-1] == (2, 2)
        # early filtering conditions every candidate on the edit's task: the result is the winner's plain edit
        from diptych.scaling.early_filter import edit_with_early_filter
        from diptych.scaling.judges import CallableJudge

        judge = CallableJudge(lambda source, candidate, instruction: float(np.asarray(candidate).mean()))
        request = EditRequest(image, "add a dot", seed=3, task="add")
        result = edit_with_early_filter(
            tiny_editor, request, judge=judge, candidates=2, early_steps=1, steps=2, width=16
        )
        winner = np.asarray(tiny_editor.edit(image, "add a dot", steps=2, seed=result.seed, width=16, task="add"))
        assert np.abs(np.asarray(result.image, dtype=int) - winner).max() <= 1
        other_task = tiny_editor.edit(image, "add a dot", steps=2, seed=result.seed, width=16, task="local")
        assert not np.array_equal(np.asarray(other_task), winner)
    finally:
        tiny_editor.use_task_embedding(None)
    assert np.array_equal(edit_array(tiny_editor, image), plain)


# ---------------------------------------------------------------------------------------------- training


def write_pairs(folder: Path, tasks: list[str | None]) -> Path:
    (folder / "img").mkdir(parents=True)
    lines = []
    for i, task in enumerate(tasks):
        random_image(16, 16, seed=i).save(folder / f"img/s{i}.png")
        random_image(16, 16, seed=100 + i).save(folder / f"img/t{i}.png")
        row = {"source": f"img/s{i}.png", "instruction": f"edit {i}", "target": f"img/t{i}.png"}
        if task is not None:
            row["task"] = task
        lines.append(json.dumps(row))
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_training_learns_the_vectors_of_the_tasks_it_sees(tiny_base, tmp_path):
    from diptych.train.cli import main

    data = write_pairs(tmp_path / "pairs", ["add", "removal", None])
    out = tmp_path / "run"
    args = ["--base", tiny_base, "--data", str(data), "--output", str(out), "--max-steps", "4", "--task-embedding"]
    args += ["--resolution", "16", "--rank", "4", "--alpha", "4", "--batch-size", "3", "--optimizer", "adamw"]
    args += ["--lr", "1e-2", "--max-sequence-length", "64", "--num-validation", "0", "--checkpoint-every", "2"]
    args += ["--cpu", "-q"]
    assert main(args) == 0
    embedding = load_task_embedding(out / TASK_EMBEDDING_FILE)
    assert embedding.names == list(TASK_NAMES)
    moved = {name for name, row in zip(embedding.names, embedding.weight, strict=True) if row.any()}
    assert moved == {"add", "remove"}
    assert (out / "checkpoints/ckpt-4" / TASK_EMBEDDING_FILE).is_file()
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    # the checkpoint's trainable parameters hold the vectors too (exact resume)
    from safetensors.torch import load_file

    trainable = load_file(str(out / "checkpoints/ckpt-4/trainable.safetensors"))
    assert torch.equal(trainable["diptych_task_embedding.table.weight"], embedding.weight)
