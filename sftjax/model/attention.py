"""Causal self-attention over packed rows: one entry point, several implementations.

Every implementation computes the same function. A query attends to a key when both carry the same ``segment_id``
and, if causal, the key's position is not after the query's. Packed rows keep each document contiguous and in order
(positions reset per document, padding is its own segment 0), which lets the blockwise and fused kernels skip whole
blocks and take causality from token order.

Shapes: q [batch, seq, heads, head_dim]; k, v [batch, seq, kv_heads, head_dim]; segment_ids, positions [batch, seq].
Grouped-query attention is handled by viewing the query heads as [kv_heads, group].

Implementations (``model.attention``): ``dense`` (the reference), ``blockwise`` (pure JAX, any backend), ``sdpa``
(jax.nn.dot_product_attention with a dense mask; cuDNN on GPU), ``pallas_gpu`` (a fused Pallas/Triton kernel that takes
segment ids, see attention_pallas_gpu) and ``splash`` (TPU splash attention with SegmentIds). :func:`resolve` turns
``auto`` into one of them and refuses, before anything is compiled, one the backend or the shapes cannot run.
``SFTJAX_PALLAS_INTERPRET=1`` runs the Pallas kernels in interpret mode on any backend (slow; for tests and debugging).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from sftjax.config.base import ConfigError
from sftjax.parallel.rules import active_mesh, spec_for

_NEG = -1e30  # finite "minus infinity": fully-masked rows inside a block must not produce NaN

IMPLEMENTATIONS = ("dense", "blockwise", "sdpa", "pallas_gpu", "splash")
_NEEDS_BACKEND = {"pallas_gpu": "gpu", "splash": "tpu"}
_PALLAS_HEAD_DIMS = (16, 32, 64, 128, 256)  # the fused GPU kernel's Triton tiles need power-of-two sizes >= 16


def pallas_interpret() -> bool:
    return os.environ.get("SFTJAX_PALLAS_INTERPRET", "") not in ("", "0")


def sequence_multiple(impl: str) -> int:
    """What every sequence length (training rows, prompt buckets) must be a multiple of for ``impl``."""
    return {"splash": 128, "pallas_gpu": 16}.get(impl, 1)


def resolve(impl: str, *, head_dim: int, seq_len: int, backend: str | None = None) -> str:
    """The implementation that will run: ``auto`` picks one that can; an explicit one that cannot is a ConfigError
    naming ``model.attention`` and what would work."""
    backend = backend or jax.default_backend()
    if impl == "auto":
        if backend == "tpu" and seq_len % 128 == 0:
            return "splash"
        # GPU: sdpa (cuDNN) stays the default until pallas_gpu is measured on a GPU (docs/performance.md).
        return "sdpa" if backend == "gpu" else "blockwise"
    if impl not in IMPLEMENTATIONS:
        raise ConfigError(f"config key 'model.attention': expected auto or one of {IMPLEMENTATIONS}, got {impl!r}")
    need = _NEEDS_BACKEND.get(impl)
    if need and backend != need and not pallas_interpret():
        raise ConfigError(
            f"config key 'model.attention': {impl!r} runs on {need.upper()} only and this backend is {backend!r}; "
            f"use auto (here: {resolve('auto', head_dim=head_dim, seq_len=seq_len, backend=backend)}), blockwise or "
            f"sdpa (or set SFTJAX_PALLAS_INTERPRET=1 to run the kernel in interpret mode, slowly)")
    multiple = sequence_multiple(impl)
    if seq_len % multiple:
        raise ConfigError(f"config key 'model.attention': {impl!r} needs a sequence length that is a multiple of "
                          f"{multiple}, got {seq_len}; use blockwise or sdpa, or change data.seq_len")
    if impl == "pallas_gpu" and head_dim not in _PALLAS_HEAD_DIMS:
        raise ConfigError(f"config key 'model.attention': 'pallas_gpu' supports head_dim in {_PALLAS_HEAD_DIMS}, "
                          f"got {head_dim}; use sdpa or blockwise")
    return impl


def attention(q, k, v, segment_ids, positions, *, causal: bool = True, impl: str = "auto", block: int = 256):
    impl = resolve(impl, head_dim=q.shape[-1], seq_len=q.shape[1])
    if impl == "dense":
        return dense_attention(q, k, v, segment_ids, positions, causal=causal)
    if impl == "blockwise":
        return blockwise_attention(q, k, v, segment_ids, positions, causal=causal, block=block)
    if impl == "sdpa":
        return sdpa_attention(q, k, v, segment_ids, positions, causal=causal)
    if impl == "pallas_gpu":
        from sftjax.model.attention_pallas_gpu import packed_attention

        kernel = functools.partial(packed_attention, causal=causal, interpret=pallas_interpret())
    else:
        from sftjax.model.attention_splash import splash_attention

        kernel = functools.partial(splash_attention, causal=causal, interpret=pallas_interpret())
    return _per_shard(kernel, q, k, v, segment_ids)


def _per_shard(kernel, q, k, v, segment_ids):
    """Run a Pallas kernel (an opaque custom call to the partitioner) on each device's rows and heads."""
    mesh = active_mesh()
    if mesh is None or mesh.size == 1:
        return kernel(q, k, v, segment_ids)
    batch = spec_for(("act_batch",), q.shape[:1], mesh)[0]
    heads = spec_for(("act_heads",), q.shape[2:3], mesh)[0]
    kv_heads = spec_for(("act_kv_heads",), k.shape[2:3], mesh)[0]
    if heads != kv_heads:  # split both or neither, so that every shard holds whole query groups
        heads = kv_heads = None
    qs, ks = PartitionSpec(batch, None, heads, None), PartitionSpec(batch, None, kv_heads, None)
    return jax.shard_map(kernel, mesh=mesh, in_specs=(qs, ks, ks, PartitionSpec(batch, None)), out_specs=qs,
                         check_vma=False)(q, k, v, segment_ids)


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


def blockwise_attention(q, k, v, segment_ids, positions, *, causal=True, block=256):
    """Flash-style attention over [block x block] tiles in pure JAX (the CPU default), with a hand-written backward.

    Tiles above the diagonal are skipped statically when causal; tiles whose queries and keys share no segment (a
    document boundary falls between them) are skipped at run time with lax.cond, so packed rows of short documents
    cost far less than seq^2. The forward keeps only the output and the per-row log-sum-exp; the backward recomputes
    each tile's probabilities (FlashAttention-2's recipe), which on CPU is both smaller and faster than letting
    autodiff store every tile. The diagonal tile always holds each query's own key, so no row is empty.
    """
    s = q.shape[1]
    bq = min(block, s)
    if s % bq:
        raise ValueError(f"sequence length {s} is not a multiple of the attention block {bq}")
    return _flash(q, k, v, segment_ids, positions, causal, bq)


def _head_major(x, kv_heads):
    """[b, s, h, d] -> [b, kv, g, s, d]: each tile is then a contiguous slice and tile matmuls need no transposes."""
    return jnp.transpose(_grouped(x, kv_heads), (0, 2, 3, 1, 4))


def _from_head_major(x):
    """[b, kv, g, s, d] -> [b, s, kv * g, d]."""
    b, kv, g, s, d = x.shape
    return jnp.transpose(x, (0, 3, 1, 2, 4)).reshape(b, s, kv * g, d)


def _rows(x, i, bq):
    """Tile i along the sequence axis of a [b, s, ...] array."""
    return x[:, i * bq : (i + 1) * bq]


def _tile(x, i, bq):
    """Tile i along the sequence axis of a head-major [..., s, d] array."""
    return x[..., i * bq : (i + 1) * bq, :]


def _scores(qi, kj, scale):
    return jnp.einsum("bkgqd,bktd->bkgqt", qi, kj, preferred_element_type=jnp.float32) * scale


def _flash_forward(q, k, v, segment_ids, positions, causal, bq):
    b, s, h, d = q.shape
    kv_heads = k.shape[2]
    g = h // kv_heads
    scale = 1.0 / float(d) ** 0.5
    n = s // bq
    qg = _head_major(q, kv_heads)  # [b, kv, g, s, d]
    kh, vh = jnp.transpose(k, (0, 2, 1, 3)), jnp.transpose(v, (0, 2, 1, 3))  # [b, kv, s, d]
    outs, lses = [], []
    for i in range(n):
        qi, seg_i, pos_i = _tile(qg, i, bq), _rows(segment_ids, i, bq), _rows(positions, i, bq)
        m = jnp.full((b, kv_heads, g, bq), _NEG, jnp.float32)
        l = jnp.zeros((b, kv_heads, g, bq), jnp.float32)
        acc = jnp.zeros((b, kv_heads, g, bq, d), jnp.float32)
        for j in range(i + 1 if causal else n):
            kj, vj = _tile(kh, j, bq), _tile(vh, j, bq)
            mask = _mask(seg_i, pos_i, _rows(segment_ids, j, bq), _rows(positions, j, bq), causal)

            def update(carry, qi=qi, kj=kj, vj=vj, mask=mask):
                m, l, acc = carry
                sc = _scores(qi, kj, scale)
                valid = mask[:, None, None]
                m_new = jnp.maximum(m, jnp.where(valid, sc, _NEG).max(axis=-1))
                p = jnp.where(valid, jnp.exp(sc - m_new[..., None]), 0.0)
                corr = jnp.exp(m - m_new)
                acc = acc * corr[..., None] + jnp.einsum(
                    "bkgqt,bktd->bkgqd", p.astype(vj.dtype), vj, preferred_element_type=jnp.float32
                )
                return m_new, l * corr + p.sum(axis=-1), acc

            if j == i:
                m, l, acc = update((m, l, acc))
            else:
                m, l, acc = jax.lax.cond(mask.any(), update, lambda c: c, (m, l, acc))
        outs.append(acc / l[..., None])
        lses.append(m + jnp.log(l))  # [b, kv, g, bq]
    out = _from_head_major(jnp.concatenate(outs, axis=3)).astype(q.dtype)
    return out, jnp.concatenate(lses, axis=-1)


def _flash_backward(causal, bq, res, dout):
    q, k, v, segment_ids, positions, out, lse = res
    b, s, h, d = q.shape
    kv_heads = k.shape[2]
    g = h // kv_heads
    scale = 1.0 / float(d) ** 0.5
    n = s // bq
    qg, dog = _head_major(q, kv_heads), _head_major(dout, kv_heads).astype(jnp.float32)
    kh, vh = jnp.transpose(k, (0, 2, 1, 3)), jnp.transpose(v, (0, 2, 1, 3))
    # delta = rowsum(dO * O): the softmax-Jacobian correction term, [b, kv, g, s]
    delta = jnp.sum(dog * _head_major(out, kv_heads).astype(jnp.float32), axis=-1)
    dq = [jnp.zeros((b, kv_heads, g, bq, d), jnp.float32) for _ in range(n)]
    dk = [jnp.zeros((b, kv_heads, bq, d), jnp.float32) for _ in range(n)]
    dv = [jnp.zeros((b, kv_heads, bq, d), jnp.float32) for _ in range(n)]
    for i in range(n):
        qi, doi, seg_i, pos_i = _tile(qg, i, bq), _tile(dog, i, bq), _rows(segment_ids, i, bq), _rows(positions, i, bq)
        lse_i = lse[..., i * bq : (i + 1) * bq]
        delta_i = delta[..., i * bq : (i + 1) * bq]
        for j in range(i + 1 if causal else n):
            kj, vj = _tile(kh, j, bq), _tile(vh, j, bq)
            mask = _mask(seg_i, pos_i, _rows(segment_ids, j, bq), _rows(positions, j, bq), causal)

            def grads(carry, qi=qi, doi=doi, kj=kj, vj=vj, mask=mask, lse_i=lse_i, delta_i=delta_i):
                dq_i, dk_j, dv_j = carry
                sc = _scores(qi, kj, scale)
                p = jnp.where(mask[:, None, None], jnp.exp(sc - lse_i[..., None]), 0.0)
                dv_j = dv_j + jnp.einsum("bkgqt,bkgqd->bktd", p, doi, preferred_element_type=jnp.float32)
                dp = jnp.einsum("bkgqd,bktd->bkgqt", doi, vj, preferred_element_type=jnp.float32)
                ds = p * (dp - delta_i[..., None]) * scale
                dq_i = dq_i + jnp.einsum("bkgqt,bktd->bkgqd", ds, kj, preferred_element_type=jnp.float32)
                dk_j = dk_j + jnp.einsum("bkgqt,bkgqd->bktd", ds, qi, preferred_element_type=jnp.float32)
                return dq_i, dk_j, dv_j

            carry = (dq[i], dk[j], dv[j])
            if j == i:
                carry = grads(carry)
            else:
                carry = jax.lax.cond(mask.any(), grads, lambda c: c, carry)
            dq[i], dk[j], dv[j] = carry
    dq = _from_head_major(jnp.concatenate(dq, axis=3)).astype(q.dtype)
    dk = jnp.transpose(jnp.concatenate(dk, axis=2), (0, 2, 1, 3)).astype(k.dtype)
    dv = jnp.transpose(jnp.concatenate(dv, axis=2), (0, 2, 1, 3)).astype(v.dtype)
    return dq, dk, dv, None, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _flash(q, k, v, segment_ids, positions, causal, bq):
    return _flash_forward(q, k, v, segment_ids, positions, causal, bq)[0]


def _flash_fwd_rule(q, k, v, segment_ids, positions, causal, bq):
    out, lse = _flash_forward(q, k, v, segment_ids, positions, causal, bq)
    return out, (q, k, v, segment_ids, positions, out, lse)


_flash.defvjp(_flash_fwd_rule, _flash_backward)


def sdpa_attention(q, k, v, segment_ids, positions, *, causal=True):
    """jax.nn.dot_product_attention with the segment/causal mask; cuDNN on GPU, XLA elsewhere."""
    mask = _mask(segment_ids, positions, segment_ids, positions, causal)[:, None]
    impl = "cudnn" if jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16) else "xla"
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)
