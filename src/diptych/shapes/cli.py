"""`diptych shapes ...`: export ShapesEdit data (`make`), measure the built-in models (`bench`, `inversion`,
`drift`, `grounding`, `losses`, `features`, `text-sensitivity`) and show one edit (`demo`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SHAPES_EXAMPLES = """\
examples:
  diptych shapes make --split test --n 200 --seed 0 --out shapes-test/
  diptych shapes bench --n 200                 # the held-out test split, all variants, Markdown table
  diptych shapes bench --data shapes-test/ --json --variants base moe
  diptych shapes bench --variants moe moe:no-task moe:true-task      # Emu Edit's task ablation
  diptych shapes drift --n 50 --turns 5         # multi-turn drift with and without thresholding
  diptych shapes losses --adapters none lora moe   # the training error on copied vs edited tokens
  diptych shapes features --adapters none moe      # what the image tokens know: shape, size, colour, per layer
  diptych shapes text-sensitivity --adapters none lora moe   # do the instruction's words move the output?
"""


def add_shapes_parser(subparsers) -> argparse.ArgumentParser:
    """Register `shapes` (with `make` and `bench`) on the main parser's subparsers."""
    from ..cli_options import RenamedOption, add_threads_option
    from ..shapes_core.dataset import SPLITS
    from .bench import DEFAULT_VARIANTS, VARIANTS

    shapes = subparsers.add_parser(
        "shapes",
        help="ShapesEdit: export synthetic edit data, benchmark the built-in models",
        description="ShapesEdit, the synthetic world where every edit has an exact ground truth.",
        epilog=SHAPES_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = shapes.add_subparsers(dest="shapes_command", required=True, metavar="COMMAND")
    make = sub.add_parser(
        "make",
        help="export edits as a folder of PNGs + data.jsonl (the training/eval format)",
        epilog="example:\n  diptych shapes make --split test --n 200 --seed 0 --out shapes-test/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    make.add_argument("--split", choices=SPLITS, default="test")
    make.add_argument("--n", type=int, default=100, help="number of edits")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--out", required=True, help="output folder")
    make.add_argument(
        "--phrasings",
        choices=("seen", "heldout", "all"),
        default=None,
        help="default: seen for train, all for val/test",
    )
    make.add_argument("--ops", nargs="+", default=None, help="only these operations")
    make.add_argument("--exclude-ops", nargs="+", default=None, help="leave these operations out")
    make.add_argument("--overwrite", action="store_true")
    make.set_defaults(func=run_make)

    bench = sub.add_parser(
        "bench",
        help="success rate and L1 per operation for base, LoRA, LoRA-MoE and LoRA-MoE + early filter",
        epilog=(
            "examples:\n  diptych shapes bench --n 200\n  diptych shapes bench --data shapes-test/ --json\n"
            "  diptych shapes bench --val-per-op 30 --ops recolor --variants runs/probe --grids runs/grids\n"
            "  diptych shapes bench --n 200 --variants moe --sample-seeds 0 1 2 3   # the spread over seeds"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("--data", default=None, help="a `shapes make` folder (default: the held-out test split)")
    bench.add_argument(
        "--n",
        type=int,
        default=None,
        help="edits to score: the first N of the test split (default 200) or of the --data folder (default: all)",
    )
    bench.add_argument("--batch-size", type=int, default=16)
    bench.add_argument(
        "--variants",
        nargs="+",
        default=list(DEFAULT_VARIANTS),
        metavar="VARIANT",
        help=f"{', '.join(VARIANTS)}, or a trained adapter's path (PATH+filter: with early filtering); a +locate "
        f"suffix edits inside the locator's region (--mask auto), +true-region inside the edit's true region (a "
        f"diagnostic: the ceiling of a perfect locator), +literal with the instruction as given (no rewriter), "
        f"+cfgS with classifier-free guidance at scale S, +stochastic / +euler with stochastic / Euler sampling "
        f"(default: the model's own; the built-in model's is stochastic); default: "
        f"{' '.join(DEFAULT_VARIANTS)} (add moe:no-task moe:true-task for Emu Edit's task ablation)",
    )
    bench.add_argument(
        "--locator", default=None, metavar="FILE", help="locator of +locate variants (default: the base's own)"
    )
    bench.add_argument(
        "--val-per-op",
        type=int,
        default=None,
        metavar="K",
        help="score K edits of each operation from the validation split instead (probes: --val-per-op 10)",
    )
    bench.add_argument("--ops", nargs="+", default=None, help="with --val-per-op: only these operations")
    bench.add_argument(
        "--grids",
        default=None,
        metavar="DIR",
        help="also write DIR/VARIANT.png: source | output | ground truth, one row per edit",
    )
    bench.add_argument(
        "--sample-seeds",
        type=int,
        nargs="+",
        default=None,
        metavar="S",
        help="make every edit once per sampling seed and pool them, with each seed's success (the cases stay "
        "those of --seed): how much a single-seed figure owes to its seed",
    )
    _add_run_options(bench, progress=True)
    bench.set_defaults(func=run_bench_command)

    curve = sub.add_parser(
        "inversion",
        help="Emu Edit task inversion curve: success on a held-out operation after learning its vector from k examples",
        epilog=(
            "example (an adapter trained with --task-embedding on data made with --exclude-ops invert):\n"
            "  diptych shapes inversion --lora runs/shapes-moe-noinvert --op invert --counts 0 1 10 100"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    curve.add_argument("--lora", required=True, help="adapter folder or file, with task_embedding.safetensors")
    curve.add_argument("--adapter", dest="lora", action=RenamedOption, new="--lora", help=argparse.SUPPRESS)
    curve.add_argument("--op", required=True, help="the operation the adapter never saw")
    curve.add_argument("--counts", type=int, nargs="+", default=[0, 1, 10, 100], help="examples per point")
    curve.add_argument("--n", type=int, default=100, help="test edits of the operation to score")
    curve.add_argument("--inversion-steps", type=int, default=200)
    curve.add_argument("--lr", type=float, default=2e-2)
    _add_run_options(curve, progress=False)
    curve.set_defaults(func=run_inversion_command)

    drift = sub.add_parser(
        "drift",
        help="multi-turn drift of untouched pixels, with and without Emu Edit's per-pixel thresholding",
        epilog="example:\n  diptych shapes drift --n 50 --turns 5 --thresholds off 0.03",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    drift.add_argument("--n", type=int, default=50, help="sessions (test scenes)")
    drift.add_argument("--turns", type=int, default=5)
    drift.add_argument(
        "--thresholds", nargs="+", default=["off", "0.03"], help="per-pixel thresholds to compare ('off' = none)"
    )
    drift.add_argument("--lora", default=None, help="adapter (default: the shipped LoRA-MoE)")
    drift.add_argument("--adapter", dest="lora", action=RenamedOption, new="--lora", help=argparse.SUPPRESS)
    _add_run_options(drift, progress=True)
    drift.set_defaults(func=run_drift_command)

    grounding = sub.add_parser(
        "grounding",
        help="how well a base model draws held-out scenes from their caption alone (its text grounding)",
        epilog="example:\n  diptych shapes grounding --base shapes:runs/shapes-base-grounded --n 16",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    grounding.add_argument("--n", type=int, default=16, help="test scenes")
    _add_run_options(grounding, progress=False, json_flag=False)
    grounding.set_defaults(func=run_grounding_command)

    losses = sub.add_parser(
        "losses",
        help="the training loss on held-out edits split into source, kept and edited tokens (copying vs editing)",
        epilog=(
            "example (the bare base, the shipped plain LoRA and LoRA-MoE, side by side):\n"
            "  diptych shapes losses --adapters none lora moe --n 64 --times 0.3 0.6 0.9"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_adapters_option(losses)
    losses.add_argument("--n", type=int, default=64, help="test edits (default 64)")
    losses.add_argument("--times", type=float, nargs="+", default=[0.3, 0.6, 0.9], help="noise levels t in [0, 1]")
    _add_run_options(losses, progress=False, steps=False)
    losses.set_defaults(func=run_losses_command)

    features = sub.add_parser(
        "features",
        help="what the image tokens know about the object under them (shape, size, colour), layer by layer",
        epilog=(
            "example (the bare base and the shipped LoRA-MoE; chance is the most frequent label):\n"
            "  diptych shapes features --adapters none moe --n-fit 512 --n-eval 256 --t 0.95"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_adapters_option(features)
    features.add_argument("--n-fit", type=int, default=512, help="training edits the probes are fit on (default 512)")
    features.add_argument("--n-eval", type=int, default=256, help="held-out test edits scored (default 256)")
    features.add_argument("--t", type=float, default=0.95, help="noise level of the panel to generate (default 0.95)")
    _add_run_options(features, progress=False, steps=False)
    features.set_defaults(func=run_features_command)

    sensitivity = sub.add_parser(
        "text-sensitivity",
        help="does the text reach the image? recolor edits worded with every colour word, vs a second seed",
        epilog=(
            "example (the bare base, the shipped plain LoRA and LoRA-MoE, side by side):\n"
            "  diptych shapes text-sensitivity --adapters none lora moe --n 8"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_adapters_option(sensitivity)
    sensitivity.add_argument("--n", type=int, default=8, help="test scenes with a recolor edit (default 8)")
    sensitivity.add_argument("--batch-size", type=int, default=16)
    _add_run_options(sensitivity, progress=True)
    sensitivity.set_defaults(func=run_text_sensitivity_command)

    demo = sub.add_parser(
        "demo",
        help="edit an example scene with the built-in model and write before/after PNGs (what `make demo` runs)",
        epilog="example:\n  diptych shapes demo --out demo/ --index 3",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--out", default="demo", help="output folder (default: demo/)")
    demo.add_argument("--index", type=int, default=0, help="which held-out test edit to show")
    demo.add_argument("--instruction", default=None, help="your own instruction instead of the example's")
    demo.add_argument("--steps", type=int, default=28)
    demo.add_argument("--base", default="shapes", help="'shapes' (built-in) or 'shapes:FOLDER'")
    add_threads_option(demo)
    demo.set_defaults(func=run_demo)
    return shapes


def _add_adapters_option(parser: argparse.ArgumentParser) -> None:
    """`--adapters`: the models a measuring subcommand compares, side by side."""
    parser.add_argument(
        "--adapters", nargs="+", default=["none", "moe"], help="'none', 'moe', 'lora' or adapter folders/files"
    )


def _add_run_options(
    parser: argparse.ArgumentParser, *, progress: bool, json_flag: bool = True, steps: bool = True
) -> None:
    """The options every measuring subcommand shares: model, denoising steps, device, threads, seed, output."""
    from ..cli_options import add_threads_option

    parser.add_argument("--base", default="shapes", help="'shapes' (built-in) or 'shapes:FOLDER'")
    if steps:
        parser.add_argument("--steps", type=int, default=28, help="denoising steps per edit (default 28)")
    parser.add_argument("--device", default=None)
    add_threads_option(parser)
    parser.add_argument("--seed", type=int, default=0)
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    if progress:
        parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run_make(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..shapes_core.dataset import make_dataset

    if args.n < 1:
        raise InputError(f"--n must be at least 1, got {args.n}")
    folder = make_dataset(
        args.split,
        args.n,
        args.seed,
        Path(args.out),
        phrasings=args.phrasings,
        ops=args.ops,
        exclude_ops=args.exclude_ops,
        overwrite=args.overwrite,
        progress=True,
    )
    print(f"wrote {args.n} {args.split} edits to {folder / 'data.jsonl'}", file=sys.stderr)
    return 0


def run_bench_command(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..errors import InputError
    from .bench import folder_cases, format_table, heldout_cases, run_bench, val_cases, variant_options

    for name in args.variants:
        variant_options(name)  # an unknown variant fails at once, before cases are drawn
    if args.val_per_op is not None:
        cases = val_cases(args.val_per_op, ops=args.ops, seed=args.seed)
    else:
        if args.n is not None and args.n < 1:
            raise InputError(f"--n must be at least 1, got {args.n}")
        cases = folder_cases(args.data, args.n) if args.data else heldout_cases(args.n or 200, seed=args.seed)
    seeds = len(set(args.sample_seeds)) if args.sample_seeds else 1
    bar = tqdm(total=len(cases) * len(args.variants) * seeds, unit="edit", disable=args.quiet, desc="bench")
    report = run_bench(
        cases,
        base=args.base,
        variants=args.variants,
        steps=args.steps,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        progress=bar.update,
        grids=args.grids,
        locator=args.locator,
        sample_seeds=args.sample_seeds,
    )
    bar.close()
    print(json.dumps(report) if args.json else format_table(report))
    return 0


def run_inversion_command(args: argparse.Namespace) -> int:
    from .experiments import inversion_curve

    report = inversion_curve(
        args.lora,
        args.op,
        counts=args.counts,
        n_eval=args.n,
        inversion_steps=args.inversion_steps,
        lr=args.lr,
        edit_steps=args.steps,
        base=args.base,
        device=args.device,
        seed=args.seed,
        progress=lambda line: print(line, file=sys.stderr),
    )
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"task inversion on '{report['op']}' (held out of {report['adapter']}), {report['n_eval']} test edits")
    print("| examples | success | mean L1 |\n| --- | --- | --- |")
    for point in report["points"]:
        print(f"| {point['examples']} | {100 * point['success']:.1f}% | {point['l1']:.3f} |")
    return 0


def run_drift_command(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..errors import InputError
    from .experiments import multiturn_drift

    try:
        thresholds = [None if t == "off" else float(t) for t in args.thresholds]
    except ValueError as err:
        raise InputError(f"--thresholds takes numbers or 'off', got {args.thresholds}") from err
    bar = tqdm(total=args.n * len(thresholds), unit="session", disable=args.quiet, desc="drift")
    report = multiturn_drift(
        args.n,
        turns=args.turns,
        thresholds=thresholds,
        base=args.base,
        adapter=args.lora,
        steps=args.steps,
        device=args.device,
        seed=args.seed,
        progress=bar.update,
    )
    bar.close()
    if args.json:
        print(json.dumps(report))
        return 0
    turns = report["turns"]
    print(f"multi-turn drift: {report['sessions']} sessions of {turns} local edits; mean |output - source| of the")
    print("pixels no turn was asked to change, after each turn (and the share of turns judged a success)\n")
    print("| thresholding | " + " | ".join(f"turn {t + 1}" for t in range(turns)) + " | all turns succeed |")
    print("| --- " * (turns + 2) + "|")
    for key, result in report["results"].items():
        cells = [
            f"{d:.4f} ({100 * s:.0f}%)"
            for d, s in zip(result["drift_per_turn"], result["success_per_turn"], strict=True)
        ]
        print(f"| {key} | " + " | ".join(cells) + f" | {100 * result['all_turns_success']:.0f}% |")
    return 0


def run_grounding_command(args: argparse.Namespace) -> int:
    from .experiments import caption_grounding

    report = caption_grounding(args.base, n=args.n, steps=args.steps, seed=args.seed, device=args.device)
    print(json.dumps(report))
    return 0


def run_features_command(args: argparse.Namespace) -> int:
    from .experiments import token_probes

    reports = [
        token_probes(
            adapter, n_fit=args.n_fit, n_eval=args.n_eval, t=args.t, base=args.base, device=args.device, seed=args.seed
        )
        for adapter in args.adapters
    ]
    if args.json:
        print(json.dumps({"reports": reports}))
        return 0
    layers = reports[0]["layers"]
    print(
        f"linear probe accuracy on the tokens of {args.n_eval} held-out edits (fit on {args.n_fit} training edits), "
        f"t = {args.t}\n"
    )
    print("| adapter | attribute / panel | chance | " + " | ".join(layers) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in layers) + " |")
    for report in reports:
        for name, probe in report["probes"].items():
            cells = " | ".join(f"{probe['accuracy'][layer]:.2f}" for layer in layers)
            print(f"| {report['adapter']} | {name} | {probe['chance']:.2f} | {cells} |")
    return 0


def run_losses_command(args: argparse.Namespace) -> int:
    from .experiments import TOKEN_SETS, region_losses

    reports = [
        region_losses(adapter, n=args.n, times=args.times, base=args.base, device=args.device, seed=args.seed)
        for adapter in args.adapters
    ]
    if args.json:
        print(json.dumps({"reports": reports}))
        return 0
    print(f"flow-matching error per token on {args.n} held-out edits (ground-truth diptychs, true task)\n")
    print("| adapter | t | source panel | kept tokens | edited tokens |\n| --- | --- | --- | --- | --- |")
    for report in reports:
        for point in report["points"]:
            cells = " | ".join(f"{point[k]:.3f}" for k in TOKEN_SETS)
            print(f"| {report['adapter']} | {point['t']:g} | {cells} |")
    return 0


def run_text_sensitivity_command(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .experiments import text_sensitivity, text_sensitivity_cases

    edits = sum(len(variants) + 1 for _, variants in text_sensitivity_cases(args.n, seed=args.seed))
    bar = tqdm(total=edits * len(args.adapters), unit="edit", disable=args.quiet, desc="text-sensitivity")
    reports = [
        text_sensitivity(
            adapter,
            n=args.n,
            base=args.base,
            steps=args.steps,
            seed=args.seed,
            batch_size=args.batch_size,
            device=args.device,
            progress=bar.update,
        )
        for adapter in args.adapters
    ]
    bar.close()
    if args.json:
        print(json.dumps({"reports": reports}))
        return 0
    print(
        f"text sensitivity on {args.n} held-out recolor edits, each worded with every allowed colour word "
        f"(seed {args.seed}) and once more at seed {args.seed + 1}, {args.steps} steps; L1 = mean |RGB difference|\n"
    )
    print("| adapter | words L1 | seeds L1 | ratio | colour hits | success | own word closest (chance) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in reports:
        ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}"
        words = "n/a" if r["words_l1"] is None else f"{r['words_l1']:.4f}"
        print(
            f"| {r['adapter']} | {words} | {r['seeds_l1']:.4f} | {ratio} | {100 * r['colour_hits']:.1f}% | "
            f"{100 * r['success']:.1f}% | {100 * r['word_match']:.1f}% ({100 * r['word_match_chance']:.1f}%) |"
        )
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from ..editor import Editor
    from ..images import save_image_atomic
    from ..shapes_core.dataset import sample_edit
    from ..shapes_core.edits import judge_edit

    example = sample_edit("test", args.index, phrasings="all")
    instruction = args.instruction or example.instruction
    editor = Editor.from_pretrained(args.base)
    edited = editor.edit(example.source_image, instruction, steps=args.steps)
    out = Path(args.out)
    images = {"before": example.source_image, "after": edited, "target": example.target_image}
    if editor.fill_region == "edit" and editor.locator is not None:
        images["region"] = editor.locate(example.source_image, instruction)  # what the adapter was given to fill
    for name, image in images.items():
        save_image_atomic(image, out / f"{name}.png")
    adapter = editor.adapter_kind or "no adapter"
    print(f"instruction: {instruction}")
    located = ", filling the region its locator found (region.png)" if "region" in images else ""
    print(f"model: {args.base} ({adapter}{located}), {args.steps} steps")
    if args.instruction is None:
        score = judge_edit(edited, example.edit)
        verdict = "success" if score.success else "not a success"
        print(
            f"ShapesEdit success rule: {verdict} (inside error {score.inside_error:.3f}, "
            f"outside {score.outside_error:.3f}; thresholds {score.t_inside:.3f} / {score.t_outside:.3f})"
        )
    written = ", ".join(str(out / f"{name}.png") for name in images if name != "target")
    print(f"wrote {written} and {out / 'target.png'} (the ground truth)")
    return 0
