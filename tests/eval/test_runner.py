"""The eval runner: editing with the tiny FLUX Fill model, scoring, the sample log, resuming, shards."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from bench_fixtures import (
    BatchFakeVie,
    FakeVie,
    fake_scorers,
    make_emu_edit,
    make_gedit,
    make_magicbrush,
    make_shapes,
    read_csv,
    read_jsonl,
)
from PIL import Image

from diptych.eval.runner import EvalConfig, EvalError, SampleLog, read_records, run_evaluation
from diptych.images import load_image

FAST = {"steps": 2, "width": 32, "quiet": True}


class CountingEditor:
    """Passes edits to a real editor and remembers every request."""

    def __init__(self, editor):
        self.editor, self.requests = editor, []

    def edit_many(self, requests, **options):
        self.requests += list(requests)
        return self.editor.edit_many(requests, **options)


class InvertingEditor:
    """A stand-in editor: the edit of an image is its negative. Remembers the images it was given."""

    def __init__(self):
        self.inputs: list[np.ndarray] = []
        self.calls = 0

    def edit_many(self, requests, **options):
        self.calls += 1
        outputs = []
        for request in requests:
            pixels = np.asarray(load_image(request.image))
            self.inputs.append(pixels)
            outputs.append(Image.fromarray(255 - pixels))
        return outputs


def config(tmp_path, benchmark, data, **kwargs) -> EvalConfig:
    out = kwargs.pop("out", str(tmp_path / "run"))
    options = {"base": "unused", **FAST, **kwargs}
    return EvalConfig(benchmark=benchmark, data=str(data), out=out, **options)


def means(records, metric, task=None):
    values = [r["metrics"][metric] for r in records if metric in r["metrics"] and task in (None, r["task"])]
    return math.fsum(values) / len(values)


# ------------------------------------------------------------------------------------------ full runs


def test_emu_edit_run_writes_reports_whose_means_are_those_of_the_lines(tiny_editor, tmp_path):
    data = make_emu_edit(tmp_path / "emu", n_test=8, n_validation=2)
    result = run_evaluation(
        config(tmp_path, "emu-edit", data, batch_size=3), editor=tiny_editor, scorers=fake_scorers()
    )
    out = tmp_path / "run"
    assert (result.selected, result.finished, result.computed, result.errors) == (6, 6, 6, 0)
    records = read_jsonl(out / "samples.jsonl")
    assert [r["id"] for r in records] == ["test-0", "test-3", "test-4", "test-5", "test-6", "test-7"]
    for record in records:
        assert set(record["metrics"]) == {"clip_i", "clip_out", "clip_dir", "dino", "l1"}
        assert record["error"] is None
        edited = Image.open(out / record["images"]["edit"])
        assert edited.size == (32, 32)
        for key in ("source", "edit_thumb"):
            assert (out / record["images"][key]).is_file()
    rows = read_csv(out / "report.csv")
    ours = [r for r in rows if r["source"] == "this run"]
    assert [r["task"] for r in ours] == ["overall", "background", "style", "remove"]
    for row in ours:
        task = None if row["task"] == "overall" else row["task"]
        assert int(row["n"]) == sum(1 for r in records if task in (None, r["task"]))
        for metric in ("clip_i", "clip_out", "clip_dir", "dino", "l1"):
            assert float(row[metric]) == pytest.approx(means(records, metric, task), rel=1e-12, abs=1e-15)
    icedit = next(r for r in rows if r["model"] == "ICEdit")
    assert float(icedit["clip_i"]) == 0.907 and float(icedit["gpt4o_success"]) == 0.68
    markdown = (out / "report.md").read_text()
    assert "| overall | 6 |" in markdown and "ICEdit (ICEdit paper" in markdown
    assert "Left out by the loader: 1 (identical input and output captions), 1 (missing or empty caption)" in markdown
    page = (out / "index.html").read_text()
    assert "make photo 3 darker" in page and 'href="images/test-3.png"' in page
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["steps"] == 2 and run["selected"] == 6


def test_l1_of_the_edit_is_measured_against_the_source_on_emu_edit(tmp_path):
    data = make_emu_edit(tmp_path / "emu", n_test=2, n_validation=1)
    run_evaluation(
        config(tmp_path, "emu-edit", data, metrics=("l1",)), editor=InvertingEditor(), scorers=fake_scorers()
    )
    record = read_jsonl(tmp_path / "run/samples.jsonl")[0]
    source = np.asarray(load_image(tmp_path / "run" / record["images"]["edit"]), dtype=np.float64)
    # the edit is the negative of the source: |x - (255 - x)| averaged
    expected = np.abs((255 - source) - source).mean() / 255
    assert record["metrics"] == {"l1": pytest.approx(expected)}


def test_resume_after_an_interruption_does_not_redo_finished_samples(tiny_editor, tmp_path):
    data = make_magicbrush(tmp_path / "mb")  # 6 turns in all-turn
    first = CountingEditor(tiny_editor)
    result = run_evaluation(config(tmp_path, "magicbrush", data), editor=first, scorers=fake_scorers(), stop_after=2)
    out = tmp_path / "run"
    assert (result.finished, result.report) == (2, None) and not (out / "report.md").exists()
    assert len(first.requests) == 2
    before = (out / "samples.jsonl").read_bytes()

    second = CountingEditor(tiny_editor)
    result = run_evaluation(config(tmp_path, "magicbrush", data), editor=second, scorers=fake_scorers())
    assert (result.finished, result.computed) == (6, 4) and result.report == out / "report.md"
    assert [r.instruction for r in second.requests] == [f"change thing {k} of {i}" for i, k in
                                                        (("202", 1), ("303", 1), ("303", 2), ("303", 3))]  # fmt: skip
    after = (out / "samples.jsonl").read_bytes()
    assert after.startswith(before)  # the finished lines were kept as they were
    ids = [r["id"] for r in read_jsonl(out / "samples.jsonl")]
    assert len(ids) == len(set(ids)) == 6

    third = CountingEditor(tiny_editor)
    result = run_evaluation(config(tmp_path, "magicbrush", data), editor=third, scorers=fake_scorers())
    assert result.computed == 0 and third.requests == [] and result.report is not None


def test_a_line_cut_in_the_middle_is_ignored_then_redone(tiny_editor, tmp_path):
    data = make_magicbrush(tmp_path / "mb")
    run_evaluation(config(tmp_path, "magicbrush", data), editor=tiny_editor, scorers=fake_scorers(), stop_after=3)
    log = tmp_path / "run/samples.jsonl"
    data_bytes = log.read_bytes()
    log.write_bytes(data_bytes[:-25])  # the third line loses its end (and its newline)
    assert sorted(read_records(tmp_path / "run")) == ["101-t1", "101-t2"]

    editor = CountingEditor(tiny_editor)
    result = run_evaluation(config(tmp_path, "magicbrush", data), editor=editor, scorers=fake_scorers())
    assert result.finished == 6 and len(editor.requests) == 4
    lines = log.read_text().splitlines()
    assert len(lines) == 6 and all(json.loads(line)["id"] for line in lines)
    assert [json.loads(line)["id"] for line in lines][2] == "202-t1"


def test_final_turn_chains_the_model_outputs(tmp_path):
    data = make_magicbrush(tmp_path / "mb")
    editor = InvertingEditor()
    run_evaluation(config(tmp_path, "magicbrush", data, protocol="final-turn"), editor=editor, scorers=fake_scorers())
    out = tmp_path / "run"
    source = np.asarray(load_image(data / "images/303/303-input.png"))
    turn1 = np.asarray(load_image(out / "images/303.turn1.png"))
    turn2 = np.asarray(load_image(out / "images/303.turn2.png"))
    final = np.asarray(load_image(out / "images/303.png"))
    np.testing.assert_array_equal(turn1, 255 - source)
    np.testing.assert_array_equal(turn2, source)  # turn 2 edited turn 1's output, not the ground truth
    np.testing.assert_array_equal(final, 255 - source)
    assert editor.calls == 3  # one batched call per turn: 3, 1 and 2 sessions long
    assert not (out / "images/202.turn1.png").exists()
    record = read_records(out)["303"]
    target = np.asarray(load_image(data / "images/303/303-output3.png"), dtype=np.float64)
    assert record["metrics"]["l1"] == pytest.approx(np.abs(final - target).mean() / 255)
    assert record["instructions"] == [f"change thing {k} of 303" for k in (1, 2, 3)]


# ------------------------------------------------------------------------------------ predictions


def test_predictions_folder_by_id_or_official_name(tmp_path):
    data = make_magicbrush(tmp_path / "mb")
    preds = tmp_path / "preds"
    (preds / "101").mkdir(parents=True)
    Image.open(data / "images/101/101-output1.png").save(preds / "101-t1.png")
    Image.open(data / "images/101/101-output2.png").save(preds / "101/101_inde_2.png")
    cfg = config(tmp_path, "magicbrush", data, base=None, predictions=str(preds))
    result = run_evaluation(cfg, scorers=fake_scorers())
    records = read_records(tmp_path / "run")
    for sid in ("101-t1", "101-t2"):
        assert records[sid]["metrics"]["l1"] == 0.0 and records[sid]["metrics"]["clip_i"] == 1.0
        assert records[sid]["error"] is None
    assert records["101-t2"]["images"]["edit"] == "../preds/101/101_inde_2.png"
    assert records["202-t1"]["error"].startswith("MissingPrediction") and records["202-t1"]["metrics"] == {}
    assert result.errors == 4
    markdown = (tmp_path / "run/report.md").read_text()
    assert "Samples: 6 of 6 finished, 4 failed" in markdown and "`303-t3`: MissingPrediction" in markdown
    assert "| overall | 6 | 0.0000 (n=2) |" in markdown


def test_generations_file_is_scored_without_a_model(tmp_path):
    data = make_emu_edit(tmp_path / "gen", n_test=4, n_validation=1, generations=True)
    cfg = EvalConfig(benchmark="emu-edit", data=str(data), out=str(tmp_path / "run"), metrics=("l1",))
    result = run_evaluation(cfg, scorers=fake_scorers())
    records = read_records(tmp_path / "run")
    assert result.finished == 2 and set(records) == {"test-0", "test-3"}
    from diptych.testing import random_image

    source = np.asarray(random_image(32, 32, seed=3), dtype=np.float64)
    edited = np.asarray(random_image(32, 32, seed=1003), dtype=np.float64)
    assert records["test-3"]["metrics"]["l1"] == pytest.approx(np.abs(source - edited).mean() / 255)
    assert "edit" not in records["test-3"]["images"] and "edit_thumb" in records["test-3"]["images"]


def test_no_model_and_no_predictions_is_refused(tmp_path):
    data = make_magicbrush(tmp_path / "mb")
    cfg = EvalConfig(benchmark="magicbrush", data=str(data), out=str(tmp_path / "run"))
    with pytest.raises(EvalError, match="--base MODEL"):
        run_evaluation(cfg)
    with pytest.raises(EvalError, match="not both"):
        run_evaluation(config(tmp_path, "magicbrush", data, predictions=str(tmp_path)))
    with pytest.raises(EvalError, match="does not exist"):
        run_evaluation(config(tmp_path, "magicbrush", data, base=None, predictions=str(tmp_path / "none")))
    with pytest.raises(EvalError, match="no metric clip_out"):
        run_evaluation(config(tmp_path, "magicbrush", data, metrics=("clip_out",)))


# ------------------------------------------------------------------------------------ other benchmarks


def test_gedit_judge_sees_input_image_and_failures_are_retried(tiny_editor, tmp_path):
    data = make_gedit(tmp_path / "gedit", n=6)
    failing = FakeVie(fail_on="number 2")
    result = run_evaluation(
        config(tmp_path, "gedit", data), editor=tiny_editor, scorers=fake_scorers(vie_scorer=failing)
    )
    assert result.errors == 1 and result.finished == 3
    assert [size for size, _ in failing.seen] == [(32, 32)] * 3  # input_image, not the 64x64 raw input
    records = read_records(tmp_path / "run")
    assert records["en-k2"]["error"] == "JudgeError: the judge endpoint failed"
    overall = records["en-k0"]["metrics"]
    assert overall["vie_overall"] == pytest.approx(math.sqrt(overall["vie_sc"] * 7.0))

    working = FakeVie()
    editor = CountingEditor(tiny_editor)
    cfg = config(tmp_path, "gedit", data, retry_failed=True)
    result = run_evaluation(cfg, editor=editor, scorers=fake_scorers(vie_scorer=working))
    assert result.errors == 0 and len(editor.requests) == 1 and len(working.seen) == 1
    assert read_records(tmp_path / "run")["en-k2"]["error"] is None
    assert len(read_jsonl(tmp_path / "run/samples.jsonl")) == 4  # the failed line stays; the new one wins


def test_gedit_scores_a_chunk_in_one_judge_call(tmp_path):
    data = make_gedit(tmp_path / "gedit", n=8)  # 4 English samples
    judge = BatchFakeVie(fail_on="number 4")
    cfg = config(tmp_path, "gedit", data, batch_size=3, metrics=("vie_overall",))
    result = run_evaluation(cfg, editor=InvertingEditor(), scorers=fake_scorers(vie_scorer=judge))
    assert judge.batches == [3, 1] and result.errors == 1
    records = read_records(tmp_path / "run")
    assert records["en-k4"]["error"] == "JudgeError: the judge endpoint failed"
    assert set(records["en-k6"]["metrics"]) == {"vie_overall"}


def test_shapes_success_and_l1_from_the_judge(tiny_editor, tmp_path):
    from diptych.shapes.dataset import load_dataset
    from diptych.shapes.edits import judge_edit

    data = make_shapes(tmp_path / "shapes", n=3)
    result = run_evaluation(config(tmp_path, "shapes", data), editor=tiny_editor)
    assert result.finished == 3
    records = read_records(tmp_path / "run")
    for record in load_dataset(data):
        edited = load_image(tmp_path / "run/images" / f"{record.id}.png")
        score = judge_edit(edited.resize((32, 32), Image.Resampling.BICUBIC), record.edit)
        assert records[record.id]["metrics"] == {"success": float(score.success), "l1": pytest.approx(score.l1)}


def test_a_corrupt_source_fails_its_sample_only(tiny_editor, tmp_path):
    import pyarrow.parquet as pq

    data = make_emu_edit(tmp_path / "emu", n_test=4, n_validation=1)
    file = data / "data/test-00000-of-00001.parquet"
    table = pq.read_table(file)
    images = table.column("image").to_pylist()
    images[3]["bytes"] = images[3]["bytes"][:40]  # a cut-off PNG
    import pyarrow as pa

    column = pa.array(images, type=table.schema.field("image").type)
    pq.write_table(table.set_column(table.column_names.index("image"), "image", column), file)
    result = run_evaluation(config(tmp_path, "emu-edit", data), editor=tiny_editor, scorers=fake_scorers())
    records = read_records(tmp_path / "run")
    assert result.errors == 1 and "corrupt" in records["test-3"]["error"]
    assert records["test-0"]["error"] is None and records["test-0"]["metrics"]


# ------------------------------------------------------------------------------------ settings, shards


def test_a_rerun_with_other_settings_is_refused(tiny_editor, tmp_path):
    data = make_magicbrush(tmp_path / "mb")
    run_evaluation(config(tmp_path, "magicbrush", data), editor=tiny_editor, scorers=fake_scorers(), stop_after=1)
    with pytest.raises(EvalError, match=r"other settings \(steps: 2 -> 3\)"):
        run_evaluation(config(tmp_path, "magicbrush", data, steps=3), editor=tiny_editor, scorers=fake_scorers())
    # options that do not change results (batch size, progress) may change
    result = run_evaluation(
        config(tmp_path, "magicbrush", data, batch_size=2, quiet=False), editor=tiny_editor, scorers=fake_scorers()
    )
    assert result.finished == 6


def test_explicit_shards_give_the_single_run_report(tiny_editor, tmp_path):
    data = make_magicbrush(tmp_path / "mb")
    single = config(tmp_path, "magicbrush", data, batch_size=1, out=str(tmp_path / "single"))
    run_evaluation(single, editor=tiny_editor, scorers=fake_scorers())

    def shard(i):
        cfg = config(tmp_path, "magicbrush", data, batch_size=1, out=str(tmp_path / "sharded"), shard=(i, 2))
        return run_evaluation(cfg, editor=tiny_editor, scorers=fake_scorers())

    first = shard(0)
    assert (first.finished, first.report) == (3, None)
    assert sorted(os.listdir(tmp_path / "sharded")) == ["images", "run.json", "samples.rank0.jsonl", "thumbs"]

    from diptych.eval.runner import merge_run

    partial = merge_run(tmp_path / "sharded")
    assert partial.finished == 3 and "Partial report" in (tmp_path / "sharded/report.md").read_text()

    second = shard(1)
    assert second.finished == 6 and second.report is not None
    for name in ("report.csv", "report.md"):
        assert (tmp_path / "sharded" / name).read_text() == (tmp_path / "single" / name).read_text()
    ids = [r["id"] for r in read_jsonl(tmp_path / "sharded/samples.rank1.jsonl")]
    assert ids == ["101-t2", "303-t1", "303-t3"]


# ------------------------------------------------------------------------------------ the sample log


def test_sample_log_cuts_a_partial_tail_and_locks(tmp_path):
    path = tmp_path / "samples.jsonl"
    with SampleLog(path) as log:
        log.append({"id": "a", "error": None})
        log.append({"id": "b", "error": "Boom: x"})
        with pytest.raises(EvalError, match="another diptych eval is writing"):
            SampleLog(path)
    with path.open("ab") as handle:
        handle.write(b'{"id": "c", "err')
    assert sorted(read_records(tmp_path)) == ["a", "b"]
    with SampleLog(path) as log:
        assert path.read_bytes().endswith(b"}\n")  # the partial line is gone
        log.append({"id": "b", "error": None, "metrics": {"l1": 0.5}})
        log.append({"id": "a", "error": "Later: failure"})
    records = read_records(tmp_path)
    assert records["b"]["metrics"] == {"l1": 0.5}  # a success replaces an earlier failure
    assert records["a"]["error"] is None  # a later failure does not replace a success
    path.write_text(path.read_text() + "not json\n[1, 2]\n")
    assert sorted(read_records(tmp_path)) == ["a", "b"]
