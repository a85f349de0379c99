"""Packed causal attention for NVIDIA GPUs: a fused flash kernel in Pallas (Triton backend), forward and backward.

Written by hand because no maintained kernel does all three things packed SFT rows need: JAX's Pallas
``ops.gpu.attention.mha`` takes segment ids but skips only blocks above the causal diagonal and has no grouped-query
heads (K/V must be repeated per query head); cuDNN's packed layout reads the wrong keys under grouped-query attention in
jax <= 0.11.0; tokamax is not a dependency we can install everywhere. This kernel:

- reads each key/value head once per group of query heads (GQA without repeating K/V);
- skips every tile that holds no (query, key) pair of a common document: a query tile starts its key loop at the first
  token of its first query's document, a key tile its query loop at the diagonal and stops after the last token of its
  last key's document. With a median document of ~350 tokens in 2048-token rows that is ~1/6 of the causal tiles.
- takes the mask from ``segment_ids`` (equal ids attend) and causality from token order, which equals order by
  ``positions`` inside a document because packed rows keep every document contiguous and in order (as the blockwise
  kernel also assumes). Every query sees at least its own key, so padding (segment 0) never divides by zero.

Layout is the model's own ([batch, seq, heads, head_dim]), so no transposes surround the kernel. ``interpret=True``
runs the same kernel on the CPU (how the tests cover it).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

_NEG = -1e30  # finite "minus infinity": a tile with no valid key for some query must not produce NaN
FORWARD_BLOCKS = (128, 64)  # (queries, keys) per tile in the forward kernel
BACKWARD_BLOCKS = (64, 64)  # the same for both backward kernels


def fit_block(block: int, seq: int) -> int:
    """The largest power of two <= ``block`` that divides ``seq`` (prompts are bucketed to multiples of 16)."""
    b = block
    while b > 16 and seq % b:
        b //= 2
    return b


def document_bounds(segment_ids):
    """starts, ends [b, s]: index of the first token of each token's document and one past its last token."""
    b, s = segment_ids.shape
    idx = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
    change = segment_ids[:, 1:] != segment_ids[:, :-1]
    first = jnp.concatenate([jnp.ones((b, 1), bool), change], axis=1)
    last = jnp.concatenate([change, jnp.ones((b, 1), bool)], axis=1)
    starts = lax.cummax(jnp.where(first, idx, 0), axis=1)
    ends = lax.cummin(jnp.where(last, idx + 1, s), axis=1, reverse=True)
    return starts, ends


def _key_range(i, bq, bk, n_k, starts, ends, causal):
    """Key tiles [lo, hi) that can hold a key for query tile i (starts/ends: this tile's rows)."""
    lo = lax.div(jnp.min(starts), bk)
    hi = lax.div(jnp.max(ends) + bk - 1, bk)
    if causal:
        hi = jnp.minimum(hi, lax.div((i + 1) * bq + bk - 1, bk))
    return lo, jnp.minimum(hi, n_k)


def _mask(seg_q, seg_k, q0, k0, bq, bk, causal):
    mask = seg_q[:, None] == seg_k[None, :]
    if causal:
        mask = mask & ((q0 + jnp.arange(bq))[:, None] >= (k0 + jnp.arange(bk))[None, :])
    return mask


def _forward_kernel(q_ref, k_ref, v_ref, seg_ref, start_ref, end_ref, o_ref, lse_ref, *, scale, bq, bk, causal):
    i = pl.program_id(0)
    n_k = k_ref.shape[0] // bk
    q = q_ref[...]
    seg_q = seg_ref[pl.ds(i * bq, bq)]
    lo, hi = _key_range(i, bq, bk, n_k, start_ref[...], end_ref[...], causal)

    def body(j, carry):
        acc, m, l = carry
        keys = pl.ds(j * bk, bk)
        k, v = k_ref[keys, :], v_ref[keys, :]
        mask = _mask(seg_q, seg_ref[keys], i * bq, j * bk, bq, bk, causal)
        s = jnp.where(mask, plgpu.dot(q, k.T) * scale, _NEG)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        p = jnp.where(mask, jnp.exp(s - m_new[:, None]), 0.0)
        corr = jnp.exp(m - m_new)
        acc = acc * corr[:, None] + plgpu.dot(p.astype(v.dtype), v)
        return acc, m_new, l * corr + jnp.sum(p, axis=1)

    d = q.shape[-1]
    init = (jnp.zeros((bq, d), jnp.float32), jnp.full((bq,), _NEG, jnp.float32), jnp.zeros((bq,), jnp.float32))
    acc, m, l = lax.fori_loop(lo, hi, body, init)
    o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
    lse_ref[...] = m + jnp.log(l)


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, seg_ref, start_ref, end_ref, dq_ref, *, scale, bq,
               bk, causal):
    i = pl.program_id(0)
    n_k = k_ref.shape[0] // bk
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]
    seg_q = seg_ref[pl.ds(i * bq, bq)]
    lo, hi = _key_range(i, bq, bk, n_k, start_ref[...], end_ref[...], causal)

    def body(j, dq):
        keys = pl.ds(j * bk, bk)
        k, v = k_ref[keys, :], v_ref[keys, :]
        mask = _mask(seg_q, seg_ref[keys], i * bq, j * bk, bq, bk, causal)
        p = jnp.where(mask, jnp.exp(plgpu.dot(q, k.T) * scale - lse[:, None]), 0.0)
        ds = p * (plgpu.dot(do, v.T) - delta[:, None])
        return dq + plgpu.dot(ds.astype(k.dtype), k)

    dq = lax.fori_loop(lo, hi, body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, seg_ref, start_ref, end_ref, dk_ref, dv_ref, *,
                scale, bq, bk, causal, group):
    j = pl.program_id(0)
    n_q = q_ref.shape[0] // bq
    k, v = k_ref[...], v_ref[...]
    seg_k = seg_ref[pl.ds(j * bk, bk)]
    lo = lax.div(j * bk, bq) if causal else lax.div(jnp.min(start_ref[...]), bq)
    hi = jnp.minimum(lax.div(jnp.max(end_ref[...]) + bq - 1, bq), n_q)

    def body(i, carry):
        dk, dv = carry
        queries = pl.ds(i * bq, bq)
        mask = _mask(seg_ref[queries], seg_k, i * bq, j * bk, bq, bk, causal)
        for g in range(group):  # the query heads that share this key/value head
            q, do = q_ref[queries, g, :], do_ref[queries, g, :]
            lse, delta = lse_ref[g, queries], delta_ref[g, queries]
            p = jnp.where(mask, jnp.exp(plgpu.dot(q, k.T) * scale - lse[:, None]), 0.0)
            dv = dv + plgpu.dot(p.astype(do.dtype).T, do)
            ds = p * (plgpu.dot(do, v.T) - delta[:, None])
            dk = dk + plgpu.dot(ds.astype(q.dtype).T, q)
        return dk, dv

    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = lax.fori_loop(lo, hi, body, (zeros, zeros))
    dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _params(d: int):
    return plgpu.CompilerParams(num_warps=4 if d <= 64 else 8, num_stages=2)


def _forward(q, k, v, segment_ids, causal, interpret, blocks):
    b, s, h, d = q.shape
    group = h // k.shape[2]
    bq, bk = fit_block(blocks[0], s), fit_block(blocks[1], s)
    starts, ends = document_bounds(segment_ids)
    kernel = functools.partial(_forward_kernel, scale=d ** -0.5, bq=bq, bk=bk, causal=causal)
    row = lambda i, bi, hi: (bi, 0)  # noqa: E731
    tile = lambda i, bi, hi: (bi, i)  # noqa: E731
    out, lse = pl.pallas_call(
        kernel,
        grid=(s // bq, b, h),
        in_specs=[
            pl.BlockSpec((None, bq, None, d), lambda i, bi, hi: (bi, i, hi, 0)),
            pl.BlockSpec((None, s, None, d), lambda i, bi, hi: (bi, 0, hi // group, 0)),
            pl.BlockSpec((None, s, None, d), lambda i, bi, hi: (bi, 0, hi // group, 0)),
            pl.BlockSpec((None, s), row),
            pl.BlockSpec((None, bq), tile),
            pl.BlockSpec((None, bq), tile),
        ],
        out_specs=[
            pl.BlockSpec((None, bq, None, d), lambda i, bi, hi: (bi, i, hi, 0)),
            pl.BlockSpec((None, None, bq), lambda i, bi, hi: (bi, hi, i)),
        ],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, s), jnp.float32)],
        compiler_params=_params(d),
        interpret=interpret,
        name="sftjax_packed_attention_fwd",
    )(q, k, v, segment_ids, starts, ends)
    return out, lse


def _backward(q, k, v, segment_ids, out, lse, dout, causal, interpret, blocks):
    b, s, h, d = q.shape
    kv = k.shape[2]
    group = h // kv
    bq, bk = fit_block(blocks[0], s), fit_block(blocks[1], s)
    starts, ends = document_bounds(segment_ids)
    # rowsum(dO * O): the softmax-Jacobian correction, [b, h, s]
    delta = jnp.einsum("bshd,bshd->bhs", dout.astype(jnp.float32), out.astype(jnp.float32))
    scale = d ** -0.5
    common = dict(compiler_params=_params(d), interpret=interpret)
    full_q = pl.BlockSpec((None, s, None, d), lambda i, bi, hi: (bi, 0, hi // group, 0))
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, scale=scale, bq=bq, bk=bk, causal=causal),
        grid=(s // bq, b, h),
        in_specs=[
            pl.BlockSpec((None, bq, None, d), lambda i, bi, hi: (bi, i, hi, 0)),
            full_q,
            full_q,
            pl.BlockSpec((None, bq, None, d), lambda i, bi, hi: (bi, i, hi, 0)),
            pl.BlockSpec((None, None, bq), lambda i, bi, hi: (bi, hi, i)),
            pl.BlockSpec((None, None, bq), lambda i, bi, hi: (bi, hi, i)),
            pl.BlockSpec((None, s), lambda i, bi, hi: (bi, 0)),
            pl.BlockSpec((None, bq), lambda i, bi, hi: (bi, i)),
            pl.BlockSpec((None, bq), lambda i, bi, hi: (bi, i)),
        ],
        out_specs=pl.BlockSpec((None, bq, None, d), lambda i, bi, hi: (bi, i, hi, 0)),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        name="sftjax_packed_attention_dq",
        **common,
    )(q, k, v, dout, lse, delta, segment_ids, starts, ends)
    heads_of = lambda j, bi, ki: (bi, 0, ki, 0)  # noqa: E731  (block of `group` query heads = key head ki)
    stats_of = lambda j, bi, ki: (bi, ki, 0)  # noqa: E731
    kv_tile = pl.BlockSpec((None, bk, None, d), lambda j, bi, ki: (bi, j, ki, 0))
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, scale=scale, bq=bq, bk=bk, causal=causal, group=group),
        grid=(s // bk, b, kv),
        in_specs=[
            pl.BlockSpec((None, s, group, d), heads_of),
            kv_tile,
            kv_tile,
            pl.BlockSpec((None, s, group, d), heads_of),
            pl.BlockSpec((None, group, s), stats_of),
            pl.BlockSpec((None, group, s), stats_of),
            pl.BlockSpec((None, s), lambda j, bi, ki: (bi, 0)),
            pl.BlockSpec((None, bk), lambda j, bi, ki: (bi, j)),
            pl.BlockSpec((None, bk), lambda j, bi, ki: (bi, j)),
        ],
        out_specs=[kv_tile, kv_tile],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        name="sftjax_packed_attention_dkv",
        **common,
    )(q, k, v, dout, lse, delta, segment_ids, starts, ends)
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def packed_attention(q, k, v, segment_ids, causal=True, interpret=False):
    """Attention of q [b, s, h, d] over k, v [b, s, kv, d] inside documents given by ``segment_ids`` [b, s]."""
    return _forward(q, k, v, segment_ids, causal, interpret, FORWARD_BLOCKS)[0]


def _vjp_forward(q, k, v, segment_ids, causal, interpret):
    out, lse = _forward(q, k, v, segment_ids, causal, interpret, FORWARD_BLOCKS)
    return out, (q, k, v, segment_ids, out, lse)


def _vjp_backward(causal, interpret, res, dout):
    q, k, v, segment_ids, out, lse = res
    dq, dk, dv = _backward(q, k, v, segment_ids, out, lse, dout, causal, interpret, BACKWARD_BLOCKS)
    return dq, dk, dv, None


packed_attention.defvjp(_vjp_forward, _vjp_backward)
