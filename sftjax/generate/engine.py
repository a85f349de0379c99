"""Continuous batching for serving: requests join and leave a fixed set of decode slots between short decode chunks.

The engine keeps one head-major KV cache of ``max_batch`` rows on device (the layout of
:mod:`sftjax.generate.decode`). A new request is prefilled alone (its prompt left-padded to a shape bucket, as in
``generate``) and its keys and values are copied into a free row; every row then keeps its own write slot and
position, so rows of different ages decode together. Decoding runs ``chunk`` steps per device call; between calls the
host hands each row's new tokens to its request, and a row that hit EOS, a stop string or its token budget frees its
slot at once, for the next waiting request. A short request never waits for a long one.

Sampling is per row (temperature, top-k, top-p) with a key derived from the request's own seed and the token's index,
so a seeded request draws the same tokens whichever requests share its batch; greedy rows take the argmax, as
``generate`` does, and give the same tokens.

Everything on device runs on the engine's one thread; :meth:`Engine.submit` is safe from any thread.
"""

from __future__ import annotations

import functools
import queue
import threading
from dataclasses import dataclass, field
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sftjax.generate.decode import (DECODE_CHUNK, StaticGraph, cast_model, decode_step, left_pad, padded_width,
                                    prefill_cache)
from sftjax.generate.sampling import sample_rows
from sftjax.model.attention import resolve as resolve_attention, sequence_multiple
from sftjax.model.llama import compute_dtype
from sftjax.parallel.rules import activation_mesh

PROMPT_MULTIPLE = 16


@dataclass
class Request:
    """One completion: token ids in; ``on_event(kind, payload)`` is called from the engine thread with
    ("tokens", [ids]) as they come and ("done", Result) once at the end."""

    prompt: Sequence[int]
    max_tokens: int
    on_event: Callable[[str, object], None]
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop_ids: frozenset = frozenset()  # token ids that end the row (EOS set); not part of the output


@dataclass
class Result:
    tokens: list[int]  # generated, without the ending EOS
    finish_reason: str  # "stop" (an EOS) or "length" (max_tokens); stop strings are the caller's, see serve
    error: str | None = None


@dataclass
class _Row:
    request: Request
    tokens: list[int] = field(default_factory=list)
    cancelled: bool = False


@functools.partial(jax.jit, static_argnames=("static",))
def _prefill_one(params, ids, start, seed, temperature, top_k, top_p, *, static: StaticGraph):
    """One left-padded prompt [1, P] -> (first token [1], head-major keys and values of its P slots)."""
    with activation_mesh(None):
        logits, cache = prefill_cache(cast_model(params, static), ids, start, 0)
        tok = sample_rows(logits, seed, jnp.zeros(1, jnp.int32), temperature, top_k, top_p)
        return tok, cache


@functools.partial(jax.jit, static_argnames=("stacked",), donate_argnums=(0,))
def _insert(cache, row_cache, row, *, stacked: bool):
    """Copy one prefilled row's slots [0, P) into row ``row`` of the batch cache."""
    def put(big, small):
        at = (jnp.int32(0), row, jnp.int32(0), jnp.int32(0), jnp.int32(0)) if stacked else (
            row, jnp.int32(0), jnp.int32(0), jnp.int32(0))
        return jax.lax.dynamic_update_slice(big, small.astype(big.dtype), at)

    return jax.tree.map(put, cache, row_cache)


@functools.partial(jax.jit, static_argnames=("static", "steps"), donate_argnums=(1,))
def _decode_chunk(params, cache, tok, nxt, start, active, seeds, count, temperature, top_k, top_p, *,
                  static: StaticGraph, steps: int):
    """``steps`` decode steps for every row: row r writes its newest token at slot nxt[r] (position nxt[r] -
    start[r]) and samples the next; inactive rows compute but do not advance. Returns (tokens [b, steps], cache,
    the last token, nxt, count)."""
    with activation_mesh(None):
        model = cast_model(params, static)
        leaf = jax.tree.leaves(cache)[0]
        total = leaf.shape[-2]
        slots = jnp.arange(total)

        def body(carry, _):
            tok, cache, nxt, count = carry
            slot = jnp.minimum(nxt, total - 1)
            mask = (slots[None] >= start[:, None]) & (slots[None] <= slot[:, None])
            logits, cache = decode_step(model, tok, slot - start, cache, slot, mask)
            new = sample_rows(logits, seeds, count, temperature, top_k, top_p)
            nxt = jnp.where(active, nxt + 1, nxt)
            return (new, cache, nxt, count + active.astype(jnp.int32)), new

        (tok, cache, nxt, count), toks = jax.lax.scan(body, (tok, cache, nxt, count), None, length=steps)
        return toks.T, cache, tok, nxt, count


class Engine:
    """The decode slots and the thread that runs them. ``max_len``: tokens per request (prompt + answer); each
    row has room for the longest prompt bucket of that size plus one chunk decoded past a finished row's end."""

    def __init__(self, graphdef, params, cfg, *, max_batch: int = 8, max_len: int = 2048, chunk: int = 8,
                 pad_id: int = 0, log=print):
        self.graphdef, self.params, self.cfg, self.log = graphdef, params, cfg, log
        self.static = StaticGraph(graphdef, cfg)
        self.max_batch, self.chunk, self.pad_id, self.max_len = max_batch, chunk, pad_id, max_len
        impl = resolve_attention(cfg.attention, head_dim=cfg.resolved_head_dim, seq_len=128)
        self.multiple = max(PROMPT_MULTIPLE, sequence_multiple(impl))
        slots = padded_width(max_len, cfg.attention_block, self.multiple) + chunk
        self.slots = slots if slots <= DECODE_CHUNK else -(-slots // DECODE_CHUNK) * DECODE_CHUNK
        dt = compute_dtype(cfg.dtype)
        shape = (max_batch, cfg.num_kv_heads, self.slots, cfg.resolved_head_dim)
        if cfg.scan_layers:
            zeros = jnp.zeros((cfg.num_layers, *shape), dt)
            self.cache = (zeros, zeros)
        else:
            self.cache = (tuple(jnp.zeros(shape, dt) for _ in range(cfg.num_layers)),
                          tuple(jnp.zeros(shape, dt) for _ in range(cfg.num_layers)))
        b = max_batch
        self.tok, self.nxt, self.first = np.zeros(b, np.int32), np.zeros(b, np.int32), np.zeros(b, np.int32)
        self.seeds, self.count = np.zeros(b, np.uint32), np.zeros(b, np.int32)
        self.temperature, self.top_k, self.top_p = np.zeros(b, np.float32), np.zeros(b, np.int32), np.ones(b, np.float32)
        self.rows: list[_Row | None] = [None] * b
        self.waiting: queue.Queue = queue.Queue()
        self.wake = threading.Event()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="sftjax-engine", daemon=True)
        self.stats = {"requests": 0, "tokens": 0, "chunks": 0}

    # -- the public side --------------------------------------------------------------------------------------------

    def fits(self, prompt_tokens: int, max_tokens: int) -> bool:
        """Whether a request fits a row: its prompt bucket, its answer and one chunk past the answer's end."""
        return (prompt_tokens + max_tokens <= self.max_len and
                padded_width(prompt_tokens, self.cfg.attention_block, self.multiple) + max_tokens + self.chunk
                <= self.slots)

    def submit(self, request: Request) -> _Row:
        if not request.prompt:
            raise ValueError("empty prompt")
        if not self.fits(len(request.prompt), request.max_tokens):
            raise ValueError(f"{len(request.prompt)} prompt tokens + max_tokens {request.max_tokens} do not fit the "
                             f"server's {self.max_len} tokens per request")
        row = _Row(request)
        self.waiting.put(row)
        self.wake.set()
        return row

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Finish every submitted request, then end the thread."""
        self.stopping = True
        self.wake.set()
        self.thread.join()

    @property
    def busy(self) -> int:
        return sum(r is not None for r in self.rows) + self.waiting.qsize()

    # -- the engine thread ------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._admit()
            if not any(r is not None for r in self.rows):
                if self.stopping and self.waiting.empty():
                    return
                self.wake.wait(0.05)
                self.wake.clear()
                continue
            try:
                self._step()
            except Exception as e:  # a device error fails the rows in flight, never the server
                self.log(f"engine: decode failed: {type(e).__name__}: {e}")
                for i, row in enumerate(self.rows):
                    if row is not None:
                        self._finish(i, "error", f"{type(e).__name__}: {e}")

    def _admit(self) -> None:
        for i in range(self.max_batch):
            if self.rows[i] is not None:
                continue
            try:
                row = self.waiting.get_nowait()
            except queue.Empty:
                return
            if row.cancelled:
                continue
            try:
                self._prefill(i, row)
            except Exception as e:
                self.log(f"engine: prefill failed: {type(e).__name__}: {e}")
                row.request.on_event("done", Result([], "error", f"{type(e).__name__}: {e}"))

    def _prefill(self, i: int, row: _Row) -> None:
        r = row.request
        ids, start = left_pad([list(r.prompt)], self.pad_id, self.cfg.attention_block, self.multiple)
        width = ids.shape[1]
        tok, row_cache = _prefill_one(
            self.params, ids, start, np.asarray([r.seed], np.uint32), np.asarray([r.temperature], np.float32),
            np.asarray([r.top_k], np.int32), np.asarray([r.top_p], np.float32), static=self.static)
        self.cache = _insert(self.cache, row_cache, np.int32(i), stacked=self.cfg.scan_layers)
        self.rows[i] = row
        self.tok[i], self.nxt[i], self.first[i] = int(tok[0]), width, int(start[0])
        self.seeds[i], self.count[i] = r.seed, 1
        self.temperature[i], self.top_k[i], self.top_p[i] = r.temperature, r.top_k, r.top_p
        self.stats["requests"] += 1
        self._take(i, [int(tok[0])])

    def _step(self) -> None:
        active = np.asarray([r is not None for r in self.rows])
        toks, self.cache, tok, nxt, count = _decode_chunk(
            self.params, self.cache, self.tok, self.nxt, self.first, active, self.seeds, self.count,
            self.temperature, self.top_k, self.top_p, static=self.static, steps=self.chunk)
        self.tok, self.nxt, self.count = np.array(tok), np.array(nxt), np.array(count)
        toks = np.asarray(toks)
        self.stats["chunks"] += 1
        for i in np.nonzero(active)[0]:
            self._take(int(i), toks[i].tolist())

    def _take(self, i: int, new: list[int]) -> None:
        """Hand row i's new tokens to its request; free the row when it ends."""
        row = self.rows[i]
        r = row.request
        fresh = []
        for t in new:
            if row.cancelled:
                return self._finish(i, "cancelled")
            if t in r.stop_ids:
                if fresh:
                    r.on_event("tokens", fresh)
                return self._finish(i, "stop")
            row.tokens.append(t)
            fresh.append(t)
            self.stats["tokens"] += 1
            if len(row.tokens) >= r.max_tokens:
                r.on_event("tokens", fresh)
                return self._finish(i, "length")
        if fresh:
            r.on_event("tokens", fresh)

    def _finish(self, i: int, reason: str, error: str | None = None) -> None:
        row = self.rows[i]
        self.rows[i] = None
        row.request.on_event("done", Result(list(row.tokens), reason, error))

    def cancel(self, row: _Row) -> None:
        """Stop a request early (its client went away, or a stop string ended it): the slot frees at the next
        chunk boundary."""
        row.cancelled = True
