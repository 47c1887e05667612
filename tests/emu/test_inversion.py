"""Task inversion on the tiny Fill model: only the new vector learns, the examples' loss falls, and
`diptych invert-task` writes a loadable embedding that extends the adapter's."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from diptych.emu.inversion import invert_task, task_loss
from diptych.emu.inversion_cli import add_invert_task_parser
from diptych.emu.task_embedding import TASK_EMBEDDING_FILE, TaskEmbedding, load_task_embedding, save_task_embedding
from diptych.encoders import FluxPromptEncoder
from diptych.errors import InputError
from diptych.testing import build_tiny_fill_pipeline, random_image


def examples(count: int = 1) -> list[tuple]:
    return [(random_image(16, 16, seed=i), f"sketch it {i}", random_image(16, 16, seed=50 + i)) for i in range(count)]


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_fill_pipeline(0)


@pytest.fixture(scope="module")
def encoder(pipe):
    return FluxPromptEncoder(pipe, max_sequence_length=64)


def test_only_the_new_vector_learns_and_the_loss_falls(pipe, encoder):
    transformer = pipe.transformer
    base = TaskEmbedding.for_transformer(transformer)
    with torch.no_grad():
        base.weight.copy_(torch.randn(base.weight.shape, generator=torch.Generator().manual_seed(0)))
    base_rows = base.weight.detach().clone()
    params = {n: p.detach().clone() for n, p in transformer.named_parameters()}
    flags = {n: p.requires_grad for n, p in transformer.named_parameters()}
    data = examples(1)
    before = task_loss(pipe, data, base, None, resolution=16, encoder=encoder)
    losses = []
    result = invert_task(
        pipe,
        data,
        "sketch",
        steps=60,
        lr=0.2,
        base_embedding=base,
        resolution=16,
        encoder=encoder,
        callback=lambda step, total, loss: losses.append((step, total, loss)),
    )
    after = task_loss(pipe, data, result, "sketch", resolution=16, encoder=encoder)
    assert after < 0.97 * before
    assert [s for s, _, _ in losses] == list(range(1, 61)) and losses[-1][1] == 60
    # everything else is bit-identical: model weights, their flags, the base rows (in the result and the base)
    for name, p in transformer.named_parameters():
        assert torch.equal(p, params[name]), name
        assert p.requires_grad == flags[name]
    assert not transformer.training
    assert result.names == [*base.names, "sketch"]
    assert torch.equal(result.weight[:-1], base_rows) and torch.equal(base.weight, base_rows)
    assert result.weight[-1].any() and base is not result


def test_inversion_without_a_base_and_from_an_existing_task(pipe, encoder):
    alone = invert_task(pipe, examples(2), "sketch", steps=2, lr=0.1, resolution=16, batch_size=2, encoder=encoder)
    assert alone.names == ["sketch"] and alone.weight.any()
    base = TaskEmbedding.for_transformer(pipe.transformer)
    with torch.no_grad():
        base.weight[base.index("style")] = 5.0
    started = invert_task(
        pipe,
        examples(1),
        "sketch",
        steps=1,
        lr=1e-6,
        base_embedding=base,
        init_task="style",
        encoder=encoder,
        resolution=16,
    )
    assert torch.allclose(started.weight[-1], torch.full((base.dim,), 5.0), atol=1e-4)


def test_bad_inversion_requests_are_refused(pipe, encoder):
    base = TaskEmbedding.for_transformer(pipe.transformer)
    with pytest.raises(InputError, match="already exists"):
        invert_task(pipe, examples(), "add", steps=1, base_embedding=base, resolution=16, encoder=encoder)
    with pytest.raises(InputError, match="at least one"):
        invert_task(pipe, [], "sketch", steps=1, resolution=16, encoder=encoder)
    with pytest.raises(InputError, match="multiples of 4"):
        invert_task(pipe, examples(), "sketch", steps=1, resolution=18, encoder=encoder)
    with pytest.raises(InputError, match="steps"):
        invert_task(pipe, examples(), "sketch", steps=0, resolution=16, encoder=encoder)
    with pytest.raises(InputError, match="base_embedding"):
        invert_task(pipe, examples(), "sketch", steps=1, init_task="add", resolution=16, encoder=encoder)


def write_examples(folder: Path, count: int = 2) -> Path:
    (folder / "img").mkdir(parents=True)
    lines = []
    for i, (source, instruction, target) in enumerate(examples(count)):
        source.save(folder / f"img/s{i}.png")
        target.save(folder / f"img/t{i}.png")
        lines.append(json.dumps({"source": f"img/s{i}.png", "instruction": instruction, "target": f"img/t{i}.png"}))
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def cli(argv: list[str]) -> int:
    from diptych.cli import run_guarded

    parser = argparse.ArgumentParser(prog="diptych")
    add_invert_task_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return run_guarded(args.func, args)


def test_cli_writes_a_loadable_embedding_that_extends_the_adapters(tiny_base, tmp_path, capsys):
    data = write_examples(tmp_path / "ex")
    out = tmp_path / "sketch.safetensors"
    common = ["--base", tiny_base, "--examples", str(data), "--name", "sketch", "--steps", "2", "--resolution", "16"]
    common += ["--device", "cpu", "--dtype", "fp32", "-q"]
    assert cli(["invert-task", *common, "--output", str(out)]) == 0
    alone = load_task_embedding(out)
    assert alone.names == ["sketch"] and alone.weight.any()
    assert "learned from 2 example(s)" in capsys.readouterr().err
    assert cli(["invert-task", *common, "--output", str(out)]) == 2  # exists, no --overwrite
    # an adapter folder's task embedding is extended by default
    from diffusers import FluxTransformer2DModel

    from diptych.testing import save_random_lora

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    transformer = FluxTransformer2DModel.from_pretrained(tiny_base, subfolder="transformer")
    save_random_lora(adapter / "pytorch_lora_weights.safetensors", transformer)
    base = TaskEmbedding.for_transformer(transformer)
    with torch.no_grad():
        base.weight[0] = 1.0
    save_task_embedding(base, adapter / TASK_EMBEDDING_FILE)
    out2 = tmp_path / "extended.safetensors"
    assert cli(["invert-task", *common, "--lora", str(adapter), "--output", str(out2)]) == 0
    extended = load_task_embedding(out2)
    assert extended.names == [*base.names, "sketch"] and torch.equal(extended.weight[:-1], base.weight)
    assert cli(["invert-task", *common, "--output", str(tmp_path / "x.bin")]) == 2


def test_help_shows_an_example(capsys):
    with pytest.raises(SystemExit):
        cli(["invert-task", "--help"])
    assert "diptych invert-task --base" in capsys.readouterr().out
