"""`diptych serve`: an HTTP API and a web UI around one Editor, in one process.

    >>> from diptych.serve import ServeSettings, create_app
    >>> app = create_app(editor, settings=ServeSettings(max_batch=4, queue_size=32))

Run it with uvicorn (`uvicorn.run(app)`) or `diptych serve`; see docs/serve.md. Needs the `serve` extra
(`pip install diptych[serve]`): FastAPI, uvicorn and Gradio are imported only when the app is built.
"""

from typing import Any

from .settings import ApiError, ServeSettings

__all__ = ["ApiError", "ServeSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .api import create_app

        return create_app
    raise AttributeError(f"module 'diptych.serve' has no attribute {name!r}")
