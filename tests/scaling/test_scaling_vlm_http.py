"""VLMJudge against a real chat-completions server on 127.0.0.1 (`diptych.testing.FakeChatServer`)."""

from __future__ import annotations

import base64
import io
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from diptych.errors import InputError
from diptych.scaling import CLARIFY_PROMPT, JudgeError, VLMJudge, load_judge, select_best
from diptych.testing import ChatReply, FakeChatServer


@pytest.fixture
def server() -> Iterator[FakeChatServer]:
    with FakeChatServer(default=ChatReply("1")) as s:
        yield s


@pytest.fixture(autouse=True)
def no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIPTYCH_JUDGE_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def make_judge(server: FakeChatServer, **kwargs: Any) -> VLMJudge:
    options: dict[str, Any] = {"timeout": 2.0, "retries": 2, "backoff_base": 0.01, "backoff_max": 1.0}
    options.update(kwargs)
    return VLMJudge(server.url, "qwen-judge", **options)


def solid(rgb: tuple[int, int, int], size: tuple[int, int] = (12, 10)) -> Image.Image:
    return Image.new("RGB", size, rgb)


A, B, SRC = solid((255, 0, 0)), solid((0, 255, 0)), solid((0, 0, 255), (10, 8))
INSTRUCTION = "turn the ball red"


def decode_image(part: dict[str, Any]) -> Image.Image:
    assert part["type"] == "image_url"
    url = part["image_url"]["url"]
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    data = base64.b64decode(url[len(prefix) :])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(data))


@pytest.mark.parametrize(
    ("answer", "winner"),
    [
        ("1", 0),
        ("Image 2", 1),
        ("**2**", 1),
        ("The second image keeps the background and turns the ball red.", 1),
        ('{"choice": 2, "reason": "ball is red"}', 1),
        ("Answer: 1 because the ball is red", 0),
    ],
)
def test_answers_in_each_format(server: FakeChatServer, answer: str, winner: int) -> None:
    server.script = [ChatReply(answer)]
    with make_judge(server) as judge:
        verdict = judge.compare(SRC, A, B, INSTRUCTION)
    assert verdict.winner == winner
    assert verdict.raw == answer
    assert len(server.requests) == 1


def test_request_carries_model_prompt_and_three_png_images(server: FakeChatServer) -> None:
    with make_judge(server, max_tokens=77) as judge:
        judge.compare(SRC, A, B.convert("RGBA"), INSTRUCTION)
    (seen,) = server.requests
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["Content-Type"] == "application/json"
    assert "Authorization" not in seen.headers
    body = seen.body
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("qwen-judge", 0, 77)
    (message,) = body["messages"]
    assert message["role"] == "user"
    images = [decode_image(p) for p in message["content"] if p["type"] == "image_url"]
    assert len(images) == 3
    # Edited 1, edited 2, original, each RGB and unchanged.
    assert [(im.mode, im.size, im.getpixel((0, 0))) for im in images] == [
        ("RGB", (12, 10), (255, 0, 0)),
        ("RGB", (12, 10), (0, 255, 0)),
        ("RGB", (10, 8), (0, 0, 255)),
    ]
    texts = [p["text"] for p in message["content"] if p["type"] == "text"]
    assert texts[:3] == ["Edited image 1:", "Edited image 2:", "Original image:"]
    assert f"'{INSTRUCTION}'" in texts[-1] and "fewer artifacts" in texts[-1]
    kinds = [p["type"] for p in message["content"]]
    assert kinds == ["text", "image_url"] * 3 + ["text"]


def test_authorization_uses_the_env_key_and_never_logs_it(
    server: FakeChatServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fallback")
    with make_judge(server) as judge:
        judge.compare(SRC, A, B, INSTRUCTION)
    assert server.requests[-1].headers["Authorization"] == "Bearer sk-fallback"
    monkeypatch.setenv("DIPTYCH_JUDGE_API_KEY", "sk-diptych-secret")
    server.script = [ChatReply(status=500, body=b"oops"), ChatReply("1")]
    with caplog.at_level(logging.DEBUG), make_judge(server) as judge:
        judge.compare(SRC, A, B, INSTRUCTION)
        assert "sk-diptych-secret" not in repr(judge)
    assert server.requests[-1].headers["Authorization"] == "Bearer sk-diptych-secret"
    assert "retry 1/2" in caplog.text
    assert "sk-diptych-secret" not in caplog.text
    with make_judge(server, api_key="sk-explicit") as judge:
        judge.compare(SRC, A, B, INSTRUCTION)
    assert server.requests[-1].headers["Authorization"] == "Bearer sk-explicit"


def test_slow_answer_times_out_then_succeeds_on_retry(server: FakeChatServer) -> None:
    server.script = [ChatReply("1", delay=0.4), ChatReply("2")]
    with make_judge(server, timeout=0.1) as judge:
        verdict = judge.compare(SRC, A, B, INSTRUCTION)
    assert verdict.winner == 1
    assert len(server.requests) == 2


def test_timeouts_on_every_attempt_raise(server: FakeChatServer) -> None:
    server.default = ChatReply("1", delay=0.25)
    with make_judge(server, timeout=0.05, retries=1) as judge, pytest.raises(JudgeError) as info:
        judge.compare(SRC, A, B, INSTRUCTION)
    assert "failed after 2 attempt(s)" in str(info.value) and "no answer within" in str(info.value)
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    "bad",
    [
        ChatReply(body=b"{not json"),
        ChatReply(body={"id": "x", "object": "chat.completion"}),
        ChatReply(body={"choices": []}),
        ChatReply(body={"choices": [{"message": {"content": None}}]}),
    ],
)
def test_malformed_body_is_retried(server: FakeChatServer, bad: ChatReply) -> None:
    server.script = [bad, ChatReply("2")]
    with make_judge(server) as judge:
        assert judge.compare(SRC, A, B, INSTRUCTION).winner == 1
    assert len(server.requests) == 2


def test_malformed_body_every_time_raises_with_an_excerpt(server: FakeChatServer) -> None:
    server.default = ChatReply(body=b"<html>proxy error</html>")
    with make_judge(server, retries=2) as judge, pytest.raises(JudgeError) as info:
        judge.compare(SRC, A, B, INSTRUCTION)
    assert "not a chat completion" in str(info.value) and "proxy error" in str(info.value)
    assert len(server.requests) == 3


def test_content_as_list_of_parts_is_accepted(server: FakeChatServer) -> None:
    server.script = [ChatReply(body={"choices": [{"message": {"content": [{"type": "text", "text": "Image 2"}]}}]})]
    with make_judge(server) as judge:
        assert judge.compare(SRC, A, B, INSTRUCTION).winner == 1


def test_server_error_then_success(server: FakeChatServer) -> None:
    server.script = [ChatReply(status=500, body=b"internal"), ChatReply(status=503, body=b"busy"), ChatReply("2")]
    with make_judge(server) as judge:
        assert judge.compare(SRC, A, B, INSTRUCTION).winner == 1
    assert len(server.requests) == 3


def test_429_waits_for_retry_after(server: FakeChatServer) -> None:
    server.script = [ChatReply(status=429, body=b"slow down", headers={"Retry-After": "0.3"}), ChatReply("1")]
    with make_judge(server, backoff_base=0.001) as judge:
        judge.compare(SRC, A, B, INSTRUCTION)
    first, second = server.requests
    assert second.at - first.at >= 0.3


def test_retry_after_is_capped_by_backoff_max(server: FakeChatServer) -> None:
    server.script = [ChatReply("1", status=429, headers={"Retry-After": "120"}), ChatReply("1")]
    start = time.monotonic()
    with make_judge(server, backoff_max=0.05) as judge:
        judge.compare(SRC, A, B, INSTRUCTION)
    assert time.monotonic() - start < 2


@pytest.mark.parametrize(("status", "hint"), [(401, "API key"), (400, "model name"), (404, "base_url")])
def test_client_errors_fail_at_once(server: FakeChatServer, status: int, hint: str) -> None:
    server.script = [ChatReply(status=status, body=b'{"error": "invalid api key or bad request"}')]
    with make_judge(server) as judge, pytest.raises(JudgeError) as info:
        judge.compare(SRC, A, B, INSTRUCTION)
    message = str(info.value)
    assert f"HTTP {status}" in message and "invalid api key or bad request" in message and hint in message
    assert len(server.requests) == 1


def test_unclear_answer_gets_a_follow_up(server: FakeChatServer) -> None:
    server.script = [ChatReply("Both look equally good."), ChatReply("2")]
    with make_judge(server) as judge:
        verdict = judge.compare(SRC, A, B, INSTRUCTION)
    assert verdict.winner == 1
    follow_up = server.requests[1].body["messages"]
    assert follow_up[0] == server.requests[0].body["messages"][0]
    assert follow_up[1:] == [
        {"role": "assistant", "content": "Both look equally good."},
        {"role": "user", "content": CLARIFY_PROMPT},
    ]


def test_always_unclear_raises_with_what_the_model_said(server: FakeChatServer) -> None:
    server.default = ChatReply("Image 1 and image 2 are both fine.")
    with make_judge(server, retries=1) as judge, pytest.raises(JudgeError) as info:
        judge.compare(SRC, A, B, INSTRUCTION)
    assert "did not choose image 1 or 2 in 2 attempt(s)" in str(info.value)
    assert "both fine" in str(info.value)
    assert len(server.requests) == 2


def test_connection_refused_is_retried_then_raises() -> None:
    with socket.socket() as sock:  # a port with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    judge = VLMJudge(f"http://127.0.0.1:{port}/v1", "m", retries=2, backoff_base=0.001, timeout=1)
    with judge, pytest.raises(JudgeError, match=r"failed after 3 attempt.*connection failed"):
        judge.compare(SRC, A, B, INSTRUCTION)


def test_concurrency_limit_is_shared_by_the_judge(server: FakeChatServer) -> None:
    server.default = ChatReply("2", delay=0.1)
    with make_judge(server, concurrency=2) as judge:
        threads = [threading.Thread(target=judge.compare, args=(SRC, A, B, INSTRUCTION)) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
    assert len(server.requests) == 5
    assert server.max_in_flight == 2


def test_tournament_through_the_http_judge(server: FakeChatServer) -> None:
    server.default = ChatReply("Image 2", delay=0.05)
    candidates = [solid((k, k, k)) for k in range(8)]
    with make_judge(server, concurrency=3) as judge:
        sel = select_best(judge, SRC, candidates, INSTRUCTION, strategy="knockout", max_workers=8)
    # The server always prefers the image shown second: the later candidate wins every match.
    assert sel.index == 7 and sel.judge_calls == 7 == len(server.requests)
    assert server.max_in_flight == 3


def test_load_judge_builds_a_working_http_judge(server: FakeChatServer) -> None:
    server.script = [ChatReply("Image 2")]
    judge = load_judge(f"vlm:{server.url}?model=served-name&timeout=5&retries=1&concurrency=3")
    with judge:  # type: ignore[union-attr]
        assert judge.compare(SRC, A, B, INSTRUCTION).winner == 1  # type: ignore[union-attr]
    assert server.requests[0].body["model"] == "served-name"


def test_constructor_validates_options() -> None:
    with pytest.raises(InputError, match="http"):
        VLMJudge("localhost:8000", "m")
    with pytest.raises(InputError, match="model name"):
        VLMJudge("http://h/v1", "")
    with pytest.raises(InputError, match="timeout"):
        VLMJudge("http://h/v1", "m", timeout=0)
    with pytest.raises(InputError, match="concurrency"):
        VLMJudge("http://h/v1", "m", concurrency=0)
    with pytest.raises(InputError, match="retries"):
        VLMJudge("http://h/v1", "m", retries=-1)
