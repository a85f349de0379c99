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


# The fused kernels (Pallas) run on the CPU in interpret mode: the very kernel code the GPU/TPU compile, executed by
# JAX op by op, so every index, mask and tile bound is checked here. Their compiled form is checked by AOT lowering.

def _kernel_impl(name):
    from sftjax.model.attention_pallas_gpu import packed_attention
    from sftjax.model.attention_splash import splash_attention

    return {"pallas_gpu": lambda q, k, v, seg: packed_attention(q, k, v, seg, True, True),
            "splash": lambda q, k, v, seg: splash_attention(q, k, v, seg, interpret=True)}[name]


@pytest.mark.parametrize("impl", ["pallas_gpu", "splash"])
@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (6, 2)])
def test_pallas_kernel_matches_dense_reference(impl, heads, kv_heads):
    """Forward and gradients of q, k, v on random packed rows (padding included) with grouped-query heads."""
    rng = np.random.default_rng(3)
    b, s, d = 2, 256, 16
    seg, pos = packed_layout(rng, b, s, docs_per_row=5)
    q, k, v = (jax.random.normal(jax.random.key(i), (b, s, h, d)) for i, h in enumerate((heads, kv_heads, kv_heads)))
    real = np.asarray(seg) > 0
    kernel = _kernel_impl(impl)

    out = np.asarray(kernel(q, k, v, seg))
    assert np.isfinite(out).all()  # padding rows included
    np.testing.assert_allclose(out[real], np.asarray(dense_attention(q, k, v, seg, pos))[real], atol=2e-5)

    w = jax.random.normal(jax.random.key(9), q.shape) * real[..., None, None]
    g_ref = jax.grad(lambda *a: (dense_attention(*a, seg, pos) * w).sum(), argnums=(0, 1, 2))(q, k, v)
    g_out = jax.grad(lambda *a: (kernel(*a, seg) * w).sum(), argnums=(0, 1, 2))(q, k, v)
    for name, a, r in zip("qkv", g_out, g_ref):
        assert np.isfinite(np.asarray(a)).all(), name
        np.testing.assert_allclose(np.asarray(a), np.asarray(r), atol=5e-5, err_msg=f"d{name}")


def test_pallas_gpu_kernel_skips_tiles_outside_documents():
    """The tile bounds come from document starts/ends: a row of one-token documents is exact too (every query tile's
    key loop is a single tile), and left padding (generation's prefill) is its own document."""
    from sftjax.model.attention_pallas_gpu import document_bounds

    seg = jnp.asarray([[0, 0, 0, 1, 1, 2, 3, 3], [1, 1, 1, 1, 2, 2, 0, 0]], jnp.int32)
    starts, ends = document_bounds(seg)
    assert starts.tolist() == [[0, 0, 0, 3, 3, 5, 6, 6], [0, 0, 0, 0, 4, 4, 6, 6]]
    assert ends.tolist() == [[3, 3, 3, 5, 5, 6, 8, 8], [4, 4, 4, 4, 6, 6, 8, 8]]

    b, s, h, d = 1, 64, 2, 16
    seg = jnp.arange(1, s + 1, dtype=jnp.int32)[None]
    pos = jnp.zeros((b, s), jnp.int32)
    q, k, v = (jax.random.normal(jax.random.key(i), (b, s, h, d)) for i in range(3))
    out = _kernel_impl("pallas_gpu")(q, k, v, seg)
    np.testing.assert_allclose(np.asarray(out), np.asarray(dense_attention(q, k, v, seg, pos)), atol=1e-6)


@pytest.mark.parametrize("impl,platform", [("pallas_gpu", "cuda"), ("splash", "tpu")])
def test_pallas_kernel_lowers_for_its_accelerator(impl, platform):
    """AOT lowering of forward+backward at the Llama-3.2-1B attention shape (32/8 heads, hd 64, bf16, seq 2048) and
    SmolLM2's (9/3 heads): the kernels turn into Triton / Mosaic custom calls without a GPU or TPU present."""
    from sftjax.model.attention_pallas_gpu import packed_attention
    from sftjax.model.attention_splash import splash_attention

    kernel = {"pallas_gpu": lambda q, k, v, s: packed_attention(q, k, v, s),
              "splash": lambda q, k, v, s: splash_attention(q, k, v, s)}[impl]
    for heads, kv_heads in [(32, 8), (9, 3)]:
        q = jax.ShapeDtypeStruct((2, 2048, heads, 64), jnp.bfloat16)
        kv = jax.ShapeDtypeStruct((2, 2048, kv_heads, 64), jnp.bfloat16)
        seg = jax.ShapeDtypeStruct((2, 2048), jnp.int32)
        step = jax.jit(jax.grad(lambda q, k, v, s: kernel(q, k, v, s).astype(jnp.float32).sum(), argnums=(0, 1, 2)))
        text = step.trace(q, kv, kv, seg).lower(lowering_platforms=(platform,)).as_text()
        custom_calls = text.count("__gpu$xla.gpu.triton") if platform == "cuda" else text.count("tpu_custom_call")
        assert custom_calls >= 3, (heads, custom_calls)  # forward, and the two backward kernels


def test_attention_the_backend_cannot_run_is_reported(monkeypatch):
    from sftjax.config import ConfigError
    from sftjax.model.attention import IMPLEMENTATIONS, resolve

    monkeypatch.delenv("SFTJAX_PALLAS_INTERPRET", raising=False)
    x = jnp.zeros((1, 128, 2, 16))
    seg = jnp.ones((1, 128), jnp.int32)
    for impl, backend in [("pallas_gpu", "GPU"), ("splash", "TPU")]:
        with pytest.raises(ConfigError, match=f"'model.attention': '{impl}' runs on {backend} only.*use auto"):
            attention(x, x, x, seg, jnp.arange(128)[None], impl=impl)
    with pytest.raises(ConfigError, match="'pallas_gpu' supports head_dim in .* got 80"):
        resolve("pallas_gpu", head_dim=80, seq_len=2048, backend="gpu")
    with pytest.raises(ConfigError, match="'splash' needs a sequence length that is a multiple of 128, got 200"):
        resolve("splash", head_dim=64, seq_len=200, backend="tpu")
    with pytest.raises(ConfigError, match="expected auto or one of"):
        resolve("flash", head_dim=64, seq_len=2048, backend="gpu")
    # auto never picks a path that cannot run
    for backend in ("cpu", "gpu", "tpu"):
        for seq in (16, 200, 256, 2048):
            picked = resolve("auto", head_dim=64, seq_len=seq, backend=backend)
            assert picked in IMPLEMENTATIONS
            assert resolve(picked, head_dim=64, seq_len=seq, backend=backend) == picked
    assert resolve("auto", head_dim=64, seq_len=2048, backend="tpu") == "splash"
    assert resolve("auto", head_dim=64, seq_len=200, backend="tpu") == "blockwise"


@pytest.mark.parametrize("impl", ["pallas_gpu", "splash"])
def test_sharded_equals_single_for_pallas_kernels(impl, monkeypatch, eight_devices):
    """Under a data x fsdp x tensor mesh the kernels run per shard (shard_map over rows and heads)."""
    from sftjax.parallel.mesh import make_mesh
    from sftjax.parallel.rules import activation_mesh

    monkeypatch.setenv("SFTJAX_PALLAS_INTERPRET", "1")
    rng = np.random.default_rng(5)
    b, s, d = 4, 128, 16
    seg, pos = packed_layout(rng, b, s, docs_per_row=3)
    q, k, v = (jax.random.normal(jax.random.key(i), (b, s, h, d)) for i, h in enumerate((4, 2, 2)))
    mesh = make_mesh((1, 2, 2), eight_devices[:4])

    def run(q, k, v):
        with activation_mesh(mesh):
            return attention(q, k, v, seg, pos, impl=impl)

    sharded = jax.jit(run)(q, k, v)
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(attention(q, k, v, seg, pos, impl=impl)), atol=1e-6)


@pytest.mark.parametrize("impl", ["pallas_gpu", "splash"])
def test_model_logits_with_pallas_kernel_equal_blockwise(impl, monkeypatch):
    """model.attention=<kernel> through the whole model (interpret mode): the same logits as the CPU default."""
    from flax import nnx

    from sftjax.config import ModelConfig
    from sftjax.model import Llama

    monkeypatch.setenv("SFTJAX_PALLAS_INTERPRET", "1")
    seg, pos = packed_layout(np.random.default_rng(7), 2, 128, docs_per_row=3)
    ids = jax.random.randint(jax.random.key(1), (2, 128), 0, 512)
    logits = {}
    for name in (impl, "blockwise"):
        model = Llama(ModelConfig(attention=name, attention_block=64, dtype="float32"), nnx.Rngs(0))
        logits[name] = np.asarray(model(ids, seg, pos))
    real = np.asarray(seg) > 0
    np.testing.assert_allclose(logits[impl][real], logits["blockwise"][real], atol=1e-5)
