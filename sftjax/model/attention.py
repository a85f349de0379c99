"""Causal self-attention over packed rows: one entry point, several implementations.

Every implementation computes the same function. A query attends to a key when both carry the same ``segment_id``
and, if causal, the key's position is not after the query's. Packed rows keep each document contiguous and in order
(positions reset per document, padding is its own segment 0), which lets the blockwise kernel skip whole blocks.

Shapes: q [batch, seq, heads, head_dim]; k, v [batch, seq, kv_heads, head_dim]; segment_ids, positions [batch, seq].
Grouped-query attention is handled by viewing the query heads as [kv_heads, group].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_NEG = -1e30  # finite "minus infinity": fully-masked rows inside a block must not produce NaN


def attention(q, k, v, segment_ids, positions, *, causal: bool = True, impl: str = "auto", block: int = 512):
    if impl == "auto":
        impl = "sdpa" if jax.default_backend() == "gpu" else "blockwise"
    if impl == "dense":
        return dense_attention(q, k, v, segment_ids, positions, causal=causal)
    if impl == "blockwise":
        return blockwise_attention(q, k, v, segment_ids, positions, causal=causal, block=block)
    if impl == "sdpa":
        return sdpa_attention(q, k, v, segment_ids, positions, causal=causal)
    raise ValueError(f"unknown attention implementation {impl!r}; expected auto|dense|blockwise|sdpa")


def _mask(seg_q, pos_q, seg_k, pos_k, causal):
    """[batch, q, k] boolean mask."""
    mask = seg_q[:, :, None] == seg_k[:, None, :]
    if causal:
        mask = mask & (pos_k[:, None, :] <= pos_q[:, :, None])
    return mask


def _grouped(q, num_kv_heads):
    b, s, h, d = q.shape
    return q.reshape(b, s, num_kv_heads, h // num_kv_heads, d)


def dense_attention(q, k, v, segment_ids, positions, *, causal=True):
    """The reference: materializes the full [seq, seq] score matrix in float32."""
    b, s, h, d = q.shape
    kv_heads = k.shape[2]
    qg = _grouped(q, kv_heads)
    scores = jnp.einsum("bqkgd,btkd->bkgqt", qg, k, preferred_element_type=jnp.float32) / jnp.sqrt(d).astype(
        jnp.float32
    )
    mask = _mask(segment_ids, positions, segment_ids, positions, causal)[:, None, None]
    scores = jnp.where(mask, scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = jnp.where(mask, probs, 0.0)
    out = jnp.einsum("bkgqt,btkd->bqkgd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.reshape(b, s, h, d).astype(q.dtype)


def blockwise_attention(q, k, v, segment_ids, positions, *, causal=True, block=512):
    """Flash-style online softmax over [block x block] tiles, pure JAX (the CPU default).

    Tiles above the diagonal are skipped statically when causal; tiles whose queries and keys share no segment (a
    document boundary falls between them) are skipped at run time with lax.cond, so packed rows of short documents
    cost far less than seq^2. The diagonal tile always holds each query's own key, so no row is empty.
    """
    b, s, h, d = q.shape
    kv_heads = k.shape[2]
    bq = min(block, s)
    if s % bq:
        raise ValueError(f"sequence length {s} is not a multiple of the attention block {bq}")
    n = s // bq
    scale = 1.0 / jnp.sqrt(jnp.float32(d))
    qg = _grouped(q, kv_heads)
    outs = []
    for i in range(n):
        qi = qg[:, i * bq : (i + 1) * bq]
        seg_i = segment_ids[:, i * bq : (i + 1) * bq]
        pos_i = positions[:, i * bq : (i + 1) * bq]
        g = qi.shape[3]
        m = jnp.full((b, kv_heads, g, bq), _NEG, jnp.float32)
        l = jnp.zeros((b, kv_heads, g, bq), jnp.float32)
        acc = jnp.zeros((b, kv_heads, g, bq, d), jnp.float32)
        last = i + 1 if causal else n
        for j in range(last):
            kj = k[:, j * bq : (j + 1) * bq]
            vj = v[:, j * bq : (j + 1) * bq]
            mask = _mask(seg_i, pos_i, segment_ids[:, j * bq : (j + 1) * bq], positions[:, j * bq : (j + 1) * bq],
                         causal)

            def update(carry, qi=qi, kj=kj, vj=vj, mask=mask):
                m, l, acc = carry
                sc = jnp.einsum("bqkgd,btkd->bkgqt", qi, kj, preferred_element_type=jnp.float32) * scale
                valid = mask[:, None, None]
                sc = jnp.where(valid, sc, _NEG)
                m_new = jnp.maximum(m, sc.max(axis=-1))
                p = jnp.where(valid, jnp.exp(sc - m_new[..., None]), 0.0)
                corr = jnp.exp(m - m_new)
                l = l * corr + p.sum(axis=-1)
                acc = acc * corr[..., None] + jnp.einsum(
                    "bkgqt,btkd->bkgqd", p.astype(vj.dtype), vj, preferred_element_type=jnp.float32
                )
                return m_new, l, acc

            if j == i:
                m, l, acc = update((m, l, acc))
            else:
                m, l, acc = jax.lax.cond(mask.any(), update, lambda c: c, (m, l, acc))
        out = acc / l[..., None]  # [b, kv, g, bq, d]
        outs.append(jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(b, bq, h, d))
    return jnp.concatenate(outs, axis=1).astype(q.dtype)


def sdpa_attention(q, k, v, segment_ids, positions, *, causal=True):
    """jax.nn.dot_product_attention with the segment/causal mask; cuDNN on GPU, XLA elsewhere."""
    mask = _mask(segment_ids, positions, segment_ids, positions, causal)[:, None]
    impl = "cudnn" if jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16) else "xla"
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)
