"""report.md / report.csv / index.html from sample records, and the published numbers beside them."""

from __future__ import annotations

import json
import math
import os

import pytest
from bench_fixtures import read_csv

from diptych.eval.paper_numbers import PAPER_NUMBERS, paper_metrics, paper_rows
from diptych.eval.report import render_html, render_markdown, summarize, write_reports


def record(sid, task, metrics, error=None, **extra):
    return {"id": sid, "task": task, "metrics": metrics, "error": error, "instructions": [f"do {sid}"], **extra}


RECORDS = [
    record("a", "turn 1", {"l1": 0.1, "clip_i": 0.9}),
    record("b", "turn 1", {"l1": 0.3}),
    record("c", "turn 2", {"l1": 0.2, "clip_i": 0.7}),
    record("d", "turn 2", {}, error="JudgeError: down"),
]
RUN = {
    "benchmark": "magicbrush",
    "metrics": ["l1", "clip_i"],
    "selected": 4,
    "model": "tiny | model",
    "tasks": ["turn 1", "turn 2"],
    "settings": {"steps": 2},
}


def test_summarize_means_counts_and_errors():
    rows = summarize(RECORDS, ["l1", "clip_i"], ["turn 1", "turn 2"])
    assert [r["task"] for r in rows] == ["overall", "turn 1", "turn 2"]
    overall, turn1, turn2 = rows
    assert overall["n"] == 4 and overall["errors"] == 1
    assert overall["means"]["l1"] == pytest.approx(0.2) and overall["counts"] == {"l1": 3, "clip_i": 2}
    assert overall["means"]["clip_i"] == pytest.approx(0.8)
    assert turn1["means"] == {"l1": pytest.approx(0.2), "clip_i": 0.9} and turn1["errors"] == 0
    assert turn2["means"]["l1"] == 0.2 and turn2["errors"] == 1
    assert summarize([], ["l1"])[0] == {
        "task": "overall",
        "n": 0,
        "errors": 0,
        "means": {"l1": None},
        "counts": {"l1": 0},
    }


def test_mean_does_not_depend_on_the_order():
    values = [0.1, 1e16, -1e16, 0.3, 0.7 / 3]
    records = [record(str(i), "t", {"l1": v}) for i, v in enumerate(values)]
    forward = summarize(records, ["l1"])[0]["means"]["l1"]
    backward = summarize(records[::-1], ["l1"])[0]["means"]["l1"]
    assert forward == backward == math.fsum(values) / len(values)


def test_markdown_has_tasks_counts_papers_and_failures():
    text = render_markdown(RUN, RECORDS)
    assert "| overall | 4 | 0.2000 (n=3) | 0.8000 (n=2) |" in text
    assert "| turn 1 | 2 | 0.2000 | 0.9000 (n=1) |" in text
    assert "## Published numbers" in text
    assert "| **this run: tiny \\| model** | 0.2000 (n=3) | 0.8000 (n=2) | - |" in text  # DINO: not computed
    assert "| ICEdit (ICEdit paper (arXiv 2504.20690)) | 0.06 | 0.928 | 0.853 |" in text
    assert "turn protocol (final-turn or all-turn) not stated" in text
    assert "- `d`: JudgeError: down" in text
    assert "Partial report" not in text
    partial = render_markdown({**RUN, "selected": 10}, RECORDS)
    assert "Samples: 4 of 10 finished, 1 failed" in partial and "Partial report" in partial


def test_csv_rows_for_this_run_and_the_papers(tmp_path):
    paths = write_reports(tmp_path, RUN, RECORDS)
    rows = read_csv(paths["csv"])
    assert list(rows[0]) == ["source", "model", "task", "n", "errors", "l1", "clip_i", "dino"]
    ours = rows[:3]
    assert [r["task"] for r in ours] == ["overall", "turn 1", "turn 2"]
    assert float(ours[0]["l1"]) == math.fsum([0.1, 0.3, 0.2]) / 3
    assert ours[0]["dino"] == "" and ours[0]["model"] == "tiny | model" and ours[0]["errors"] == "1"
    papers = rows[3:]
    assert [r["model"] for r in papers] == ["ICEdit", "UltraEdit", "MagicBrush"]
    assert papers[0]["l1"] == "0.06" and papers[0]["n"] == ""
    summary = json.loads(paths["summary"].read_text())
    assert summary["finished"] == 4 and summary["rows"][0]["means"]["l1"] == pytest.approx(0.2)
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_html_escapes_text_and_quotes_links():
    nasty = record(
        "x<y",
        "<b>task</b>",
        {"l1": 0.5},
        error='Boom: <img src=x onerror="alert(1)">',
        images={"source": "thumbs/a b.source.jpg", "edit": "images/a b.png", "edit_thumb": "thumbs/a b.edit.jpg"},
    )
    nasty["instructions"] = ["<script>alert('hi')</script> & more"]
    page = render_html({**RUN, "model": "<i>m</i>"}, [nasty])
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;hi&#x27;)&lt;/script&gt; &amp; more" in page
    assert "<b>task</b>" not in page and "&lt;b&gt;task&lt;/b&gt;" in page
    assert 'onerror="alert(1)"' not in page and "<i>m</i>" not in page
    assert '<a href="images/a%20b.png"><img src="thumbs/a%20b.edit.jpg"' in page
    assert '<img src="thumbs/a%20b.source.jpg"' in page
    chained = record("s", "2 turns", {"l1": 0.1})
    chained["instructions"] = ["first", "second"]
    assert "1. first<br>2. second" in render_html(RUN, [chained])


def test_paper_numbers_are_complete_and_keyed_by_known_metrics():
    from diptych.eval.paper_numbers import METRIC_LABELS

    assert all(key in METRIC_LABELS for row in PAPER_NUMBERS for key in row.values)
    emu = {(r.model, r.source.split(" ")[0]): r.values for r in paper_rows("emu-edit")}
    assert emu[("ICEdit", "ICEdit")] == {"clip_i": 0.907, "clip_out": 0.305, "dino": 0.866, "gpt4o_success": 0.68}
    assert emu[("Emu Edit", "Emu")] == {
        "clip_dir": 0.109,
        "clip_i": 0.859,
        "clip_out": 0.231,
        "l1": 0.094,
        "dino": 0.819,
    }
    assert paper_metrics("magicbrush") == ["l1", "clip_i", "dino"]
    assert [r.values["vie_overall"] for r in paper_rows("gedit")] == [7.54, 7.53, 6.97, 6.00]
    assert paper_rows("shapes") == []
