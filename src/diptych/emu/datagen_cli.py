"""`diptych datagen`: Emu Edit-style data generation from the command line (see `diptych.emu.datagen`)."""

from __future__ import annotations

import argparse
import sys

from ..cli_options import RenamedOption, add_model_options, add_speed_options, model_options

DATAGEN_EXAMPLES = """\
examples:
  diptych datagen --source shapes --n 1000 --out data/shapes-gen --base shapes     # filter: the built-in judge
  diptych datagen --source "llm:http://localhost:8000/v1?model=Qwen/Qwen2.5-7B-Instruct" \\
      --inputs photos.jsonl --n 500 --out data/gen --base ./FLUX.1-Fill-dev --lora RiverZ/normal-lora \\
      --filter clip:./clip-vit-base-patch32 --tasks local remove add background
  diptych datagen --source python:my_prompts:write_edit --n 200 --out data/gen --base shapes

sources: shapes (ShapesEdit edits with their ground-truth instruction and object masks),
  llm:URL?model=NAME (an OpenAI-compatible chat endpoint; key from $DIPTYCH_LLM_API_KEY or ?key_env=VAR),
  python:module:function (a function (caption, task) -> {"instruction", "edited_object", "new_caption",
  "original_object"}). llm and python sources edit the images of --inputs (JSONL lines
  {"image": "a.png", "caption": "...", "mask": "m.png", "task": "local", "id": "a"}; mask and task
  optional) or, without --inputs, random ShapesEdit scenes.
filters: shapes[:FOLDER][?min_score=0] (the built-in ShapesEdit judge: keeps a pair it scores as a correct
  edit; ships with the package, no network; the default for --source shapes),
  clip[:PATH][?min_direction=0.05&min_image=0.7] (CLIP; the default for llm and python sources; a hub id
  needs the network or the local Hugging Face cache), python:module:function (fn(source, edited, info) ->
  bool), none.
the output folder (data.jsonl + images/) is what `diptych train` reads; running the command again
skips the ids already written or rejected.
"""


def add_datagen_parser(subparsers) -> argparse.ArgumentParser:
    """Register `datagen` on the main parser's subparsers."""
    parser = subparsers.add_parser(
        "datagen",
        help="generate training pairs Emu Edit-style: instructions, soft-mask guided edits, a filter",
        description="Generate (source, instruction, target) pairs: an instruction source writes edits, the Fill "
        "model makes them guided by a soft mask of the edited object, and a filter drops weak pairs.",
        epilog=DATAGEN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--source", required=True, help="shapes | llm:URL?model=NAME | python:module:function")
    parser.add_argument("--n", type=int, default=None, help="number of items (default: all of --inputs)")
    parser.add_argument("--out", required=True, help="output folder")
    model = parser.add_argument_group("model")
    add_model_options(model, base_required=True)
    add_speed_options(model)
    parser.add_argument("--adapter", dest="lora", action=RenamedOption, new="--lora", help=argparse.SUPPRESS)
    parser.add_argument(
        "--filter",
        default=None,
        help="shapes[:FOLDER] | clip[:PATH] | python:module:function | none (default: shapes, the built-in judge, "
        "for --source shapes; clip otherwise)",
    )
    parser.add_argument("--inputs", default=None, help="JSONL of images + captions for llm/python sources")
    parser.add_argument("--tasks", nargs="+", default=None, help="tasks (ShapesEdit ops for --source shapes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64, help="ShapesEdit render size in pixels")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--guidance", type=float, default=50.0)
    parser.add_argument("--width", type=int, default=None, help="panel width (default: the model's)")
    parser.add_argument("--dilate-px", type=int, default=None, help="soft mask dilation (default 3%% of side)")
    parser.add_argument("--blur-sigma", type=float, default=None, help="soft mask blur (default 2%% of side)")
    parser.add_argument(
        "--mask-weights",
        type=float,
        nargs=3,
        default=None,
        metavar=("PRECISE", "SMOOTH", "BOX"),
        help="soft mask blend weights (default 0.5 0.3 0.2)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_datagen)
    return parser


def run_datagen(args: argparse.Namespace) -> int:
    """Validate the options, load the model and filter, then generate; prints the counts."""
    from . import datagen as dg
    from .softmask import DEFAULT_WEIGHTS

    if args.n is not None and args.n < 1:
        raise dg.DatagenError(f"--n must be a positive number of items, got {args.n}")
    if args.source == "shapes" and args.inputs:
        raise dg.DatagenError("--source shapes makes its own images; --inputs is for llm and python sources")
    if args.inputs is None and args.n is None:
        raise dg.DatagenError("give --n N (or --inputs FILE to edit every line of it)")
    # Cheap checks first: a typo in a spec should not cost a model load.
    source = dg.load_instruction_source(args.source)
    if args.source == "shapes":
        items = dg.shapes_items(args.n, seed=args.seed, tasks=args.tasks, size=args.size)
    elif args.inputs:
        items = dg.input_items(args.inputs, seed=args.seed, tasks=args.tasks or dg.DEFAULT_LLM_TASKS, n=args.n)
    else:
        items = dg.scene_items(args.n, seed=args.seed, tasks=args.tasks or dg.DEFAULT_LLM_TASKS, size=args.size)
    options = dg.GenerationOptions(
        steps=args.steps,
        guidance=args.guidance,
        width=args.width,
        dilate_px=args.dilate_px,
        blur_sigma=args.blur_sigma,
        weights=tuple(args.mask_weights) if args.mask_weights else DEFAULT_WEIGHTS,
    )
    if args.filter is None:  # the built-in judge needs no network; CLIP is the default for real images
        args.filter = "shapes" if args.source == "shapes" else "clip"
    pair_filter = dg.load_filter(args.filter)

    from ..editor import Editor

    editor = Editor.from_pretrained(args.base, args.lora, **model_options(args))
    report = dg.run_datagen(
        editor,
        items,
        args.out,
        source=source,
        pair_filter=pair_filter,
        options=options,
        seed=args.seed,
        total=args.n,
        progress=not args.quiet,
    )
    print(f"{args.out}: {report.summary()}", file=sys.stderr)
    if report.reasons:
        print("reasons: " + ", ".join(f"{k} {v}" for k, v in report.reasons.most_common()), file=sys.stderr)
    return 0
