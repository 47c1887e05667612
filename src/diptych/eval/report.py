"""Reports of a `diptych eval` run: report.md, report.csv, index.html and summary.json.

Each metric is averaged over the samples that have it (a failed sample has none; a sample without a
caption has no CLIP-out), per task category and overall (the mean over samples, not over tasks). The
count of samples behind a mean is shown whenever it differs from the task's sample count. Published
numbers (`diptych.eval.paper_numbers`) are listed beside the overall means of this run.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..files import write_atomic
from .paper_numbers import METRIC_LABELS, paper_metrics, paper_rows

__all__ = ["render_csv", "render_html", "render_markdown", "summarize", "write_reports"]

_MAX_ERRORS_LISTED = 20


def summarize(
    records: Sequence[dict[str, Any]], metrics: Sequence[str], tasks: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Rows `{"task", "n", "errors", "means": {metric: mean or None}, "counts": {metric: count}}`: overall
    first, then each task (in `tasks` order, then any others in order of appearance)."""
    order = list(dict.fromkeys([*(tasks or ()), *(r.get("task", "unknown") for r in records)]))
    groups: dict[str, list[dict[str, Any]]] = {task: [] for task in order}
    for record in records:
        groups[record.get("task", "unknown")].append(record)
    rows = [_stats("overall", records, metrics)]
    rows += [_stats(task, groups[task], metrics) for task in order if groups[task]]
    return rows


def _stats(task: str, records: Sequence[dict[str, Any]], metrics: Sequence[str]) -> dict[str, Any]:
    means: dict[str, float | None] = {}
    counts: dict[str, int] = {}
    for metric in metrics:
        values = [float(r["metrics"][metric]) for r in records if metric in (r.get("metrics") or {})]
        counts[metric] = len(values)
        # fsum is exactly rounded, so the mean does not depend on the order the samples were logged in.
        means[metric] = math.fsum(values) / len(values) if values else None
    return {
        "task": task,
        "n": len(records),
        "errors": sum(1 for r in records if r.get("error")),
        "means": means,
        "counts": counts,
    }


def _label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def _cell(row: dict[str, Any], metric: str) -> str:
    value = row["means"].get(metric)
    if value is None:
        return "-"
    text = f"{value:.4f}"
    count = row["counts"].get(metric, 0)
    return text if count == row["n"] else f"{text} (n={count})"


def _columns(run: dict[str, Any]) -> list[str]:
    """This run's metrics, then the published ones it does not compute."""
    ours = list(run.get("metrics", []))
    return ours + [m for m in paper_metrics(run.get("benchmark", "")) if m not in ours]


def render_markdown(run: dict[str, Any], records: Sequence[dict[str, Any]]) -> str:
    """report.md: per-task means, the published numbers beside the overall means, the failures."""
    benchmark, metrics = run.get("benchmark", "?"), list(run.get("metrics", []))
    rows = summarize(records, metrics, run.get("tasks"))
    overall = rows[0]
    selected = run.get("selected", len(records))
    lines = [f"# diptych eval: {benchmark}", ""]
    lines.append(f"Model: {run.get('model', '?')}  ")
    lines.append(f"Samples: {len(records)} of {selected} finished, {overall['errors']} failed")
    if len(records) < selected:
        lines.append("")
        lines.append("**Partial report: not every sample is finished.**")
    dropped = run.get("dropped") or {}
    if dropped:
        lines.append("")
        lines.append("Left out by the loader: " + ", ".join(f"{n} ({reason})" for reason, n in dropped.items()))
    lines += ["", "## Means per task", ""]
    lines.append("| task | n | " + " | ".join(_label(m) for m in metrics) + " |")
    lines.append("| --- | ---: | " + " | ".join("---:" for _ in metrics) + " |")
    for row in rows:
        lines.append(f"| {_md(row['task'])} | {row['n']} | " + " | ".join(_cell(row, m) for m in metrics) + " |")

    published = paper_rows(benchmark)
    if published:
        columns = _columns(run)
        lines += ["", "## Published numbers", ""]
        lines.append("| model | " + " | ".join(_label(m) for m in columns) + " |")
        lines.append("| --- | " + " | ".join("---:" for _ in columns) + " |")
        ours = " | ".join(_cell(overall, m) if m in metrics else "-" for m in columns)
        lines.append(f"| **this run: {_md(str(run.get('model', '?')))}** | {ours} |")
        for paper in published:
            cells = " | ".join(f"{paper.values[m]:g}" if m in paper.values else "-" for m in columns)
            lines.append(f"| {_md(paper.label)} | {cells} |")
        notes = list(dict.fromkeys(p.note for p in published if p.note))
        if notes:
            lines.append("")
            lines += [f"- {note}" for note in notes]

    failed = [r for r in records if r.get("error")]
    if failed:
        lines += ["", f"## Failed samples ({len(failed)})", ""]
        lines += [f"- `{r['id']}`: {_md(str(r['error']))}" for r in failed[:_MAX_ERRORS_LISTED]]
        if len(failed) > _MAX_ERRORS_LISTED:
            lines.append(f"- ... and {len(failed) - _MAX_ERRORS_LISTED} more (see the samples*.jsonl files)")
    lines += ["", "## Settings", "", "```json", json.dumps(run.get("settings", {}), indent=2, sort_keys=True), "```"]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_csv(run: dict[str, Any], records: Sequence[dict[str, Any]]) -> str:
    """report.csv: `source, model, task, n, errors, <metrics>`; this run's rows (overall and per task, full
    float precision) then the published rows (overall only)."""
    metrics = list(run.get("metrics", []))
    columns = _columns(run)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["source", "model", "task", "n", "errors", *columns])
    for row in summarize(records, metrics, run.get("tasks")):
        values = [repr(row["means"][m]) if m in metrics and row["means"][m] is not None else "" for m in columns]
        writer.writerow(["this run", run.get("model", ""), row["task"], row["n"], row["errors"], *values])
    for paper in paper_rows(run.get("benchmark", "")):
        values = [repr(paper.values[m]) if m in paper.values else "" for m in columns]
        writer.writerow([paper.source, paper.model, "overall", "", "", *values])
    return buffer.getvalue()


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 192px; max-height: 192px; display: block; }
.error { color: #b00; }
"""


def _link(path: str | None, thumb: str | None = None) -> str:
    """An <img> of `thumb` (or `path`) linking to `path`; relative paths, quoted for URLs."""
    if not path and not thumb:
        return "-"
    shown = quote(thumb or path or "")
    target = quote(path or thumb or "")
    return f'<a href="{target}"><img src="{shown}" loading="lazy" alt=""></a>'


def render_html(run: dict[str, Any], records: Sequence[dict[str, Any]]) -> str:
    """index.html: the per-task means, then one row per sample with source / edit / target thumbnails,
    the instruction(s), the metrics and any error. All text is escaped."""
    esc = html.escape
    metrics = list(run.get("metrics", []))
    rows = summarize(records, metrics, run.get("tasks"))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>diptych eval: {esc(str(run.get('benchmark', '')))}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>diptych eval: {esc(str(run.get('benchmark', '')))}</h1>",
        f"<p>Model: {esc(str(run.get('model', '')))}. Samples: {len(records)} of "
        f"{esc(str(run.get('selected', len(records))))} finished, {rows[0]['errors']} failed.</p>",
        "<table><tr><th>task</th><th>n</th>" + "".join(f"<th>{esc(_label(m))}</th>" for m in metrics) + "</tr>",
    ]
    for row in rows:
        cells = "".join(f'<td class="num">{esc(_cell(row, m))}</td>' for m in metrics)
        parts.append(f'<tr><td>{esc(row["task"])}</td><td class="num">{row["n"]}</td>{cells}</tr>')
    parts.append("</table>")
    parts.append(
        "<table><tr><th>id</th><th>task</th><th>instruction</th><th>source</th><th>edit</th><th>target</th>"
        "<th>metrics</th></tr>"
    )
    for record in records:
        images = record.get("images") or {}
        instructions = record.get("instructions") or []
        text = (
            "<br>".join(f"{k}. {esc(str(i))}" for k, i in enumerate(instructions, 1))
            if len(instructions) > 1
            else (esc(str(instructions[0])) if instructions else "")
        )
        values = record.get("metrics") or {}
        shown = "<br>".join(f"{esc(_label(m))}: {values[m]:.4f}" for m in metrics if m in values)
        if record.get("error"):
            shown += f'<div class="error">{esc(str(record["error"]))}</div>'
        parts.append(
            f"<tr><td>{esc(str(record.get('id', '')))}</td><td>{esc(str(record.get('task', '')))}</td>"
            f"<td>{text}</td><td>{_link(images.get('source'))}</td>"
            f"<td>{_link(images.get('edit'), images.get('edit_thumb'))}</td>"
            f"<td>{_link(images.get('target'))}</td><td>{shown}</td></tr>"
        )
    parts.append("</table></body></html>")
    return "\n".join(parts) + "\n"


def write_reports(
    out: str | os.PathLike[str], run: dict[str, Any], records: Sequence[dict[str, Any]]
) -> dict[str, Path]:
    """Write report.md, report.csv, index.html and summary.json into `out` (atomically); returns the paths."""
    folder = Path(out)
    metrics = list(run.get("metrics", []))
    seconds = [float(r["seconds"]) for r in records if isinstance(r.get("seconds"), int | float)]
    summary = {
        "benchmark": run.get("benchmark"),
        "model": run.get("model"),
        "selected": run.get("selected"),
        "finished": len(records),
        "rows": summarize(records, metrics, run.get("tasks")),
        "mean_seconds_per_sample": math.fsum(seconds) / len(seconds) if seconds else None,
        "settings": run.get("settings", {}),
    }
    paths = {
        "markdown": folder / "report.md",
        "csv": folder / "report.csv",
        "html": folder / "index.html",
        "summary": folder / "summary.json",
    }
    write_atomic(paths["markdown"], render_markdown(run, records))
    write_atomic(paths["csv"], render_csv(run, records))
    write_atomic(paths["html"], render_html(run, records))
    write_atomic(paths["summary"], json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    return paths
