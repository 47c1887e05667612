"""ShapesEdit splits, sampler and JSONL export / import."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diptych.shapes.dataset import (
    SPLITS,
    DatasetError,
    load_dataset,
    make_dataset,
    resolve_ops,
    sample_edit,
    scene_split,
)
from diptych.shapes.edits import OPS, edit_region, judge_edit
from diptych.shapes.world import render


def _key(example) -> str:  # type: ignore[no-untyped-def]
    return json.dumps(example.source_scene.to_dict(), sort_keys=True)


def test_sampling_is_deterministic() -> None:
    for split in SPLITS:
        for index in (0, 7, 123):
            a, b = sample_edit(split, index), sample_edit(split, index)
            assert a.edit == b.edit
            assert a.source_image.tobytes() == b.source_image.tobytes()
            assert a.target_image.tobytes() == b.target_image.tobytes()
            assert a.mask_image.tobytes() == b.mask_image.tobytes()


def test_splits_and_seeds_are_disjoint() -> None:
    keys = {}
    for split in SPLITS:
        examples = [sample_edit(split, i) for i in range(60)]
        assert all(scene_split(e.source_scene) == split for e in examples)
        keys[split] = {_key(e) for e in examples}
    assert not keys["train"] & keys["val"]
    assert not keys["train"] & keys["test"]
    assert not keys["val"] & keys["test"]
    same_index = [sample_edit("val", i, seed=0).edit != sample_edit("val", i, seed=1).edit for i in range(20)]
    assert all(same_index)


def test_scene_split_proportions() -> None:
    from diptych.shapes.world import random_scene

    rng = np.random.default_rng(0)
    counts = {s: 0 for s in SPLITS}
    for _ in range(2000):
        counts[scene_split(random_scene(rng))] += 1
    assert 0.75 < counts["train"] / 2000 < 0.85
    assert 0.07 < counts["val"] / 2000 < 0.13
    assert 0.07 < counts["test"] / 2000 < 0.13


def test_example_fields() -> None:
    example = sample_edit("test", 3, size=48)
    assert example.task == example.edit.op in OPS
    assert example.phrasing in ("seen", "heldout")
    assert example.instruction == example.edit.instruction
    assert example.source_image.size == (48, 48) and example.source_image.mode == "RGB"
    assert example.target_image.tobytes() == render(example.target_scene, 48).tobytes()
    mask = np.asarray(example.mask_image)
    assert example.mask_image.mode == "L"
    assert np.array_equal(mask == 255, edit_region(example.edit, 48))
    assert set(np.unique(mask)) <= {0, 255}


def test_train_uses_only_seen_phrasings() -> None:
    assert all(sample_edit("train", i).phrasing == "seen" for i in range(300))
    with pytest.raises(DatasetError, match="only seen phrasings"):
        sample_edit("train", 0, phrasings="heldout")
    with pytest.raises(DatasetError, match="only seen phrasings"):
        sample_edit("train", 0, phrasings="all")
    val = [sample_edit("val", i).phrasing for i in range(120)]
    assert "seen" in val and "heldout" in val
    assert all(sample_edit("test", i, phrasings="heldout").phrasing == "heldout" for i in range(40))
    assert all(sample_edit("test", i, phrasings="seen").phrasing == "seen" for i in range(40))


def test_op_filters() -> None:
    assert all(sample_edit("train", i, ops=["recolor"]).task == "recolor" for i in range(30))
    tasks = {sample_edit("train", i, exclude_ops=["invert"]).task for i in range(200)}
    assert "invert" not in tasks and len(tasks) == len(OPS) - 1
    assert resolve_ops(["move", "add"]) == ("add", "move")  # registry order, whatever the given order
    with pytest.raises(DatasetError, match="no edit op left"):
        resolve_ops(["move"], ["move"])
    with pytest.raises(DatasetError, match="not a single string"):
        resolve_ops("move")
    with pytest.raises(ValueError, match="unknown edit op"):
        sample_edit("train", 0, ops=["blur"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "dev", "index": 0}, "unknown split"),
        ({"split": "val", "index": -1}, "non-negative"),
        ({"split": "val", "index": 0, "seed": -3}, "non-negative"),
        ({"split": "val", "index": 0, "phrasings": "most"}, "phrasings must be"),
    ],
)
def test_sample_edit_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        sample_edit(**kwargs)


def test_export_and_load_round_trip(tmp_path: Path) -> None:
    out = make_dataset("val", 12, 5, tmp_path / "val", size=48)
    assert out == tmp_path / "val"
    lines = (out / "data.jsonl").read_text().splitlines()
    assert len(lines) == 12
    first = json.loads(lines[0])
    assert first["source"] == "images/000000_source.png"
    assert first["target"] == "images/000000_target.png"
    assert first["mask"] == "images/000000_mask.png"
    assert {"split", "index", "source_scene", "target_scene", "params"} <= set(first["meta"])
    assert not [p for p in out.rglob("*") if p.name.startswith(".")], "temporary files left behind"

    records = load_dataset(out)
    assert len(records) == 12 and len({r.id for r in records}) == 12
    for i, record in enumerate(records):
        example = sample_edit("val", i, seed=5, size=48)
        assert record.edit == example.edit
        assert (record.task, record.phrasing, record.instruction) == (
            example.task,
            example.phrasing,
            example.instruction,
        )
        source, target, mask = record.load_images()
        assert source.tobytes() == render(record.source_scene, 48).tobytes()
        assert target.tobytes() == render(record.target_scene, 48).tobytes()
        assert np.array_equal(np.asarray(mask) == 255, edit_region(record.edit, 48))
        assert judge_edit(target, record.edit, record.source_scene).success
        assert not judge_edit(source, record.edit).success


def test_export_options(tmp_path: Path) -> None:
    out = make_dataset("train", 6, 0, tmp_path / "d", ops=["recolor", "move"])
    assert {r.task for r in load_dataset(out)} <= {"recolor", "move"}
    assert all(r.phrasing == "seen" for r in load_dataset(out))
    with pytest.raises(DatasetError, match="already exists"):
        make_dataset("train", 6, 0, out)
    make_dataset("train", 3, 1, out, overwrite=True)
    assert len(load_dataset(out)) == 3
    other = make_dataset("train", 6, 1, tmp_path / "e")
    a = [r.edit for r in load_dataset(tmp_path / "d")]
    b = [r.edit for r in load_dataset(other)][:3]
    assert a == b  # same seed, same first examples
    with pytest.raises(DatasetError, match="positive int"):
        make_dataset("train", 0, 0, tmp_path / "f")


def _rewrite(directory: Path, line_no: int, change) -> None:  # type: ignore[no-untyped-def]
    path = directory / "data.jsonl"
    lines = path.read_text().splitlines()
    lines[line_no - 1] = change(lines[line_no - 1])
    path.write_text("\n".join(lines) + "\n")


def _edit_json(line: str, fn) -> str:  # type: ignore[no-untyped-def]
    data = json.loads(line)
    fn(data)
    return json.dumps(data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda line: line[:-3], "not valid JSON"),
        (lambda line: "[1, 2]", "expected a JSON object"),
        (lambda line: _edit_json(line, lambda d: d.pop("instruction")), "missing field 'instruction'"),
        (lambda line: _edit_json(line, lambda d: d["meta"].update(index="3")), "'index' must be int"),
        (lambda line: _edit_json(line, lambda d: d.update(phrasing="new")), "phrasing must be"),
        (lambda line: _edit_json(line, lambda d: d.update(task="blur")), "unknown edit op"),
        (lambda line: _edit_json(line, lambda d: d.update(source="../x.png")), "must be relative"),
        (lambda line: _edit_json(line, lambda d: d.update(target="images/nope.png")), "does not exist"),
        (
            lambda line: _edit_json(line, lambda d: d["meta"]["source_scene"].update(background="pink")),
            "unknown background",
        ),
        (lambda line: _edit_json(line, lambda d: d["meta"].update(phrasing_index=99)), "out of range"),
    ],
)
def test_load_reports_the_bad_line(tmp_path: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    out = make_dataset("test", 3, 0, tmp_path / "t")
    _rewrite(out, 2, change)
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset(out)
    assert "line 2" in str(info.value)


def test_load_rejects_missing_folder_and_duplicate_ids(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "missing")
    out = make_dataset("test", 2, 0, tmp_path / "t")
    first = (out / "data.jsonl").read_text().splitlines()[0]
    (out / "data.jsonl").write_text(first + "\n\n" + first + "\n")
    with pytest.raises(DatasetError, match="line 3: duplicate id"):
        load_dataset(out)


def test_png_files_are_images_of_the_right_kind(tmp_path: Path) -> None:
    out = make_dataset("val", 2, 0, tmp_path / "v")
    images = out / "images"
    with Image.open(images / "000001_mask.png") as mask, Image.open(images / "000001_source.png") as src:
        assert mask.mode == "L" and src.mode == "RGB" and src.size == (64, 64)
