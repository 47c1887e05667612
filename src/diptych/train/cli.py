"""`diptych train`: train an ICEdit-style edit adapter (plain LoRA or LoRA-MoE) on a FLUX Fill model.

`add_train_parser(subparsers)` registers the subcommand on the main `diptych` parser; `run_train(args)`
runs it. `python -m diptych.train.cli ...` runs it alone (what `accelerate launch` / `torchrun` start).
Options given on the command line override the YAML file given with `--config`, which overrides the
defaults (the official ICEdit recipe).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ..canvas import FILL_REGIONS, MASKED_CONTENTS
from ..cli_options import BUILTIN_PANEL, add_threads_option, is_builtin_base

TRAIN_EXAMPLES = """\
examples:
  # plain LoRA on a folder of pairs (data.jsonl: {"source", "instruction", "target"} per line)
  diptych train --base black-forest-labs/FLUX.1-Fill-dev --data pairs/ --output runs/lora --max-steps 5000

  # LoRA-MoE (4 experts, top-1) on MagicBrush + OmniEdit style parquet, from a YAML config
  diptych train --config train.yaml --adapter moe --data omniedit/ --data-format omniedit --output runs/moe

  # several GPUs (DDP; see docs/training.md for multi-node)
  accelerate launch --num_processes 4 -m diptych.train.cli --base FLUX.1-Fill-dev --data pairs/ \\
      --output runs/lora --max-steps 40000 --batch-size 2 --gradient-checkpointing

  # resume: running the same command again continues from the latest checkpoint in --output
  diptych train ... --output runs/lora              # resumes automatically
  diptych train ... --output runs/lora --no-resume  # refuses if checkpoints exist

  # continue the built-in LoRA-MoE from its shipped weights (fresh optimizer, cosine over --max-steps)
  diptych train --config examples/shapes/moe-located.yaml --output runs/moe-more --max-steps 12000 \
      --lr 1e-3 --init-adapter src/diptych/shapes/weights/adapters/moe.safetensors

  # more steps on the operations it still misses: the four it does every time thinned to every third row
  diptych train --config examples/shapes/moe-located.yaml --data runs/data/fresh-40k --output runs/moe-weak \
      --init-adapter src/diptych/shapes/weights/adapters/moe.safetensors --timestep-shift 1 --lr 5e-4 \
      --max-steps 9000 --task-share mirror=1/3 --task-share invert=1/3 --task-share background=1/3 \
      --task-share remove=1/3

  # a locator (which object does the instruction name?) for `diptych edit --mask auto`, on the built-in model
  diptych train --base shapes --data runs/data/recolor-8k --objective locate --optimizer adamw --lr 2e-3 \
      --batch-size 32 --max-steps 1500 --output runs/locator   # -> runs/locator/locator.safetensors

the result loads with:  diptych edit cat.png "make it snow" -o out.png --base ... --lora runs/lora
data formats: jsonl (file or folder with data.jsonl), magicbrush / omniedit (parquet file or folder),
shapes (--data is a ShapesEdit split: train), auto (default: by file type and parquet columns).
"""


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Register `train` on `subparsers` (from `parser.add_subparsers()`); returns the new parser."""
    parser = subparsers.add_parser(
        "train",
        help="train an edit adapter (LoRA or LoRA-MoE) on pairs of images",
        description="Train an ICEdit-style edit adapter on a FLUX Fill model (diptych in-context editing).",
        epilog=TRAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)
    parser.set_defaults(func=run_train)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    # Every default is None: "not given", so the YAML file or the dataclass default applies.
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of options (keys as the long options)")
    parser.add_argument("--base", help="Fill model: hub id or local diffusers folder")
    parser.add_argument("--data", help="training data: JSONL file/folder, parquet file/folder, or a shapes split")
    parser.add_argument(
        "--data-format", choices=("auto", "jsonl", "magicbrush", "omniedit", "shapes"), help="default: auto"
    )
    parser.add_argument("--output", help="run folder: checkpoints, metrics, validation grids, the adapter")
    parser.add_argument("--max-steps", type=int, help="optimizer steps (default 1000)")

    adapter = parser.add_argument_group("adapter")
    adapter.add_argument("--adapter", choices=("lora", "moe"), help="plain LoRA (default) or LoRA-MoE")
    adapter.add_argument("--rank", type=int, help="LoRA rank (default 32)")
    adapter.add_argument("--alpha", type=float, help="LoRA alpha (default 32)")
    adapter.add_argument("--lora-targets", nargs="+", metavar="NAME", help="module names (default: official)")
    adapter.add_argument("--experts", dest="num_experts", type=int, help="MoE experts (default 4)")
    adapter.add_argument("--top-k", type=int, help="experts per token (default 1)")
    adapter.add_argument(
        "--gate", choices=("official", "learned"), help="router gate; 'learned' lets top-1 routers learn"
    )
    adapter.add_argument("--dispatch", choices=("dense", "sparse"), help="MoE expert dispatch (default dense)")
    adapter.add_argument("--balance-loss-weight", type=float, help="load-balancing loss weight (default 0: off)")
    adapter.add_argument(
        "--task-embedding",
        action=argparse.BooleanOptionalAction,
        help="also learn Emu Edit task vectors from each sample's task (saved as task_embedding.safetensors)",
    )
    adapter.add_argument(
        "--init-adapter",
        metavar="PATH",
        help="start from this exported adapter (file or run folder; its task_embedding.safetensors too) instead of "
        "a fresh one: continue an adapter whose checkpoints are gone, or fine-tune one (fresh optimizer and lr "
        "schedule; same adapter options as it was trained with)",
    )
    adapter.add_argument(
        "--train-norms",
        action=argparse.BooleanOptionalAction,
        help="also train the attention q/k RMSNorm gains (~0.1%% of a LoRA; saved in the adapter file, as Flux "
        "Control LoRAs store theirs): a LoRA alone cannot sharpen attention that normalised queries and keys cap",
    )

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--optimizer", choices=("prodigy", "adamw"), help="default prodigy")
    optim.add_argument("--lr", type=float, help="learning rate (default: 1.0 Prodigy, 1e-4 AdamW)")
    optim.add_argument("--weight-decay", type=float, help="default 0.01")
    optim.add_argument(
        "--lr-scheduler",
        choices=("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"),
        help="default constant",
    )
    optim.add_argument("--warmup-steps", type=int, help="LR warm-up steps (default 0)")
    optim.add_argument("--max-grad-norm", type=float, help="gradient clipping (default 0.5; 0 = off)")
    optim.add_argument("--batch-size", type=int, help="samples per process per micro-batch (default 1)")
    optim.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default 1)")
    optim.add_argument("--ema-decay", type=float, help="keep an EMA of the adapter (e.g. 0.999); off by default")
    optim.add_argument(
        "--gradient-checkpointing", action=argparse.BooleanOptionalAction, help="trade compute for memory"
    )
    optim.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="torch.compile the repeated transformer blocks (the first steps compile for a minute or more)",
    )
    optim.add_argument("--mixed-precision", choices=("auto", "fp32", "bf16"), help="default: bf16 on CUDA")
    optim.add_argument("--cpu", action="store_true", default=None, help="train on the CPU even with a GPU")
    add_threads_option(optim)

    data = parser.add_argument_group("objective and data")
    data.add_argument(
        "--objective",
        choices=("flow", "locate"),
        help="'flow': an edit adapter (default); 'locate': a locator (LoRA + per-token head) that predicts the "
        "region an instruction names, for `diptych edit --mask auto` (docs/training.md)",
    )
    data.add_argument("--locate-positive-weight", type=float, help="locator BCE weight of in-region tokens (default 4)")
    data.add_argument(
        "--resolution",
        help="panel size N or WxH (default 512: a 1024x512 diptych; 64 for the built-in model, --base shapes)",
    )
    data.add_argument(
        "--bucketing", action=argparse.BooleanOptionalAction, help="aspect-ratio buckets instead of square resizing"
    )
    data.add_argument("--prompt-dropout", type=float, help="share of prompts replaced by ' ' (default 0.1)")
    data.add_argument(
        "--synonyms",
        metavar="FILE",
        help="thesaurus JSON of the dataset's words and their synonyms, for --synonym-swap "
        "(examples/shapes/thesaurus.json: the built-in model's, from WordNet)",
    )
    data.add_argument(
        "--synonym-swap",
        type=float,
        help="probability that each word the --synonyms thesaurus lists is swapped for one of its synonyms, so the "
        "adapter sees many words in the place of the dataset's verbs (default 0; e.g. 0.5)",
    )
    data.add_argument(
        "--request-frames",
        type=float,
        help="share of instructions wrapped in a generic request frame ('can you ...?', '... please'), so the "
        "adapter hears past the dataset's exact wording (default 0)",
    )
    data.add_argument(
        "--word-dropout",
        type=float,
        help="probability that each word of a training instruction is left out, so no one word (the dataset's "
        "verb) is needed to read it (default 0; e.g. 0.1)",
    )
    data.add_argument(
        "--text-noise",
        type=float,
        help="Gaussian noise on the prompt's token states, times their RMS, as NEFTune does (default 0; e.g. 0.1)",
    )
    data.add_argument("--template", help="prompt template: icedit (default), paper, comfyui or a {instruction} string")
    data.add_argument("--loss-region", choices=("all", "right"), help="all tokens (official) or the right half")
    data.add_argument("--max-sequence-length", type=int, help="T5 tokens (default 512)")
    data.add_argument(
        "--loss-weighting",
        choices=("none", "edit"),
        help="'edit': weight each token by the share of its pixels the edit changes (the sample's mask, or "
        "the dilated |target - source| where there is none); default none",
    )
    data.add_argument(
        "--fill-region",
        choices=FILL_REGIONS,
        help="what the Fill mask covers: 'panel' the whole right panel (official, default); 'edit' only the "
        "sample's edit region, the source around it: an adapter for located edits (`diptych edit --mask auto`)",
    )
    data.add_argument(
        "--region-jitter",
        type=float,
        help="with --fill-region edit: share of regions grown by 1-3 bordering tokens, as a locator's often are, "
        "so the adapter draws what the words say, not what the region's extent says (default 0; e.g. 0.5)",
    )
    data.add_argument(
        "--masked-content",
        choices=MASKED_CONTENTS,
        help="what the Fill condition shows under the mask: 'zero' (FLUX.1 Fill, default) or 'source' (the old "
        "content stays visible, as InstructPix2Pix concatenates the source image)",
    )
    data.add_argument("--edit-weight", type=float, help="weight of a fully edited token (default 10)")
    data.add_argument(
        "--timestep-shift", type=float, help="shift training times toward noise, t -> s t / (1 + (s-1) t) (default 1)"
    )
    data.add_argument(
        "--pixel-loss-weight",
        type=float,
        help="add this times the mean absolute pixel error of the decoded x0 prediction over each edit's pixels "
        "(the VAE decoder runs forward and backward on the target panel; default 0, off; e.g. 0.1)",
    )
    data.add_argument(
        "--task-share",
        dest="task_shares",
        action="append",
        metavar="TASK=SHARE",
        help="keep this share of the rows of TASK (0-1, e.g. mirror=1/3: every third), the rest of the data whole; "
        "repeat for several tasks; needs rows that name their task",
    )
    data.add_argument(
        "--cache-dir",
        help="cache frozen encodings (VAE posteriors, prompt embeddings) here, keyed by content; reused across "
        "epochs, resumed runs and other runs on the same data",
    )

    run = parser.add_argument_group("checkpoints, validation, logging")
    run.add_argument("--seed", type=int, help="default 42")
    run.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 500)")
    run.add_argument("--keep-checkpoints", type=int, help="how many to keep (default 3)")
    run.add_argument("--validate-every", type=int, help="steps between validation grids (default 500)")
    run.add_argument("--num-validation", type=int, help="validation edits per grid (default 4; 0 = none)")
    run.add_argument("--validation-data", help="data for validation (default: the first training samples)")
    run.add_argument("--validation-steps", type=int, help="denoising steps of validation edits (default 20)")
    run.add_argument("--log-every", type=int, help="steps between metric records (default 1)")
    resume = run.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume",
        nargs="?",
        const=True,
        metavar="CKPT",
        help="resume from the latest checkpoint in --output (required), or from folder CKPT",
    )
    resume.add_argument("--no-resume", dest="resume", action="store_false", help="start afresh")
    parser.set_defaults(resume=None)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace):
    """The TrainConfig of parsed arguments: defaults < --config YAML < explicit options."""
    from .config import build_config, field_names, parse_resolution

    options = {name: getattr(args, name, None) for name in field_names()}
    if options.get("task_shares") is not None:
        options["task_shares"] = parse_task_shares(options["task_shares"])
    if options.get("resolution") is not None:
        options["resolution"] = parse_resolution(options["resolution"])
    else:
        options["resolution"] = _builtin_resolution(args)
    return build_config(args.config, **options)


def parse_task_shares(items: list[str]) -> dict[str, str]:
    """`--task-share TASK=SHARE` options as a mapping (the shares are checked with the config)."""
    from .config import ConfigError

    shares = {}
    for item in items:
        task, sep, share = item.partition("=")
        if not sep or not task.strip() or not share.strip():
            raise ConfigError(f"--task-share takes TASK=SHARE, e.g. mirror=1/3; got {item!r}")
        shares[task.strip()] = share.strip()
    return shares


def _builtin_resolution(args: argparse.Namespace) -> tuple[int, int] | None:
    """The built-in model's panel size when it is the base and neither the options nor the YAML set one."""
    from .config import read_yaml

    yaml_options = read_yaml(args.config) if args.config else {}
    base = args.base if args.base is not None else yaml_options.get("base")
    if is_builtin_base(base) and yaml_options.get("resolution") is None:
        return (BUILTIN_PANEL, BUILTIN_PANEL)
    return None


def run_train(args: argparse.Namespace) -> int:
    """Run `diptych train` for parsed arguments; returns the exit code."""
    from .trainer import Trainer

    config = config_from_args(args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("diptych").setLevel(logging.INFO)
    result = Trainer(config, show_progress=not args.quiet).train()
    if result.adapter is not None:
        print(f"adapter written to {result.adapter}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m diptych.train.cli` (for `accelerate launch -m` and `torchrun -m`)."""
    parser = argparse.ArgumentParser(
        prog="diptych train",
        description="Train an ICEdit-style edit adapter on a FLUX Fill model (diptych in-context editing).",
        epilog=TRAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)
    from ..cli_options import run_guarded

    return run_guarded(run_train, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
