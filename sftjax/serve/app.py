"""The OpenAI-compatible HTTP API over the engine (FastAPI on uvicorn): /health, /v1/models, /v1/chat/completions
and /v1/completions, streamed as server-sent events on request.

Requests are validated by hand rather than by a pydantic model so that every refusal is OpenAI's error object naming
the field, and so that a field this server does not implement is refused (400) instead of silently ignored. Chat
messages are rendered by sftjax.data.templates.prompt_ids with the template the model was trained with, the same
renderer training, eval and sftjax-generate use. Stop strings are applied to the decoded text: the row is cancelled
in the engine and the string is not returned; while streaming, text that could still become a stop string is held
back until it cannot.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import Request as HttpRequest  # a module-level name: FastAPI resolves route annotations here

from sftjax.config import ConfigError
from sftjax.config.serve import ServeConfig
from sftjax.data.templates import prompt_ids
from sftjax.generate.engine import Engine, Request, Result

COMMON = {"model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "n", "stream", "stream_options",
          "user"}
CHAT_FIELDS = COMMON | {"messages", "max_completion_tokens"}
COMPLETION_FIELDS = COMMON | {"prompt"}
ROLES = ("system", "user", "assistant")


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Served:
    """What the server answers with: the engine, the tokenizer and the model's trained template and EOS set."""

    engine: Engine
    tokenizer: Any
    template: str
    eos_ids: frozenset
    name: str
    max_positions: int
    cfg: ServeConfig
    created: int = 0


def _number(body: dict, key: str, default, lo=None, hi=None, integer: bool = False):
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not float(v).is_integer()):
        raise ApiError(400, f"'{key}' must be {'an integer' if integer else 'a number'}, got {v!r}", key)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ApiError(400, f"'{key}' must be in [{lo}, {hi}], got {v!r}", key)
    return int(v) if integer else float(v)


def _text_of(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise ApiError(400, f"'{where}' must be a string or a list of text parts", where)


@dataclass
class Job:
    """One validated request: its prompt tokens and sampling settings."""

    prompt: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop: list[str]
    n: int
    stream: bool
    include_usage: bool


def parse(served: Served, body: Any, chat: bool) -> Job:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    allowed = CHAT_FIELDS if chat else COMPLETION_FIELDS
    for key in body:
        if key not in allowed:
            raise ApiError(400, f"unsupported field '{key}': this server implements {sorted(allowed)}", key,
                           code="unsupported_parameter")
    model = body.get("model")
    if model != served.name:
        raise ApiError(404, f"the model '{model}' does not exist; this server serves '{served.name}'", "model",
                       code="model_not_found")
    tok = served.tokenizer
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
        clean = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES or "content" not in m:
                raise ApiError(400, f"'messages[{i}]' must be an object with 'role' ({', '.join(ROLES)}) and "
                               "'content'", f"messages[{i}]")
            clean.append({"role": m["role"], "content": _text_of(m["content"], f"messages[{i}].content")})
        try:
            prompt = prompt_ids(tok, served.template, clean)
        except ConfigError as e:
            raise ApiError(400, f"'messages' cannot be rendered with the model's template: {e}", "messages") from None
    else:
        text = body.get("prompt")
        if isinstance(text, list) and len(text) == 1 and isinstance(text[0], str):
            text = text[0]
        if not isinstance(text, str) or not text:
            raise ApiError(400, "'prompt' must be a non-empty string", "prompt")
        prompt = list(tok(text)["input_ids"])
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, key, served.cfg.default_max_tokens, 1, None, integer=True)
    if len(prompt) + max_tokens > served.max_positions:
        raise ApiError(400, f"'{key}' is too large: {len(prompt)} prompt tokens + {max_tokens} exceed the model's "
                       f"{served.max_positions} positions", key, code="context_length_exceeded")
    if not served.engine.fits(len(prompt), max_tokens):
        raise ApiError(400, f"{len(prompt)} prompt tokens + {key}={max_tokens} exceed the server's "
                       f"{served.engine.max_len} tokens per request (serve.max_len)", key,
                       code="context_length_exceeded")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, "'stop' must be a non-empty string or a list of up to 4 non-empty strings", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, f"'stream' must be true or false, got {stream!r}", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise ApiError(400, "'stream_options' supports only {'include_usage': bool}", "stream_options")
    return Job(prompt, max_tokens,
               temperature=_number(body, "temperature", 1.0, 0.0, 2.0),  # OpenAI's default is 1
               top_p=_number(body, "top_p", 1.0, 0.0, 1.0), top_k=_number(body, "top_k", 0, 0, None, integer=True),
               seed=_number(body, "seed", 0, 0, 2**32 - 1, integer=True), stop=stop,
               n=_number(body, "n", 1, 1, served.cfg.max_n, integer=True), stream=stream,
               include_usage=bool(options.get("include_usage", False)))


class Choice:
    """One choice's text as it grows: decoded from its tokens, cut at the first stop string, with the part that could
    still turn into a stop string held back while streaming.

    Decoding is incremental (written here: tokenizers has no streaming decoder that works across tokenizer kinds):
    each step decodes only the tokens since the last released boundary, with the previous step's tokens as context so
    that merges and leading spaces come out as in a whole decode, and takes the part past that context's own text.
    Text ending in U+FFFD (half of a multi-byte character) waits for the next tokens. Cost per step is bounded by a
    few tokens, not by the answer so far (re-decoding the whole answer every chunk was quadratic)."""

    def __init__(self, served: Served, job: Job, index: int):
        self.served, self.job, self.index = served, job, index
        self.tokens: list[int] = []
        self.prefix_at = self.read_at = 0  # tokens[prefix_at:read_at] is the context of the next decode
        self.sent = 0
        self.text = ""
        self.finish: str | None = None
        self.holdback = max((len(s) for s in job.stop), default=1) - 1

    def add(self, tokens: list[int]) -> str:
        """New tokens -> the text that can be released now."""
        self.tokens += tokens
        if self._catch_up(final=False):
            return self._release(len(self.text))
        return self._release(max(len(self.text) - self.holdback, self.sent))

    def close(self, result: Result) -> str:
        if self.finish is None:
            self._catch_up(final=True)
        if self.finish is None:
            self.finish = "length" if result.finish_reason == "length" else "stop"
        return self._release(len(self.text))

    def _catch_up(self, final: bool) -> bool:
        """Append the text of the tokens not yet decoded; True when a stop string ended the choice."""
        decode = self.served.tokenizer.decode
        context = decode(self.tokens[self.prefix_at:self.read_at], skip_special_tokens=True)
        fresh = decode(self.tokens[self.prefix_at:], skip_special_tokens=True)
        if len(fresh) <= len(context) or (fresh.endswith("\ufffd") and not final):
            return False
        before = len(self.text)
        self.text += fresh[len(context):]
        self.prefix_at, self.read_at = self.read_at, len(self.tokens)
        lo = max(0, before - self.holdback)  # a stop string can start this far back in the text already searched
        cut = min((i for i in (self.text.find(s, lo) for s in self.job.stop) if i >= 0), default=-1)
        if cut < 0:
            return False
        self.text, self.finish = self.text[:cut], "stop"
        return True

    def _release(self, end: int) -> str:
        out = self.text[self.sent:end]
        self.sent = max(self.sent, end)
        return out


async def run_job(served: Served, job: Job):
    """Yields (choice index, released text, finished Choice or None) as the engine produces tokens."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    choices = [Choice(served, job, i) for i in range(job.n)]
    rows = []
    for i in range(job.n):
        def on_event(kind, payload, i=i):
            loop.call_soon_threadsafe(events.put_nowait, (i, kind, payload))

        # choice i of a seeded request draws with seed + i, so n choices differ and each is reproducible
        rows.append(served.engine.submit(Request(job.prompt, job.max_tokens, on_event, job.temperature, job.top_k,
                                                 job.top_p, (job.seed + i) % 2**32, served.eos_ids)))
    open_choices = job.n
    try:
        while open_choices:
            i, kind, payload = await events.get()
            c = choices[i]
            if kind == "tokens":
                if c.finish is not None:
                    continue  # cut by a stop string; the row is being cancelled
                delta = c.add(payload)
                if c.finish is not None:
                    served.engine.cancel(rows[i])
                yield i, delta, None
            else:
                if payload.error and payload.finish_reason == "error":
                    raise ApiError(500, f"generation failed: {payload.error}", kind="server_error")
                yield i, c.close(payload), c
                open_choices -= 1
    finally:
        for row in rows:  # a client that went away frees its slots
            served.engine.cancel(row)


def _usage(job: Job, choices: list[Choice]) -> dict:
    done = sum(len(c.tokens) for c in choices)
    return {"prompt_tokens": len(job.prompt), "completion_tokens": done, "total_tokens": len(job.prompt) + done}


def create_app(served: Served):
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI(title="sftjax-serve", docs_url=None, redoc_url=None)
    served.created = int(time.time())

    @app.exception_handler(ApiError)
    async def api_error(_, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(Exception)
    async def any_error(_, e: Exception):  # the server never crashes on a request: every failure is a response
        return JSONResponse(ApiError(500, f"{type(e).__name__}: {e}", kind="server_error").body(), status_code=500)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": served.name, "busy": served.engine.busy, **served.engine.stats,
                "compiled": served.engine.programs}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": served.name, "object": "model", "created": served.created,
                                            "owned_by": "sftjax"}]}

    async def read_json(request: HttpRequest):
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > served.cfg.max_body_bytes:
            raise ApiError(413, f"request body of {size} bytes exceeds serve.max_body_bytes="
                           f"{served.cfg.max_body_bytes}", code="request_too_large")
        raw = b""
        async for part in request.stream():
            raw += part
            if len(raw) > served.cfg.max_body_bytes:
                raise ApiError(413, f"request body exceeds serve.max_body_bytes={served.cfg.max_body_bytes}",
                               code="request_too_large")
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}") from None

    def ids(chat: bool) -> tuple[str, str, int]:
        return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24], \
            "chat.completion" if chat else "text_completion", int(time.time())

    async def complete(job: Job, chat: bool) -> JSONResponse:
        """The whole answer in one JSON body, once every choice has finished."""
        rid, kind, created = ids(chat)
        done: list[Choice] = [None] * job.n  # type: ignore[list-item]
        async for i, _, c in run_job(served, job):
            if c is not None:
                done[i] = c
        choices = [({"index": c.index, "message": {"role": "assistant", "content": c.text},
                     "finish_reason": c.finish, "logprobs": None} if chat else
                    {"index": c.index, "text": c.text, "finish_reason": c.finish, "logprobs": None})
                   for c in done]
        return JSONResponse({"id": rid, "object": kind, "created": created, "model": served.name,
                             "choices": choices, "usage": _usage(job, done)})

    def stream(job: Job, chat: bool) -> StreamingResponse:
        """Server-sent events: a frame per released piece of text, one per finished choice, usage on request."""
        rid, _, created = ids(chat)
        chunk_kind = "chat.completion.chunk" if chat else "text_completion"

        def frame(choices, usage=None):
            body = {"id": rid, "object": chunk_kind, "created": created, "model": served.name, "choices": choices}
            if usage is not None:
                body["usage"] = usage
            return f"data: {json.dumps(body)}\n\n"

        async def events():
            if chat:
                yield frame([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                             for i in range(job.n)])
            done = []
            try:
                async for i, delta, c in run_job(served, job):
                    if delta:
                        yield frame([{"index": i, "delta": {"content": delta}, "finish_reason": None} if chat else
                                     {"index": i, "text": delta, "finish_reason": None, "logprobs": None}])
                    if c is not None:
                        done.append(c)
                        yield frame([{"index": i, "delta": {}, "finish_reason": c.finish} if chat else
                                     {"index": i, "text": "", "finish_reason": c.finish, "logprobs": None}])
            except ApiError as e:
                yield f"data: {json.dumps(e.body())}\n\n"
            if job.include_usage:
                yield frame([], _usage(job, done))
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def answer(request: HttpRequest, chat: bool):
        job = parse(served, await read_json(request), chat=chat)
        return stream(job, chat) if job.stream else await complete(job, chat)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HttpRequest):
        return await answer(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: HttpRequest):
        return await answer(request, chat=False)

    return app
