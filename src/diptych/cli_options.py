"""What every `diptych` command shares: `run_guarded` (errors to one line and exit code 2), `--threads`,
quiet loading under `-q`, the model options (`add_model_options`: one meaning each on every command that
loads a Fill model), and the built-in model's defaults.

`run_guarded`, which runs every subcommand (`diptych ...` and `python -m diptych.train.cli` /
`diptych.eval.cli` alike), applies `--threads` and `-q` before the command starts, so a subcommand only
declares the option (`add_threads_option`). It lives here rather than in `diptych.cli` so that the
subcommands' own `cli` modules never import the top-level command line, which imports them.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator

from .devices import DTYPE_CHOICES, OFFLOAD_MODES
from .errors import DiptychError, InputError

#: Panel side of the built-in ShapesEdit model (`diptych.shapes.models.PANEL`; a test keeps them equal).
BUILTIN_PANEL = 64

THREADS_HELP = (
    "CPU threads for torch (default: torch's, all cores). Give each job its share when several run on one "
    "machine: two jobs each using every core run many times slower"
)


def is_builtin_base(base: object) -> bool:
    """Whether `base` names the built-in ShapesEdit model (`shapes` or `shapes:FOLDER`)."""
    return isinstance(base, str) and (base == "shapes" or base.startswith("shapes:"))


#: `--quantize` values (`diptych.speed.QUANTIZE_MODES`; a test keeps them equal).
QUANTIZE_CHOICES = ("int8", "fp8", "nf4")

#: `--moe-dispatch` values (`diptych.adapters.moe.DISPATCHES`; a test keeps them equal without importing torch here).
MOE_DISPATCH_CHOICES = ("dense", "sparse")

BASE_HELP = (
    "Fill model: hub id or local diffusers folder (FLUX.1 Fill dev: black-forest-labs/FLUX.1-Fill-dev), or shapes: "
    "the built-in ShapesEdit model (offline, 64-px panels)"
)


def add_model_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    base_default: str | None = None,
    base_required: bool = False,
    base_help: str = BASE_HELP,
) -> None:
    """The options that choose and place the model, with one meaning on every command: `--base`, `--lora`
    (the adapter's weights: a .safetensors file, a folder or a hub id), `--lora-scale`, `--moe-dispatch`,
    `--device`, `--dtype`, `--offload`, `--local-files-only` and `--threads`. `model_options(args)` turns them
    into `load_fill_pipeline` / `Editor.from_pretrained` keywords."""
    default = f" (default {base_default})" if base_default else ""
    parser.add_argument("--base", default=base_default, required=base_required, help=base_help + default)
    parser.add_argument(
        "--lora",
        default=None,
        help="adapter weights (plain LoRA or LoRA-MoE): .safetensors file, folder or hub id; with --base shapes "
        "also moe (the default), lora or none",
    )
    parser.add_argument("--lora-scale", type=float, default=1.0, help="adapter strength (default 1.0)")
    parser.add_argument(
        "--moe-dispatch",
        choices=MOE_DISPATCH_CHOICES,
        default="dense",
        help="LoRA-MoE adapters: dense (official) or sparse (only the chosen experts; faster at FLUX sizes)",
    )
    parser.add_argument("--device", default=None, help="cuda, cuda:1, mps or cpu (default: best available)")
    parser.add_argument(
        "--dtype", choices=DTYPE_CHOICES, default=None, help="weights' precision (default: bf16 on CUDA, else fp32)"
    )
    parser.add_argument(
        "--offload",
        choices=OFFLOAD_MODES,
        default="none",
        help="CPU offload to save accelerator memory (model: fits 24 GB cards; sequential: least memory)",
    )
    parser.add_argument("--local-files-only", action="store_true", help="never contact the hub")
    add_threads_option(parser)


class RenamedOption(argparse.Action):
    """An old option name kept working: stores into the new option's `dest` and warns once on stderr.

    `parser.add_argument("--adapter", dest="lora", action=RenamedOption, new="--lora", help=argparse.SUPPRESS)`
    """

    def __init__(self, option_strings, dest, *, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"diptych: warning: {option_string} is deprecated, use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_speed_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """`--cache`, `--quantize` and `--compile` (diptych.speed; docs/performance.md), for commands that sample."""
    parser.add_argument(
        "--cache",
        default=None,
        metavar="MODE",
        help="reuse transformer work across steps: fbcache[:THRESHOLD] (default 0.05), taylorseer, "
        "magcache[:THRESHOLD], fastercache (diffusers' cache hooks; faster, slightly different images)",
    )
    parser.add_argument(
        "--quantize",
        choices=QUANTIZE_CHOICES,
        default=None,
        help="quantize the transformer (and T5): int8 (torchao weight-only, any device), fp8 or nf4 (CUDA)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the transformer's repeated blocks (slow first edit)"
    )
    parser.add_argument(
        "--gguf", metavar="FILE", default=None, help="the transformer from a GGUF file (e.g. a Q8_0 FLUX.1 Fill)"
    )


def model_options(args: argparse.Namespace) -> dict:
    """The keywords of `Editor.from_pretrained` from `add_model_options`' (and `add_speed_options`') arguments
    (the base and adapter are passed positionally: `args.base`, `args.lora`)."""
    options = {
        "adapter_scale": args.lora_scale,
        "device": args.device,
        "dtype": args.dtype,
        "offload": args.offload,
        "local_files_only": args.local_files_only,
        "moe_dispatch": args.moe_dispatch,
    }
    for name in ("cache", "quantize", "compile", "gguf"):
        if hasattr(args, name):
            options[name] = getattr(args, name)
    return options


def add_locator_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, used_for: str) -> None:
    """Add `--locator FILE` and `--locator-threshold P` (passed to `Editor.from_pretrained` as `locator` and
    `locator_threshold`); `used_for` names what asks for the locator's region, e.g. "--mask auto"."""
    parser.add_argument(
        "--locator",
        metavar="FILE",
        default=None,
        help=f"locator for {used_for} (`diptych train --objective locate`; the built-in model's default: the one in "
        "its folder, if shipped)",
    )
    parser.add_argument(
        "--locator-threshold",
        type=float,
        metavar="P",
        default=None,
        help="a token is in the located region when the locator's probability is above P (default: the one "
        "saved in the locator file, else 0.5)",
    )


def add_threads_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add `--threads N` (applied by `run_guarded` before the command runs)."""
    parser.add_argument("--threads", type=int, default=None, metavar="N", help=THREADS_HELP)


def set_threads(threads: int) -> None:
    """`torch.set_num_threads(threads)`, and the inter-op pool too while it has not started yet."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InputError(f"--threads must be a positive number of threads, got {threads!r}")
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # only possible before the first inter-op parallel work
        torch.set_num_interop_threads(threads)


@contextlib.contextmanager
def quiet_libraries(quiet: bool = True) -> Iterator[None]:
    """Under `-q`: no progress bars and only errors from transformers, diffusers and huggingface_hub (their
    "Loading weights" / "Loading pipeline components" bars); restored afterwards."""
    if not quiet:
        yield
        return
    restore = []
    for name in ("transformers", "diffusers"):
        try:
            logging_ = __import__(f"{name}.utils.logging", fromlist=["logging"])
        except ImportError:  # pragma: no cover - both come with diptych
            continue
        bars_on, verbosity = logging_.is_progress_bar_enabled(), logging_.get_verbosity()
        logging_.disable_progress_bar()
        logging_.set_verbosity_error()
        restore.append((logging_, bars_on, verbosity))
    try:
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

        hub_bars_off = are_progress_bars_disabled()
        disable_progress_bars()
    except ImportError:  # pragma: no cover
        hub_bars_off = True
    try:
        yield
    finally:
        for logging_, bars_on, verbosity in restore:
            logging_.set_verbosity(verbosity)
            if bars_on:
                logging_.enable_progress_bar()
        if not hub_bars_off:
            enable_progress_bars()


@contextlib.contextmanager
def common_options(args: argparse.Namespace) -> Iterator[None]:
    """Apply `--threads` and `-q` of parsed arguments for the duration of a command."""
    threads = getattr(args, "threads", None)
    previous = None
    if threads is not None:
        import torch

        previous = torch.get_num_threads()
        set_threads(threads)
    try:
        with quiet_libraries(bool(getattr(args, "quiet", False))):
            yield
    finally:
        if previous is not None:
            import torch

            torch.set_num_threads(previous)


def run_guarded(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command (with its `--threads` and `-q` applied); a `DiptychError` becomes one line on stderr and
    exit code 2. (Also importable as `diptych.cli.run_guarded`.)"""
    try:
        with common_options(args):
            return func(args)
    except DiptychError as err:
        print(f"diptych: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("diptych: interrupted", file=sys.stderr)
        return 130
