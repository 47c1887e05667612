"""`diptych shapes bench`: success rate and L1 per operation for the built-in models, on held-out scenes.

Variants, as the ICEdit ablations in miniature:
- `base`: the base Fill model with the in-context prompt only (training-free editing);
- `lora`: the plain LoRA adapter (about the MoE's number of trainable parameters);
- `moe`: the LoRA-MoE adapter;
- `moe+filter`: LoRA-MoE with early filtering (several seeds, the built-in judge keeps one; `FILTER`).
The LoRA-MoE edits with the Emu Edit task embedding trained with it, the task predicted from each
instruction. Emu Edit's task ablation adds two variants (not run by default):
- `moe:no-task`: the same adapter with task conditioning off;
- `moe:true-task`: conditioned on the true task of each edit instead of the predicted one.
Any other variant is the path of a trained adapter (a `diptych train` output folder or file), run alone, or
with early filtering as `PATH+filter`: how probes and new recipes are scored on the same cases. A `+locate`
suffix on any variant (`moe+locate`, `PATH+locate`) edits with `mask="auto"`: the edit composited inside the
region the locator predicts (`run_bench(locator=...)`, or the one shipped in the base's folder). Every variant
reads the instruction through the built-in model's instruction rewriter (an unfamiliar wording -> the nearest
seen phrasing, `shapes_core.rewrite`); a `+literal` suffix edits with the words as given: the rewriter's
ablation.
Every edit is scored by the exact ShapesEdit success rule (`diptych.shapes.edits.judge_edit`) against
its ground-truth render; seen and held-out phrasings are reported apart. With several sampling seeds
(`run_bench(sample_seeds=...)`, `--sample-seeds`) every edit is made once per seed: the report pools them and
gives each seed's overall success, the spread a single-seed figure carries (on the 200 test edits the shipped
LoRA-MoE's seeds 0-3 give 79.5 / 74.5 / 73.0 / 73.0%).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import DiptychError
from ..images import AUTO_MASK
from ..scaling.spec import BUILTIN_JUDGE, load_judge
from ..shapes_core.dataset import load_dataset, sample_edit
from ..shapes_core.edits import Edit, edit_region, judge_edit
from ..shapes_core.judge import FILTER_SAMPLERS, filter_early_steps
from ..shapes_core.world import render as render_image

#: The early filter of (d) and of `PATH+filter`: 8 seeds sampled with Euler steps x 14 of the 28 steps, the built-in
#: model's judge (the learned judge vetoes, the render residual ranks the rest). Chosen on the validation edits among
#: seeds x samplers x judging steps (docs/shapes.md, "A judge that knows the world's shapes"): Euler previews after 14
#: steps already show how cleanly the edit will be drawn; stochastic ones do not (later steps re-noise them).
FILTER = {
    "candidates": 8,
    "early_steps": filter_early_steps(28),
    "judge": BUILTIN_JUDGE,
    "samplers": list(FILTER_SAMPLERS),
}
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {"adapter": "none"},
    "lora": {"adapter": "lora"},
    "moe": {"adapter": "moe"},
    "moe+filter": {"adapter": "moe", **FILTER},
    "moe:no-task": {"adapter": "moe", "task": "none"},
    "moe:true-task": {"adapter": "moe", "task": "true"},
}
#: What `diptych shapes bench` runs unless `--variants` says otherwise: the ICEdit ablation.
DEFAULT_VARIANTS: tuple[str, ...] = ("base", "lora", "moe", "moe+filter")

LOCATE_SUFFIX = "+locate"
#: A diagnostic, not a result: the edit's true region as the mask (what a perfect locator would give).
TRUE_REGION_SUFFIX = "+true-region"
TRUE_REGION = "true-region"
#: The instruction as given, without the built-in model's rewriter (`Editor.from_pretrained(rewrite=False)`).
LITERAL_SUFFIX = "+literal"
#: The sampler, against the model's own (`Editor.stochastic`; the built-in model's scheduler samples
#: stochastically): `+stochastic` re-noises the x0 prediction with fresh noise each step, `+euler` follows the flow.
SAMPLER_SUFFIXES = {"+stochastic": True, "+euler": False}
#: `+cfgS`: classifier-free guidance on the instruction at scale S (the editor's `true_cfg_scale`).
CFG_SUFFIX = re.compile(r"\+cfg(\d+(?:\.\d+)?)$")


def variant_options(name: str) -> dict[str, Any]:
    """The options of a named variant, or of an adapter path (`PATH` or `PATH+filter`); `+locate` on either
    adds the locator's mask, `+true-region` the edit's true region (the ceiling of a perfect locator), `+cfgS`
    classifier-free guidance at scale S, `+literal` the instruction as given (no rewriter), `+stochastic` /
    `+euler` stochastic / Euler sampling (default: the model's own; on a `+filter` variant, its candidates')."""
    for suffix, stochastic in SAMPLER_SUFFIXES.items():
        if name.endswith(suffix):
            options = variant_options(name.removesuffix(suffix))
            if "candidates" in options:  # a filter's candidates all sample this way
                return options | {"samplers": [suffix.removeprefix("+")]}
            return options | {"stochastic": stochastic}
    if name.endswith(LITERAL_SUFFIX):
        return variant_options(name.removesuffix(LITERAL_SUFFIX)) | {"rewrite": False}
    if match := CFG_SUFFIX.search(name):
        return variant_options(name[: match.start()]) | {"true_cfg_scale": float(match.group(1))}
    if name.endswith(LOCATE_SUFFIX):
        return variant_options(name.removesuffix(LOCATE_SUFFIX)) | {"mask": AUTO_MASK}
    if name.endswith(TRUE_REGION_SUFFIX):
        # feather 0: the region is only 2 px wider than the object, and the default inward ramp would eat its border
        return variant_options(name.removesuffix(TRUE_REGION_SUFFIX)) | {"mask": TRUE_REGION, "feather": 0}
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


def folder_cases(folder: str | Path, n: int | None = None) -> list[BenchCase]:
    """Cases from a `diptych shapes make` folder (its instructions may have been rewritten by hand): the first
    `n` of its edits, or all of them; only those have their images read."""
    cases = []
    for record in load_dataset(folder)[:n]:
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
    grid: Path | None = None,
) -> list[dict[str, Any]]:
    """Edit every case with one variant and score it; one row per case. With `grid`, also write a PNG there:
    one row of source | output | ground truth per case (what the numbers do not show: which objects changed)."""
    from ..conditioning.tasks import SHAPES_TASKS
    from ..editor import EditRequest

    def task(case: BenchCase) -> str | None:
        return SHAPES_TASKS[case.task] if options.get("task") == "true" else None

    def mask(case: BenchCase) -> Image.Image | str | None:
        if options.get("mask") != TRUE_REGION:
            return options.get("mask")
        return Image.fromarray(edit_region(case.edit, case.source.size[0]).astype(np.uint8) * 255)

    # only what the variant sets; the rest are the editor's defaults
    sampling = {key: options[key] for key in ("feather", "true_cfg_scale") if key in options}
    candidates = options.get("candidates", 1)
    if candidates > 1:
        judge = load_judge(options["judge"])  # once for the variant, not per edit
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
                    judge=judge,
                    samplers=options.get("samplers"),
                    task=task(case),
                    mask=mask(case),
                    **sampling,
                )
            )
            if progress:
                progress(1)
    else:
        outputs = []
        for start in range(0, len(cases), batch_size):
            chunk = cases[start : start + batch_size]
            outputs += editor.edit_many(
                [EditRequest(c.source, c.instruction, seed, mask=mask(c), task=task(c)) for c in chunk],
                steps=steps,
                batch_size=batch_size,
                **sampling,
            )
            if progress:
                progress(len(chunk))
    rows = []
    for case, output in zip(cases, outputs, strict=True):
        score = judge_edit(output.resize(case.source.size), case.edit)
        rows.append(
            {
                "task": case.task,
                "phrasing": case.phrasing,
                "objects": len(case.edit.source.objects),
                "success": score.success,
                "l1": score.l1,
                # which half of the rule failed: the edited region, or the rest of the image
                "inside_ok": score.inside_ok,
                "outside_ok": score.outside_ok,
            }
        )
    if grid is not None:
        write_grid(
            grid,
            [(c.source, o, render_image(c.edit.target, c.source.size[0])) for c, o in zip(cases, outputs, strict=True)],
        )
    return rows


def write_grid(path: Path, triples: Sequence[tuple[Image.Image, Image.Image, Image.Image]]) -> None:
    """Rows of images side by side (each row: source, output, target at the source's size), atomically."""
    from ..images import save_image_atomic

    size = triples[0][0].size
    sheet = Image.new("RGB", (3 * size[0], len(triples) * size[1]), "grey")
    for row, images in enumerate(triples):
        for col, image in enumerate(images):
            sheet.paste(image.convert("RGB").resize(size), (col * size[0], row * size[1]))
    save_image_atomic(sheet, path)


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Success rate and mean L1 overall, per phrasing kind, per operation and per number of objects in the
    source scene; with the share of edits whose edited region (`inside_ok`) and whose rest of the image
    (`outside_ok`) pass their half of the rule, which tells a wrong edit from collateral damage."""

    def stats(group: Sequence[dict[str, Any]]) -> dict[str, Any]:
        n = len(group)
        out: dict[str, Any] = {"n": n}
        for key in ("success", "l1", "inside_ok", "outside_ok"):
            out[key] = sum(r[key] for r in group) / n if n else None
        return out

    groups: dict[str, dict[Any, list]] = {key: defaultdict(list) for key in ("phrasing", "task", "objects")}
    for row in rows:
        for key, group in groups.items():
            group[row[key]].append(row)
    return {"overall": stats(rows)} | {
        key: {str(k): stats(v) for k, v in sorted(group.items())} for key, group in groups.items()
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
    grids: Path | None = None,
    locator: str | None = None,
    sample_seeds: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Every variant on every case; a variant whose weights are missing is reported with the reason. With
    `grids` (a folder), each variant's source | output | target grid is written there as NAME.png. `locator`:
    the locator file of `+locate` variants (default: the one shipped in the base's folder). `sample_seeds`:
    edit every case once per seed (default: once, with `seed`); the variant's figures pool all of them, and
    `per_seed` gives each seed's overall success; the grid shows the first seed's edits."""
    from ..editor import Editor

    seeds = list(dict.fromkeys(sample_seeds)) if sample_seeds else [seed]
    report: dict[str, Any] = {"cases": len(cases), "steps": steps, "seed": seed, "variants": {}}
    if sample_seeds:
        report["sample_seeds"] = seeds
    options_of = {name: variant_options(name) for name in variants}  # unknown names fail before any work
    for name in variants:
        options = options_of[name]
        located = options.get("mask") == AUTO_MASK
        try:
            editor = Editor.from_pretrained(
                base,
                adapter=options["adapter"],
                device=device,
                locator=locator if located else None,
                rewrite=options.get("rewrite", True),
            )
            if "stochastic" in options:
                editor.stochastic = options["stochastic"]
            if located and editor.locator is None:
                raise DiptychError(f"{name} needs a locator: --locator FILE, or one shipped in the base's folder")
            if options.get("task") == "none":
                editor.use_task_embedding(None)
            elif options.get("task") == "true" and editor.task_embedding is None:
                raise DiptychError(f"{name} needs a task embedding shipped with the {options['adapter']} adapter")
            grid = Path(grids) / f"{grid_name(name)}.png" if grids is not None else None
            rows_of = {
                s: run_variant(
                    editor,
                    cases,
                    options,
                    steps=steps,
                    seed=s,
                    batch_size=batch_size,
                    progress=progress,
                    grid=grid if s == seeds[0] else None,
                )
                for s in seeds
            }
        except DiptychError as err:
            report["variants"][name] = {"unavailable": str(err)}
            continue
        report["variants"][name] = summarize([row for rows in rows_of.values() for row in rows])
        own = "stochastic" if editor.stochastic else "euler"
        report["variants"][name]["sampler"] = "/".join(options.get("samplers") or [own])  # the filter's candidates'
        if sample_seeds:
            report["variants"][name]["per_seed"] = {
                str(s): summarize(rows)["overall"]["success"] for s, rows in rows_of.items()
            }
    return report


def grid_name(variant: str) -> str:
    """A file name for a variant: named ones as they are, adapter paths with their separators replaced."""
    return "".join(ch if ch.isalnum() or ch in "-_.+" else "_" for ch in variant).strip("._") or "variant"


def format_table(report: dict[str, Any]) -> str:
    """The report as Markdown: success % (and L1) per variant, overall, seen/held-out, per operation, per
    number of objects; then how often each half of the success rule passed."""
    variants = report["variants"]
    names = list(variants)
    tasks = sorted({t for v in variants.values() for t in v.get("task", {})})

    def cell(stat: dict[str, Any] | None) -> str:
        if not stat or stat["success"] is None:
            return "-"
        return f"{100 * stat['success']:.1f}% ({stat['l1']:.3f})"

    seeds = report.get("sample_seeds")
    sampling = f"sampling seeds {', '.join(map(str, seeds))} pooled" if seeds else f"seed {report['seed']}"
    lines = [
        f"ShapesEdit bench: {report['cases']} edits, {report['steps']} steps, {sampling}; success % (mean L1)",
        "",
        "| | " + " | ".join(names) + " |",
        "| --- | " + " | ".join("---" for _ in names) + " |",
    ]
    rows = [("overall", lambda v: v.get("overall"))]
    rows += [(f"{p} phrasings", lambda v, p=p: v.get("phrasing", {}).get(p)) for p in ("seen", "heldout")]
    rows += [(t, lambda v, t=t: v.get("task", {}).get(t)) for t in tasks]
    objects = sorted({k for v in variants.values() for k in v.get("objects", {})}, key=int)
    rows += [(f"{k} object{'s' * (k != '1')}", lambda v, k=k: v.get("objects", {}).get(k)) for k in objects]
    for label, get in rows:
        lines.append(f"| {label} | " + " | ".join(cell(get(variants[n])) for n in names) + " |")
    lines.append("| sampler | " + " | ".join(variants[n].get("sampler", "-") for n in names) + " |")
    if seeds:
        per_seed = [variants[n].get("per_seed") for n in names]
        lines.append(
            "| each seed | "
            + " | ".join("-" if not p else " / ".join(f"{100 * x:.1f}%" for x in p.values()) for p in per_seed)
            + " |"
        )
    for key, label in (("inside_ok", "edited region right"), ("outside_ok", "rest of the image kept")):
        shares = [variants[n].get("overall", {}).get(key) for n in names]
        lines.append(f"| {label} | " + " | ".join("-" if x is None else f"{100 * x:.1f}%" for x in shares) + " |")
    for name in names:
        if "unavailable" in variants[name]:
            lines.append(f"\n{name}: unavailable: {variants[name]['unavailable']}")
    return "\n".join(lines)
