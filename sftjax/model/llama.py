"""The Llama-family decoder in Flax NNX.

Llama 1/2/3, Mistral, Qwen2 and SmolLM2 are one architecture with flags (GQA, qkv bias, tied embeddings, RoPE theta
and Llama 3 scaling). Parameters are float32 with logical axis names in their ``logical_axes`` metadata; matmuls run in
``model.dtype``. Kernels keep heads as their own axis ([embed, heads, head_dim]) so tensor parallelism can split heads.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
from flax import nnx

from sftjax.config import ModelConfig
from sftjax.model.attention import attention
from sftjax.model.rope import apply_rope, inverse_frequencies, rope_tables
from sftjax.parallel.rules import constrain


def _param(rngs: nnx.Rngs, shape, axes, std):
    return nnx.Param(jax.random.normal(rngs.params(), shape, jnp.float32) * std, logical_axes=axes)


def compute_dtype(name: str):
    if name == "auto":
        return jnp.dtype(jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16)
    return jnp.dtype(name)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), logical_axes=("norm",))
        self.eps = eps

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return y.astype(x.dtype) * self.scale[...].astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, h, kv, hd, std = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim, cfg.init_std
        self.q_proj = _param(rngs, (d, h, hd), ("embed", "heads", "head_dim"), std)
        self.k_proj = _param(rngs, (d, kv, hd), ("embed", "kv_heads", "head_dim"), std)
        self.v_proj = _param(rngs, (d, kv, hd), ("embed", "kv_heads", "head_dim"), std)
        self.o_proj = _param(rngs, (h, hd, d), ("heads", "head_dim", "embed"), std)
        if cfg.qkv_bias:
            self.q_bias = nnx.Param(jnp.zeros((h, hd), jnp.float32), logical_axes=("heads", "head_dim"))
            self.k_bias = nnx.Param(jnp.zeros((kv, hd), jnp.float32), logical_axes=("kv_heads", "head_dim"))
            self.v_bias = nnx.Param(jnp.zeros((kv, hd), jnp.float32), logical_axes=("kv_heads", "head_dim"))
        self.qkv_bias = cfg.qkv_bias
        self.impl = cfg.attention
        self.block = cfg.attention_block

    def __call__(self, x, cos, sin, segment_ids, positions):
        dt = x.dtype
        h, kv = self.q_proj.shape[1], self.k_proj.shape[1]
        # One matmul for q, k and v (concatenated along heads at compute time; parameters stay separate).
        w = jnp.concatenate([self.q_proj[...], self.k_proj[...], self.v_proj[...]], axis=1).astype(dt)
        qkv = jnp.einsum("bsd,dhk->bshk", x, w)
        if self.qkv_bias:
            qkv = qkv + jnp.concatenate([self.q_bias[...], self.k_bias[...], self.v_bias[...]], axis=0).astype(dt)
        q, k, v = qkv[:, :, :h], qkv[:, :, h : h + kv], qkv[:, :, h + kv :]
        q = constrain(apply_rope(q, cos, sin), ("act_batch", "act_length", "act_heads", None))
        k = constrain(apply_rope(k, cos, sin), ("act_batch", "act_length", "act_kv_heads", None))
        v = constrain(v, ("act_batch", "act_length", "act_kv_heads", None))
        out = attention(q, k, v, segment_ids, positions, causal=True, impl=self.impl, block=self.block)
        return jnp.einsum("bshk,hkd->bsd", out, self.o_proj[...].astype(dt))


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, f, std = cfg.hidden_size, cfg.intermediate_size, cfg.init_std
        self.gate_proj = _param(rngs, (d, f), ("embed", "mlp"), std)
        self.up_proj = _param(rngs, (d, f), ("embed", "mlp"), std)
        self.down_proj = _param(rngs, (f, d), ("mlp", "embed"), std)

    def __call__(self, x):
        dt = x.dtype
        f = self.gate_proj.shape[1]
        gate_up = x @ jnp.concatenate([self.gate_proj[...], self.up_proj[...]], axis=1).astype(dt)  # one matmul
        gate, up = gate_up[..., :f], gate_up[..., f:]
        hidden = constrain(jax.nn.silu(gate) * up, ("act_batch", "act_length", "act_mlp"))
        return hidden @ self.down_proj[...].astype(dt)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg, rngs)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x, cos, sin, segment_ids, positions):
        x = x + self.attn(self.input_norm(x), cos, sin, segment_ids, positions)
        x = x + self.mlp(self.post_attn_norm(x))
        return constrain(x, ("act_batch", "act_length", "act_embed"))


_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _run_block(graphdef, params, x, cos, sin, segment_ids, positions):
    return nnx.merge(graphdef, params)(x, cos, sin, segment_ids, positions)


class Llama(nnx.Module):
    """Decoder-only transformer. ``layers`` is an nnx.List of blocks, or one Block with stacked [layers, ...] params
    when ``scan_layers`` (then the forward is a lax.scan over the stacked parameters)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), cfg.init_std)
        blocks = [Block(cfg, rngs) for _ in range(cfg.num_layers)]
        if cfg.scan_layers:
            graphdef, first = nnx.split(blocks[0])
            states = [first] + [nnx.split(b)[1] for b in blocks[1:]]
            stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
            self.layers = nnx.merge(graphdef, stacked)
        else:
            self.layers = nnx.List(blocks)
        self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if not cfg.tie_embeddings:
            self.lm_head = _param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), cfg.init_std)

    def hidden_states(self, input_ids, segment_ids, positions):
        cfg = self.cfg
        dt = compute_dtype(cfg.dtype)
        x = jnp.take(self.embed[...], input_ids, axis=0).astype(dt)
        x = constrain(x, ("act_batch", "act_length", "act_embed"))
        cos, sin = rope_tables(positions, inverse_frequencies(cfg.resolved_head_dim, cfg.rope_theta, cfg.rope_scaling))
        run = _run_block
        if cfg.remat != "none":
            run = jax.checkpoint(_run_block, policy=_REMAT_POLICIES[cfg.remat], static_argnums=(0,))
        if cfg.scan_layers:
            graphdef, stacked = nnx.split(self.layers)

            def body(h, params):
                return run(graphdef, params, h, cos, sin, segment_ids, positions), None

            x, _ = jax.lax.scan(body, x, stacked)
        else:
            for block in self.layers:
                graphdef, params = nnx.split(block)
                x = run(graphdef, params, x, cos, sin, segment_ids, positions)
        return self.final_norm(x)

    def head_kernel(self):
        """The output projection [hidden, vocab] (the transposed embedding when tied)."""
        return self.embed[...].T if self.cfg.tie_embeddings else self.lm_head[...]

    def __call__(self, input_ids, segment_ids, positions):
        """Logits [batch, seq, vocab] in the compute dtype."""
        x = self.hidden_states(input_ids, segment_ids, positions)
        logits = x @ self.head_kernel().astype(x.dtype)
        return constrain(logits, ("act_batch", "act_length", "act_vocab"))
