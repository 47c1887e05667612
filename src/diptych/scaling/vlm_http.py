"""A pairwise judge over any OpenAI-compatible chat-completions endpoint that takes images: vLLM or
SGLang serving Qwen2.5-VL-72B (the paper's judge), or a hosted API.

One ``compare`` sends the paper's prompt with three images (edited 1, edited 2, original) as base64
PNG data URLs at temperature 0 and parses the answer. Transport failures (connection errors,
timeouts, HTTP 408/429/5xx, a 200 whose body is not a chat completion) are retried with exponential
back-off and jitter, honouring ``Retry-After``; other 4xx answers fail at once. An answer that does
not choose an image gets a follow-up asking for just "1" or "2", up to ``retries`` times.
"""

from __future__ import annotations

import base64
import email.utils
import io
import json
import logging
import math
import os
import random
import threading
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from PIL import Image

from diptych.errors import InputError
from diptych.scaling.judges import (
    CLARIFY_PROMPT,
    PAIRWISE_PROMPT,
    JudgeError,
    Verdict,
    _check_image,
    pairwise_parts,
    unclear_answer_error,
    verdict_from_answer,
)

__all__ = ["DEFAULT_API_KEY_ENV", "VLMJudge", "image_data_url"]

logger = logging.getLogger(__name__)

DEFAULT_API_KEY_ENV = "DIPTYCH_JUDGE_API_KEY"
_FALLBACK_API_KEY_ENV = "OPENAI_API_KEY"
_RETRY_STATUS = frozenset({408, 429})


def image_data_url(image: Image.Image) -> str:
    """Encode an image as a ``data:image/png;base64,...`` URL (RGB PNG)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _excerpt(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def _retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds (fractions accepted) or an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


class _Retryable(Exception):
    """A failure worth another attempt; ``wait`` is the server's Retry-After, if it gave one."""

    def __init__(self, message: str, wait: float | None = None) -> None:
        super().__init__(message)
        self.wait = wait


class VLMJudge:
    """Pairwise judge over an OpenAI-compatible ``/chat/completions`` endpoint.

    Args:
        base_url: the API root, e.g. ``http://localhost:8000/v1``; requests go to
            ``{base_url}/chat/completions``.
        model: the model name the server expects (e.g. ``Qwen/Qwen2.5-VL-72B-Instruct``).
        api_key: sent as ``Authorization: Bearer``; when None it is read from the environment
            variable ``api_key_env`` (default ``DIPTYCH_JUDGE_API_KEY``), then ``OPENAI_API_KEY``; with
            no key no header is sent (local vLLM/SGLang servers need none). It is never logged.
        timeout: seconds allowed for each HTTP request.
        retries: extra attempts per request on transport failures, and follow-ups per comparison
            when the answer does not choose an image.
        concurrency: most requests in flight at once from this judge, across all threads.
        backoff_base: the first retry waits about this long (with jitter); each next one doubles it.
        backoff_max: cap on any single wait, including a server's ``Retry-After``.
        max_tokens: cap on the answer's length.
        prompt_template: the question; ``{instruction}`` is replaced by the edit instruction.
        extra_body: extra fields merged into every request body (e.g. ``{"top_k": 1}``).
        transport: an ``httpx`` transport, for tests or custom networking.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        api_key_env: str = DEFAULT_API_KEY_ENV,
        timeout: float = 60.0,
        retries: int = 3,
        concurrency: int = 4,
        backoff_base: float = 1.0,
        backoff_max: float = 30.0,
        max_tokens: int = 128,
        prompt_template: str = PAIRWISE_PROMPT,
        extra_body: dict[str, Any] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise InputError(f"base_url must start with http:// or https://, got {base_url!r}")
        if not isinstance(model, str) or not model.strip():
            raise InputError("the judge needs the model name the server expects, e.g. model='Qwen2.5-VL-72B'")
        if not (isinstance(timeout, int | float) and timeout > 0):
            raise InputError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if not (isinstance(retries, int) and retries >= 0):
            raise InputError(f"retries must be an integer >= 0, got {retries!r}")
        if not (isinstance(concurrency, int) and concurrency >= 1):
            raise InputError(f"concurrency must be an integer >= 1, got {concurrency!r}")
        if backoff_base < 0 or backoff_max < 0:
            raise InputError("backoff_base and backoff_max must be >= 0 seconds")
        if max_tokens < 1:
            raise InputError(f"max_tokens must be at least 1, got {max_tokens}")
        pairwise_parts("x", prompt_template)  # validates the template early
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.model = model
        self.timeout = float(timeout)
        self.retries = retries
        self.concurrency = concurrency
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.max_tokens = int(max_tokens)
        self.prompt_template = prompt_template
        self.extra_body = dict(extra_body or {})
        # Name-mangled and kept out of __repr__ so the key never ends up in logs or tracebacks.
        self.__api_key = api_key or os.environ.get(api_key_env) or os.environ.get(_FALLBACK_API_KEY_ENV)
        self._slots = threading.BoundedSemaphore(concurrency)
        self._client = httpx.Client(
            timeout=httpx.Timeout(self.timeout),
            # The semaphore is the limit; a pool limit as well would make queued requests wait inside
            # httpx, where the wait counts against the request's timeout.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=concurrency),
            transport=transport,
        )

    def __repr__(self) -> str:
        key = "set" if self.__api_key else "none"
        return f"VLMJudge(url={self.url!r}, model={self.model!r}, api_key={key})"

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def __enter__(self) -> VLMJudge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.__api_key:
            headers["Authorization"] = f"Bearer {self.__api_key}"
        return headers

    def _backoff(self, attempt: int) -> float:
        # "Equal jitter": half the exponential delay is fixed, half random, so concurrent callers
        # that failed together do not retry in lockstep.
        delay = min(self.backoff_max, self.backoff_base * 2**attempt)
        return delay / 2 + random.uniform(0, delay / 2)

    def _post_once(self, body: bytes) -> str:
        """One HTTP request; returns the answer text or raises _Retryable / JudgeError."""
        with self._slots:
            try:
                response = self._client.post(self.url, content=body, headers=self._headers())
            except httpx.TimeoutException as exc:
                raise _Retryable(f"no answer within {self.timeout:g} s ({type(exc).__name__})") from exc
            except httpx.TransportError as exc:
                raise _Retryable(f"connection failed: {type(exc).__name__}: {exc}") from exc
        status = response.status_code
        if status in _RETRY_STATUS or status >= 500:
            raise _Retryable(
                f"HTTP {status}: {_excerpt(response.text)}",
                wait=_retry_after_seconds(response.headers.get("Retry-After")),
            )
        if status >= 400:
            hint = {
                401: " Check the API key (environment variable DIPTYCH_JUDGE_API_KEY or OPENAI_API_KEY).",
                403: " Check that the API key may use this model.",
                404: " Check that base_url ends with the API root (often /v1) and the model name is right.",
            }.get(status, " Check the model name and that the server accepts image inputs.")
            raise JudgeError(f"the judge endpoint {self.url} answered HTTP {status}: {_excerpt(response.text)}.{hint}")
        return self._answer_text(response)

    @staticmethod
    def _answer_text(response: httpx.Response) -> str:
        try:
            payload = response.json()
            content = payload["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise _Retryable(
                f"HTTP {response.status_code} body is not a chat completion: {_excerpt(response.text)}"
            ) from exc
        # Some servers return the content as a list of typed parts.
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise _Retryable(f"the completion's content is {type(content).__name__}, not text")
        return content.strip()

    def chat(self, messages: list[dict[str, Any]]) -> str:
        """POST one chat completion, retrying transport failures; returns the answer text."""
        payload = {
            **self.extra_body,
            "model": self.model,
            "messages": messages,
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        body = json.dumps(payload).encode("utf-8")
        problem = ""
        for attempt in range(self.retries + 1):
            try:
                return self._post_once(body)
            except _Retryable as exc:
                problem = str(exc)
                if attempt == self.retries:
                    break
                wait = self._backoff(attempt) if exc.wait is None else min(exc.wait, self.backoff_max)
                logger.warning(
                    "judge request to %s failed (%s); retry %d/%d in %.2f s",
                    self.url,
                    problem,
                    attempt + 1,
                    self.retries,
                    wait,
                )
                # Sleep outside the semaphore so other requests can use the slot meanwhile.
                time.sleep(wait)
        raise JudgeError(
            f"the judge endpoint {self.url} failed after {self.retries + 1} attempt(s): {problem}. "
            "Check that the server is up and reachable, or raise timeout/retries."
        )

    def _messages(self, images: list[Image.Image], instruction: str) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = []
        for kind, value in pairwise_parts(instruction, self.prompt_template):
            if kind == "text":
                content.append({"type": "text", "text": value})
            else:
                content.append({"type": "image_url", "image_url": {"url": image_data_url(images[value])}})
        return [{"role": "user", "content": content}]

    def compare(self, source: Image.Image, a: Image.Image, b: Image.Image, instruction: str) -> Verdict:
        """Ask the endpoint which edit is better; 0 means ``a`` (image 1), 1 means ``b`` (image 2)."""
        images = [_check_image(a, "a"), _check_image(b, "b"), _check_image(source, "source")]
        messages = self._messages(images, instruction)
        answers: list[str] = []
        for _ in range(self.retries + 1):
            answer = self.chat(messages)
            answers.append(answer)
            verdict = verdict_from_answer(answer)
            if verdict is not None:
                return verdict
            messages = [
                *messages,
                {"role": "assistant", "content": answer},
                {"role": "user", "content": CLARIFY_PROMPT},
            ]
        raise unclear_answer_error(answers)
