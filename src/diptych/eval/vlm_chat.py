"""Free-form questions to an OpenAI-compatible VLM endpoint, reusing :class:`VLMJudge`'s HTTP machinery
(connection pool, concurrency limit, timeouts, retries with back-off and ``Retry-After``, error
messages). :class:`VLMJudge` itself only asks the pairwise question; :class:`VLMChat` sends any
messages through it and returns the answer text.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from PIL import Image

from diptych.errors import InputError
from diptych.scaling.spec import JudgeSpecError, load_judge
from diptych.scaling.vlm_http import VLMJudge, image_data_url

__all__ = ["DEFAULT_MAX_TOKENS", "VLMChat", "user_message"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 1024
"""Answer length for specs that do not set ``max_tokens``: room for a JSON verdict with reasoning
(VLMJudge's own default of 128 suits its one-word answers)."""


def user_message(prompt: str, images: Sequence[Image.Image] = (), *, images_first: bool = False) -> dict[str, Any]:
    """One chat-completions user message: the prompt and the images as PNG data URLs, the text first
    unless ``images_first``."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f"the prompt must be a non-empty string, got {prompt!r}")
    parts: list[dict[str, Any]] = []
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise InputError(f"images[{i}] must be a PIL image, got {type(image).__name__}")
        parts.append({"type": "image_url", "image_url": {"url": image_data_url(image)}})
    text = {"type": "text", "text": prompt}
    return {"role": "user", "content": [*parts, text] if images_first else [text, *parts]}


class VLMChat:
    """Sends chat-completions requests through a :class:`VLMJudge` and returns the answer text.

    Transport failures are retried as :class:`VLMJudge` retries them (``retries`` times, back-off);
    what comes back is the answer's text, stripped. Thread-safe: the judge's semaphore bounds the
    requests in flight (``concurrency``).
    """

    def __init__(self, judge: VLMJudge) -> None:
        if not isinstance(judge, VLMJudge):
            raise InputError(f"VLMChat needs a VLMJudge, got {type(judge).__name__}")
        if judge.max_tokens < 256:
            logger.warning(
                "the VLM judge allows only %d answer tokens; a JSON answer with reasoning may be cut off "
                "(build it with max_tokens=%d, or add &max_tokens=%d to its spec)",
                judge.max_tokens,
                DEFAULT_MAX_TOKENS,
                DEFAULT_MAX_TOKENS,
            )
        self.judge = judge

    @classmethod
    def from_url(cls, base_url: str, model: str, *, max_tokens: int = DEFAULT_MAX_TOKENS, **kwargs: Any) -> VLMChat:
        """Connect to ``{base_url}/chat/completions``; ``kwargs`` go to :class:`VLMJudge` (api_key,
        timeout, retries, concurrency, backoff_base, backoff_max, extra_body, transport)."""
        return cls(VLMJudge(base_url, model, max_tokens=max_tokens, **kwargs))

    @classmethod
    def from_spec(cls, spec: str, *, max_tokens: int = DEFAULT_MAX_TOKENS) -> VLMChat:
        """Build from a judge spec ``vlm:http://host:port/v1?model=NAME`` with the options
        :func:`diptych.scaling.load_judge` accepts; ``max_tokens`` applies when the spec sets none."""
        if not isinstance(spec, str) or not spec.strip():
            raise JudgeSpecError(f"a VLM spec must be a non-empty string, got {spec!r}")
        scheme, sep, target = spec.strip().partition(":")
        if not sep or scheme.lower() != "vlm":
            raise JudgeSpecError(
                f"{spec!r} is not an OpenAI-compatible endpoint spec; write vlm:http://host:port/v1?model=NAME"
            )
        parts = urlsplit(target)
        params = parse_qsl(parts.query, keep_blank_values=True)
        if not any(key == "max_tokens" for key, _ in params):
            params.append(("max_tokens", str(max_tokens)))
        judge = load_judge("vlm:" + urlunsplit(parts._replace(query=urlencode(params))))
        if not isinstance(judge, VLMJudge):  # load_judge maps "vlm:" to VLMJudge; guard the contract
            raise JudgeSpecError(f"{spec!r} did not give an HTTP VLM judge")
        return cls(judge)

    @property
    def concurrency(self) -> int:
        """Most requests this client sends at once."""
        return self.judge.concurrency

    def complete(self, messages: list[dict[str, Any]]) -> str:
        """POST one chat completion (temperature 0) and return the answer text.

        Raises:
            JudgeError: the endpoint failed after the judge's retries, or refused the request.
        """
        if not isinstance(messages, list) or not messages:
            raise InputError("messages must be a non-empty list of chat messages")
        # VLMJudge keeps its request loop private; it is the whole point of reusing it.
        return self.judge.chat(messages)

    def ask(self, prompt: str, images: Sequence[Image.Image] = (), *, images_first: bool = False) -> str:
        """Ask one question about ``images`` and return the answer text."""
        return self.complete([user_message(prompt, images, images_first=images_first)])

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self.judge.close()

    def __enter__(self) -> VLMChat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VLMChat({self.judge!r})"
