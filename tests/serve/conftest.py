"""Fixtures for the server tests: apps around the session's tiny editor, closed after each test."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import pytest
from PIL import Image

from diptych.testing import random_image


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def make_app(tiny_editor, tmp_path) -> Iterator[Callable]:
    """Build apps on the tiny editor (2 steps by default, no UI); their workers stop at teardown."""
    from diptych.serve import ServeSettings, create_app

    apps = []

    def build(judge=None, **overrides):
        options = {"db_path": tmp_path / "sessions.sqlite3", "ui": False, "default_steps": 2, **overrides}
        app = create_app(tiny_editor, settings=ServeSettings(**options), judge=judge)
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.state.service.close()


@pytest.fixture
def source_png() -> bytes:
    return png(random_image(40, 32, seed=3))
