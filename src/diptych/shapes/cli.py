"""`diptych shapes make | bench`: export ShapesEdit data, and measure the built-in models on it."""

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
"""


def add_shapes_parser(subparsers) -> argparse.ArgumentParser:
    """Register `shapes` (with `make` and `bench`) on the main parser's subparsers."""
    from .bench import VARIANTS
    from .dataset import SPLITS

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
        epilog="examples:\n  diptych shapes bench --n 200\n  diptych shapes bench --data shapes-test/ --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("--data", default=None, help="a `shapes make` folder (default: the held-out test split)")
    bench.add_argument("--n", type=int, default=200, help="edits from the test split when --data is not given")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--steps", type=int, default=28)
    bench.add_argument("--batch-size", type=int, default=16)
    bench.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=list(VARIANTS))
    bench.add_argument("--base", default="shapes", help="'shapes' (built-in) or 'shapes:FOLDER'")
    bench.add_argument("--device", default=None)
    bench.add_argument("--json", action="store_true", help="print the report as one JSON object")
    bench.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    bench.set_defaults(func=run_bench_command)

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
    demo.set_defaults(func=run_demo)
    return shapes


def run_make(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from .dataset import make_dataset

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

    from .bench import folder_cases, format_table, heldout_cases, run_bench

    cases = folder_cases(args.data) if args.data else heldout_cases(args.n, seed=args.seed)
    bar = tqdm(total=len(cases) * len(args.variants), unit="edit", disable=args.quiet, desc="bench")
    report = run_bench(
        cases,
        base=args.base,
        variants=args.variants,
        steps=args.steps,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        progress=bar.update,
    )
    bar.close()
    print(json.dumps(report) if args.json else format_table(report))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from ..editor import Editor
    from ..images import save_image_atomic
    from .dataset import sample_edit
    from .edits import judge_edit

    example = sample_edit("test", args.index, phrasings="all")
    instruction = args.instruction or example.instruction
    editor = Editor.from_pretrained(args.base)
    edited = editor.edit(example.source_image, instruction, steps=args.steps)
    out = Path(args.out)
    for name, image in (("before", example.source_image), ("after", edited), ("target", example.target_image)):
        save_image_atomic(image, out / f"{name}.png")
    adapter = editor.adapter_kind or "no adapter"
    print(f"instruction: {instruction}")
    print(f"model: {args.base} ({adapter}), {args.steps} steps")
    if args.instruction is None:
        score = judge_edit(edited, example.edit)
        verdict = "success" if score.success else "not a success"
        print(
            f"ShapesEdit success rule: {verdict} (inside error {score.inside_error:.3f}, "
            f"outside {score.outside_error:.3f}; thresholds {score.t_inside:.3f} / {score.t_outside:.3f})"
        )
    print(f"wrote {out / 'before.png'}, {out / 'after.png'} and {out / 'target.png'} (the ground truth)")
    return 0
