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

from sftjax.generate.decode import DECODE_CHUNK, StaticGraph, cast_model, decode_step, padded_width, prefill_cache
from sftjax.generate.sampling import greedy, sample_rows
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


@functools.partial(jax.jit, static_argnames=("static", "sample"))
def _prefill_one(params, ids, start, seed, temperature, top_k, top_p, *, static: StaticGraph, sample: bool = False):
    """One left-padded prompt [1, P] -> (first token [1], head-major keys and values of its P slots); ``sample``
    as in :func:`_decode_chunk`."""
    with activation_mesh(None):
        logits, cache = prefill_cache(cast_model(params, static), ids, start, 0)
        if not sample:
            return greedy(logits), cache
        return sample_rows(logits, seed, jnp.zeros(1, jnp.int32), temperature, top_k, top_p), cache


@functools.partial(jax.jit, static_argnames=("stacked",), donate_argnums=(0,))
def _insert(cache, row_cache, row, *, stacked: bool):
    """Copy one prefilled row's slots [0, P) into row ``row`` of the batch cache."""
    def put(big, small):
        at = (jnp.int32(0), row, jnp.int32(0), jnp.int32(0), jnp.int32(0)) if stacked else (
            row, jnp.int32(0), jnp.int32(0), jnp.int32(0))
        return jax.lax.dynamic_update_slice(big, small.astype(big.dtype), at)

    return jax.tree.map(put, cache, row_cache)


@functools.partial(jax.jit, static_argnames=("static", "steps", "window", "sample"), donate_argnums=(1,))
def _decode_chunk(params, cache, tok, nxt, start, active, seeds, count, temperature, top_k, top_p, *,
                  static: StaticGraph, steps: int, window: int, sample: bool):
    """``steps`` decode steps for every row: row r writes its newest token at slot nxt[r] (position nxt[r] -
    start[r]) and samples the next; inactive rows compute but do not advance. Returns (tokens [b, steps], cache,
    the last token, nxt, count).

    Only the first ``window`` slots (a bucket above every live row's last slot) are read and written: the steps run on
    that slice, which goes back into the cache once per chunk, so a step costs what the live rows need rather than
    what the longest request the server accepts would (measured on CPU, SmolLM2-135M, 8 rows: 510 ms a step over an
    8,704-slot cache, against the plain generate loop's 55; 49 ms with a 128-slot window). ``sample`` False (no row
    samples) compiles the argmax alone, without the per-row sort that top-k/top-p need."""
    with activation_mesh(None):
        model = cast_model(params, static)
        view = jax.tree.map(lambda c: jax.lax.slice_in_dim(c, 0, window, axis=c.ndim - 2), cache)
        slots = jnp.arange(window)

        # A free row may hold a finished request's state beyond this window; it computes on its own first slot
        # instead, so it attends to something (an empty row would be 0/0 = NaN, and a NaN written into a free row's
        # cache poisons the next request there: masked slots still enter the attention as 0 * v).
        first = jnp.where(active, start, 0)

        def body(carry, _):
            tok, view, nxt, count = carry
            slot = jnp.where(active, jnp.minimum(nxt, window - 1), 0)
            mask = (slots[None] >= first[:, None]) & (slots[None] <= slot[:, None])
            logits, view = decode_step(model, tok, slot - first, view, slot, mask)
            new = sample_rows(logits, seeds, count, temperature, top_k, top_p) if sample else greedy(logits)
            nxt = jnp.where(active, nxt + 1, nxt)
            return (new, view, nxt, count + active.astype(jnp.int32)), new

        (tok, view, nxt, count), toks = jax.lax.scan(body, (tok, view, nxt, count), None, length=steps)
        cache = jax.tree.map(lambda c, v: jax.lax.dynamic_update_slice_in_dim(c, v, 0, axis=c.ndim - 2), cache, view)
        return toks.T, cache, tok, nxt, count


def windows(slots: int, smallest: int = 128) -> list[int]:
    """The decode windows of a ``slots``-slot cache: powers of two from ``smallest`` (each one chunk of the decode
    kernel or a multiple of it, as :func:`sftjax.generate.decode._attend` needs), then the whole cache."""
    out, w = [], smallest
    while w < slots:
        if w <= DECODE_CHUNK or w % DECODE_CHUNK == 0:
            out.append(w)
        w *= 2
    return out + [slots]


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
        slots = self.bucket(max_len) + chunk
        self.slots = slots if slots <= DECODE_CHUNK else -(-slots // DECODE_CHUNK) * DECODE_CHUNK
        self.windows = windows(self.slots)
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

    def bucket(self, prompt_tokens: int) -> int:
        """A prompt's padded width: the next power of two up to one attention block (a few compiled prefills cover
        every short prompt), then ``generate``'s multiples of the block."""
        block = self.cfg.attention_block
        width = padded_width(prompt_tokens, block, self.multiple)
        if prompt_tokens <= block:
            pow2 = max(self.multiple, 1 << max(prompt_tokens - 1, 0).bit_length())
            if pow2 <= block and pow2 % self.multiple == 0:
                return pow2
        return width

    def fits(self, prompt_tokens: int, max_tokens: int) -> bool:
        """Whether a request fits a row: its prompt bucket, its answer and one chunk past the answer's end."""
        return (prompt_tokens + max_tokens <= self.max_len and
                self.bucket(prompt_tokens) + max_tokens + self.chunk <= self.slots)

    def warmup(self, prompt_tokens: int, log=None) -> float:
        """Compile, before the first request, the prefill and row copy of every prompt bucket up to
        ``prompt_tokens`` and the greedy decode chunk of every window up to twice that; returns the seconds taken.
        Without it, the first request of each new shape waits for a compile (seconds on CPU)."""
        import time

        t0 = time.perf_counter()
        buckets = sorted({self.bucket(n) for n in range(1, max(prompt_tokens, 1) + 1)})
        row_caches = []
        for width in buckets:
            ids = np.full((1, width), self.pad_id, np.int32)
            _, row_cache = _prefill_one(self.params, ids, np.zeros(1, np.int32), np.zeros(1, np.uint32),
                                        np.zeros(1, np.float32), np.zeros(1, np.int32), np.ones(1, np.float32),
                                        static=self.static, sample=False)  # as _prefill passes it: same cache key
            row_caches.append(row_cache)
        # The fresh zeros are placed unlike the cache that an insert or a decode chunk returns (placed like the
        # parameters): one insert moves the cache there, and the copies are then compiled for that placement.
        self.cache = _insert(self.cache, row_caches[0], np.int32(0), stacked=self.cfg.scan_layers)
        inactive = np.zeros(self.max_batch, bool)
        for window in [w for w in self.windows if w <= 2 * max(buckets)] or self.windows[:1]:
            out = _decode_chunk(self.params, self.cache, self.tok, self.nxt, self.first, inactive, self.seeds,
                                self.count, self.temperature, self.top_k, self.top_p, static=self.static,
                                steps=self.chunk, window=window, sample=False)
            self.cache = out[1]
        for row_cache in row_caches:
            self.cache = _insert(self.cache, row_cache, np.int32(0), stacked=self.cfg.scan_layers)
        jax.block_until_ready(self.cache)
        seconds = time.perf_counter() - t0
        if log:
            log(f"engine: compiled {len(buckets)} prompt buckets (up to {max(buckets)} tokens) and the decode windows "
                f"up to {2 * max(buckets)} slots in {seconds:.1f}s")
        return seconds

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
    def programs(self) -> dict[str, int]:
        """Compiled programs per step kind, in this process (shown by /health): a count that grows while serving
        means requests are waiting for XLA, i.e. a shape outside what warmup covered."""
        return {"prefill": _prefill_one._cache_size(), "insert": _insert._cache_size(),
                "decode": _decode_chunk._cache_size()}

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
        width = self.bucket(len(r.prompt))
        ids = np.full((1, width), self.pad_id, np.int32)
        ids[0, width - len(r.prompt):] = r.prompt
        start = np.asarray([width - len(r.prompt)], np.int32)
        tok, row_cache = _prefill_one(
            self.params, ids, start, np.asarray([r.seed], np.uint32), np.asarray([r.temperature], np.float32),
            np.asarray([r.top_k], np.int32), np.asarray([r.top_p], np.float32), static=self.static,
            sample=bool(r.temperature > 0))
        self.cache = _insert(self.cache, row_cache, np.int32(i), stacked=self.cfg.scan_layers)
        self.rows[i] = row
        self.tok[i], self.nxt[i], self.first[i] = int(tok[0]), width, int(start[0])
        self.seeds[i], self.count[i] = r.seed, 1
        self.temperature[i], self.top_k[i], self.top_p[i] = r.temperature, r.top_k, r.top_p
        self.stats["requests"] += 1
        self._take(i, [int(tok[0])])

    def _step(self) -> None:
        active = np.asarray([r is not None for r in self.rows])
        last = int(self.nxt[active].max()) + self.chunk
        window = next(w for w in self.windows if w >= last)
        sample = bool((self.temperature[active] > 0).any())
        out = _decode_chunk(self.params, self.cache, self.tok, self.nxt, self.first, active, self.seeds, self.count,
                            self.temperature, self.top_k, self.top_p, static=self.static, steps=self.chunk,
                            window=window, sample=sample)
        self.cache = out[1]
        toks, tok, nxt, count = jax.device_get((out[0], *out[2:]))  # one host round trip per chunk
        self.tok, self.nxt, self.count = np.array(tok), np.array(nxt), np.array(count)
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
