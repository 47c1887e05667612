"""Every server limit is enforced: upload size, pixels, image type, instruction, option ranges, auth,
queue bound and timeout."""

from __future__ import annotations

import base64
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from diptych.testing import random_image

from .conftest import png


def post_edit(client: TestClient, image: bytes, **fields):
    return client.post("/v1/edits", files={"image": ("upload.png", image, "image/png")}, data=fields)


def test_oversize_upload_is_413(make_app):
    client = TestClient(make_app(max_upload_bytes=4000))
    big = png(random_image(64, 64, seed=1))  # ~12 kB of noise
    assert len(big) > 4000
    response = post_edit(client, big, instruction="x")
    assert response.status_code == 413 and "upload limit of 4000 bytes" in response.json()["error"]


def test_oversize_stream_without_content_length_is_413(make_app):
    client = TestClient(make_app(max_upload_bytes=4000))

    def chunks():
        for _ in range(10):
            yield b"a" * 1000

    response = client.post("/v1/edits", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "upload limit" in response.json()["error"]


def test_json_base64_counts_against_the_limit(make_app):
    client = TestClient(make_app(max_upload_bytes=4000))
    data = base64.b64encode(png(random_image(64, 64, seed=1))).decode()
    assert client.post("/v1/edits", json={"image": data, "instruction": "x"}).status_code == 413


def test_too_many_pixels_is_refused_with_the_limit(make_app, source_png):
    response = post_edit(TestClient(make_app(max_pixels=500)), source_png, instruction="x")
    assert response.status_code == 400
    assert "500" in response.json()["error"]


def gif_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format="GIF")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("image", "fields", "fragment"),
    [
        (b"definitely not an image", {"instruction": "x"}, "not an image"),
        (None, {"instruction": "x"}, "GIF"),
        ("png", {"instruction": "   "}, "empty instruction"),
        ("png", {"instruction": "x" * 1001}, "limit of 1000"),
        ("png", {"instruction": "a\x00b"}, "control character"),
        ("png", {"instruction": "x", "steps": "0"}, "steps must be between 1 and 100"),
        ("png", {"instruction": "x", "steps": "101"}, "steps must be between 1 and 100"),
        ("png", {"instruction": "x", "steps": "two"}, "steps must be an integer"),
        ("png", {"instruction": "x", "guidance": "0.5"}, "guidance must be between 1 and 100"),
        ("png", {"instruction": "x", "guidance": "nan"}, "finite"),
        ("png", {"instruction": "x", "candidates": "0"}, "candidates must be between 1 and 16"),
        ("png", {"instruction": "x", "candidates": "17"}, "candidates must be between 1 and 16"),
        ("png", {"instruction": "x", "seed": "-1"}, "seed must be between"),
        ("png", {"instruction": "x", "task": "../etc"}, "task must be a name"),
    ],
)
def test_bad_input_is_400(make_app, source_png, image, fields, fragment):
    data = source_png if image == "png" else gif_bytes() if image is None else image
    response = post_edit(TestClient(make_app()), data, **fields)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]


def test_type_comes_from_the_content_not_the_name(make_app, source_png):
    client = TestClient(make_app())
    # A PNG named .gif with a GIF content type is a PNG; a GIF named .png is a GIF.
    ok = client.post("/v1/edits", files={"image": ("x.gif", source_png, "image/gif")}, data={"instruction": "x"})
    assert ok.status_code == 200
    bad = client.post("/v1/edits", files={"image": ("x.png", gif_bytes(), "image/png")}, data={"instruction": "x"})
    assert bad.status_code == 400 and "GIF" in bad.json()["error"]


def test_api_key(make_app, source_png):
    client = TestClient(make_app(api_key="s3cret"))
    assert client.get("/healthz").status_code == 200
    missing = client.get("/v1/models")
    assert missing.status_code == 401 and "API key" in missing.json()["error"]
    assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/v1/models", headers={"X-API-Key": "s3cret"}).status_code == 200
    basic = base64.b64encode(b"anyone:s3cret").decode()
    assert client.get("/v1/models", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    assert post_edit(client, source_png, instruction="x").status_code == 401
    ok = client.post(
        "/v1/edits",
        files={"image": ("a", source_png)},
        data={"instruction": "x"},
        headers={"X-API-Key": "s3cret"},
    )
    assert ok.status_code == 200


def test_api_key_from_the_environment(monkeypatch, make_app):
    from diptych.serve.cli import build_serve_parser, settings_from_args

    monkeypatch.setenv("DIPTYCH_API_KEY", "from-env")
    args = build_serve_parser().parse_args([])
    assert settings_from_args(args).api_key == "from-env"
    args = build_serve_parser().parse_args(["--api-key", "flag"])
    assert settings_from_args(args).api_key == "flag"


def test_full_queue_is_429_with_retry_after(make_app, source_png):
    app = make_app(queue_size=2, retry_after_s=7)
    client = TestClient(app)
    app.state.service.worker.pause()
    for _ in range(2):
        assert client.post("/v1/jobs", files={"image": ("a", source_png)}, data={"instruction": "x"}).status_code == 202
    full = client.post("/v1/jobs", files={"image": ("a", source_png)}, data={"instruction": "x"})
    assert full.status_code == 429 and full.headers["retry-after"] == "7"
    assert "queue is full" in full.json()["error"]
    assert post_edit(client, source_png, instruction="x").status_code == 429
    app.state.service.worker.resume()


def test_timeout_is_504_and_frees_the_queue_slot(make_app, source_png):
    app = make_app(timeout_s=0.3, queue_size=1)
    client = TestClient(app)
    app.state.service.worker.pause()
    response = post_edit(client, source_png, instruction="x")
    assert response.status_code == 504 and "did not finish within 0.3 s" in response.json()["error"]
    assert client.get("/healthz").json()["queued"] == 0
    app.state.service.worker.resume()
    assert post_edit(client, source_png, instruction="x").status_code == 200


def test_settings_are_checked():
    from diptych.errors import InputError
    from diptych.serve import ServeSettings

    with pytest.raises(InputError, match="queue_size must be positive"):
        ServeSettings(queue_size=0)
    with pytest.raises(InputError, match="API key is empty"):
        ServeSettings(api_key=" ")
