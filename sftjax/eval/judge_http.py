"""The HTTP judge backend: an OpenAI-compatible chat completions client with retries, kept apart from scoring."""

from __future__ import annotations

import http.client
import json
import os
import re
import time
import urllib.error
import urllib.request
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
    """A judge behind an OpenAI-compatible chat completions server (OpenAI, vLLM, llama.cpp, SGLang, ...).

    ``url`` may be the server root (``http://host:8000``), the ``/v1`` base URL that OpenAI clients take, or the full
    ``.../v1/chat/completions`` endpoint. The API key is read from the environment variable ``api_key_env`` when that
    is set (local servers usually need none). Connection errors, timeouts, HTTP 429 and 5xx are retried ``retries``
    times (so up to ``retries + 1`` requests) after ``backoff_s * 2**k`` seconds (or the server's Retry-After, if
    longer); other HTTP errors fail at once with the server's message. Requests in a batch run on ``max_workers``
    threads.
    """

    url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout_s: float = 60
    retries: int = 3
    backoff_s: float = 1.0
    temperature: float = 0.0
    max_tokens: int = 512
    max_workers: int = 4
    endpoint: str = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not re.match(r"https?://", self.url):
            raise ConfigError(f"HttpJudge url: expected an http(s):// URL, got {self.url!r}")
        if self.retries < 0 or self.backoff_s < 0 or self.timeout_s <= 0:
            raise ConfigError(
                f"HttpJudge: expected retries >= 0, backoff_s >= 0, timeout_s > 0, got "
                f"{self.retries}, {self.backoff_s}, {self.timeout_s}"
            )
        self.endpoint = chat_completions_url(self.url)

    def __call__(self, batch: list[Messages]) -> list[str]:
        if len(batch) <= 1 or self.max_workers <= 1:
            return [self.complete(m) for m in batch]
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(batch))) as pool:
            return list(pool.map(self.complete, batch))

    def _request(self, messages: Messages) -> urllib.request.Request:
        body = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return urllib.request.Request(self.endpoint, data=json.dumps(body).encode(), headers=headers, method="POST")

    def complete(self, messages: Messages) -> str:
        """One chat completion's text, retrying transient failures."""
        last = ""
        for attempt in range(self.retries + 1):
            wait = self.backoff_s * 2**attempt
            try:
                with urllib.request.urlopen(self._request(messages), timeout=self.timeout_s) as resp:
                    payload = resp.read()
                return self._text(payload)
            except urllib.error.HTTPError as e:
                detail = _server_message(e)
                if e.code != 429 and e.code < 500:
                    raise JudgeError(
                        f"judge request to {self.endpoint} was rejected: HTTP {e.code}: {detail}"
                    ) from None
                last = f"HTTP {e.code}: {detail}"
                retry_after = e.headers.get("Retry-After") if e.headers else None
                if retry_after and retry_after.strip().isdigit():
                    wait = max(wait, min(float(retry_after), 60.0))
            except (urllib.error.URLError, TimeoutError, OSError, http.client.HTTPException) as e:
                reason = getattr(e, "reason", e)
                last = f"{type(reason).__name__}: {reason}"
            if attempt < self.retries:
                time.sleep(wait)
        raise JudgeError(
            f"judge request to {self.endpoint} failed after {self.retries + 1} attempts; last error: {last}"
        )

    def _text(self, payload: bytes) -> str:
        try:
            data = json.loads(payload)
            content = data["choices"][0]["message"].get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise JudgeError(
                f"judge response from {self.endpoint} is not a chat completion: {payload[:300]!r}"
            ) from None
        return content if isinstance(content, str) else ""  # a null content is an empty (unparseable) reply


def _server_message(e: urllib.error.HTTPError) -> str:
    try:
        raw = e.read()
    except Exception:  # the body is best effort; the status code is the error
        raw = b""
    text = raw.decode("utf-8", "replace")
    try:
        err = json.loads(text).get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
    except (ValueError, AttributeError):
        pass
    return text[:300] or str(e.reason)
