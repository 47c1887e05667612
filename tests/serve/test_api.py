"""The HTTP API on the tiny editor: edits, JSON/base64, jobs, sessions, errors."""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from .conftest import png


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def direct(tiny_editor, source_png: bytes, instruction: str, seed: int, steps: int = 2, mask=None) -> np.ndarray:
    image = tiny_editor.edit(source_png, instruction, seed=seed, steps=steps, guidance=50.0, mask=mask)
    return np.asarray(image, dtype=np.int16)


def wait_done(client: TestClient, job_id: str, limit_s: float = 30.0) -> dict:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        status = client.get(f"/v1/jobs/{job_id}").json()
        if status["status"] in ("done", "failed"):
            return status
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish in {limit_s} s")


def test_multipart_edit_returns_the_png_of_a_direct_edit(make_app, tiny_editor, source_png):
    client = TestClient(make_app())
    response = client.post(
        "/v1/edits",
        files={"image": ("photo.bin", source_png, "application/octet-stream")},
        data={"instruction": "make it blue", "seed": "7", "steps": "2"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-diptych-seed"] == "7"
    got = decode(response.content)
    expected = direct(tiny_editor, source_png, "make it blue", seed=7)
    assert got.shape == expected.shape
    assert got.shape[1] == tiny_editor.default_width
    assert np.abs(got - expected).max() <= 1


def test_json_body_and_json_answer(make_app, tiny_editor, source_png):
    client = TestClient(make_app())
    body = {
        "image": base64.b64encode(source_png).decode(),
        "instruction": "add a hat",
        "seed": 11,
        "steps": 2,
        "guidance": 30,
        "task": "add",
    }
    response = client.post("/v1/edits", json=body, headers={"Accept": "application/json"})
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["seed"] == 11 and payload["steps"] == 2 and payload["guidance"] == 30
    assert payload["task"] == "add" and payload["batch_size"] == 1
    assert set(payload["timings"]) == {"queued_s", "run_s"}
    got = decode(base64.b64decode(payload["image"]))
    expected = np.asarray(tiny_editor.edit(source_png, "add a hat", seed=11, steps=2, guidance=30), dtype=np.int16)
    assert (payload["width"], payload["height"]) == (got.shape[1], got.shape[0])
    assert np.abs(got - expected).max() <= 1
    # ?format=json works without the Accept header; a data URL is accepted too.
    body["image"] = "data:image/png;base64," + body["image"]
    again = client.post("/v1/edits?format=json", json=body)
    assert again.status_code == 200 and again.json()["image"] == payload["image"]


def test_mask_limits_the_edit(make_app, tiny_editor, source_png):
    client = TestClient(make_app())
    mask = Image.new("L", (40, 32), 0)
    mask.paste(255, (0, 0, 20, 32))
    response = client.post(
        "/v1/edits",
        files={"image": ("a", source_png), "mask": ("m", png(mask))},
        data={"instruction": "make it red", "seed": "5"},
    )
    assert response.status_code == 200, response.text
    expected = direct(tiny_editor, source_png, "make it red", seed=5, mask=png(mask))
    assert np.abs(decode(response.content) - expected).max() <= 1
    wrong = client.post(
        "/v1/edits",
        files={"image": ("a", source_png), "mask": ("m", png(Image.new("L", (8, 8))))},
        data={"instruction": "make it red"},
    )
    assert wrong.status_code == 400 and "same size" in wrong.json()["error"]


def test_auto_mask_uses_the_editors_locator_and_is_refused_without_one(make_app, tiny_editor, tiny_base, source_png):
    from diptych.testing import constant_locator

    client = TestClient(make_app())
    refused = client.post("/v1/edits", files={"image": ("a", source_png)}, data={"instruction": "x", "mask": "auto"})
    assert refused.status_code == 400 and "--locator" in refused.json()["error"]
    tiny_editor.use_locator(constant_locator(tiny_base, -5.0))
    try:
        response = client.post("/v1/edits", json={"image": base64.b64encode(source_png).decode(), "instruction": "x",
                                                  "mask": "auto", "seed": 5})  # fmt: skip
        assert response.status_code == 200, response.text
        assert np.abs(decode(response.content) - direct(tiny_editor, source_png, "x", seed=5, mask="auto")).max() <= 1
    finally:
        tiny_editor.use_locator(None)


def test_random_seed_is_echoed(make_app, source_png):
    client = TestClient(make_app())
    response = client.post("/v1/edits?format=json", files={"image": ("a", source_png)}, data={"instruction": "x"})
    assert response.status_code == 200
    assert isinstance(response.json()["seed"], int)


def test_the_answer_says_how_the_editors_rewriter_read_the_instruction(make_app, tiny_editor, source_png):
    client = TestClient(make_app())
    tiny_editor.use_rewriter(lambda text: "add a tree" if text == "could you plant a tree" else text)
    try:
        read = client.post(
            "/v1/edits?format=json",
            files={"image": ("a", source_png)},
            data={"instruction": "could you plant a tree", "seed": "3"},
        )
        same = client.post(
            "/v1/edits?format=json", files={"image": ("a", source_png)}, data={"instruction": "add a tree", "seed": "3"}
        )
    finally:
        tiny_editor.use_rewriter(None)
    assert read.status_code == 200 and read.json()["read_as"] == "add a tree"
    assert same.status_code == 200 and "read_as" not in same.json()
    assert read.json()["image"] == same.json()["image"]  # the model edited what it read


def test_job_lifecycle(make_app, tiny_editor, source_png):
    app = make_app()
    client = TestClient(app)
    app.state.service.worker.pause()
    created = client.post("/v1/jobs", files={"image": ("a", source_png)}, data={"instruction": "snow", "seed": "3"})
    assert created.status_code == 202
    job_id = created.json()["id"]
    assert len(job_id) >= 20 and created.headers["location"] == f"/v1/jobs/{job_id}"
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
    early = client.get(f"/v1/jobs/{job_id}/image")
    assert early.status_code == 409 and "queued" in early.json()["error"]
    app.state.service.worker.resume()
    status = wait_done(client, job_id)
    assert status["status"] == "done", status
    assert status["result"]["seed"] == 3 and status["result"]["image_url"] == f"/v1/jobs/{job_id}/image"
    image = client.get(status["result"]["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert np.abs(decode(image.content) - direct(tiny_editor, source_png, "snow", seed=3)).max() <= 1
    missing = client.get("/v1/jobs/not-a-job")
    assert missing.status_code == 404 and "not-a-job" in missing.json()["error"]


def test_jobs_expire_after_their_ttl(make_app, source_png):
    client = TestClient(make_app(job_ttl_s=0.2))
    job_id = client.post("/v1/jobs", files={"image": ("a", source_png)}, data={"instruction": "x"}).json()["id"]
    assert wait_done(client, job_id)["status"] == "done"
    time.sleep(0.3)
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404


def test_sessions_turns_undo_and_persistence(make_app, tiny_editor, source_png, tmp_path):
    client = TestClient(make_app())
    created = client.post("/v1/sessions", files={"image": ("a", source_png)}, data={"threshold": "0.03", "seed": "9"})
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    first = client.post(f"/v1/sessions/{sid}/edits?format=json", data={"instruction": "add a tree"})
    assert first.status_code == 200, first.text
    assert first.json()["turn"] == 1 and first.json()["seed"] == 9  # turn k uses seed + k - 1
    second = client.post(f"/v1/sessions/{sid}/edits", data={"instruction": "make it night", "steps": "3"})
    assert second.status_code == 200
    # The same turns through EditSession (the library's multi-turn editor) give the same images.
    session = tiny_editor.session(source_png, threshold=0.03, seed=9, steps=2, guidance=50.0)
    session.edit("add a tree")
    expected = np.asarray(session.edit("make it night", steps=3), dtype=np.int16)
    assert np.abs(decode(second.content) - expected).max() <= 1

    info = client.get(f"/v1/sessions/{sid}").json()
    assert [t["instruction"] for t in info["history"]] == ["add a tree", "make it night"]
    assert [t["seed"] for t in info["history"]] == [9, 10]
    assert info["history"][1]["options"]["steps"] == 3
    undone = client.post(f"/v1/sessions/{sid}/undo")
    assert undone.status_code == 200 and undone.json()["turns"] == 1
    current = client.get(f"/v1/sessions/{sid}/image")
    assert np.array_equal(decode(current.content), decode(client.get(f"/v1/sessions/{sid}/image?turn=1").content))
    source = decode(client.get(f"/v1/sessions/{sid}/image?turn=0").content)
    assert source.shape == (32, 40, 3)
    assert client.get(f"/v1/sessions/{sid}/image?turn=5").status_code == 404

    # A new app on the same database file sees the session as it was.
    restarted = TestClient(make_app())
    assert restarted.get(f"/v1/sessions/{sid}").json()["history"] == info["history"][:1]
    assert np.array_equal(decode(restarted.get(f"/v1/sessions/{sid}/image").content), decode(current.content))
    assert restarted.post(f"/v1/sessions/{sid}/undo").json()["turns"] == 0
    nothing = restarted.post(f"/v1/sessions/{sid}/undo")
    assert nothing.status_code == 409 and "nothing to undo" in nothing.json()["error"]
    assert restarted.get("/v1/sessions/nope").status_code == 404


def test_session_without_threshold(make_app, tiny_editor, source_png):
    client = TestClient(make_app())
    sid = client.post("/v1/sessions", json={"image": base64.b64encode(source_png).decode(), "threshold": "none"})
    sid = sid.json()["id"]
    response = client.post(f"/v1/sessions/{sid}/edits", json={"instruction": "blur", "seed": 4})
    assert np.abs(decode(response.content) - direct(tiny_editor, source_png, "blur", seed=4)).max() <= 1
    assert client.get(f"/v1/sessions/{sid}").json()["threshold"] is None


def test_early_filter_needs_a_judge_and_reports_its_choice(make_app, tiny_editor, source_png):
    from diptych.scaling.judges import CallableJudge

    def brightness(_source, candidate, _instruction) -> float:
        return float(np.asarray(candidate, dtype=np.float32).mean())

    fields = {"instruction": "brighter", "seed": "20", "steps": "3", "candidates": "3", "early_steps": "1"}
    refused = TestClient(make_app()).post("/v1/edits", files={"image": ("a", source_png)}, data=fields)
    assert refused.status_code == 400 and "--judge" in refused.json()["error"]

    client = TestClient(make_app(judge=CallableJudge(brightness), judge_name="python:brightness"))
    response = client.post("/v1/edits?format=json", files={"image": ("a", source_png)}, data=fields)
    assert response.status_code == 200, response.text
    meta = response.json()
    info = meta["early_filter"]
    assert info["candidates"] == 3 and info["seeds"] == [20, 21, 22] and info["judge_calls"] >= 3
    assert meta["seed"] == info["winner_seed"] and meta["requested_seed"] == 20
    expected = direct(tiny_editor, source_png, "brighter", seed=info["winner_seed"], steps=3)
    assert np.abs(decode(base64.b64decode(meta["image"])) - expected).max() <= 1
    assert client.get("/v1/models").json()["judge"] == "python:brightness"

    # the built-in model's server samples its candidates its own way (`ServeSettings.filter_samplers`)
    both = TestClient(make_app(judge=CallableJudge(brightness), filter_samplers=("stochastic", "euler")))
    info = both.post("/v1/edits?format=json", files={"image": ("a", source_png)}, data=fields).json()["early_filter"]
    assert info["candidates"] == 6 and info["samplers"] == ["stochastic"] * 3 + ["euler"] * 3
    assert info["seeds"] == [20, 21, 22] * 2 and info["winner_sampler"] == info["samplers"][info["winner_index"]]


def test_models_health_and_docs(make_app):
    client = TestClient(make_app(model_name="tiny"))
    assert client.get("/healthz").json()["status"] == "ok"
    models = client.get("/v1/models").json()
    assert models["base"] == "tiny" and models["default_width"] == 32 and models["default_steps"] == 2
    assert models["limits"]["max_candidates"] == 1  # no judge
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/edits", "/v1/jobs", "/v1/sessions", "/v1/sessions/{session_id}/edits"} <= set(paths)
    assert "multipart/form-data" in json.dumps(paths["/v1/edits"])


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "fragment"),
    [
        ("/v1/nothing", {}, 404, "Not Found"),
        ("/v1/edits", {"content": b"x", "headers": {"content-type": "text/plain"}}, 415, "content type"),
        ("/v1/edits", {"json": {"instruction": "x", "colour": 1}}, 400, "unknown field(s) colour"),
        ("/v1/edits", {"json": {"instruction": "x", "image": "%%%"}}, 400, "base64"),
        ("/v1/edits", {"content": b"{", "headers": {"content-type": "application/json"}}, 400, "JSON"),
        ("/v1/edits", {"json": {"instruction": "x"}}, 400, "no image"),
    ],
)
def test_errors_are_json(make_app, path, kwargs, status, fragment):
    response = TestClient(make_app()).post(path, **kwargs)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert fragment in response.json()["error"]
