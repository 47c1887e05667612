"""`diptych invert-task`: learn the vector of a new edit task from a few examples (Emu Edit's task
inversion) on a frozen Fill model (+ adapter); see `diptych.emu.inversion`.

`add_invert_task_parser(subparsers)` registers the subcommand; `run_invert_task(args)` runs it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli_options import BUILTIN_PANEL, add_model_options, is_builtin_base, model_options
from ..errors import InputError

INVERT_EXAMPLES = """\
examples:
  # a new task from a folder of pairs (data.jsonl: {"source", "instruction", "target"} per line)
  diptych invert-task --base black-forest-labs/FLUX.1-Fill-dev --lora runs/moe --examples sketches/ \\
      --name sketch --output sketch.safetensors --steps 500 --lr 5e-3
  # the built-in model (64-px panels by default) on a folder made with `diptych shapes make`
  diptych invert-task --base shapes --examples shapes-pairs/ --name mytask --output mytask.safetensors

the adapter folder's task_embedding.safetensors (from `diptych train --task-embedding`) is the base
embedding by default: the output then holds its tasks plus the new one. Every model weight and every
existing task vector stays as it was; only the new vector is learned.
"""


def add_invert_task_parser(subparsers) -> argparse.ArgumentParser:
    """Register `invert-task` on `subparsers` (from `parser.add_subparsers()`); returns the new parser."""
    parser = subparsers.add_parser(
        "invert-task",
        help="learn a new task vector from a few examples (Emu Edit task inversion)",
        description="Learn the task embedding of a new edit task from a few examples, model frozen.",
        epilog=INVERT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(parser.add_argument_group("model"), base_required=True)
    parser.add_argument("--examples", required=True, help="JSONL file or folder of examples, as `diptych train`")
    parser.add_argument("--name", required=True, help="name of the new task")
    parser.add_argument("--output", required=True, help="the task embedding file to write (.safetensors)")
    parser.add_argument(
        "--base-embedding",
        default=None,
        help="task embedding to extend (default: the adapter's: task_embedding.safetensors beside --lora, or the "
        "one shipped with the built-in model)",
    )
    parser.add_argument("--init-task", default=None, help="start from this task's vector (default: zero)")
    parser.add_argument("--steps", type=int, default=500, help="optimisation steps (default 500)")
    parser.add_argument("--lr", type=float, default=5e-3, help="AdamW learning rate (default 5e-3)")
    parser.add_argument("--batch-size", type=int, default=4, help="examples per step (default 4)")
    parser.add_argument(
        "--resolution",
        default=None,
        help=f"panel size N or WxH (default 512; {BUILTIN_PANEL} for the built-in model, --base shapes)",
    )
    parser.add_argument("--template", default=None, help="prompt template, as in `diptych train`")
    parser.add_argument("--seed", type=int, default=0, help="default 0")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_invert_task)
    return parser


def run_invert_task(args: argparse.Namespace) -> int:
    """Run `diptych invert-task` for parsed arguments; returns the exit code."""
    from ..conditioning.task_embedding import find_task_embedding, load_task_embedding, save_task_embedding
    from ..train.config import ConfigError, parse_resolution
    from ..train.data import open_dataset
    from .inversion import invert_task

    output = Path(args.output)
    if output.suffix != ".safetensors":
        raise InputError(f"--output must be a .safetensors file, got {output}")
    if output.exists() and not args.overwrite:
        raise InputError(f"{output} exists; pass --overwrite to replace it")
    if args.resolution is None:  # the built-in model is 64 px; FLUX.1 Fill's recipe is 512
        args.resolution = str(BUILTIN_PANEL) if is_builtin_base(args.base) else "512"
    try:
        resolution = parse_resolution(args.resolution)
    except ConfigError as err:
        raise InputError(str(err)) from err
    # Read everything cheap (examples, base embedding) before the model load.
    dataset = open_dataset(args.examples, "jsonl")
    examples = list(dataset)
    skipped = sum(getattr(dataset, "skipped", {}).values())
    if not examples:
        raise InputError(f"{args.examples} holds no usable example ({skipped} skipped)")
    base_embedding = load_task_embedding(args.base_embedding) if args.base_embedding else None

    from tqdm.auto import tqdm

    from ..editor import Editor

    editor = Editor.from_pretrained(args.base, args.lora, **model_options(args))
    # Default: the adapter's own embedding. The built-in model loads it with its adapter; for other bases it is
    # the task_embedding.safetensors beside the --lora folder.
    base_path = args.base_embedding
    if base_embedding is None and editor.task_embedding is not None:
        base_embedding, base_path = editor.task_embedding, f"the task embedding of {args.base}"
    elif base_embedding is None and args.lora:
        base_path = find_task_embedding(args.lora)
        base_embedding = load_task_embedding(base_path) if base_path is not None else None
    bar = tqdm(total=args.steps, unit="step", desc=f"inverting {args.name}", disable=args.quiet)

    def progress(step: int, _total: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")

    try:
        embedding = invert_task(
            editor,
            examples,
            args.name,
            steps=args.steps,
            lr=args.lr,
            base_embedding=base_embedding,
            init_task=args.init_task,
            batch_size=args.batch_size,
            resolution=resolution,
            template=args.template,
            seed=args.seed,
            callback=progress,
        )
    finally:
        bar.close()
    save_task_embedding(embedding, output)
    where = f" (extending {base_path})" if base_path is not None else ""
    print(
        f"task {args.name!r} learned from {len(examples)} example(s){where}; wrote {output} "
        f"({len(embedding.names)} tasks)",
        file=sys.stderr,
    )
    return 0
