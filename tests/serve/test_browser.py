"""End to end in a real browser: headless Chromium drives the web UI served by uvicorn on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from diptych.testing import random_image

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install -y chromium)"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(make_app):
    """uvicorn serving the tiny editor's app (with the UI) in a thread; stopped at teardown."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(make_app(ui=True), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(10)


def test_edit_in_the_browser(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")
    upload = tmp_path / "photo.png"
    random_image(32, 32, seed=1).save(upload)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            events = []  # Gradio event runs the page starts
            page.on("request", lambda request: events.append(request.url) if "/queue/join" in request.url else None)
            page.goto(f"{server}/ui/")
            page.locator("#source input[type=file]").set_input_files(str(upload))
            page.locator("#instruction textarea").fill("make the square red")
            page.locator("#edit-button").click()
            result = page.locator("#result img")
            result.wait_for(state="visible")
            page.locator("#status").get_by_text("Turn 1").wait_for()
            natural = result.evaluate("img => [img.naturalWidth, img.naturalHeight]")
            assert natural == [32, 32]
            assert "make the square red" in page.locator("#history").inner_text()
            # Upload (the brush gets the image) and the edit: two runs. A run fired by the edit's own output
            # would re-save the result into Gradio's cache while the browser reads it (a torn image, seen in CI).
            page.wait_for_timeout(500)
            assert len(events) == 2, events
        finally:
            browser.close()
