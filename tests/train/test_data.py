"""Dataset readers on tiny fixture files in the real layouts, including bad samples skipped and counted."""

from __future__ import annotations

import io
import json
import sys
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from diptych.testing import random_image
from diptych.train.data import (
    CallableDataset,
    DataError,
    EditSample,
    HubMagicBrush,
    JsonlDataset,
    MagicBrushDataset,
    OmniEditDataset,
    SampleError,
    TaskShareDataset,
    detect_format,
    open_dataset,
    shapes_dataset,
    share_fraction,
)

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def cell(data: bytes | None, path: str | None = None) -> dict:
    return {"bytes": data, "path": path}


# ------------------------------------------------------------------------------------------------ JSONL


def test_jsonl_reads_samples_relative_to_the_file_and_ignores_extra_keys(tmp_path):
    (tmp_path / "images").mkdir()
    random_image(20, 12, seed=1).save(tmp_path / "images/a.png")
    random_image(40, 24, seed=2).save(tmp_path / "images/b.png")
    Image.new("L", (20, 12), 255).save(tmp_path / "images/m.png")
    row = {
        "id": "x",
        "source": "images/a.png",
        "instruction": "  make it red ",
        "target": "images/b.png",
        "task": "recolor",
        "mask": "images/m.png",
        "meta": {"anything": 1},
    }
    (tmp_path / "data.jsonl").write_text(json.dumps(row) + "\n\n", encoding="utf-8")
    dataset = open_dataset(tmp_path)  # the folder: data.jsonl is found, format detected
    assert isinstance(dataset, JsonlDataset) and len(dataset) == 1
    sample = dataset[0]
    assert sample.instruction == "make it red"
    assert sample.task == "recolor"
    assert sample.source.size == (20, 12) and sample.target.size == (40, 24)  # same aspect: accepted
    assert sample.mask is not None and sample.mask.mode == "L"
    assert np.array_equal(np.asarray(sample.source), np.asarray(random_image(20, 12, seed=1)))


def test_jsonl_bad_samples_are_skipped_and_counted(tmp_path, make_pairs):
    folder = make_pairs(tmp_path / "d", 2)
    (folder / "img/corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    good = (folder / "img/s0.png").read_bytes()
    (folder / "img/truncated.png").write_bytes(good[: len(good) // 2])
    random_image(32, 16, seed=5).save(folder / "img/wide.png")
    lines = (folder / "data.jsonl").read_text().splitlines()
    lines += [
        "{not json",
        json.dumps({"source": "img/s0.png", "target": "img/t0.png"}),  # no instruction
        json.dumps({"source": "img/missing.png", "instruction": "x", "target": "img/t0.png"}),
        json.dumps({"source": "img/corrupt.png", "instruction": "x", "target": "img/t0.png"}),
        json.dumps({"source": "img/truncated.png", "instruction": "x", "target": "img/t0.png"}),
        json.dumps({"source": "img/s0.png", "instruction": "x", "target": "img/wide.png"}),  # aspect 2 vs 1
        json.dumps({"source": "img/s0.png", "instruction": "   ", "target": "img/t0.png"}),
        json.dumps({"source": 3, "instruction": "x", "target": "img/t0.png"}),
    ]
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    dataset = JsonlDataset(folder / "data.jsonl")
    assert len(dataset) == 10
    samples = list(dataset)
    assert [s.instruction for s in samples] == ["edit number 0", "edit number 1"]
    assert sum(dataset.skipped.values()) == 8
    assert dataset.skipped["aspect"] == 1
    for index in range(2, 10):
        with pytest.raises(SampleError, match="line"):
            dataset.read(index)


def test_jsonl_dataset_level_problems_raise(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"no \.parquet"):
        open_dataset(empty, "magicbrush")
    (empty / "data.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no lines"):
        JsonlDataset(empty)
    (empty / "data.jsonl").write_text("[1]\n")
    with pytest.raises(DataError, match="no line is a usable sample"):
        JsonlDataset(empty)
    two = tmp_path / "two"
    two.mkdir()
    (two / "a.jsonl").write_text("{}\n")
    (two / "b.jsonl").write_text("{}\n")
    with pytest.raises(DataError, match="several"):
        JsonlDataset(two)
    with pytest.raises(DataError, match="data format"):
        open_dataset(two, "coco")


# ----------------------------------------------------------------------------------------- MagicBrush


def write_magicbrush(path: Path, rows: list[dict], row_group_size: int = 2) -> Path:
    table = pa.table(
        {
            "img_id": pa.array([r["img_id"] for r in rows], pa.string()),
            "turn_index": pa.array([1] * len(rows), pa.int32()),
            "source_img": pa.array([r["source_img"] for r in rows], IMAGE),
            "mask_img": pa.array([r["mask_img"] for r in rows], IMAGE),
            "instruction": pa.array([r["instruction"] for r in rows], pa.string()),
            "target_img": pa.array([r["target_img"] for r in rows], IMAGE),
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def magicbrush_rows() -> list[dict]:
    rows = []
    for i in range(5):
        mask = Image.new("RGBA", (32, 64), (0, 0, 0, 255))
        rows.append(
            {
                "img_id": str(i),
                "source_img": cell(png(random_image(32, 64, seed=i))),
                "mask_img": cell(png(mask)),
                "instruction": f"put a hat on it {i}",
                "target_img": cell(png(random_image(32, 64, seed=50 + i))),
            }
        )
    rows[3]["target_img"] = cell(b"garbage bytes")  # corrupt target
    return rows


def test_magicbrush_parquet_streams_row_groups_and_crops_the_bottom(tmp_path):
    path = write_magicbrush(tmp_path / "train-00000-of-00001.parquet", magicbrush_rows())
    assert detect_format(path) == "magicbrush"
    dataset = MagicBrushDataset(tmp_path, with_masks=True)
    assert isinstance(open_dataset(tmp_path), MagicBrushDataset)
    assert open_dataset(tmp_path).read(1).mask is None  # masks are not decoded unless asked for
    assert len(dataset) == 5 and dataset.blocks() == [(0, 2), (2, 4), (4, 5)]
    sample = dataset.read(1)
    assert sample.instruction == "put a hat on it 1"
    # h/32 = 2 bottom rows dropped, as the official training code does
    assert sample.source.size == (32, 62) and sample.target.size == (32, 62) and sample.mask.size == (32, 62)
    expected = np.asarray(random_image(32, 64, seed=1))[:62]
    assert np.array_equal(np.asarray(sample.source), expected)
    assert MagicBrushDataset(path, crop_bottom=False).read(1).source.size == (32, 64)
    with pytest.raises(SampleError, match="target image"):
        dataset.read(3)
    samples = list(dataset)
    assert len(samples) == 4 and sum(dataset.skipped.values()) == 1


def test_magicbrush_wrong_columns_and_bad_file(tmp_path):
    pq.write_table(pa.table({"image": [b"x"], "caption": ["y"]}), tmp_path / "x.parquet")
    with pytest.raises(DataError, match="cannot tell the layout"):
        detect_format(tmp_path / "x.parquet")
    with pytest.raises(DataError, match="no column source_img"):
        MagicBrushDataset(tmp_path / "x.parquet")
    (tmp_path / "y.parquet").write_bytes(b"PAR1 not parquet")
    with pytest.raises(DataError, match="not a readable parquet"):
        MagicBrushDataset(tmp_path / "y.parquet")


def test_magicbrush_from_hub_uses_datasets_when_installed(monkeypatch):
    rows = [{"source_img": random_image(8, 64, seed=0), "target_img": random_image(8, 64, seed=1), "instruction": "x"}]
    calls = []

    def load_dataset(repo, split):
        calls.append((repo, split))
        return rows

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    dataset = HubMagicBrush.from_hub("dev")
    assert calls == [("osunlp/MagicBrush", "dev")]
    assert len(dataset) == 1 and dataset.read(0).source.size == (8, 62)
    monkeypatch.setitem(sys.modules, "datasets", None)  # "not installed"
    with pytest.raises(DataError, match="pip install datasets"):
        HubMagicBrush.from_hub()


# ------------------------------------------------------------------------------------------- OmniEdit


def write_omniedit(path: Path, rows: list[dict]) -> Path:
    table = pa.table(
        {
            "omni_edit_id": pa.array([str(i) for i in range(len(rows))], pa.string()),
            "task": pa.array([r["task"] for r in rows], pa.string()),
            "src_img": pa.array([r["src_img"] for r in rows], IMAGE),
            "edited_img": pa.array([r["edited_img"] for r in rows], IMAGE),
            "edited_prompt_list": pa.array([r["edited_prompt_list"] for r in rows], pa.list_(pa.string())),
            "sc_score_1": pa.array([8] * len(rows), pa.int64()),
        }
    )
    pq.write_table(table, path, row_group_size=2)
    return path


def test_omniedit_shards_draw_a_prompt_and_keep_the_task(tmp_path):
    shards = tmp_path / "omniedit"
    shards.mkdir()
    good = {
        "task": "swap",
        "src_img": cell(png(random_image(24, 16, seed=1))),
        "edited_img": cell(png(random_image(24, 16, seed=2))),
        "edited_prompt_list": ["turn the cat into a dog", "replace the cat with a dog"],
    }
    empty_prompts = {**good, "edited_prompt_list": []}
    truncated = {**good, "src_img": cell(png(random_image(24, 16, seed=3))[:40])}
    write_omniedit(shards / "part-0.parquet", [good, empty_prompts])
    write_omniedit(shards / "part-1.parquet", [truncated, good, good])
    assert detect_format(shards) == "omniedit"
    dataset = open_dataset(shards, "omniedit")
    assert isinstance(dataset, OmniEditDataset)
    assert len(dataset) == 5 and dataset.blocks() == [(0, 2), (2, 4), (4, 5)]
    sample = dataset.read(0, np.random.default_rng(0))
    assert sample.task == "swap" and sample.source.size == (24, 16)
    drawn = {dataset.read(0, np.random.default_rng(seed)).instruction for seed in range(20)}
    assert drawn == set(good["edited_prompt_list"])
    assert (
        dataset.read(3, np.random.default_rng(7)).instruction == dataset.read(3, np.random.default_rng(7)).instruction
    )
    with pytest.raises(SampleError, match="no usable prompt"):
        dataset.read(1)
    with pytest.raises(SampleError, match="source image"):
        dataset.read(2)
    assert len(list(dataset)) == 3 and sum(dataset.skipped.values()) == 2


# ---------------------------------------------------------------------------------------- task shares


def jsonl_of_tasks(folder: Path, tasks: list[str | None]) -> JsonlDataset:
    """A JSONL dataset whose rows name `tasks` (None: no task key); row i's instruction is "edit i"."""
    folder.mkdir()
    random_image(8, 8, seed=0).save(folder / "a.png")
    rows = [{"source": "a.png", "instruction": f"edit {i}", "target": "a.png"} for i in range(len(tasks))]
    for row, task in zip(rows, tasks, strict=True):
        if task is not None:
            row["task"] = task
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return JsonlDataset(folder)


def test_task_shares_keep_evenly_spread_rows_of_the_thinned_tasks_and_every_other_row(tmp_path):
    tasks = ["mirror", "move", "mirror", None, "mirror", "move", "mirror", "mirror", "mirror", "move"]
    dataset = jsonl_of_tasks(tmp_path / "d", tasks)
    thinned = TaskShareDataset(dataset, {"mirror": "1/3"})
    # mirrors are rows 0 2 4 6 7 8: the 3rd (row 4) and the 6th (row 8) stay; moves and the unnamed row stay
    assert thinned.kept.tolist() == [1, 3, 4, 5, 8, 9]
    assert len(thinned) == 6 and [thinned.task_of(i) for i in range(6)] == [
        "move",
        None,
        "mirror",
        "move",
        "mirror",
        "move",
    ]
    assert thinned.read(2).instruction == "edit 4" and thinned[4].instruction == "edit 8"
    assert thinned.blocks() == [(0, 6)] and thinned.shuffle
    assert "thinned (mirror 1/3) to 6 rows" in thinned.describe()
    # a float share is read as the fraction it rounds: 1/3 as a float thins exactly as "1/3"
    assert TaskShareDataset(dataset, {"mirror": 1 / 3}).kept.tolist() == thinned.kept.tolist()
    assert TaskShareDataset(dataset, {"mirror": 0.5, "move": 1}).kept.tolist() == [1, 2, 3, 5, 6, 8, 9]


def test_task_shares_refuse_a_task_no_row_names_and_a_generator(tmp_path):
    dataset = jsonl_of_tasks(tmp_path / "d", ["mirror", "move"])
    with pytest.raises(DataError, match=r"mirorr: no row .* its tasks: mirror, move"):
        TaskShareDataset(dataset, {"mirorr": 0.5})
    with pytest.raises(DataError, match="leave no row"):
        TaskShareDataset(jsonl_of_tasks(tmp_path / "two", ["mirror", "mirror"]), {"mirror": "1/3"})
    with pytest.raises(DataError, match="its rows name no task"):
        TaskShareDataset(jsonl_of_tasks(tmp_path / "none", [None]), {"mirror": 0.5})
    with pytest.raises(DataError, match="write the data out first"):
        TaskShareDataset(shapes_dataset("train", length=4), {"mirror": 0.5})


def test_task_shares_map_parquet_row_groups_to_kept_rows(tmp_path):
    row = {
        "src_img": cell(png(random_image(8, 8, seed=1))),
        "edited_img": cell(png(random_image(8, 8, seed=2))),
        "edited_prompt_list": ["edit"],
    }
    tasks = ["a", "a", "b", "a", "a"]  # row groups [0, 2) [2, 4) [4, 5)
    dataset = open_dataset(write_omniedit(tmp_path / "x.parquet", [{**row, "task": t} for t in tasks]), "omniedit")
    dataset.read = None  # thinning reads the task column alone, never a sample
    thinned = TaskShareDataset(dataset, {"a": 0.5})  # the 2nd and 4th "a": rows 1 and 4
    assert thinned.kept.tolist() == [1, 2, 4] and thinned.blocks() == [(0, 1), (1, 2), (2, 3)]


@pytest.mark.parametrize("value", [0, 1.5, "2/0", "a third", True, None, -0.5])
def test_a_task_share_outside_zero_to_one_or_not_a_number_is_refused(value):
    with pytest.raises(ValueError, match="task share"):
        share_fraction(value)


# ------------------------------------------------------------------------------------------ callables


def test_callable_dataset_accepts_samples_dicts_and_example_objects():
    image = random_image(8, 8)

    class Example:
        source_image, target_image, instruction, task = image, image, "recolor it", "recolor"
        mask_image = Image.new("L", (8, 8), 0)

    def make(index: int):
        if index == 0:
            return EditSample(image, "a", image)
        if index == 1:
            return {"source": png(image), "instruction": "b", "target": image, "task": "t"}
        if index == 2:
            return Example()
        if index == 3:
            return {"source": image}
        return 42

    dataset = CallableDataset(make, 5, name="gen")
    assert [dataset.read(i).instruction for i in range(3)] == ["a", "b", "recolor it"]
    assert dataset.read(2).mask is not None and dataset.read(1).task == "t"
    with pytest.raises(SampleError, match="without instruction"):
        dataset.read(3)
    with pytest.raises(SampleError, match="not a sample"):
        dataset.read(4)
    assert dataset.shuffle is False
    with pytest.raises(ValueError, match="length"):
        CallableDataset(make, 0)


def test_shapes_generator_hook():
    dataset = shapes_dataset("train", seed=3, size=32, length=10)
    sample = dataset.read(4)
    assert sample.source.size == (32, 32) and sample.target.size == (32, 32)
    assert sample.task and sample.instruction
    again = dataset.read(4)
    assert np.array_equal(np.asarray(sample.target), np.asarray(again.target))
    assert open_dataset("train", "shapes", length=5).read(0).source.size == (64, 64)
