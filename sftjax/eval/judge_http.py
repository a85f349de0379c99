"""The HTTP judge backend: an OpenAI-compatible chat completions client (the maintained ``openai`` client, which
handles timeouts, retries with backoff, 429 and 5xx), kept apart from scoring."""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sftjax.config import ConfigError

Messages = list[dict[str, str]]


class JudgeError(RuntimeError):
    """The judge backend failed (unreachable, rejected the request, or answered with something that is not a reply)."""


def chat_completions_url(url: str) -> str:
    """The ``/v1/chat/completions`` endpoint for a server root, a ``/v1`` base URL, or the full endpoint URL."""
    u = url.rstrip("/")
    if u.endswith("/chat/completions"):
        return u
    if u.endswith("/v1"):
        return u + "/chat/completions"
    return u + "/v1/chat/completions"


@dataclass
class HttpJudge:
    """A judge behind an OpenAI-compatible chat completions server (OpenAI, vLLM, llama.cpp, SGLang, sftjax-serve).

    ``url`` may be the server root (``http://host:8000``), the ``/v1`` base URL that OpenAI clients take, or the full
    ``.../v1/chat/completions`` endpoint. The API key is read from the environment variable ``api_key_env`` when that
    is set (local servers usually need none; then no Authorization header is sent). Connection errors, timeouts,
    HTTP 408/409/429 and 5xx are retried ``retries`` times (so up to ``retries + 1`` requests) by the ``openai``
    client, with exponential backoff from 0.5 s (or the server's Retry-After); other HTTP errors fail at once with the
    server's message. Requests in a batch run on ``max_workers`` threads.
    """

    url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout_s: float = 60
    retries: int = 3
    temperature: float = 0.0
    max_tokens: int = 512
    max_workers: int = 4
    endpoint: str = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not re.match(r"https?://", self.url):
            raise ConfigError(f"HttpJudge url: expected an http(s):// URL, got {self.url!r}")
        if self.retries < 0 or self.timeout_s <= 0:
            raise ConfigError(f"HttpJudge: expected retries >= 0 and timeout_s > 0, got {self.retries}, "
                              f"{self.timeout_s}")
        self.endpoint = chat_completions_url(self.url)
        import openai

        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        # The client insists on a key; without one the Authorization header is left out of every request instead.
        self._auth = {} if key else {"Authorization": openai.Omit()}
        self._client = openai.OpenAI(api_key=key or "unused", base_url=self.endpoint.removesuffix("/chat/completions"),
                                     timeout=self.timeout_s, max_retries=self.retries)

    def __call__(self, batch: list[Messages]) -> list[str]:
        if len(batch) <= 1 or self.max_workers <= 1:
            return [self.complete(m) for m in batch]
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(batch))) as pool:
            return list(pool.map(self.complete, batch))

    def complete(self, messages: Messages) -> str:
        """One chat completion's text."""
        import openai

        try:
            raw = self._client.chat.completions.with_raw_response.create(
                model=self.model, messages=messages, temperature=self.temperature, max_tokens=self.max_tokens,
                extra_headers=self._auth)
        except openai.APIStatusError as e:
            detail = _server_message(e)
            if e.status_code in (408, 409, 429) or e.status_code >= 500:
                raise JudgeError(f"judge request to {self.endpoint} failed after {self.retries + 1} attempts; last "
                                 f"error: HTTP {e.status_code}: {detail}") from None
            raise JudgeError(f"judge request to {self.endpoint} was rejected: HTTP {e.status_code}: {detail}") from None
        except openai.APIError as e:  # connection refused, timeouts: retried by the client, then raised
            cause = e.__cause__ or e
            raise JudgeError(f"judge request to {self.endpoint} failed after {self.retries + 1} attempts; last "
                             f"error: {type(e).__name__}: {cause}") from None
        return self._text(raw.http_response.content)

    def _text(self, payload: bytes) -> str:
        try:
            data = json.loads(payload)
            content = data["choices"][0]["message"].get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise JudgeError(
                f"judge response from {self.endpoint} is not a chat completion: {payload[:300]!r}"
            ) from None
        return content if isinstance(content, str) else ""  # a null content is an empty (unparseable) reply


def _server_message(e) -> str:
    """The server's error message: OpenAI's {"error": {"message"}} (the client keeps the inner object as ``body``),
    a plain string, or the start of the response text."""
    body = e.body
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    if isinstance(body, str) and body:
        return body
    try:
        return e.response.text[:300] or str(e)
    except Exception:  # the body is best effort; the status code is the error
        return str(e)
