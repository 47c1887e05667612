"""What every `diptych` command shares: `run_guarded` (errors to one line and exit code 2), `--threads`,
quiet loading under `-q`, and the built-in model's defaults.

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
