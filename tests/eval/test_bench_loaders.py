"""Benchmark loaders on tiny copies of each benchmark in its released layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from bench_fixtures import gedit_rows, make_emu_edit, make_gedit, make_magicbrush, make_shapes, png_bytes

from diptych.errors import DiptychError
from diptych.eval.benchmarks import (
    BenchmarkError,
    load_benchmark,
    load_emu_edit,
    load_gedit,
    load_magicbrush,
    load_shapes,
    parse_shard,
    safe_id,
    select_samples,
    shard_samples,
)
from diptych.testing import random_image

# ------------------------------------------------------------------------------------------ Emu Edit


def test_emu_edit_reads_the_hub_layout_and_filters_captions(tmp_path):
    make_emu_edit(tmp_path, n_test=6, n_validation=3)
    bench = load_emu_edit(tmp_path, split="test")
    # rows 1 (identical captions up to case/spaces) and 2 (empty output caption) are dropped
    assert [s.id for s in bench.samples] == ["test-0", "test-3", "test-4", "test-5"]
    assert bench.dropped == {"identical input and output captions": 1, "missing or empty caption": 1}
    first = bench.samples[0]
    assert first.task == "background" and first.instruction == "make photo 0 darker"
    assert first.input_caption == "a photo number 0" and first.output_caption == "a photo number 0 at night"
    assert first.meta == {"split": "test", "idx": 0, "hash": "h0-0"}
    image = first.source.load()
    assert image.mode == "RGB" and image.size == (32, 32)
    np.testing.assert_array_equal(np.asarray(image), np.asarray(random_image(32, 32, seed=0)))
    # a row in a later row group (groups of 2 rows) gets its own pixels
    np.testing.assert_array_equal(np.asarray(bench.samples[3].source.load()), np.asarray(random_image(32, 32, seed=5)))
    assert first.prediction is None and first.target is None
    assert bench.metrics == ("clip_i", "clip_out", "clip_dir", "dino", "l1")


def test_emu_edit_split_choice_and_no_caption_filter(tmp_path):
    make_emu_edit(tmp_path, n_test=6, n_validation=3)
    assert [s.id for s in load_emu_edit(tmp_path, split="validation").samples] == ["validation-0"]
    everything = load_emu_edit(tmp_path, split="all", caption_filter=False)
    assert len(everything.samples) == 9 and everything.dropped == {}
    assert everything.samples[2].output_caption is None  # the empty caption is kept as missing
    with pytest.raises(BenchmarkError, match="split must be one of"):
        load_emu_edit(tmp_path, split="train")


def test_emu_edit_split_from_the_column_when_file_names_say_nothing(tmp_path):
    make_emu_edit(tmp_path / "hub", n_test=4, n_validation=4)
    (tmp_path / "flat").mkdir()
    for i, file in enumerate(sorted((tmp_path / "hub/data").glob("*.parquet"))):
        file.rename(tmp_path / "flat" / f"part{i}.parquet")
    bench = load_emu_edit(tmp_path / "flat", split="validation", caption_filter=False)
    assert {s.meta["split"] for s in bench.samples} == {"validation"} and len(bench.samples) == 4

    import pyarrow.parquet as pq

    for file in (tmp_path / "flat").glob("*.parquet"):
        pq.write_table(pq.read_table(file).drop_columns(["split"]), file)
    with pytest.raises(BenchmarkError, match="pass --split all"):
        load_emu_edit(tmp_path / "flat")
    assert [s.id for s in load_emu_edit(tmp_path / "flat", split="all").samples] == ["row-0", "row-3", "row-4", "row-7"]


def test_emu_edit_generations_undo_the_swapped_split_names(tmp_path):
    make_emu_edit(tmp_path, n_test=5, n_validation=3, generations=True)
    bench = load_emu_edit(tmp_path, split="test")
    # the test rows live in validation-*.parquet on the hub; the loader maps them back to "test"
    assert [s.id for s in bench.samples] == ["test-0", "test-3", "test-4"]
    assert bench.info["generations"] and bench.info["model"] == "emu_edit"
    edited = bench.samples[0].prediction.load()
    np.testing.assert_array_equal(np.asarray(edited), np.asarray(random_image(32, 32, seed=1000)))


def test_emu_edit_refuses_several_models_and_bad_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    make_emu_edit(tmp_path / "gen", n_test=3, n_validation=1, generations=True)
    file = next((tmp_path / "gen/data").glob("validation-*"))
    table = pq.read_table(file)
    models = pa.array(["emu_edit", "other", "emu_edit"])
    pq.write_table(table.set_column(table.column_names.index("model"), "model", models), file)
    with pytest.raises(BenchmarkError, match="several models"):
        load_emu_edit(tmp_path / "gen")

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken/test-00000.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(BenchmarkError, match="not a readable parquet file"):
        load_emu_edit(tmp_path / "broken")

    (tmp_path / "other").mkdir()
    pq.write_table(pa.table({"prompt": ["x"]}), tmp_path / "other/test-0.parquet")
    with pytest.raises(BenchmarkError, match="no column image, instruction"):
        load_emu_edit(tmp_path / "other")
    with pytest.raises(BenchmarkError, match="does not exist"):
        load_emu_edit(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchmarkError, match=r"no \.parquet / \.arrow files"):
        load_emu_edit(tmp_path / "empty")


# ----------------------------------------------------------------------------------------- MagicBrush


def test_magicbrush_all_turn_samples(tmp_path):
    make_magicbrush(tmp_path / "test")
    bench = load_magicbrush(tmp_path, protocol="all-turn")  # the parent of test/ is accepted too
    assert [s.id for s in bench.samples] == ["101-t1", "101-t2", "202-t1", "303-t1", "303-t2", "303-t3"]
    turn2 = bench.samples[1]
    assert turn2.task == "turn 2" and turn2.instructions == ("change thing 2 of 101",)
    assert turn2.source.path.name == "101-output1.png"  # the ground-truth input of turn 2
    assert turn2.target.path.name == "101-output2.png"
    assert turn2.output_caption == "caption of 101 after turn 2"
    assert turn2.prediction_names == ("101/101_inde_2.png",)
    assert bench.samples[0].prediction_names == ("101/101_1.png",)
    assert bench.tasks == ["turn 1", "turn 2", "turn 3"]


def test_magicbrush_final_turn_sessions_chain_their_instructions(tmp_path):
    make_magicbrush(tmp_path)
    bench = load_magicbrush(tmp_path, protocol="final-turn")
    assert [s.id for s in bench.samples] == ["101", "202", "303"]
    session = bench.samples[2]
    assert session.instructions == tuple(f"change thing {k} of 303" for k in (1, 2, 3))
    assert session.source.path.name == "303-input.png" and session.target.path.name == "303-output3.png"
    assert session.task == "3 turns" and bench.samples[1].task == "1 turn"
    assert session.prediction_names == ("303/303_iter_3.png",)
    assert bench.samples[1].prediction_names == ("202/202_1.png",)
    assert session.output_caption == "caption of 303 after turn 3"


def test_magicbrush_is_tolerant_of_missing_files_and_flat_captions(tmp_path):
    make_magicbrush(tmp_path)
    (tmp_path / "images/202/202-output1.png").unlink()
    (tmp_path / "local_descriptions.json").unlink()
    (tmp_path / "global_descriptions.json").write_text(json.dumps({"101-output1.png": "flat caption"}))
    bench = load_magicbrush(tmp_path)
    assert bench.dropped == {"session with missing image files": 1}
    assert [s.id for s in bench.samples][:2] == ["101-t1", "101-t2"]
    assert bench.samples[0].output_caption == "flat caption" and bench.samples[1].output_caption is None


def test_magicbrush_bad_layouts(tmp_path):
    with pytest.raises(BenchmarkError, match="does not exist"):
        load_magicbrush(tmp_path / "nope")
    tmp_path.joinpath("x").mkdir()
    with pytest.raises(BenchmarkError, match=r"has no edit_sessions\.json"):
        load_magicbrush(tmp_path / "x")
    (tmp_path / "x/edit_sessions.json").write_text("{not json")
    with pytest.raises(BenchmarkError, match="not valid JSON"):
        load_magicbrush(tmp_path / "x")
    (tmp_path / "x/edit_sessions.json").write_text(json.dumps({"1": [{"input": "1-input.png"}]}))
    with pytest.raises(BenchmarkError, match="lacks output, instruction"):
        load_magicbrush(tmp_path / "x")
    make_magicbrush(tmp_path / "y")
    with pytest.raises(BenchmarkError, match="protocol must be one of"):
        load_magicbrush(tmp_path / "y", protocol="multi")


# ----------------------------------------------------------------------------------------- GEdit-Bench


def test_gedit_parquet_english_by_default(tmp_path):
    make_gedit(tmp_path, n=6)
    bench = load_gedit(tmp_path)
    assert [s.id for s in bench.samples] == ["en-k0", "en-k2", "en-k4"]
    first = bench.samples[0]
    assert first.task == "background_change" and first.instruction == "edit number 0"
    assert first.source.load().size == (64, 64)  # edited from the raw input
    assert first.judge_source.load().size == (32, 32)  # judged against input_image
    assert first.prediction_names == ("fullset/background_change/en/k0.png",)
    both = load_gedit(tmp_path, languages=("en", "zh"))
    assert len(both.samples) == 6 and both.samples[1].id == "cn-k1"
    with pytest.raises(BenchmarkError, match="no sample in language"):
        load_gedit(tmp_path, languages=("fr",))


def test_gedit_json_and_arrow_layouts(tmp_path):
    import pyarrow as pa

    rows = gedit_rows(2)
    (tmp_path / "json/img").mkdir(parents=True)
    items = []
    for row in rows:
        path = f"img/{row['key']}.png"
        (tmp_path / "json" / path).write_bytes(row["input_image"]["bytes"])
        items.append({"key": row["key"], "task_type": row["task_type"], "instruction": row["instruction"],
                      "language": row["instruction_language"], "input_image": path})  # fmt: skip
    (tmp_path / "json/gedit.json").write_text(json.dumps(items))
    bench = load_gedit(tmp_path / "json")
    assert [s.id for s in bench.samples] == ["en-k0"]
    assert bench.samples[0].source.load().size == (32, 32)

    table = pa.table({k: [r[k] for r in rows] for k in ("key", "task_type", "instruction", "instruction_language")})
    table = table.append_column("input_image", pa.array([png_bytes(random_image(16, 16))] * 2))
    (tmp_path / "arrow").mkdir()
    arrow_file = str(tmp_path / "arrow/data-00000-of-00001.arrow")
    with pa.OSFile(arrow_file, "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    bench = load_gedit(tmp_path / "arrow", languages=("cn",))
    assert [s.id for s in bench.samples] == ["cn-k1"] and bench.samples[0].source.load().size == (16, 16)


def test_gedit_missing_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"key": ["a"], "instruction": ["x"]}), tmp_path / "g.parquet")
    with pytest.raises(BenchmarkError, match="is it GEdit-Bench"):
        load_gedit(tmp_path / "g.parquet")


# ------------------------------------------------------------------------------------------ ShapesEdit


def test_shapes_folder(tmp_path):
    make_shapes(tmp_path, n=3)
    bench = load_shapes(tmp_path)
    assert len(bench.samples) == 3 and bench.metrics == ("success", "l1")
    sample = bench.samples[0]
    assert sample.id == "test-0-000000" and sample.edit is not None and sample.meta["size"] == 32
    assert sample.target.load().size == (32, 32)
    with pytest.raises(BenchmarkError, match="does not exist"):
        load_shapes(tmp_path / "none")


# ------------------------------------------------------------------------------------------- selection


def test_load_benchmark_dispatch_and_unknown_name(tmp_path):
    make_magicbrush(tmp_path)
    assert load_benchmark("magicbrush", tmp_path, protocol="final-turn").info == {"protocol": "final-turn"}
    with pytest.raises(BenchmarkError, match="unknown benchmark 'imagenet'") as info:
        load_benchmark("imagenet", tmp_path)
    assert isinstance(info.value, DiptychError)
    with pytest.raises(BenchmarkError, match="not on the Hugging Face hub"):
        load_benchmark("magicbrush", "hub")


def test_subset_spreads_over_tasks_and_shards_partition(tmp_path):
    make_magicbrush(tmp_path, {str(i): 3 for i in range(1, 5)})
    samples = load_magicbrush(tmp_path).samples  # 12 samples, turns 1..3 of 4 sessions
    subset = select_samples(samples, subset=4)
    assert [s.id for s in subset] == ["1-t1", "2-t1", "3-t1", "4-t1"]
    assert [s.id for s in select_samples(samples, subset=3)] == ["1-t1", "2-t2", "3-t3"]
    assert [s.task for s in select_samples(samples, tasks=["turn 3"])] == ["turn 3"] * 4
    assert len(select_samples(samples, subset=100)) == 12
    with pytest.raises(BenchmarkError, match="unknown task"):
        select_samples(samples, tasks=["turn 9"])
    with pytest.raises(BenchmarkError, match="positive"):
        select_samples(samples, subset=0)
    shards = [shard_samples(samples, i, 3) for i in range(3)]
    assert sorted(s.id for shard in shards for s in shard) == sorted(s.id for s in samples)
    assert [len(s) for s in shards] == [4, 4, 4]
    assert parse_shard("1/4") == (1, 4) and parse_shard(" 0 / 1 ") == (0, 1)
    for bad in ("4/4", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(BenchmarkError):
            parse_shard(bad)


def test_safe_ids():
    assert safe_id("en-ab/c d") == "en-ab_c_d"
    assert safe_id("../x") == "x"
    assert safe_id("...") == "_"


def test_every_benchmark_is_registered_with_its_loader_and_scoring():
    from diptych.eval.benchmarks import BENCHMARKS, KINDS, METRICS
    from diptych.eval.scoring import ShapesScoring, VieScoring

    assert list(KINDS) == list(BENCHMARKS) and set(METRICS) == set(BENCHMARKS)
    assert KINDS["emu-edit"].scoring.reference == "source"  # no ground truth: metrics against the source
    assert KINDS["magicbrush"].scoring.reference == "target"
    assert isinstance(KINDS["gedit"].scoring, VieScoring) and isinstance(KINDS["shapes"].scoring, ShapesScoring)
    assert KINDS["emu-edit"].scoring.models(["clip_i", "dino", "l1"]) == {"clip", "dino"}
    assert KINDS["magicbrush"].scoring.models(["l1", "l2"]) == set()
    assert KINDS["gedit"].scoring.models(["vie_sc"]) == {"vie"} and KINDS["shapes"].scoring.models(["l1"]) == set()
