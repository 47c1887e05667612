"""Command line: `diptych edit ...`. Errors a user can fix print one line and exit with code 2."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .cli_options import (
    BASE_HELP,
    add_locator_options,
    add_model_options,
    add_speed_options,
    is_builtin_base,
    model_options,
    run_guarded,
)
from .errors import DiptychError, InputError
from .images import AUTO_MASK

DEFAULT_EARLY_STEPS = 10  # the paper's: 10 early steps per candidate (clamped to --steps when not given)

EDIT_EXAMPLES = """\
examples:
  diptych edit cat.png "make the cat wear a red hat" -o hat.png --lora RiverZ/normal-lora
  diptych edit room.jpg "remove the lamp" -o out.png --mask lamp_mask.png --keep-size
  diptych edit scene.png "make the circle blue" -o out.png --base shapes --mask auto   # the locator's region
  diptych edit --batch edits.jsonl --out-dir results/ --base ./FLUX.1-Fill-dev --offload model
  diptych edit room.png -i "add a plant" -i "make the walls blue" -i "remove the lamp" -o out.png
  diptych edit cat.png "make it snow" -o snow.png --candidates 6 --early-steps 10 \
      --judge "vlm:http://localhost:8000/v1?model=Qwen/Qwen2.5-VL-72B-Instruct" --save-candidates cands/
  diptych edit scene.png "make the circle red" -o out.png --base shapes --candidates 4 --threads 1

the built-in ShapesEdit model (--base shapes) works offline: 64-px panels (widths: multiples of 8; FLUX:
multiples of 16), its LoRA-MoE adapter and task embedding, and its own judge (--judge shapes, the default
with --candidates). --threads N caps torch's CPU threads: give each job its share when several share a machine.

batch files hold one JSON object per line; paths are relative to the file:
  {"image": "cat.png", "instruction": "make it snow", "seed": 7, "mask": "m.png", "output": "snow.png"}
without "output" a result is named after its source (cat.jpg -> cat.png; repeats: cat-2.png, cat-3.png).
finished outputs are skipped when the command is run again (use --overwrite to redo them).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diptych",
        description="Instruction-based image editing with in-context diptychs on FLUX.1 Fill.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    edit = sub.add_parser(
        "edit",
        help="edit an image (or a JSONL batch) from a text instruction",
        description="Edit an image from a text instruction (ICEdit in-context editing).",
        epilog=EDIT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    edit.add_argument("image", nargs="?", help="source image (PNG, JPEG, WebP, BMP, TIFF)")
    edit.add_argument("instruction", nargs="?", help='the edit, e.g. "make the sky purple"')
    edit.add_argument("-o", "--output", help="where to write the edited image (.png, .jpg, .webp)")
    edit.add_argument(
        "-i",
        "--instruction",
        dest="turns",
        action="append",
        default=[],
        metavar="TEXT",
        help="a further turn (repeatable): the edits apply one after the other",
    )
    edit.add_argument("--batch", metavar="JSONL", help="edit every line of a JSONL file instead")
    edit.add_argument("--out-dir", metavar="DIR", help="output folder for --batch")
    edit.add_argument("--overwrite", action="store_true", help="redo batch items whose output exists")

    model = edit.add_argument_group("model")
    add_model_options(model, base_help=BASE_HELP + " (default black-forest-labs/FLUX.1-Fill-dev)")
    add_speed_options(model)
    model.add_argument("--fuse", action="store_true", help="fold the adapter into the base weights (faster)")
    model.add_argument(
        "--task",
        default=None,
        help="Emu Edit task (default: predicted from the instruction when a task embedding is loaded)",
    )
    model.add_argument(
        "--task-file",
        default=None,
        help="task embedding (default: the --lora folder's task_embedding.safetensors, if any)",
    )
    model.add_argument("--routing-stats", metavar="JSON", help="LoRA-MoE adapters: write expert usage per layer")
    add_locator_options(model, used_for="--mask auto")
    model.add_argument(
        "--no-rewrite",
        action="store_true",
        help="edit with the instruction as given: the built-in model otherwise restates an unfamiliar wording in "
        "the nearest phrasing it was trained on and says so ('could you make the star disappear' -> 'remove the "
        "star')",
    )

    sampling = edit.add_argument_group("sampling")
    sampling.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    sampling.add_argument("--steps", type=int, default=28, help="denoising steps (default 28)")
    sampling.add_argument("--guidance", type=float, default=50.0, help="guidance scale (default 50)")
    sampling.add_argument(
        "--true-cfg-scale",
        type=float,
        default=1.0,
        metavar="S",
        help="classifier-free guidance on the instruction, against the empty prompt adapters train with: two "
        "transformer passes a step (default 1: off; FLUX.1 Fill has distilled guidance, --guidance, instead)",
    )
    sampling.add_argument(
        "--stochastic",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="stochastic sampling: each step re-noises the model's clean-image prediction with fresh noise from "
        "the seed instead of following the flow (diffusers' stochastic_sampling); --no-stochastic: Euler steps "
        "along the flow (default: the model's scheduler: on for the built-in model, off for FLUX.1 Fill)",
    )
    sampling.add_argument(
        "--width",
        type=int,
        default=None,
        help="panel width in pixels: a multiple of 16 for FLUX, of 8 for the built-in model (default: 512; 64 "
        "for the built-in model)",
    )
    sampling.add_argument("--max-pixels", type=int, default=None, help="canvas pixel budget (2W x H)")
    sampling.add_argument(
        "--template",
        default=None,
        help="prompt template: icedit (default), paper, comfyui, or a string with {instruction}",
    )
    sampling.add_argument(
        "--mask",
        default=None,
        help="mask image, white = may change; or 'auto': the region the locator predicts from the instruction "
        "(--locator), the edit composited inside it",
    )
    sampling.add_argument("--feather", type=int, default=3, help="mask edge feather in pixels (default 3)")
    sampling.add_argument("--keep-size", action="store_true", help="resize the result to the source's size")
    sampling.add_argument("--batch-size", type=int, default=4, help="edits per transformer batch (default 4)")
    turns = edit.add_argument_group("multi-turn editing")
    turns.add_argument(
        "--threshold", type=float, default=0.03, help="Emu Edit's per-pixel threshold between turns (default 0.03)"
    )
    turns.add_argument("--no-threshold", action="store_true", help="keep every pixel each turn changes")
    turns.add_argument("--save-turns", metavar="DIR", help="write the image after every turn")
    scaling = edit.add_argument_group("early filter (inference-time scaling)")
    scaling.add_argument("--candidates", type=int, default=1, help="seeds to try (default 1: no filter)")
    scaling.add_argument(
        "--early-steps",
        type=int,
        default=None,
        help=f"steps per candidate before judging (default {DEFAULT_EARLY_STEPS}, or --steps if fewer; with --base "
        "shapes and its own judge, half of --steps)",
    )
    scaling.add_argument(
        "--judge",
        default=None,
        help="judge spec: shapes (the built-in model's learned judge, offline; with ?render=1 it vetoes and the render "
        "residual ranks the rest, the default with --base shapes), "
        "vlm:URL?model=NAME, local-vlm:PATH, clip[:PATH] (the hub id needs the network or the HF cache), "
        "python:module:function",
    )
    scaling.add_argument(
        "--strategy",
        choices=("auto", "knockout", "bubble", "score"),
        default="auto",
        help="tournament (default auto: score if the judge scores, else bubble)",
    )
    scaling.add_argument(
        "--samplers",
        nargs="+",
        choices=("stochastic", "euler"),
        default=None,
        help="run every candidate seed with each of these samplers (default: the model's own; euler with --base "
        "shapes and its own judge)",
    )
    scaling.add_argument("--swap", action="store_true", help="ask pairwise judges both orders (position bias)")
    scaling.add_argument("--save-candidates", metavar="DIR", help="write previews and the judge's choices here")
    edit.add_argument("--save-diptych", metavar="PATH", help="also write the before/after pair side by side")
    edit.add_argument("-q", "--quiet", action="store_true", help="no progress bars (weight loading included)")
    edit.set_defaults(func=run_edit)

    export = sub.add_parser(
        "export-lora",
        help="turn a LoRA-MoE adapter into a plain LoRA (for ComfyUI, fusing, other tools)",
        description=(
            "Export a LoRA-MoE adapter as one plain LoRA in diffusers format. Each MoE layer's experts are "
            "combined exactly (rank E*r): weighted by 1/E (mean) or by measured expert usage."
        ),
        epilog=(
            "examples:\n"
            "  diptych export-lora ICEdit-MoE-LoRA.safetensors -o icedit-merged.safetensors\n"
            '  diptych edit in.png "make it snow" -o o.png --lora moe.safetensors --routing-stats usage.json\n'
            "  diptych export-lora moe.safetensors -o merged.safetensors --weighting usage --usage usage.json\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("adapter", help="LoRA-MoE .safetensors file")
    export.add_argument("-o", "--output", required=True, help="plain LoRA .safetensors to write")
    export.add_argument("--weighting", choices=("mean", "usage"), default="mean", help="expert weights")
    export.add_argument("--usage", metavar="JSON", help="expert usage per layer (from edit --routing-stats)")
    export.set_defaults(func=run_export_lora)

    from .emu.datagen_cli import add_datagen_parser
    from .emu.inversion_cli import add_invert_task_parser
    from .eval.cli import add_eval_parser
    from .serve.cli import add_serve_parser
    from .shapes.cli import add_shapes_parser
    from .train.cli import add_train_parser

    add_train_parser(sub)
    add_eval_parser(sub)
    add_serve_parser(sub)
    add_datagen_parser(sub)
    add_invert_task_parser(sub)
    add_shapes_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(args.func, args)


# ---------------------------------------------------------------------- edit
def run_edit(args: argparse.Namespace) -> int:
    if args.batch:
        if args.image or args.instruction or args.output or args.turns:
            raise InputError("give either IMAGE INSTRUCTION -o OUT or --batch JSONL --out-dir DIR, not both")
        if not args.out_dir:
            raise InputError("--batch needs --out-dir DIR for the results")
        jobs = read_batch(Path(args.batch), Path(args.out_dir), overwrite=args.overwrite)
    else:
        args.turns = ([args.instruction] if args.instruction is not None else []) + args.turns
        from .images import validate_instruction

        for turn in args.turns:
            validate_instruction(turn)  # an empty "" is named as such, not answered with the usage line
        if not (args.image and args.turns and args.output):
            raise InputError('usage: diptych edit IMAGE "instruction" -o OUT.png (or --batch JSONL --out-dir DIR)')
        jobs = [BatchJob(args.image, t, args.seed, args.mask, Path(args.output), line=0) for t in args.turns]
    _check_outputs(jobs if args.batch else jobs[:1])
    # Validate every input before loading weights: a typo should not cost a model load.
    from .images import load_image, load_mask, validate_instruction

    for job in jobs:
        where = f"line {job.line}: " if job.line else ""
        try:
            validate_instruction(job.instruction)
            size = load_image(job.image).size
            if job.mask is not None and job.mask != AUTO_MASK:
                load_mask(job.mask, size=size)
        except DiptychError as err:
            raise type(err)(f"{where}{err}") from err
    if any(job.mask == AUTO_MASK for job in jobs) and args.locator is None:
        from .shapes_core.models import resolve_locator

        if resolve_locator(args.base or "") is None:
            raise InputError(
                "--mask auto needs a locator: --locator FILE (train one: diptych train --objective locate)"
            )
    judge = None
    if args.candidates > 1 and is_builtin_base(args.base) and not args.judge:
        # the built-in model's own filter, shipped with it (no download): its judge, Euler candidates judged halfway
        from .scaling.spec import BUILTIN_JUDGE
        from .shapes_core.judge import FILTER_SAMPLERS, filter_early_steps

        args.judge = BUILTIN_JUDGE
        args.samplers = args.samplers or list(FILTER_SAMPLERS)
        if args.early_steps is None:
            args.early_steps = filter_early_steps(args.steps)
    if args.early_steps is None:  # the default never exceeds --steps; an explicit value is checked below
        args.early_steps = min(DEFAULT_EARLY_STEPS, args.steps)
    if args.candidates > 1:
        if args.batch:
            raise InputError("--candidates works on single edits; run them one by one for now")
        if not args.judge:
            raise InputError(
                "--candidates needs --judge: e.g. --judge vlm:URL?model=NAME, --judge clip (CLIP from the hub or "
                "its cache), --judge python:mymodule:score (--base shapes uses its own judge by default)"
            )
        if not 1 <= args.early_steps <= args.steps:
            raise InputError(f"--early-steps {args.early_steps} must be between 1 and --steps ({args.steps})")
        from .scaling.spec import load_judge

        judge = load_judge(args.judge)
    if not jobs:
        print("diptych: nothing to do: every output exists (use --overwrite to redo)", file=sys.stderr)
        return 0

    from tqdm.auto import tqdm

    from .editor import DEFAULT_BASE, Editor, EditRequest
    from .images import save_image_atomic

    editor = Editor.from_pretrained(
        args.base or DEFAULT_BASE,
        args.lora,
        locator=args.locator,
        locator_threshold=args.locator_threshold,
        rewrite=not args.no_rewrite,
        **model_options(args),
    )
    for instruction in dict.fromkeys(job.instruction for job in jobs):
        if not args.quiet and editor.rewriter is not None and (read := editor.rewrite(instruction)) != instruction:
            print(f"diptych: reading {instruction!r} as {read!r} (--no-rewrite: as given)", file=sys.stderr)
    if args.fuse:
        editor.fuse_adapter()
    _use_task_embedding(editor, args)
    if args.stochastic is not None:
        editor.stochastic = args.stochastic
    if args.routing_stats:
        if editor.adapter_kind != "moe":
            raise InputError("--routing-stats needs a LoRA-MoE adapter (--lora with expert weights)")
        from .adapters import set_collect_stats

        set_collect_stats(editor.pipe.transformer, True)
    if args.max_pixels:
        editor.max_canvas_pixels = args.max_pixels
    if not args.batch and len(jobs) > 1:
        return _run_session(editor, jobs, judge, args)
    if judge is not None:
        return _run_early_filter(editor, jobs[0], judge, args)
    bar = tqdm(total=len(jobs) * args.steps, unit="step", disable=args.quiet, desc="editing")
    chunk = max(1, args.batch_size) * 4  # write results as they finish, so an interrupted batch resumes
    for start in range(0, len(jobs), chunk):
        part = jobs[start : start + chunk]
        offset = start * args.steps

        def progress(done: int, _total: int, offset: int = offset) -> None:
            bar.n = offset + done
            bar.refresh()

        requests = [EditRequest(j.image, j.instruction, j.seed, j.mask, args.task) for j in part]
        options = {**_edit_options(args), "batch_size": args.batch_size, "progress": progress}
        images = editor.edit_many(requests, **options)
        for job, image in zip(part, images, strict=True):
            save_image_atomic(image, job.output)
            if args.save_diptych:
                before = load_image(job.image).resize(image.size)
                pair = _side_by_side(before, image)
                save_image_atomic(pair, _diptych_path(Path(args.save_diptych), job, batch=bool(args.batch)))
    bar.close()
    if args.routing_stats:
        _write_routing_stats(editor, Path(args.routing_stats))
    where = args.out_dir if args.batch else args.output
    print(f"wrote {len(jobs)} edit{'s' if len(jobs) != 1 else ''} to {where}", file=sys.stderr)
    return 0


def _run_early_filter(editor, job: BatchJob, judge, args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .images import save_image_atomic

    total = args.candidates * len(args.samplers or [None]) * args.early_steps + args.steps - args.early_steps
    bar = tqdm(total=total, unit="NFE", disable=args.quiet, desc="early filter")

    def progress(done: int, _total: int) -> None:
        bar.n = done
        bar.refresh()

    result = _early_filter_call(editor, job, judge, args, progress)
    bar.close()
    save_image_atomic(result.image, job.output)
    sel = result.selection
    print(
        f"kept seed {result.seed} of {result.seeds[0]}..{result.seeds[-1]} "
        f"({sel.judge_calls} judge calls, {result.nfe} NFE; restarting would cost {result.restart_nfe}); "
        f"wrote {job.output}",
        file=sys.stderr,
    )
    return 0


def _early_filter_call(editor, job: BatchJob, judge, args: argparse.Namespace, progress):
    from .editor import EditRequest
    from .scaling.early_filter import edit_with_early_filter

    return edit_with_early_filter(
        editor,
        EditRequest(job.image, job.instruction, job.seed, job.mask, args.task),
        judge=judge,
        candidates=args.candidates,
        early_steps=args.early_steps,
        **_edit_options(args),
        strategy=args.strategy,
        swap=args.swap,
        batch_size=args.batch_size,
        samplers=args.samplers,
        save_candidates=args.save_candidates,
        progress=progress,
    )


def _edit_options(args: argparse.Namespace) -> dict:
    """The per-edit options every `diptych edit` mode passes on."""
    return dict(
        steps=args.steps,
        guidance=args.guidance,
        true_cfg_scale=args.true_cfg_scale,
        width=args.width,
        template=args.template,
        keep_size=args.keep_size,
        feather=args.feather,
    )


def _use_task_embedding(editor, args: argparse.Namespace) -> None:
    """Load the task embedding of `--task-file` or the adapter's folder (the built-in model brings its own)."""
    from .conditioning.task_embedding import find_task_embedding, load_task_embedding

    builtin = str(args.base or "").startswith("shapes")
    path = args.task_file or (find_task_embedding(args.lora) if args.lora and not builtin else None)
    if path:
        editor.use_task_embedding(load_task_embedding(path))
    if args.task and editor.task_embedding is None:
        raise InputError("--task needs a task embedding: --task-file FILE, or a --lora folder with one")


def _run_session(editor, jobs: list[BatchJob], judge, args: argparse.Namespace) -> int:
    """Several instructions in sequence on one image (the mask, if any, applies to the first turn)."""
    from tqdm.auto import tqdm

    from .images import save_image_atomic

    threshold = None if args.no_threshold else args.threshold
    options = _edit_options(args)
    if judge is not None:
        options.update(
            candidates=args.candidates,
            early_steps=args.early_steps,
            judge=judge,
            strategy=args.strategy,
            samplers=args.samplers,
        )
    session = editor.session(jobs[0].image, threshold=threshold, seed=args.seed, **options)
    for turn, job in enumerate(tqdm(jobs, unit="turn", disable=args.quiet, desc="turns")):
        image = session.edit(job.instruction, mask=job.mask if turn == 0 else None, task=args.task)
        if args.save_turns:
            save_image_atomic(image, Path(args.save_turns) / f"turn_{turn + 1}.png")
    save_image_atomic(session.image, jobs[0].output)
    print(f"wrote {len(jobs)} turns to {jobs[0].output}", file=sys.stderr)
    return 0


def _write_routing_stats(editor, path: Path) -> None:
    from .adapters import routing_stats
    from .files import write_atomic

    write_atomic(path, json.dumps(routing_stats(editor.pipe.transformer), indent=1))


def _stored_alpha(adapter: str) -> float | None:
    """The single alpha diptych records in an adapter's metadata (None for official files: alpha = rank)."""
    from safetensors import safe_open

    from .adapters.lora import resolve_adapter_file
    from .adapters.moe_io import METADATA_KEY

    with safe_open(str(resolve_adapter_file(adapter)), framework="pt") as f:
        raw = (f.metadata() or {}).get(METADATA_KEY)
    alphas = set(json.loads(raw).get("alphas", {}).values()) if raw else set()
    if len(alphas) > 1:
        raise InputError(f"{adapter} has layers with different alphas {sorted(alphas)}; export it from Python")
    return float(alphas.pop()) if alphas else None


def run_export_lora(args: argparse.Namespace) -> int:
    from safetensors.torch import save

    from .adapters import export_moe_to_lora, is_moe_state_dict
    from .adapters.lora import read_adapter_state_dict
    from .files import write_atomic

    state_dict = read_adapter_state_dict(args.adapter)
    if not is_moe_state_dict(state_dict):
        raise InputError(f"{args.adapter} is a plain LoRA already (no expert or router weights)")
    usage = None
    if args.weighting == "usage":
        if not args.usage:
            raise InputError("--weighting usage needs --usage JSON (write one with diptych edit --routing-stats)")
        try:
            usage = json.loads(Path(args.usage).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(f"cannot read usage file {args.usage}: {err}") from err
    output = Path(args.output)
    if output.suffix != ".safetensors":
        raise InputError(f"output {output} must end in .safetensors")
    lora = export_moe_to_lora(state_dict, weighting=args.weighting, usage=usage, alpha=_stored_alpha(args.adapter))
    write_atomic(output, save({k: v.contiguous() for k, v in lora.items()}))
    print(f"wrote a plain LoRA with {len(lora)} tensors to {output}", file=sys.stderr)
    return 0


class BatchJob:
    """One line of a batch file, resolved."""

    def __init__(self, image, instruction, seed, mask, output: Path, line: int):
        self.image, self.instruction, self.seed, self.mask = image, instruction, seed, mask
        self.output, self.line = output, line


def read_batch(path: Path, out_dir: Path, *, overwrite: bool = False) -> list[BatchJob]:
    """Parse a JSONL batch; relative paths are relative to the file. Lines whose output exists are skipped.

    A line without "output" is named after its source image's file stem (`cat.jpg` -> `cat.png`); when that
    name is taken, by an explicit output or an earlier line, `-2`, `-3`, ... is added (`cat-2.png`).
    """
    if not path.is_file():
        raise InputError(f"batch file {path} does not exist")
    rows: list[tuple[int, dict]] = []
    allowed = {"image", "instruction", "seed", "mask", "output"}
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"{path} line {number}: not valid JSON ({err.msg})") from err
        if not isinstance(row, dict) or "image" not in row or "instruction" not in row:
            raise InputError(f"{path} line {number}: needs at least 'image' and 'instruction'")
        if set(row) - allowed:
            raise InputError(f"{path} line {number}: unknown keys {sorted(set(row) - allowed)}")
        seed = row.get("seed", 42)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise InputError(f"{path} line {number}: seed must be an integer")
        if not isinstance(row["image"], str) or not row["image"].strip():
            raise InputError(f"{path} line {number}: image must be a path")
        if "output" in row:
            name = row["output"]
            if not isinstance(name, str) or Path(name).name != name or name in {"", ".", ".."}:
                raise InputError(f"{path} line {number}: output must be a plain file name, got {name!r}")
        if not isinstance(row["instruction"], str):
            raise InputError(f"{path} line {number}: instruction must be a string")
        rows.append((number, row))
    taken = {row["output"] for _, row in rows if "output" in row}
    jobs: list[BatchJob] = []
    for number, row in rows:
        name = row.get("output") or _free_name(Path(row["image"]).stem or f"{number:05d}", taken)
        mask = row.get("mask")
        job = BatchJob(
            image=str(path.parent / row["image"]),
            instruction=row["instruction"],
            seed=row.get("seed", 42),
            mask=str(path.parent / mask) if mask and mask != AUTO_MASK else mask or None,
            output=out_dir / name,
            line=number,
        )
        if overwrite or not job.output.exists():
            jobs.append(job)
    return jobs


def _free_name(stem: str, taken: set[str]) -> str:
    """`stem.png`, or `stem-2.png`, `stem-3.png`, ... : the first not in `taken` (which it joins)."""
    name, count = f"{stem}.png", 1
    while name in taken:
        count += 1
        name = f"{stem}-{count}.png"
    taken.add(name)
    return name


def _check_outputs(jobs: list[BatchJob]) -> None:
    suffixes = {".png", ".jpg", ".jpeg", ".webp"}
    for job in jobs:
        if job.output.suffix.lower() not in suffixes:
            raise InputError(f"output {job.output} must end in one of {', '.join(sorted(suffixes))}")
    seen: set[Path] = set()
    for job in jobs:
        if job.output in seen:
            raise InputError(f"two edits write to {job.output}; give each line its own 'output'")
        seen.add(job.output)


def _side_by_side(left, right):
    from PIL import Image

    pair = Image.new("RGB", (left.width + right.width, max(left.height, right.height)), "white")
    pair.paste(left, (0, 0))
    pair.paste(right, (left.width, 0))
    return pair


def _diptych_path(target: Path, job: BatchJob, *, batch: bool) -> Path:
    # In batch mode --save-diptych names a folder; each pair is named after its output.
    return target / job.output.name if batch else target


if __name__ == "__main__":
    sys.exit(main())
