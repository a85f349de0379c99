"""Batched generation with a KV cache: one jitted program runs the prefill and then the whole decode loop on device.

Prompts are left-padded to a shared length P so that every row's newest token sits in the same cache slot: the
prefill's next-token logits are all at slot P-1, and decode step i writes slot P+i-1 for the whole batch with one
dynamic_update_slice. Padding is segment 0 during the prefill (the training attention kernel keeps it away from real
tokens) and masked out of the cache afterwards; positions count from 0 at each row's first real token, so a padded row
computes what it would compute alone.

Decoding is a lax.while_loop (no Python per token) that stops once every row has produced an EOS or the token budget
is spent. The loop keeps its own head-major copy of the cache ([batch, kv_heads, slots, head_dim] per layer, taken from
the prefill's cache once): the per-token attention is then two plain batched matmuls over (batch, kv_heads), where the
model's slot-major cache would make XLA transpose every layer's whole cache on every step. An unrolled model carries
one such array per layer, so each step updates it in place; a scanned one carries them stacked through the scan. Finished rows keep computing, since the batch shape is static, but record ``pad_id``. Shapes are bucketed
(P to the attention block or a multiple of it, the budget to a multiple of 32) so that similar requests reuse one
compiled program; the exact ``max_new_tokens`` is a traced loop bound.
"""

from __future__ import annotations

import functools
import math
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from sftjax.generate import sampling
from sftjax.model.attention import resolve as resolve_attention, sequence_multiple
from sftjax.model.llama import Llama, compute_dtype, init_cache
from sftjax.model.rope import inverse_frequencies, rope_tables
from sftjax.parallel.rules import activation_mesh, constrain

_PROMPT_MULTIPLE = 16
_BUDGET_MULTIPLE = 32
_NEG = -1e30  # finite "minus infinity", as in the training kernels
_LAYER_CACHE_AXES = ("act_batch", "act_kv_heads", "act_length", None)
DECODE_CHUNK = 512  # cache slots a decode step reads at a time; chunks after the newest slot are skipped


def generate(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, eos_ids: Iterable[int] = (),
             pad_id: int = 0, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed=0,
             mesh: Mesh | None = None) -> list[list[int]]:
    """Continue each prompt by up to ``max_new_tokens`` tokens; returns only the new tokens of each row, cut before
    its first EOS (the EOS itself is not included).

    model: a :class:`Llama`, or ``(graphdef, params)`` as the train state holds them (params a pure dict or State).
    temperature 0 is greedy (argmax); otherwise tokens are drawn from softmax(logits / temperature), narrowed to the
    ``top_k`` best (0 = all) and to the smallest set holding ``top_p`` of the mass (1.0 = all). ``seed`` (an int or a
    ``jax.random.key``) makes sampling reproducible. ``mesh``: shard the cache and activations like training (params
    are used as they are placed); None runs unconstrained.
    """
    graphdef, params = model if isinstance(model, tuple) else nnx.split(model)
    cfg = nnx.merge(graphdef, params).cfg if isinstance(model, tuple) else model.cfg
    _check(prompts, max_new_tokens, temperature, top_k, top_p, cfg.vocab_size)
    if max_new_tokens == 0:
        return [[] for _ in prompts]
    impl = resolve_attention(cfg.attention, head_dim=cfg.resolved_head_dim, seq_len=128)
    ids, start = left_pad(prompts, pad_id, cfg.attention_block, max(_PROMPT_MULTIPLE, sequence_multiple(impl)))
    eos = np.asarray(sorted(set(eos_ids)) or [-1], np.int32)  # -1 never matches a token
    key = seed if isinstance(seed, jax.Array) else jax.random.key(seed)
    greedy = temperature == 0
    out, lengths, _ = generate_padded(
        params, ids, start, eos, np.int32(max_new_tokens), np.int32(pad_id),
        np.float32(1.0 if greedy else temperature), np.float32(top_p), key,
        static=StaticGraph(graphdef, cfg), budget=-(-max_new_tokens // _BUDGET_MULTIPLE) * _BUDGET_MULTIPLE,
        greedy=greedy, top_k=0 if greedy else top_k, use_top_p=not greedy and top_p < 1.0, mesh=mesh)
    return [row[:n].tolist() for row, n in zip(np.asarray(out), np.asarray(lengths))]


def _check(prompts, max_new_tokens, temperature, top_k, top_p, vocab_size):
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt and every prompt needs at least one token")
    if any(t < 0 or t >= vocab_size for p in prompts for t in p):
        raise ValueError(f"prompt token ids must lie in [0, {vocab_size})")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
        raise ValueError(f"expected temperature >= 0, top_k >= 0, 0 < top_p <= 1; got {temperature}, {top_k}, {top_p}")


def padded_width(n: int, block: int, multiple: int) -> int:
    """The prompt bucket of an ``n``-token prompt: a multiple of ``multiple`` and, above one attention block, a
    multiple of the block too (the blockwise kernel's requirement)."""
    if n > block:
        step = math.lcm(block, multiple)
        return -(-n // step) * step
    width = -(-n // multiple) * multiple
    return min(width, block) if block % multiple == 0 else width


def left_pad(prompts, pad_id: int, block: int, multiple: int):
    """ids [b, P] with each prompt flush right, and start [b], the slot of each prompt's first token. P is a multiple
    of ``multiple`` (the bucket, and what the attention kernel needs) and, above one attention block, a multiple of it
    too (the blockwise kernel's requirement)."""
    width = padded_width(max(len(p) for p in prompts), block, multiple)
    ids = np.full((len(prompts), width), pad_id, np.int32)
    start = np.asarray([width - len(p) for p in prompts], np.int32)
    for row, (p, s) in enumerate(zip(prompts, start)):
        ids[row, s:] = p
    return ids, start


class StaticGraph:
    """A GraphDef as a jit static argument. GraphDef's own hash fails on the (mutable, unhashable) ModelConfig inside
    it; equality still compares the whole structure, and the config's repr gives a hash consistent with it."""

    def __init__(self, graphdef, cfg):
        self.graphdef, self.cfg, self._hash = graphdef, cfg, hash(repr(cfg))

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        return isinstance(other, StaticGraph) and self.graphdef == other.graphdef


@functools.partial(jax.jit, static_argnames=("static", "budget", "greedy", "top_k", "use_top_p", "mesh"))
def generate_padded(params, ids, start, eos, limit, pad_id, temperature, top_p, key, *, static: StaticGraph,
                     budget: int, greedy: bool, top_k: int, use_top_p: bool, mesh):
    """Left-padded ids [b, P] -> (tokens [b, budget], lengths [b], steps taken). tokens[:, i] is the i-th new token,
    pad_id once a row has finished; lengths counts each row's tokens before its first EOS."""
    with activation_mesh(mesh):
        model = cast_model(params, static)
        b, width = ids.shape
        logits, cache = prefill_cache(model, ids, start, budget)

        def pick(logits, i):
            if greedy:
                return sampling.greedy(logits)
            return sampling.sample_logits(logits, jax.random.fold_in(key, i), temperature, top_k,
                                          top_p if use_top_p else None)

        def record(out, lengths, done, i, tok):
            hit = jnp.isin(tok, eos)
            out = jax.lax.dynamic_update_slice(out, jnp.where(done, pad_id, tok)[:, None], (jnp.int32(0), i))
            return out, lengths + (~done & ~hit), done | hit

        tok = pick(logits, 0)
        out, lengths, done = record(jnp.full((b, budget), pad_id, jnp.int32), jnp.zeros(b, jnp.int32),
                                    jnp.zeros(b, bool), jnp.int32(0), tok)
        prompt_len = width - start
        cache_slots = jnp.arange(cache[0].shape[-2] if isinstance(cache[0], jax.Array) else cache[0][0].shape[-2])

        def cond(state):
            i, done = state[0], state[-1]
            return (i < limit) & ~jnp.all(done)

        def body(state):
            i, tok, cache, out, lengths, done = state
            slot = width + i - 1  # where the previous token goes; it sits at position prompt_len + i - 1
            mask = (cache_slots[None] >= start[:, None]) & (cache_slots[None] <= slot)
            logits, cache = decode_step(model, tok, prompt_len + i - 1, cache, slot, mask)
            tok = pick(logits, i)
            out, lengths, done = record(out, lengths, done, i, tok)
            return i + 1, tok, cache, out, lengths, done

        steps, _, _, out, lengths, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), tok, cache, out, lengths, done))
        return out, lengths, steps


def cast_model(params, static: StaticGraph) -> Llama:
    """The model with every float parameter in the compute dtype, cast once before a decode loop, so a step reads
    each weight once at its compute width (bf16 on accelerators: half the bytes of the float32 master copy)."""
    dt = compute_dtype(static.cfg.dtype)
    params = jax.tree.map(lambda p: p.astype(dt) if jnp.issubdtype(p.dtype, jnp.floating) else p, params)
    return nnx.merge(static.graphdef, params)


def prefill_cache(model: Llama, ids, start, budget: int):
    """Left-padded prompts [b, P] (row r's prompt from slot start[r]) -> (next-token logits [b, vocab], the
    head-major cache of :func:`_head_major` with ``budget`` free slots after the prompt)."""
    b, width = ids.shape
    slots = jnp.arange(width)
    real = slots[None] >= start[:, None]
    positions = jnp.where(real, slots - start[:, None], slots)  # padding counts on in its own segment 0
    logits, cache = model.prefill(ids, real.astype(jnp.int32), positions, init_cache(model.cfg, b, width))
    return logits, _head_major(cache, budget, model.cfg.scan_layers)


def _head_major(cache, budget: int, stacked: bool):
    """The prefill's KVCache ([layers, b, P, kv, hd] each) -> the decode loop's (k, v): [layers, b, kv, T, hd]
    each when ``stacked`` (scanned layers), else tuples of per-layer [b, kv, T, hd]; slots >= P are zero. T is
    P + budget, rounded up to a multiple of DECODE_CHUNK when longer than one chunk."""
    width = cache.k.shape[2]
    total = width + budget
    if total > DECODE_CHUNK:
        total = -(-total // DECODE_CHUNK) * DECODE_CHUNK

    def convert(x):
        x = jnp.pad(jnp.swapaxes(x, 2, 3), ((0, 0), (0, 0), (0, 0), (0, total - width), (0, 0)))
        if stacked:
            return constrain(x, ("layers", *_LAYER_CACHE_AXES))
        return tuple(constrain(x[layer], _LAYER_CACHE_AXES) for layer in range(x.shape[0]))

    return convert(cache.k), convert(cache.v)


def _attend(q, k_cache, v_cache, layer, valid, slot):
    """One query per row against the cache slots written so far: q [b, 1, heads, hd] -> [b, kv, group, hd] (float32).

    The slots are read in chunks of DECODE_CHUNK and a chunk that starts after ``slot`` is skipped (lax.cond), so a
    step reads the keys and values it attends to rather than the whole budget; chunks are merged with an online
    softmax as in the training kernels. ``layer`` None: the caches are this layer's [b, kv, slots, hd]; else the
    stacked [layers, ...] ones, and only this layer's chunk is read from them."""
    b, _, h, d = q.shape
    slots = k_cache.shape[-2]
    kv = k_cache.shape[-3]
    qg = q.reshape(b, kv, h // kv, d)  # head = kv_head * group + g, as in the training kernels
    size = min(DECODE_CHUNK, slots)

    def read(cache, start):
        if layer is None:
            return jax.lax.dynamic_slice_in_dim(cache, start, size, axis=2)
        at = (layer, jnp.int32(0), jnp.int32(0), jnp.asarray(start, jnp.int32), jnp.int32(0))
        return jax.lax.dynamic_slice(cache, at, (1, *cache.shape[1:3], size, cache.shape[4]))[0]

    def chunk(carry, start):
        m, l, acc = carry
        k, v, ok = read(k_cache, start), read(v_cache, start), jax.lax.dynamic_slice_in_dim(valid, start, size, 3)
        scores = jnp.einsum("bkgd,bktd->bkgt", qg, k, preferred_element_type=jnp.float32) / float(d) ** 0.5
        m_new = jnp.maximum(m, jnp.where(ok, scores, _NEG).max(axis=-1))
        p = jnp.where(ok, jnp.exp(scores - m_new[..., None]), 0.0)
        corr = jnp.exp(m - m_new)
        acc = acc * corr[..., None] + jnp.einsum("bkgt,bktd->bkgd", p.astype(v.dtype), v,
                                                 preferred_element_type=jnp.float32)
        return m_new, l * corr + p.sum(axis=-1), acc

    carry = (jnp.full(qg.shape[:3], _NEG, jnp.float32), jnp.zeros(qg.shape[:3], jnp.float32),
             jnp.zeros(qg.shape, jnp.float32))
    for c in range(slots // size):  # slots is one chunk or a multiple of DECODE_CHUNK (see _head_major)
        if c == 0:  # every row's prompt starts in chunk 0
            carry = chunk(carry, 0)
        else:
            carry = jax.lax.cond(c * size <= slot, lambda cr, st=c * size: chunk(cr, st), lambda cr: cr, carry)
    m, l, acc = carry
    return acc / jnp.where(l > 0, l, 1.0)[..., None]  # a row that sees no slot gets zeros, not 0/0


def decode_step(model: Llama, tok, positions, cache, slot, mask):
    """One new token per row: tok [b] at ``positions`` [b], written to cache slot ``slot`` (one slot for every row,
    or [b]: each row its own, as the serving engine's rows of different ages need); ``mask`` [b, slots] holds
    the slots each row may see. Returns (next-token logits [b, vocab], cache). The same computation as
    a block's forward (its own projections, MLP and norms) on the head-major cache of :func:`_head_major`."""
    cfg = model.cfg
    dt = compute_dtype(cfg.dtype)
    x = constrain(jnp.take(model.embed[...], tok[:, None], axis=0).astype(dt), ("act_batch", "act_length", "act_embed"))
    cos, sin = rope_tables(positions[:, None],
                           inverse_frequencies(cfg.resolved_head_dim, cfg.rope_theta, cfg.rope_scaling))
    valid = mask[:, None, None, :]  # against scores [b, kv, group, slots]

    def block_step(block, x, k_cache, v_cache, layer=None):
        """``layer`` None: k_cache/v_cache are this layer's [b, kv, slots, hd]; else the stacked [layers, ...] ones,
        written at that layer (only the new slot moves) and read from it."""
        q, k, v = block.attn.project(block.input_norm(x), cos, sin, fused=False)  # q [b,1,heads,hd], k/v [b,1,kv,hd]
        k, v = jnp.swapaxes(k, 1, 2).astype(k_cache.dtype), jnp.swapaxes(v, 1, 2).astype(v_cache.dtype)
        at = (jnp.int32(0), jnp.int32(0), jnp.asarray(slot, jnp.int32), jnp.int32(0))
        if jnp.ndim(slot) == 1:  # every row writes its own slot
            rows = jnp.arange(k.shape[0])
            if layer is None:
                k_cache = constrain(k_cache.at[rows, :, slot, :].set(k[:, :, 0]), _LAYER_CACHE_AXES)
                v_cache = constrain(v_cache.at[rows, :, slot, :].set(v[:, :, 0]), _LAYER_CACHE_AXES)
            else:
                k_cache = k_cache.at[layer, rows, :, slot, :].set(k[:, :, 0])
                v_cache = v_cache.at[layer, rows, :, slot, :].set(v[:, :, 0])
        elif layer is None:
            k_cache = constrain(jax.lax.dynamic_update_slice(k_cache, k, at), _LAYER_CACHE_AXES)
            v_cache = constrain(jax.lax.dynamic_update_slice(v_cache, v, at), _LAYER_CACHE_AXES)
        else:
            k_cache = jax.lax.dynamic_update_slice(k_cache, k[None], (layer, *at))
            v_cache = jax.lax.dynamic_update_slice(v_cache, v[None], (layer, *at))
        out = _attend(q, k_cache, v_cache, layer, valid, jnp.max(slot))
        b, _, h, d = q.shape
        x = x + block.attn.output(out.reshape(b, 1, h, d).astype(q.dtype))
        x = x + block.mlp(block.post_attn_norm(x), fused=False)
        return constrain(x, ("act_batch", "act_length", "act_embed")), k_cache, v_cache

    k_all, v_all = cache
    if cfg.scan_layers:
        graphdef, stacked = nnx.split(model.layers)

        def body(carry, xs):
            (h, k_all, v_all), (params, layer) = carry, xs
            return block_step(nnx.merge(graphdef, params), h, k_all, v_all, layer), None

        (x, k_all, v_all), _ = jax.lax.scan(body, (x, k_all, v_all), (stacked, jnp.arange(cfg.num_layers)))
        k_all, v_all = (constrain(c, ("layers", *_LAYER_CACHE_AXES)) for c in (k_all, v_all))
    else:
        k_all, v_all = list(k_all), list(v_all)
        for layer, block in enumerate(model.layers):
            x, k_all[layer], v_all[layer] = block_step(block, x, k_all[layer], v_all[layer])
        k_all, v_all = tuple(k_all), tuple(v_all)
    x = model.final_norm(x[:, -1])
    logits = constrain(x @ model.head_kernel().astype(x.dtype), ("act_batch", "act_vocab"))
    return logits, (k_all, v_all)
