"""`diptych shapes bench`: success rate and L1 per operation for the built-in models, on held-out scenes.

Variants, as the ICEdit ablations in miniature:
- `base`: the base Fill model with the in-context prompt only (training-free editing);
- `lora`: the plain LoRA adapter (about the MoE's number of trainable parameters);
- `moe`: the LoRA-MoE adapter;
- `moe+filter`: LoRA-MoE with early filtering (several seeds, the learned judge keeps one).
The LoRA-MoE edits with the Emu Edit task embedding trained with it, the task predicted from each
instruction. Emu Edit's task ablation adds two variants (not run by default):
- `moe:no-task`: the same adapter with task conditioning off;
- `moe:true-task`: conditioned on the true task of each edit instead of the predicted one.
Any other variant is the path of a trained adapter (a `diptych train` output folder or file), run alone, or
with early filtering as `PATH+filter`: how probes and new recipes are scored on the same cases.
Every edit is scored by the exact ShapesEdit success rule (`diptych.shapes.edits.judge_edit`) against
its ground-truth render; seen and held-out phrasings are reported apart.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import DiptychError
from ..shapes_core.dataset import load_dataset, sample_edit
from ..shapes_core.edits import Edit, judge_edit

VARIANTS: dict[str, dict[str, Any]] = {
    "base": {"adapter": "none"},
    "lora": {"adapter": "lora"},
    "moe": {"adapter": "moe"},
    "moe+filter": {"adapter": "moe", "candidates": 4, "early_steps": 4, "judge": "shapes"},
    "moe:no-task": {"adapter": "moe", "task": "none"},
    "moe:true-task": {"adapter": "moe", "task": "true"},
}
#: What `diptych shapes bench` runs unless `--variants` says otherwise: the ICEdit ablation.
DEFAULT_VARIANTS: tuple[str, ...] = ("base", "lora", "moe", "moe+filter")


FILTER = {"candidates": 4, "early_steps": 4, "judge": "shapes"}


def variant_options(name: str) -> dict[str, Any]:
    """The options of a named variant, or of an adapter path (`PATH` or `PATH+filter`)."""
    if name in VARIANTS:
        return VARIANTS[name]
    path, filtered = (name.removesuffix("+filter"), True) if name.endswith("+filter") else (name, False)
    if not Path(path).exists():
        raise DiptychError(
            f"unknown variant {name!r}: use one of {', '.join(VARIANTS)} or the path of a trained adapter "
            "(optionally PATH+filter)"
        )
    return {"adapter": path, **(FILTER if filtered else {})}


@dataclass
class BenchCase:
    source: Image.Image
    instruction: str
    edit: Edit
    task: str
    phrasing: str


def heldout_cases(n: int, *, seed: int = 0) -> list[BenchCase]:
    """The first `n` edits of the held-out test split, seen and held-out phrasings mixed."""
    cases = []
    for index in range(n):
        ex = sample_edit("test", index, seed=seed, phrasings="all")
        cases.append(BenchCase(ex.source_image, ex.instruction, ex.edit, ex.task, ex.phrasing))
    return cases


def val_cases(per_op: int, *, ops: Sequence[str] | None = None, seed: int = 0) -> list[BenchCase]:
    """`per_op` edits of each operation from the validation split (scenes no training or test edit uses),
    seen and held-out phrasings mixed: the fixed set that probes are compared on."""
    from ..shapes_core.edits import op_names

    cases = []
    for op in ops or op_names():
        for index in range(per_op):
            ex = sample_edit("val", index, seed=seed, ops=[op], phrasings="all")
            cases.append(BenchCase(ex.source_image, ex.instruction, ex.edit, ex.task, ex.phrasing))
    return cases


def folder_cases(folder: str | Path) -> list[BenchCase]:
    """Cases from a `diptych shapes make` folder (its instructions may have been rewritten by hand)."""
    cases = []
    for record in load_dataset(folder):
        source, _, _ = record.load_images()
        cases.append(BenchCase(source, record.instruction, record.edit, record.task, record.phrasing))
    return cases


def run_variant(
    editor,
    cases: Sequence[BenchCase],
    options: dict[str, Any],
    *,
    steps: int,
    seed: int,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Edit every case with one variant and score it; one row per case."""
    from ..conditioning.tasks import SHAPES_TASKS
    from ..editor import EditRequest

    def task(case: BenchCase) -> str | None:
        return SHAPES_TASKS[case.task] if options.get("task") == "true" else None

    candidates = options.get("candidates", 1)
    if candidates > 1:
        outputs = []
        for case in cases:
            outputs.append(
                editor.edit(
                    case.source,
                    case.instruction,
                    seed=seed,
                    steps=steps,
                    candidates=candidates,
                    early_steps=min(options["early_steps"], steps),
                    judge=options["judge"],
                    task=task(case),
                )
            )
            if progress:
                progress(1)
    else:
        outputs = []
        for start in range(0, len(cases), batch_size):
            chunk = cases[start : start + batch_size]
            outputs += editor.edit_many(
                [EditRequest(c.source, c.instruction, seed, task=task(c)) for c in chunk],
                steps=steps,
                batch_size=batch_size,
            )
            if progress:
                progress(len(chunk))
    rows = []
    for case, output in zip(cases, outputs, strict=True):
        score = judge_edit(output.resize(case.source.size), case.edit)
        rows.append({"task": case.task, "phrasing": case.phrasing, "success": score.success, "l1": score.l1})
    return rows


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Success rate and mean L1 overall, per phrasing kind and per operation."""

    def stats(group: Sequence[dict[str, Any]]) -> dict[str, Any]:
        n = len(group)
        return {
            "n": n,
            "success": sum(r["success"] for r in group) / n if n else None,
            "l1": sum(r["l1"] for r in group) / n if n else None,
        }

    by_task: dict[str, list] = defaultdict(list)
    by_phrasing: dict[str, list] = defaultdict(list)
    for row in rows:
        by_task[row["task"]].append(row)
        by_phrasing[row["phrasing"]].append(row)
    return {
        "overall": stats(rows),
        "phrasing": {k: stats(v) for k, v in sorted(by_phrasing.items())},
        "task": {k: stats(v) for k, v in sorted(by_task.items())},
    }


def run_bench(
    cases: Sequence[BenchCase],
    *,
    base: str = "shapes",
    variants: Sequence[str] = DEFAULT_VARIANTS,
    steps: int = 28,
    seed: int = 0,
    batch_size: int = 16,
    device: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Every variant on every case; a variant whose weights are missing is reported with the reason."""
    from ..editor import Editor

    report: dict[str, Any] = {"cases": len(cases), "steps": steps, "seed": seed, "variants": {}}
    options_of = {name: variant_options(name) for name in variants}  # unknown names fail before any work
    for name in variants:
        options = options_of[name]
        try:
            editor = Editor.from_pretrained(base, adapter=options["adapter"], device=device)
            if options.get("task") == "none":
                editor.use_task_embedding(None)
            elif options.get("task") == "true" and editor.task_embedding is None:
                raise DiptychError(f"{name} needs a task embedding shipped with the {options['adapter']} adapter")
            rows = run_variant(editor, cases, options, steps=steps, seed=seed, batch_size=batch_size, progress=progress)
        except DiptychError as err:
            report["variants"][name] = {"unavailable": str(err)}
            continue
        report["variants"][name] = summarize(rows)
    return report


def format_table(report: dict[str, Any]) -> str:
    """The report as Markdown: success % (and L1) per variant, overall, seen/held-out, per operation."""
    variants = report["variants"]
    names = list(variants)
    tasks = sorted({t for v in variants.values() for t in v.get("task", {})})

    def cell(stat: dict[str, Any] | None) -> str:
        if not stat or stat["success"] is None:
            return "-"
        return f"{100 * stat['success']:.1f}% ({stat['l1']:.3f})"

    lines = [
        f"ShapesEdit bench: {report['cases']} edits, {report['steps']} steps, seed {report['seed']}; "
        "success % (mean L1)",
        "",
        "| | " + " | ".join(names) + " |",
        "| --- | " + " | ".join("---" for _ in names) + " |",
    ]
    rows = [("overall", lambda v: v.get("overall"))]
    rows += [(f"{p} phrasings", lambda v, p=p: v.get("phrasing", {}).get(p)) for p in ("seen", "heldout")]
    rows += [(t, lambda v, t=t: v.get("task", {}).get(t)) for t in tasks]
    for label, get in rows:
        lines.append(f"| {label} | " + " | ".join(cell(get(variants[n])) for n in names) + " |")
    for name in names:
        if "unavailable" in variants[name]:
            lines.append(f"\n{name}: unavailable: {variants[name]['unavailable']}")
    return "\n".join(lines)
