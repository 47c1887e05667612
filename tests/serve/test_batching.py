"""Concurrent edits share the model in micro-batches, and batched results equal single edits."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient

from diptych.testing import random_image

from .conftest import png
from .test_api import decode, direct, wait_done


@pytest.fixture
def spy(tiny_editor, monkeypatch):
    """Record the size of every batch the model runs, and which thread ran it."""
    calls: list[tuple[int, str]] = []
    real = tiny_editor.edit_many

    def edit_many(requests, **options):
        requests = list(requests)
        calls.append((len(requests), threading.current_thread().name))
        return real(requests, **options)

    monkeypatch.setattr(tiny_editor, "edit_many", edit_many)
    return calls


def test_queued_jobs_run_as_one_batch(make_app, tiny_editor, spy):
    app = make_app(max_batch=4)
    client = TestClient(app)
    sources = [png(random_image(40, 32, seed=s)) for s in range(5)]
    app.state.service.worker.pause()
    ids = [
        client.post("/v1/jobs", files={"image": ("a", src)}, data={"instruction": f"edit {i}", "seed": str(i)}).json()[
            "id"
        ]
        for i, src in enumerate(sources)
    ]
    # A job with other steps cannot share the batch.
    other = client.post("/v1/jobs", files={"image": ("a", sources[0])}, data={"instruction": "x", "steps": "3"})
    app.state.service.worker.resume()
    for job_id in [*ids, other.json()["id"]]:
        assert wait_done(client, job_id)["status"] == "done"
    assert [size for size, _ in spy] == [4, 1, 1]
    assert {name for _, name in spy} == {"diptych-model"}
    assert client.get(f"/v1/jobs/{ids[0]}").json()["result"]["batch_size"] == 4
    for i, (job_id, src) in enumerate(zip(ids, sources, strict=True)):
        got = decode(client.get(f"/v1/jobs/{job_id}/image").content)
        assert np.abs(got - direct(tiny_editor, src, f"edit {i}", seed=i)).max() <= 1


def test_concurrent_requests_are_batched(make_app, tiny_editor, spy, source_png):
    app = make_app(max_batch=4, batch_wait_ms=300)
    client = TestClient(app)

    def request(seed: int):
        return client.post("/v1/edits", files={"image": ("a", source_png)}, data={"instruction": "x", "seed": seed})

    start = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(request, range(4)))
    assert time.monotonic() - start < 30
    assert all(r.status_code == 200 for r in responses)
    assert len(spy) < 4 and sum(size for size, _ in spy) == 4
    for seed, response in enumerate(responses):
        assert np.abs(decode(response.content) - direct(tiny_editor, source_png, "x", seed=seed)).max() <= 1


def test_a_failing_edit_does_not_fail_its_batch(make_app, tiny_editor, monkeypatch, source_png):
    from diptych.errors import InputError
    from diptych.serve.jobs import EditJob

    real = tiny_editor.edit_many

    def edit_many(requests, **options):
        requests = list(requests)
        if any(r.instruction == "boom" for r in requests):
            raise InputError("boom is not allowed")
        return real(requests, **options)

    monkeypatch.setattr(tiny_editor, "edit_many", edit_many)
    service = make_app().state.service
    service.worker.pause()
    good = service.submit(service.options({"instruction": "fine", "seed": 1}), random_image(32, 32))
    bad = service.submit(service.options({"instruction": "boom", "seed": 2}), random_image(32, 32))
    assert isinstance(good, EditJob)
    service.worker.resume()
    assert service.wait(good, timeout=30).image.size == (32, 32)
    with pytest.raises(InputError, match="boom"):
        service.wait(bad, timeout=30)
    assert bad.status == "failed" and bad.error_message() == "boom is not allowed"
