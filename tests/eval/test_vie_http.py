"""VieScorer against a real chat-completions server on 127.0.0.1 (`diptych.testing.FakeChatServer`)."""

from __future__ import annotations

import base64
import io
import json
import math
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from diptych.errors import InputError
from diptych.eval import JudgeError, VieScore, VieScorer, VLMChat
from diptych.eval.vie import PQ_PROMPT, SC_PROMPT
from diptych.scaling import JudgeSpecError, VLMJudge
from diptych.testing import ChatReply, FakeChatServer


def answer(scores: list[Any], reasoning: str = "fine") -> str:
    return json.dumps({"score": scores, "reasoning": reasoning})


@pytest.fixture
def server() -> Iterator[FakeChatServer]:
    with FakeChatServer() as s:  # nothing scripted and no responder: HTTP 500
        yield s


@pytest.fixture(autouse=True)
def no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIPTYCH_JUDGE_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def spec(server: FakeChatServer, extra: str = "") -> str:
    return f"vlm:{server.url}?model=qwen-vl&timeout=5&retries=1{extra}"


def fast_judge(server: FakeChatServer, **kwargs: Any) -> VLMJudge:
    options: dict[str, Any] = {"timeout": 5.0, "retries": 2, "backoff_base": 0.01, "max_tokens": 512}
    options.update(kwargs)
    return VLMJudge(server.url, "qwen-vl", **options)


SOURCE = Image.new("RGB", (12, 10), (0, 0, 255))
EDITED = Image.new("RGB", (14, 8), (255, 0, 0))
INSTRUCTION = "make the ball red"


def decode(part: dict[str, Any]) -> Image.Image:
    assert part["type"] == "image_url"
    url = part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")


def same_image(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


def test_sc_and_pq_requests_and_the_scores(server: FakeChatServer) -> None:
    server.script = [ChatReply(answer([7, 9], "ball is red")), ChatReply(answer([8, 6], "slight blur"))]
    with VieScorer(spec(server)) as scorer:
        result = scorer.score(SOURCE, EDITED, INSTRUCTION)

    assert isinstance(result, VieScore)
    assert result.sc_scores == [7, 9] and result.pq_scores == [8, 6]
    assert result.sc == 7 and result.pq == 6
    assert result.overall == pytest.approx(math.sqrt(7 * 6))
    assert result.reasoning == "SC: ball is red\nPQ: slight blur"
    assert result.raw["sc"]["answers"] == [answer([7, 9], "ball is red")]
    assert result.raw["pq"]["attempts"] == 1
    json.dumps(result.to_dict())  # serialisable as is

    assert len(server.requests) == 2 and server.paths == ["/v1/chat/completions"] * 2
    sc_request, pq_request = server.bodies
    for body in (sc_request, pq_request):
        assert body["model"] == "qwen-vl"
        assert body["temperature"] == 0
        assert body["max_tokens"] == 1024  # the spec set none: room for the reasoning
        assert len(body["messages"]) == 1 and body["messages"][0]["role"] == "user"

    sc_parts = sc_request["messages"][0]["content"]
    assert [p["type"] for p in sc_parts] == ["text", "image_url", "image_url"]
    assert sc_parts[0]["text"] == SC_PROMPT.replace("<instruction>", INSTRUCTION)
    assert f"Editing instruction: {INSTRUCTION}" in sc_parts[0]["text"]
    assert same_image(decode(sc_parts[1]), SOURCE) and same_image(decode(sc_parts[2]), EDITED)

    pq_parts = pq_request["messages"][0]["content"]
    assert [p["type"] for p in pq_parts] == ["text", "image_url"]
    assert pq_parts[0]["text"] == PQ_PROMPT
    assert INSTRUCTION not in pq_parts[0]["text"]
    assert same_image(decode(pq_parts[1]), EDITED)


def test_code_fenced_answers_with_string_scores(server: FakeChatServer) -> None:
    server.script = [
        ChatReply('```json\n{"score": ["4", "10"], "reasoning": "half"}\n```'),
        ChatReply('Here you go:\n```\n{"score": [9, 9], "reasoning": "clean"}\n```\nThanks!'),
    ]
    result = VieScorer(fast_judge(server)).score(SOURCE, EDITED, INSTRUCTION)
    assert (result.sc, result.pq, result.overall) == (4.0, 9.0, 6.0)


def test_unreadable_answer_gets_a_follow_up(server: FakeChatServer) -> None:
    server.script = [
        ChatReply("The edit is quite good, maybe an eight."),
        ChatReply(answer([8, 5])),
        ChatReply(answer([3, 4])),
    ]
    result = VieScorer(fast_judge(server)).score(SOURCE, EDITED, INSTRUCTION)
    assert (result.sc, result.pq) == (5.0, 3.0)
    assert result.raw["sc"]["attempts"] == 2
    assert result.raw["sc"]["answers"][0] == "The edit is quite good, maybe an eight."

    assert len(server.requests) == 3
    retry = server.bodies[1]["messages"]
    assert [m["role"] for m in retry] == ["user", "assistant", "user"]
    assert retry[0] == server.bodies[0]["messages"][0]  # the same question, images included
    assert retry[1]["content"] == "The edit is quite good, maybe an eight."
    assert '{"score": [s1, s2], "reasoning": "..."}' in retry[2]["content"]
    assert "no JSON object" in retry[2]["content"]
    # The PQ question starts a fresh conversation.
    assert len(server.bodies[2]["messages"]) == 1


def test_out_of_range_scores_are_retried(server: FakeChatServer) -> None:
    server.script = [ChatReply(answer([80, 90])), ChatReply(answer([8, 9])), ChatReply(answer([7, 7]))]
    result = VieScorer(fast_judge(server)).score(SOURCE, EDITED, INSTRUCTION)
    assert result.sc_scores == [8, 9]
    assert "outside 0-10" in server.bodies[1]["messages"][2]["content"]


def test_gives_up_with_a_clear_error(server: FakeChatServer) -> None:
    server.responder = lambda body: ChatReply("I cannot rate this.")
    scorer = VieScorer(fast_judge(server), retries=2)
    with pytest.raises(JudgeError, match=r"no readable VIEScore SC answer in 3 attempt\(s\)") as info:
        scorer.score(SOURCE, EDITED, INSTRUCTION)
    assert "I cannot rate this." in str(info.value)
    assert len(server.requests) == 3


def test_transport_failures_are_retried_by_the_http_client(server: FakeChatServer) -> None:
    server.script = [ChatReply(status=503, text="busy"), ChatReply(answer([6, 7])), ChatReply(answer([9, 8]))]
    result = VieScorer(fast_judge(server)).score(SOURCE, EDITED, INSTRUCTION)
    assert (result.sc, result.pq) == (6.0, 8.0)
    assert len(server.requests) == 3


def test_http_errors_that_are_not_retried(server: FakeChatServer) -> None:
    server.script = [ChatReply(status=401, text="bad key")]
    with pytest.raises(JudgeError, match="HTTP 401"):
        VieScorer(fast_judge(server)).score(SOURCE, EDITED, INSTRUCTION)
    assert len(server.requests) == 1


def sample_responder(body: dict[str, Any]) -> ChatReply:
    """SC answers carry the sample number from the instruction; PQ answers are fixed."""
    text = body["messages"][0]["content"][0]["text"]
    match = re.search(r"Editing instruction: sample (\d+)", text)
    if match:
        return ChatReply(answer([int(match.group(1)), 10]))
    return ChatReply(answer([9, 9]))


def test_score_many_keeps_order_on_threads(server: FakeChatServer) -> None:
    server.responder = sample_responder
    scorer = VieScorer(fast_judge(server, concurrency=4))
    assert scorer.concurrency == 4
    samples = [(SOURCE, EDITED, f"sample {i}") for i in range(8)]
    results = scorer.score_many(samples)
    assert [r.sc for r in results] == [float(i) for i in range(8)]
    assert [r.overall for r in results] == pytest.approx([math.sqrt(i * 9) for i in range(8)])
    assert len(server.requests) == 16


def test_score_many_can_return_failures(server: FakeChatServer) -> None:
    def responder(body: dict[str, Any]) -> ChatReply:
        text = body["messages"][0]["content"][0]["text"]
        return ChatReply("no idea") if "sample 1" in text else sample_responder(body)

    server.responder = responder
    scorer = VieScorer(fast_judge(server), retries=0)
    results = scorer.score_many([(SOURCE, EDITED, f"sample {i}") for i in range(3)], return_exceptions=True)
    assert isinstance(results[0], VieScore) and isinstance(results[2], VieScore)
    assert isinstance(results[1], JudgeError)
    with pytest.raises(JudgeError):
        scorer.score_many([(SOURCE, EDITED, "sample 1")], max_workers=1)


def test_instruction_with_braces_and_images_first(server: FakeChatServer) -> None:
    server.script = [ChatReply(answer([5, 5])), ChatReply(answer([5, 5]))]
    instruction = "write {name} on the sign"
    VieScorer(fast_judge(server), images_first=True).score(SOURCE, EDITED, instruction)
    sc_parts = server.bodies[0]["messages"][0]["content"]
    assert [p["type"] for p in sc_parts] == ["image_url", "image_url", "text"]
    assert sc_parts[2]["text"].rstrip().endswith(f"Editing instruction: {instruction}")


def test_spec_keeps_its_own_max_tokens(server: FakeChatServer) -> None:
    server.script = [ChatReply(answer([5, 5])), ChatReply(answer([5, 5]))]
    VieScorer(spec(server, "&max_tokens=300")).score(SOURCE, EDITED, INSTRUCTION)
    assert server.bodies[0]["max_tokens"] == 300


def test_other_clients(server: FakeChatServer) -> None:
    server.script = [ChatReply(answer([5, 6])), ChatReply(answer([7, 8]))]
    chat = VLMChat.from_url(server.url, "qwen-vl", timeout=5.0)
    assert VieScorer(chat).score(SOURCE, EDITED, INSTRUCTION).overall == pytest.approx(math.sqrt(35))

    seen: list[list[dict[str, Any]]] = []

    def fake_vlm(messages: list[dict[str, Any]]) -> str:
        seen.append(messages)
        return answer([10, 10])

    assert VieScorer(fake_vlm).score(SOURCE, EDITED, INSTRUCTION).overall == 10.0
    assert len(seen) == 2 and len(seen[0][0]["content"]) == 3 and len(seen[1][0]["content"]) == 2


def test_vlm_chat_ask(server: FakeChatServer) -> None:
    server.script = [ChatReply("a red square")]
    with VLMChat.from_spec(spec(server)) as chat:
        assert chat.ask("What is this?", [EDITED]) == "a red square"
    parts = server.bodies[0]["messages"][0]["content"]
    assert parts[0] == {"type": "text", "text": "What is this?"}
    assert same_image(decode(parts[1]), EDITED)


def test_bad_arguments(server: FakeChatServer) -> None:
    with pytest.raises(JudgeSpecError, match="vlm:http://host:port/v1"):
        VieScorer("clip")
    with pytest.raises(JudgeSpecError, match="model"):
        VieScorer(f"vlm:{server.url}")
    with pytest.raises(InputError, match="VieScorer needs a VLM"):
        VieScorer(42)
    with pytest.raises(InputError, match="retries"):
        VieScorer(fast_judge(server), retries=-1)
    with pytest.raises(InputError, match="<instruction>"):
        VieScorer(fast_judge(server), sc_prompt="no placeholder")
    scorer = VieScorer(fast_judge(server))
    with pytest.raises(InputError, match="edited must be a PIL image"):
        scorer.score(SOURCE, "edited.png", INSTRUCTION)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="instruction"):
        scorer.score(SOURCE, EDITED, "  ")
    assert server.requests == []
