"""Emu Edit data generation: instruction sources (a real HTTP chat server on 127.0.0.1, callables),
pair generation on the tiny Fill editor, the filters (a fake scorer, a tiny random CLIP), resume, the CLI."""

from __future__ import annotations

import argparse
import json
import string
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diptych.emu import datagen as dg
from diptych.emu.datagen_cli import add_datagen_parser, run_datagen
from diptych.errors import DiptychError
from diptych.scaling.judges import CLIPJudge
from diptych.shapes.dataset import sample_edit
from diptych.testing import FakeChatServer, save_tiny_clip, tiny_clip_tokenizer

GOOD = {
    "instruction": "make the ball red",
    "edited_object": "red ball",
    "new_caption": "a red ball on grass",
    "original_object": "blue ball",
}
FAST = dg.GenerationOptions(steps=2, guidance=3.5)


# ------------------------------------------------------------------------------------------ LLM server


@pytest.fixture
def server():
    with FakeChatServer(default="no more answers") as srv:
        yield srv


def llm(server: FakeChatServer, **kwargs) -> dg.LLMInstructionSource:
    return dg.LLMInstructionSource(server.url, "tiny-llm", http_retries=0, backoff_base=0, **kwargs)


def test_llm_good_json(server):
    server.script = [json.dumps(GOOD)]
    source = llm(server)
    got = source("a blue ball on grass", "local")
    assert got == dg.Instruction(**GOOD)
    (request,) = server.bodies
    assert request["model"] == "tiny-llm"
    messages = request["messages"]
    assert messages[0]["role"] == "system" and "JSON" in messages[0]["content"]
    # Few-shot turns, then the caption and the task.
    assert len(messages) == 2 + 2 * len(dg.FEW_SHOT)
    assert json.loads(messages[2]["content"])["instruction"] == dg.FEW_SHOT[0][2]["instruction"]
    assert messages[-1] == {"role": "user", "content": "Caption: a blue ball on grass\nTask: local"}
    source.close()


def test_llm_fenced_json_amid_prose(server):
    server.script = ["Sure! Here it is:\n```json\n" + json.dumps(GOOD, indent=2) + "\n```\nEnjoy."]
    assert llm(server)("a blue ball on grass", "local").new_caption == "a red ball on grass"


def test_llm_malformed_then_good_feeds_the_error_back(server):
    server.script = ['{"instruction": "make the ball red",, }', json.dumps(GOOD)]
    got = llm(server)("a blue ball on grass", "local")
    assert got.instruction == "make the ball red"
    assert len(server.requests) == 2
    retry = server.bodies[1]["messages"]
    assert retry[-2] == {"role": "assistant", "content": '{"instruction": "make the ball red",, }'}
    assert retry[-1]["role"] == "user" and "does not parse" in retry[-1]["content"]


def test_llm_missing_field_retries_then_fails(server):
    partial = {k: v for k, v in GOOD.items() if k != "new_caption"}
    server.script = [json.dumps(partial)] * 3
    with pytest.raises(dg.InstructionFormatError, match=r"new_caption.*3 attempt|3 attempt.*new_caption") as info:
        llm(server, retries=2)("a blue ball on grass", "local")
    assert len(server.requests) == 3
    assert "new_caption" in server.bodies[1]["messages"][-1]["content"]
    assert server.url in str(info.value) and "retries" in str(info.value)


def test_llm_empty_field_is_refused(server):
    server.script = [json.dumps({**GOOD, "edited_object": "  "})]
    with pytest.raises(dg.InstructionFormatError, match="edited_object"):
        llm(server, retries=0)("a blue ball", "local")


def test_llm_spec():
    source = dg.load_instruction_source("llm:http://127.0.0.1:9/v1?model=m&retries=4&timeout=5")
    assert isinstance(source, dg.LLMInstructionSource)
    assert source.retries == 4 and source.client.url == "http://127.0.0.1:9/v1/chat/completions"
    for bad, match in [
        ("llm:http://127.0.0.1:9/v1", "model"),
        ("llm:ftp://x/v1?model=m", "llm:http"),
        ("llm:http://h/v1?model=m&colour=red", "unknown option"),
        ("llm:http://h/v1?model=m&retries=x", "bad option"),
        ("ollama:x", "unknown source"),
    ]:
        with pytest.raises(dg.DatagenError, match=match):
            dg.load_instruction_source(bad)
    assert dg.load_instruction_source("shapes") is None


# ------------------------------------------------------------------------------------------ callables


@pytest.fixture
def fake_module(monkeypatch):
    module = types.ModuleType("dg_fake_module")

    def write_edit(caption: str, task: str) -> dict:
        return {**GOOD, "new_caption": f"{caption} ({task})"}

    def bad_edit(caption: str, task: str) -> dict:
        return {"instruction": "x"}

    module.write_edit = write_edit
    module.bad_edit = bad_edit
    module.keep_all = lambda source, edited, info: True
    module.not_a_bool = lambda source, edited, info: 0.5
    monkeypatch.setitem(sys.modules, "dg_fake_module", module)
    return module


def test_callable_source(fake_module):
    source = dg.load_instruction_source("python:dg_fake_module:write_edit")
    assert source("a cat", "style").new_caption == "a cat (style)"
    with pytest.raises(dg.InstructionFormatError, match=r"bad_edit.*edited_object"):
        dg.load_instruction_source("python:dg_fake_module:bad_edit")("a cat", "style")
    with pytest.raises(dg.DatagenError, match="no attribute"):
        dg.load_instruction_source("python:dg_fake_module:nope")
    with pytest.raises(dg.DatagenError, match="cannot import"):
        dg.load_instruction_source("python:no_such_module_xyz:f")


def test_parse_instruction_errors():
    with pytest.raises(dg.InstructionFormatError, match="no JSON object"):
        dg.parse_instruction("I cannot do that")
    with pytest.raises(dg.InstructionFormatError, match="JSON object"):
        dg.Instruction.from_mapping(["a"])
    assert dg.parse_instruction(json.dumps({**GOOD, "extra": 1})).instruction == GOOD["instruction"]


# ------------------------------------------------------------------------------------------ items


def test_shapes_items_carry_ground_truth():
    from diptych.shapes.world import caption, object_mask

    items = list(dg.shapes_items(6, seed=3, tasks=["recolor", "remove"], size=32))
    assert [i.id for i in items] == [f"shapes-3-{k:06d}" for k in range(6)]
    for item in items:
        assert item.task in ("recolor", "remove") and item.instruction is not None
        assert item.caption != item.instruction.new_caption
        assert item.precise is not None and item.precise.shape == (32, 32) and item.precise.max() > 0
        assert item.image.size == (32, 32)
    recolor = next(i for i in items if i.task == "recolor")
    from diptych.shapes.world import Scene

    scene = Scene.from_dict(recolor.meta["source_scene"])
    assert recolor.caption == caption(scene)
    touched = [k for k in range(len(scene.objects)) if object_mask(scene, k, 32).max() > 0]
    assert any(np.array_equal(recolor.precise, object_mask(scene, k, 32)) for k in touched)


def test_scene_locator_finds_a_named_object():
    from diptych.shapes.world import Scene, SceneObject, object_mask

    scene = Scene(
        "white",
        (SceneObject("circle", "red", "large", "top left"), SceneObject("square", "blue", "small", "center")),
    )
    locate = dg._scene_locator(scene, 32)
    hit = locate(dg.Instruction("make it green", "green circle", "x", "the red circle"))
    assert np.array_equal(hit, object_mask(scene, 0, 32))
    assert locate(dg.Instruction("make it green", "x", "x", "the sky")) is None


def test_input_items(tmp_path):
    Image.new("RGB", (16, 12), "blue").save(tmp_path / "a.png")
    mask = Image.new("L", (16, 12), 0)
    mask.paste(255, (4, 4, 8, 8))
    mask.save(tmp_path / "m.png")
    lines = [
        {"image": "a.png", "caption": "a blue wall", "mask": "m.png", "id": "wall"},
        {"image": "a.png", "caption": "a blue sky", "task": "style"},
    ]
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    items = list(dg.input_items(tmp_path / "in.jsonl", tasks=["local"]))
    assert [i.id for i in items] == ["wall", "input-000001"]
    assert items[0].task == "local" and items[1].task == "style"
    assert items[0].precise.shape == (12, 16) and items[0].precise[5, 5] == 1.0 and items[0].precise[0, 0] == 0
    assert items[1].precise is None
    (tmp_path / "bad.jsonl").write_text(json.dumps({"image": "a.png"}) + "\n")
    with pytest.raises(dg.DatagenError, match="caption"):
        list(dg.input_items(tmp_path / "bad.jsonl"))


# ------------------------------------------------------------------------------------------ generation


def test_generate_pair_keeps_pixels_outside_the_soft_mask(tiny_editor):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    precise = np.zeros((32, 32), np.float32)
    precise[8:16, 8:16] = 1.0
    options = dg.GenerationOptions(steps=2, guidance=3.5, dilate_px=1, blur_sigma=1.0)
    source, edited, m = dg.generate_pair(tiny_editor, image, "make it red", precise, seed=1, options=options)
    assert source.size == edited.size == (32, 32) and m.shape == (32, 32)
    src, out = np.asarray(source), np.asarray(edited)
    outside = m == 0
    assert outside.sum() > 500 and np.array_equal(src[outside], out[outside])
    assert (m > 0.9).sum() >= 36 and not np.array_equal(src[m > 0.9], out[m > 0.9])  # the edit happened
    # Deterministic in the seed.
    again = dg.generate_pair(tiny_editor, image, "make it red", precise, seed=1, options=options)[1]
    assert np.array_equal(np.asarray(again), out)
    with pytest.raises(dg.DatagenError, match="mask"):
        dg.generate_pair(tiny_editor, image, "x", precise[:10], seed=1, options=options)


def test_end_to_end_shapes_and_resume(tiny_editor, tmp_path):
    from diptych.train.data import open_dataset

    out = tmp_path / "gen"
    report = dg.run_datagen(tiny_editor, dg.shapes_items(3, seed=0, size=32), out, options=FAST)
    assert (report.written, report.rejected, report.skipped) == (3, 0, 0)
    dataset = open_dataset(out)
    assert len(dataset) == 3
    sample = dataset[0]
    assert sample.source.size == sample.target.size == sample.mask.size == (32, 32)
    rows = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
    assert {"source", "instruction", "target", "task", "mask", "meta"} <= set(rows[0])
    assert {"caption", "new_caption", "edited_object"} <= set(rows[0]["meta"])
    before = (out / "data.jsonl").read_bytes()
    stamp = (out / rows[0]["target"]).stat().st_mtime_ns

    again = dg.run_datagen(tiny_editor, dg.shapes_items(4, seed=0, size=32), out, options=FAST)
    assert (again.written, again.skipped) == (1, 3)
    assert (out / "data.jsonl").read_bytes().startswith(before)
    assert (out / rows[0]["target"]).stat().st_mtime_ns == stamp
    assert len(open_dataset(out)) == 4


def test_torn_last_line_is_cut_on_resume(tiny_editor, tmp_path):
    out = tmp_path / "gen"
    dg.run_datagen(tiny_editor, dg.shapes_items(1, seed=0, size=32), out, options=FAST)
    with (out / "data.jsonl").open("a") as handle:
        handle.write('{"id": "shapes-0-000001", "sour')  # a crash in the middle of an append
    report = dg.run_datagen(tiny_editor, dg.shapes_items(2, seed=0, size=32), out, options=FAST)
    assert (report.written, report.skipped) == (1, 1)
    ids = [json.loads(line)["id"] for line in (out / "data.jsonl").read_text().splitlines()]
    assert ids == ["shapes-0-000000", "shapes-0-000001"]


def test_filter_drops_and_counts(tiny_editor, tmp_path):
    seen: list[str] = []

    def scorer(candidate: dg.PairCandidate) -> dg.FilterVerdict:
        seen.append(candidate.instruction.instruction)
        keep = len(seen) % 2 == 1  # keep the 1st and 3rd, drop the 2nd and 4th
        return dg.FilterVerdict(keep, {"fake": float(len(seen))}, "" if keep else "fake_score too low")

    out = tmp_path / "gen"
    report = dg.run_datagen(tiny_editor, dg.shapes_items(4, seed=1, size=32), out, pair_filter=scorer, options=FAST)
    assert (report.written, report.rejected) == (2, 2)
    assert report.reasons["fake_score"] == 2
    kept = [json.loads(x) for x in (out / "data.jsonl").read_text().splitlines()]
    dropped = [json.loads(x) for x in (out / "rejected.ndjson").read_text().splitlines()]
    assert [r["id"] for r in kept] == ["shapes-1-000000", "shapes-1-000002"]
    assert [r["id"] for r in dropped] == ["shapes-1-000001", "shapes-1-000003"]
    assert dropped[0]["scores"] == {"fake": 2.0} and kept[0]["meta"]["scores"] == {"fake": 1.0}
    assert not list((out / "images").glob("shapes-1-000001_*"))
    # A rerun neither regenerates kept pairs nor retries rejected ones.
    rerun = dg.run_datagen(tiny_editor, dg.shapes_items(4, seed=1, size=32), out, pair_filter=scorer, options=FAST)
    assert (rerun.written, rerun.rejected, rerun.skipped) == (0, 0, 4) and len(seen) == 4


def test_callable_filter_and_bad_return(tiny_editor, tmp_path, fake_module):
    assert dg.load_filter("none") is None
    keep_all = dg.load_filter("python:dg_fake_module:keep_all")
    report = dg.run_datagen(
        tiny_editor, dg.shapes_items(1, size=32), tmp_path / "a", pair_filter=keep_all, options=FAST
    )
    assert report.written == 1
    with pytest.raises(dg.DatagenError, match=r"returned 0\.5"):
        dg.run_datagen(
            tiny_editor,
            dg.shapes_items(1, size=32),
            tmp_path / "b",
            pair_filter=dg.load_filter("python:dg_fake_module:not_a_bool"),
            options=FAST,
        )
    with pytest.raises(dg.DatagenError, match="unknown filter"):
        dg.load_filter("dino")


def test_llm_source_end_to_end_with_failures_retried_next_run(tiny_editor, tmp_path, server):
    source = llm(server, retries=0)
    server.script = [json.dumps(GOOD), "not json"]
    out = tmp_path / "gen"
    report = dg.run_datagen(tiny_editor, dg.scene_items(2, size=32), out, source=source, options=FAST)
    assert (report.written, report.failed) == (1, 1)
    server.script = [json.dumps(GOOD)]
    report = dg.run_datagen(tiny_editor, dg.scene_items(2, size=32), out, source=source, options=FAST)
    assert (report.written, report.skipped) == (1, 1)
    rows = [json.loads(x) for x in (out / "data.jsonl").read_text().splitlines()]
    assert [r["instruction"] for r in rows] == [GOOD["instruction"]] * 2
    assert rows[0]["meta"]["new_caption"] == GOOD["new_caption"]


# ------------------------------------------------------------------------------------------ CLIP filter


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    """A tiny random CLIP with a letters-only BPE vocabulary, saved in the layout from_pretrained reads."""
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), tokenizer=tiny_clip_tokenizer(string.ascii_lowercase))


def test_clip_filter_scores_and_thresholds(clip_dir):
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    edited = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    instruction = dg.Instruction(**GOOD)
    candidate = dg.PairCandidate(source, edited, instruction, "a blue ball on grass", "local")
    lenient = dg.load_filter(f"clip:{clip_dir}?min_direction=-1&min_image=-1")
    verdict = lenient(candidate)
    assert verdict.keep and set(verdict.scores) == {"clip_dir", "clip_i", "clip_out"}
    assert all(-1.0001 <= v <= 1.0001 for v in verdict.scores.values())

    # The scores recomputed from the benchmarks' CLIP embeddings (normalised, official preprocessing): the
    # filter's CLIP-dir, CLIP-I and CLIP-out are the metrics of the same names.
    clip = lenient.clip
    emb = clip.image_embeddings([source, edited])
    t0, t1 = clip.text_embeddings(["a blue ball on grass", GOOD["new_caption"]])
    cos = torch.nn.functional.cosine_similarity
    assert verdict.scores["clip_i"] == pytest.approx(float(cos(emb[0], emb[1], dim=0)), abs=1e-5)
    assert verdict.scores["clip_dir"] == pytest.approx(float(cos(emb[1] - emb[0], t1 - t0, dim=0)), abs=1e-5)
    assert verdict.scores["clip_out"] == pytest.approx(float(cos(emb[1], t1, dim=0)), abs=1e-5)

    judge = CLIPJudge.from_pretrained(str(clip_dir), device="cpu")  # a CLIP judge's model serves too
    strict = dg.CLIPPairFilter(judge, min_direction=-1, min_image=1.0)
    dropped = strict(candidate)
    assert not dropped.keep and dropped.reason.startswith("clip_i")
    # An unchanged image has no direction (score 0) and fails the default threshold.
    same = dg.CLIPPairFilter(judge)(dg.PairCandidate(source, source.copy(), instruction, "a", "local"))
    assert not same.keep and same.scores["clip_dir"] == 0.0 and "clip_dir" in same.reason
    with pytest.raises(dg.DatagenError, match="unknown option"):
        dg.load_filter(f"clip:{clip_dir}?min_dir=0.1")
    with pytest.raises(dg.DatagenError, match="min_image"):
        dg.CLIPPairFilter(judge, min_image=2.0)


# ------------------------------------------------------------------------------------------ CLI


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="diptych")
    add_datagen_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_end_to_end(tiny_base, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["datagen", "--source", "shapes", "--n", "2", "--out", str(out), "--base", tiny_base, "--filter", "none"]
    argv += ["--steps", "1", "--size", "32", "--width", "32", "--device", "cpu", "--dtype", "fp32", "--quiet"]
    argv += ["--tasks", "recolor", "--mask-weights", "0.6", "0.3", "0.1"]
    args = parse(argv)
    assert run_datagen(args) == 0
    assert "2 written" in capsys.readouterr().err
    rows = [json.loads(x) for x in (out / "data.jsonl").read_text().splitlines()]
    assert [r["task"] for r in rows] == ["recolor", "recolor"]
    assert rows[0]["meta"]["soft_mask"]["weights"] == [0.6, 0.3, 0.1]
    assert run_datagen(parse(argv)) == 0
    assert "2 already done" in capsys.readouterr().err


def test_cli_help_and_bad_options(capsys):
    with pytest.raises(SystemExit):
        parse(["datagen", "--help"])
    assert "diptych datagen --source shapes" in capsys.readouterr().out
    base = ["datagen", "--out", "x", "--base", "nowhere"]
    with pytest.raises(DiptychError, match="--n"):
        run_datagen(parse([*base, "--source", "shapes"]))
    with pytest.raises(DiptychError, match="inputs"):
        run_datagen(parse([*base, "--source", "shapes", "--n", "2", "--inputs", "a.jsonl"]))
    with pytest.raises(DiptychError, match="unknown source"):
        run_datagen(parse([*base, "--source", "gpt", "--n", "2"]))
    with pytest.raises(DiptychError, match="resize_all"):  # a bad ShapesEdit op fails before loading a model
        run_datagen(parse([*base, "--source", "shapes", "--n", "2", "--tasks", "resize_all"]))
    with pytest.raises(DiptychError, match="does not exist"):
        run_datagen(parse([*base, "--source", "python:json:loads", "--inputs", "missing.jsonl"]))
    with pytest.raises(DiptychError, match="weights"):
        run_datagen(parse([*base, "--source", "shapes", "--n", "2", "--mask-weights", "0", "0", "0"]))


def test_shapes_filter_is_the_builtin_judge():
    strict = dg.load_filter("shapes?min_score=100")
    assert isinstance(strict, dg.ShapesPairFilter) and strict.min_score == 100
    example = sample_edit("test", 0, phrasings="all")
    instruction = dg.Instruction(example.instruction, "the object", "a new caption", "the object")
    verdict = strict(dg.PairCandidate(example.source_image, example.target_image, instruction, "a caption", "x"))
    assert not verdict.keep and "judge_logit" in verdict.scores and "< 100" in verdict.reason
    lenient = dg.ShapesPairFilter(strict.judge, min_score=-100)
    assert lenient(dg.PairCandidate(example.source_image, example.target_image, instruction, "a", "x")).keep
    with pytest.raises(dg.DatagenError, match="unknown option"):
        dg.load_filter("shapes?threshold=1")
    with pytest.raises(dg.DatagenError, match="min_score must be a number"):
        dg.load_filter("shapes?min_score=high")
