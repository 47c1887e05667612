"""`diptych serve`: load one model and serve the HTTP API and the web UI from one process."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..cli_options import BASE_HELP, add_locator_options, add_model_options, add_speed_options, model_options
from ..errors import DiptychError, WeightsError
from .settings import ServeSettings

__all__ = ["add_serve_parser", "build_serve_parser", "run_serve", "settings_from_args"]

SERVE_EXAMPLES = """\
examples:
  diptych serve                                   # the built-in ShapesEdit model on http://127.0.0.1:8000
  diptych serve --base ./FLUX.1-Fill-dev --lora RiverZ/normal-lora --judge clip --port 8080
  DIPTYCH_API_KEY=s3cret diptych serve --base ./FLUX.1-Fill-dev --host 0.0.0.0 --queue 64 --max-batch 8

then:
  curl -F image=@cat.png -F instruction="make the cat wear a red hat" -F seed=7 \\
      http://127.0.0.1:8000/v1/edits -o hat.png
  open http://127.0.0.1:8000/ui (web UI) or http://127.0.0.1:8000/docs (API reference)
"""


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    model = parser.add_argument_group("model")
    add_model_options(model, base_help=BASE_HELP + " (default: shapes)")
    add_speed_options(model)
    model.add_argument("--width", type=int, default=None, help="panel width in pixels (default: the model's)")
    add_locator_options(model, used_for="mask=auto requests")
    model.add_argument(
        "--judge",
        default=None,
        help="judge spec for early filtering: shapes (the built-in model's learned judge, offline; with ?render=1 "
        "it vetoes and the render residual ranks the rest, the default with the built-in model), "
        "vlm:URL?model=NAME, clip[:PATH] (the hub id needs the network or the HF cache), python:mod:fn",
    )

    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    server.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    server.add_argument("--api-key", default=None, help="require this key (default: $DIPTYCH_API_KEY, else none)")
    server.add_argument("--db", default=None, help="sessions database (default <data dir>/sessions.sqlite3)")
    server.add_argument("--no-ui", action="store_true", help="serve the API only")
    server.add_argument("-q", "--quiet", action="store_true", help="no progress bars while the model loads")

    limits = parser.add_argument_group("limits")
    defaults = ServeSettings()
    limits.add_argument("--max-batch", type=int, default=defaults.max_batch, help="edits per model batch")
    limits.add_argument("--batch-wait-ms", type=float, default=defaults.batch_wait_ms, help="wait to fill a batch")
    limits.add_argument("--queue", type=int, default=defaults.queue_size, help="queued edits before 429")
    limits.add_argument("--timeout", type=float, default=defaults.timeout_s, help="seconds per request before 504")
    limits.add_argument(
        "--max-upload-mb", type=float, default=defaults.max_upload_bytes / 2**20, help="request body limit (MiB)"
    )
    limits.add_argument("--max-pixels", type=int, default=defaults.max_pixels, help="largest image (width*height)")
    limits.add_argument("--max-steps", type=int, default=defaults.max_steps, help="largest steps a client may ask")
    limits.add_argument("--steps", type=int, default=defaults.default_steps, help="default denoising steps")
    limits.add_argument("--job-ttl", type=float, default=defaults.job_ttl_s, help="seconds finished jobs are kept")
    parser.set_defaults(func=run_serve)
    return parser


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `serve` subcommand to the `diptych` command's subparsers."""
    parser = subparsers.add_parser(
        "serve",
        help="serve an HTTP API and a web UI for editing",
        description="Serve the editing HTTP API (/v1/...) and a web UI (/ui) from one model in one process.",
        epilog=SERVE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return _configure(parser)


def build_serve_parser() -> argparse.ArgumentParser:
    """A stand-alone parser with the `serve` options (for tests and embedding)."""
    parser = argparse.ArgumentParser(
        prog="diptych serve", epilog=SERVE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    return _configure(parser)


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """The server settings the options ask for (the API key falls back to $DIPTYCH_API_KEY)."""
    return ServeSettings(
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=args.max_pixels,
        max_steps=args.max_steps,
        default_steps=args.steps,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        queue_size=args.queue,
        timeout_s=args.timeout,
        job_ttl_s=args.job_ttl,
        api_key=args.api_key or os.environ.get("DIPTYCH_API_KEY") or None,
        db_path=Path(args.db) if args.db else None,
        model_name=args.base or "shapes",
        judge_name=args.judge,
        ui=not args.no_ui,
    )


def load_editor(args: argparse.Namespace):
    """The Editor the options name; the built-in ShapesEdit model when no --base is given."""
    from ..editor import Editor

    base = args.base or "shapes"
    try:
        editor = Editor.from_pretrained(
            base, args.lora, locator=args.locator, locator_threshold=args.locator_threshold, **model_options(args)
        )
    except WeightsError as err:
        if args.base is None:
            raise WeightsError(f"{err}. To serve another model, pass --base MODEL (a local Fill folder)") from err
        raise
    if args.width:
        editor.default_width = args.width
    return editor


def _builtin_judge():
    """The ShapesEdit judge if its weights ship, else None (the early filter is then off)."""
    from ..scaling.spec import BUILTIN_JUDGE, load_judge

    try:
        return load_judge(BUILTIN_JUDGE)
    except WeightsError:
        return None


def run_serve(args: argparse.Namespace) -> int:
    """Load the model and serve until interrupted; bad options and missing weights raise DiptychError."""
    implicit_judge = args.judge is None and (args.base is None or args.base.startswith("shapes"))
    if implicit_judge:
        from ..scaling.spec import BUILTIN_JUDGE

        args.judge = BUILTIN_JUDGE  # the built-in model's judge ships with it
    settings = settings_from_args(args)
    if implicit_judge:  # the built-in model's own filter: Euler candidates judged after half the steps
        from ..shapes_core.judge import FILTER_SAMPLERS, filter_early_steps

        settings.filter_samplers = FILTER_SAMPLERS
        settings.default_early_steps = filter_early_steps(settings.default_steps)
    if settings.default_steps > settings.max_steps:
        raise DiptychError(f"--steps {settings.default_steps} is above --max-steps {settings.max_steps}")
    judge = None
    if args.judge and not implicit_judge:
        from ..scaling.spec import load_judge

        judge = load_judge(args.judge)
    try:
        import uvicorn

        from .api import create_app
    except ImportError as err:
        raise DiptychError(
            f"diptych serve needs the serve extra ({err.name} is missing): pip install 'diptych[serve]'"
        ) from err
    editor = load_editor(args)
    if implicit_judge:
        judge = _builtin_judge()
        if judge is None:
            settings.judge_name = None

    app = create_app(editor, settings=settings, judge=judge)
    if args.host not in ("127.0.0.1", "localhost", "::1") and settings.api_key is None:
        print(
            f"diptych: warning: serving on {args.host} without an API key; anyone who can reach it can edit "
            "(set --api-key or DIPTYCH_API_KEY)",
            file=sys.stderr,
        )
    print(f"diptych: serving on http://{args.host}:{args.port} (UI at {settings.ui_path}, API docs at /docs)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
