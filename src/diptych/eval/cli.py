"""`diptych eval`: run a benchmark with a model (or score existing outputs) and write the reports.

`add_eval_parser(subparsers)` registers the subcommand on the main `diptych` parser; `run_eval(args)`
runs it. `python -m diptych.eval.cli ...` runs it alone (what `accelerate launch` / `torchrun` start).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..cli_options import BASE_HELP, add_model_options, add_speed_options

EVAL_EXAMPLES = """\
examples:
  # ICEdit on the Emu Edit test set (parquet files of facebook/emu_edit_test_set)
  diptych eval --benchmark emu-edit --data emu_edit_test_set/ --base black-forest-labs/FLUX.1-Fill-dev \\
      --lora RiverZ/normal-lora --out runs/emu-icedit

  # a quick look: 50 samples spread over the tasks, only the background and style tasks
  diptych eval --benchmark emu-edit --data emu_edit_test_set/ --base ... --subset 50 --tasks background,style \\
      --out runs/emu-quick

  # score Emu Edit's own generations (facebook/emu_edit_test_set_generations): no model needed
  diptych eval --benchmark emu-edit --data emu_edit_test_set_generations/ --out runs/emu-emuedit

  # MagicBrush test (unzipped official test.zip), multi-turn: sessions chained, last turn scored
  diptych eval --benchmark magicbrush --data magicbrush/test --protocol final-turn --base ... --out runs/mb

  # GEdit-Bench with VIEScore, judged by an OpenAI-compatible VLM server
  diptych eval --benchmark gedit --data GEdit-Bench/ --base ... --out runs/gedit \\
      --judge "vlm:http://localhost:8000/v1?model=Qwen/Qwen2.5-VL-72B-Instruct"

  # outputs made elsewhere: files named {sample id}.png (or the benchmark's official names)
  diptych eval --benchmark magicbrush --data magicbrush/test --predictions my_outputs/ --out runs/mb-mine

  # several GPUs: samples are split across processes, rank 0 merges and writes the report
  accelerate launch --num_processes 4 -m diptych.eval.cli --benchmark emu-edit --data ... --base ... --out runs/emu
  # or separate jobs, then the report
  diptych eval ... --shard 0/2 --out runs/emu & diptych eval ... --shard 1/2 --out runs/emu; wait
  diptych eval --merge --out runs/emu

interrupted runs resume: run the same command again; finished samples (DIR/samples*.jsonl) are skipped.
metrics: emu-edit clip_i, clip_out, clip_dir, dino, l1 (source vs edit); magicbrush l1, l2, clip_i, dino,
clip_t (vs ground truth); gedit vie_sc, vie_pq, vie_overall; shapes success, l1. See docs/evaluation.md.
"""


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Register `eval` on `subparsers` (from `parser.add_subparsers()`); returns the new parser."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model on a benchmark (Emu Edit, MagicBrush, GEdit-Bench, ShapesEdit)",
        description="Run an editing benchmark and write report.md, report.csv and index.html.",
        epilog=EVAL_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)
    parser.set_defaults(func=run_eval)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    # No argparse `choices` for values checked later: a bad value must give one line and exit code 2.
    parser.add_argument("--benchmark", help="emu-edit, magicbrush, gedit or shapes")
    parser.add_argument("--data", help="the benchmark's local folder or file (or hub[:REPO] to download)")
    parser.add_argument("--out", required=True, metavar="DIR", help="run folder: samples, images, reports")
    parser.add_argument("--merge", action="store_true", help="only write the reports of the run in --out")

    source = parser.add_argument_group("where the edits come from")
    add_model_options(source, base_help="Fill model to edit with: " + BASE_HELP)
    add_speed_options(source)
    source.add_argument("--predictions", metavar="DIR", help="score the images in DIR instead of editing")

    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--steps", type=int, default=28, help="denoising steps (default 28; the paper used 50)")
    sampling.add_argument("--guidance", type=float, default=50.0, help="guidance scale (default 50)")
    sampling.add_argument("--seed", type=int, default=42, help="seed of every edit (default 42)")
    sampling.add_argument(
        "--width", type=int, default=None, help="panel width in pixels (default 512; 64 for the built-in model)"
    )
    sampling.add_argument("--template", default=None, help="prompt template: icedit (default), paper, comfyui, ...")
    sampling.add_argument("--batch-size", type=int, default=4, help="edits per batch (default 4)")

    selection = parser.add_argument_group("samples")
    selection.add_argument("--split", default="test", help="emu-edit: test (default), validation or all")
    selection.add_argument("--protocol", default="all-turn", help="magicbrush: all-turn (default) or final-turn")
    selection.add_argument("--languages", default="en", help="gedit: comma-separated, en (default), cn")
    selection.add_argument(
        "--no-caption-filter",
        dest="caption_filter",
        action="store_false",
        help="emu-edit: keep samples with missing or identical captions",
    )
    selection.add_argument("--tasks", help="comma-separated task categories to keep")
    selection.add_argument("--subset", type=int, help="N samples spread evenly over the (filtered) benchmark")
    selection.add_argument("--shard", metavar="I/N", help="do only shard I of N (0-based); merge with --merge")
    selection.add_argument("--retry-failed", action="store_true", help="redo samples that failed before")

    scoring = parser.add_argument_group("metrics")
    scoring.add_argument("--metrics", help="comma-separated subset of the benchmark's metrics (default: all)")
    scoring.add_argument("--clip", default=None, help="CLIP model id or folder (default openai/clip-vit-base-patch32)")
    scoring.add_argument("--dino", default=None, help="DINO model id or folder (default facebook/dino-vits16)")
    scoring.add_argument("--judge", default=None, help="VIEScore judge for gedit: vlm:URL?model=NAME")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _split_list(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    items = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    return items or None


def config_from_args(args: argparse.Namespace):
    """The EvalConfig of parsed arguments (checks what argparse leaves to us)."""
    from .benchmarks import BENCHMARKS, BenchmarkError, parse_shard
    from .runner import DEFAULT_CLIP, DEFAULT_DINO, EvalConfig, EvalError

    if not args.benchmark:
        raise EvalError(f"--benchmark is required: one of {', '.join(BENCHMARKS)}")
    if args.benchmark not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {args.benchmark!r}; choose one of {', '.join(BENCHMARKS)}")
    if not args.data:
        raise EvalError("--data is required: the benchmark's local folder (see diptych eval --help)")
    return EvalConfig(
        benchmark=args.benchmark,
        data=args.data,
        out=args.out,
        split=args.split,
        protocol=args.protocol,
        languages=_split_list(args.languages) or ("en",),
        caption_filter=args.caption_filter,
        tasks=_split_list(args.tasks),
        subset=args.subset,
        shard=parse_shard(args.shard) if args.shard else None,
        metrics=_split_list(args.metrics),
        base=args.base,
        lora=args.lora,
        lora_scale=args.lora_scale,
        moe_dispatch=args.moe_dispatch,
        device=args.device,
        dtype=args.dtype,
        offload=args.offload,
        local_files_only=args.local_files_only,
        cache=args.cache,
        quantize=args.quantize,
        compile=args.compile,
        gguf=args.gguf,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        width=args.width,
        template=args.template,
        batch_size=args.batch_size,
        predictions=args.predictions,
        clip=args.clip or DEFAULT_CLIP,
        dino=args.dino or DEFAULT_DINO,
        judge=args.judge,
        retry_failed=args.retry_failed,
        quiet=args.quiet,
    )


def run_eval(args: argparse.Namespace) -> int:
    """Run `diptych eval` for parsed arguments; returns the exit code."""
    from .runner import merge_run, run_evaluation

    if args.merge:
        merge_run(args.out)
        return 0
    run_evaluation(config_from_args(args))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m diptych.eval.cli` (for `accelerate launch -m` and `torchrun -m`)."""
    parser = argparse.ArgumentParser(
        prog="diptych eval",
        description="Run an editing benchmark and write report.md, report.csv and index.html.",
        epilog=EVAL_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)
    from ..cli_options import run_guarded

    return run_guarded(run_eval, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
