"""Every attention implementation against the dense reference, on packed rows with several documents."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sftjax.model.attention import attention, dense_attention


def packed_layout(rng, batch, seq, docs_per_row):
    seg = np.zeros((batch, seq), np.int32)
    pos = np.zeros((batch, seq), np.int32)
    for b in range(batch):
        cuts = np.sort(rng.choice(np.arange(1, seq - 8), docs_per_row - 1, replace=False))
        bounds = [0, *cuts, seq - rng.integers(0, 8)]  # a little padding at the end
        for d, (a, z) in enumerate(zip(bounds[:-1], bounds[1:]), 1):
            seg[b, a:z] = d
            pos[b, a:z] = np.arange(z - a)
        pos[b, bounds[-1]:] = np.arange(seq - bounds[-1])
    return jnp.asarray(seg), jnp.asarray(pos)


@pytest.mark.parametrize("impl,block", [("blockwise", 32), ("blockwise", 64), ("blockwise", 128), ("sdpa", 0)])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (6, 2)])
def test_attention_impl_matches_dense_reference(impl, block, heads, kv_heads):
    rng = np.random.default_rng(0)
    b, s, d = 2, 128, 16
    seg, pos = packed_layout(rng, b, s, docs_per_row=4)
    q, k, v = (jax.random.normal(jax.random.key(i), (b, s, h, d)) for i, h in enumerate((heads, kv_heads, kv_heads)))
    real = np.asarray(seg) > 0

    ref = dense_attention(q, k, v, seg, pos)
    out = attention(q, k, v, seg, pos, impl=impl, block=block)
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(ref)[real], atol=2e-5)

    # gradients through a loss on real tokens only
    w = jax.random.normal(jax.random.key(9), q.shape) * real[..., None, None]

    def loss(fn, q, k, v):
        return (fn(q, k, v) * w).sum()

    g_ref = jax.grad(lambda *a: loss(lambda q, k, v: dense_attention(q, k, v, seg, pos), *a), argnums=(0, 1, 2))(q, k, v)
    g_out = jax.grad(lambda *a: loss(lambda q, k, v: attention(q, k, v, seg, pos, impl=impl, block=block), *a),
                     argnums=(0, 1, 2))(q, k, v)
    for a, r in zip(g_out, g_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(r), atol=5e-5)


def test_attention_never_crosses_documents():
    """Changing one document's keys/values leaves every other document's outputs unchanged."""
    rng = np.random.default_rng(1)
    b, s, h, d = 1, 128, 2, 8
    seg, pos = packed_layout(rng, b, s, docs_per_row=3)
    q, k, v = (jax.random.normal(jax.random.key(i), (b, s, h, d)) for i in range(3))
    doc2 = np.asarray(seg) == 2
    k2 = jnp.where(doc2[..., None, None], k + 5.0, k)
    v2 = jnp.where(doc2[..., None, None], v - 3.0, v)
    for impl in ("dense", "blockwise", "sdpa"):
        a = attention(q, k, v, seg, pos, impl=impl, block=32)
        c = attention(q, k2, v2, seg, pos, impl=impl, block=32)
        others = ~doc2
        np.testing.assert_allclose(np.asarray(a)[others], np.asarray(c)[others], atol=1e-6)
        assert not np.allclose(np.asarray(a)[doc2], np.asarray(c)[doc2])


def test_blockwise_rejects_sequence_not_multiple_of_block():
    x = jnp.zeros((1, 96, 2, 8))
    seg = jnp.ones((1, 96), jnp.int32)
    with pytest.raises(ValueError, match="not a multiple of the attention block 64"):
        attention(x, x, x, seg, jnp.arange(96)[None], impl="blockwise", block=64)
