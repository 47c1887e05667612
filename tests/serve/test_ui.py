"""The web UI: it mounts on the API app, and its handlers edit through the same service as the API."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from diptych.testing import random_image

pytest.importorskip("gradio", reason="the web UI needs gradio (pip install gradio)")


def test_ui_is_mounted_next_to_the_api(make_app):
    client = TestClient(make_app(ui=True))
    page = client.get("/ui/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert client.get("/", follow_redirects=False).headers["location"] == "/ui/"
    assert client.get("/healthz").status_code == 200


def test_ui_needs_the_key_too(make_app):
    client = TestClient(make_app(ui=True, api_key="k"))
    refused = client.get("/ui/")
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
    assert client.get("/ui/", auth=("me", "k")).status_code == 200


def test_handlers_edit_mask_undo(make_app, tiny_editor):
    import gradio as gr

    from diptych.serve.ui import UiHandlers, mask_from_layers

    service = make_app(ui=True).state.service
    handlers = UiHandlers(service)
    source = random_image(32, 32, seed=4)
    layer = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    layer.paste((255, 0, 0, 255), (0, 0, 16, 32))
    mask = mask_from_layers([layer], (32, 32))
    assert mask is not None and np.asarray(mask)[:, :16].min() == 255 and np.asarray(mask)[:, 16:].max() == 0
    assert mask_from_layers([Image.new("RGBA", (32, 32))], (32, 32)) is None

    value = {"background": source, "layers": [layer], "composite": source}
    out = handlers.edit(source, value, "make it red", 5, 2, 50.0, 1, 1, 0.0, None)
    current, editor_value, (before, after), result, gallery, history, status, state = out
    assert before.size == source.size
    expected = tiny_editor.edit(source, "make it red", seed=5, steps=2, mask=mask)
    assert np.abs(np.asarray(result, dtype=np.int16) - np.asarray(expected, dtype=np.int16)).max() <= 1
    assert current is result and editor_value["background"] is result and after is result and gallery == []
    assert history == [[1, "make it red", 5]] and "Turn 1" in status

    # Editing the returned image continues the session; a new upload starts another.
    out = handlers.edit(current, editor_value, "now blue", None, 2, 50.0, 1, 1, 0.0, state)
    assert out[5] == [[1, "make it red", 5], [2, "now blue", 6]] and out[7]["session"] == state["session"]
    undone = handlers.undo(out[7])
    assert undone[4] == [[1, "make it red", 5]] and np.array_equal(np.asarray(undone[3]), np.asarray(result))
    fresh = handlers.edit(random_image(32, 32, seed=9), None, "x", 1, 2, 50.0, 1, 1, 0, state)
    assert fresh[7]["session"] != state["session"] and fresh[5] == [[1, "x", 1]]
    # the status line says how the editor's rewriter read an instruction it restated
    tiny_editor.use_rewriter(lambda text: "make it green" if text == "could you paint it green" else text)
    try:
        read = handlers.edit(random_image(32, 32, seed=9), None, "could you paint it green", 1, 2, 50.0, 1, 1, 0, None)
    finally:
        tiny_editor.use_rewriter(None)
    assert "read as 'make it green'" in read[6] and "read as" not in fresh[6]

    with pytest.raises(gr.Error, match="empty instruction"):
        handlers.edit(source, value, "  ", 1, 2, 50.0, 1, 1, 0.0, None)
    with pytest.raises(gr.Error, match="Upload an image"):
        handlers.edit(None, None, "x", 1, 2, 50.0, 1, 1, 0.0, None)


def test_handlers_show_the_candidates(make_app):
    from diptych.scaling.judges import CallableJudge
    from diptych.serve.ui import UiHandlers

    def darkest(_source, candidate, _instruction) -> float:
        return -float(np.asarray(candidate, dtype=np.float32).mean())

    handlers = UiHandlers(make_app(ui=True, judge=CallableJudge(darkest)).state.service)
    gallery = handlers.edit(random_image(32, 32, seed=2), None, "darker", 3, 3, 50.0, 3, 1, 0.0, None)[4]
    assert [caption.split(" (")[0] for _, caption in gallery] == ["seed 3", "seed 4", "seed 5"]
    assert sum("judge's pick" in caption for _, caption in gallery) == 1
