"""The Llama-family decoder in Flax NNX.

Llama 1/2/3, Mistral, Qwen2 and SmolLM2 are one architecture with flags (GQA, qkv bias, tied embeddings, RoPE theta
and Llama 3 scaling). Parameters are float32 with logical axis names in their ``logical_axes`` metadata; matmuls run in
``model.dtype``. Kernels keep heads as their own axis ([embed, heads, head_dim]) so tensor parallelism can split heads.
"""

from __future__ import annotations

from typing import NamedTuple

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


CACHE_AXES = ("layers", "act_batch", "act_length", "act_kv_heads", None)


class KVCache(NamedTuple):
    """Keys and values of every layer, each [layers, batch, max_len, kv_heads, head_dim] in the compute dtype.

    One stacked layout serves scanned and unrolled models alike: a scanned forward carries it through lax.scan and a
    layer writes its slots with one dynamic_update_slice (in place, since the cache is a loop carry rather than a
    scanned-over input that would be copied into a fresh output every step); an unrolled forward uses static layer
    indices. Sharded like the activations (batch over data/fsdp, kv heads over tensor) via CACHE_AXES.
    """

    k: jax.Array
    v: jax.Array

    def write(self, layer, index, k, v) -> "KVCache":
        at = (jnp.asarray(layer, jnp.int32), jnp.int32(0), jnp.asarray(index, jnp.int32), jnp.int32(0), jnp.int32(0))
        return KVCache(jax.lax.dynamic_update_slice(self.k, k[None].astype(self.k.dtype), at),
                       jax.lax.dynamic_update_slice(self.v, v[None].astype(self.v.dtype), at))

    def constrained(self) -> "KVCache":
        return KVCache(constrain(self.k, CACHE_AXES), constrain(self.v, CACHE_AXES))


def init_cache(cfg: ModelConfig, batch: int, max_len: int) -> KVCache:
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.resolved_head_dim)
    zeros = jnp.zeros(shape, compute_dtype(cfg.dtype))
    return KVCache(zeros, zeros).constrained()


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
        q, k, v = self.project(x, cos, sin)
        out = attention(q, k, v, segment_ids, positions, causal=True, impl=self.impl, block=self.block)
        return self.output(out)

    def project(self, x, cos, sin, fused: bool = True):
        """Rotated q [b, s, heads, hd] and k, v [b, s, kv_heads, hd]; shared by training and the KV-cache path.

        ``fused``: one matmul over q, k and v concatenated along heads (parameters stay separate). The concatenation
        copies the weights, which costs nothing next to a long sequence but doubles the weight traffic of a one-token
        decode step, so decoding passes False and runs three matmuls over the weights as they are."""
        dt = x.dtype
        h, kv = self.q_proj.shape[1], self.k_proj.shape[1]
        if fused:
            w = jnp.concatenate([self.q_proj[...], self.k_proj[...], self.v_proj[...]], axis=1).astype(dt)
            qkv = jnp.einsum("bsd,dhk->bshk", x, w)
            if self.qkv_bias:
                qkv = qkv + jnp.concatenate([self.q_bias[...], self.k_bias[...], self.v_bias[...]], axis=0).astype(dt)
            q, k, v = qkv[:, :, :h], qkv[:, :, h : h + kv], qkv[:, :, h + kv :]
        else:
            q, k, v = (jnp.einsum("bsd,dhk->bshk", x, w[...].astype(dt)) for w in (self.q_proj, self.k_proj, self.v_proj))
            if self.qkv_bias:
                q, k, v = (y + b[...].astype(dt) for y, b in zip((q, k, v), (self.q_bias, self.k_bias, self.v_bias)))
        q = constrain(apply_rope(q, cos, sin), ("act_batch", "act_length", "act_heads", None))
        k = constrain(apply_rope(k, cos, sin), ("act_batch", "act_length", "act_kv_heads", None))
        v = constrain(v, ("act_batch", "act_length", "act_kv_heads", None))
        return q, k, v

    def output(self, out):
        return jnp.einsum("bshk,hkd->bsd", out, self.o_proj[...].astype(out.dtype))


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, f, std = cfg.hidden_size, cfg.intermediate_size, cfg.init_std
        self.gate_proj = _param(rngs, (d, f), ("embed", "mlp"), std)
        self.up_proj = _param(rngs, (d, f), ("embed", "mlp"), std)
        self.down_proj = _param(rngs, (f, d), ("mlp", "embed"), std)

    def __call__(self, x, fused: bool = True):
        dt = x.dtype
        if fused:  # one matmul over gate and up (see Attention.project for when not)
            f = self.gate_proj.shape[1]
            gate_up = x @ jnp.concatenate([self.gate_proj[...], self.up_proj[...]], axis=1).astype(dt)
            gate, up = gate_up[..., :f], gate_up[..., f:]
        else:
            gate, up = x @ self.gate_proj[...].astype(dt), x @ self.up_proj[...].astype(dt)
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

    def prefill(self, x, cos, sin, cache: KVCache, layer, segment_ids, positions):
        """The block over a prompt, its keys/values also written to ``cache`` at (layer, slots 0..s): the training
        attention over the prompt itself, since the cache holds nothing else yet (sftjax.generate then decodes with
        its own head-major cache)."""
        q, k, v = self.attn.project(self.input_norm(x), cos, sin)
        cache = cache.write(layer, 0, k, v)
        out = attention(q, k, v, segment_ids, positions, causal=True, impl=self.attn.impl, block=self.attn.block)
        x = x + self.attn.output(out)
        x = x + self.mlp(self.post_attn_norm(x))
        return constrain(x, ("act_batch", "act_length", "act_embed")), cache


def _save_matmuls_and_attention(prim, *_, **__) -> bool:
    """Save every matmul output and the fused attention kernels' outputs (with their residuals); recompute the
    elementwise work (norms, rotary, SiLU), as XLA's fusion does by itself for unrolled layers but cannot inside a
    scan, whose residuals are fixed before XLA sees them. dots_saveable alone would rerun the attention forward."""
    return prim.name == "dot_general" or prim.name == "pallas_call" or "dot_product_attention" in prim.name


_REMAT_POLICIES = {
    "full": None,
    "minimal": _save_matmuls_and_attention,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _run_block(graphdef, params, x, cos, sin, segment_ids, positions):
    return nnx.merge(graphdef, params)(x, cos, sin, segment_ids, positions)


class Llama(nnx.Module):
    """Decoder-only transformer. ``layers`` is an nnx.List of blocks, or one Block with stacked [layers, ...] params
    when ``scan_layers`` (then the forward is a lax.scan over the stacked parameters). ``prefill`` is the
    KV-cache prompt pass that sftjax.generate starts from; it shares the parameters and blocks with training."""

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

    def prefill(self, input_ids, segment_ids, positions, cache: KVCache):
        """Run the prompts through the model, filling cache slots [0, seq); returns (last-slot logits [b, vocab],
        cache). Attention is the training kernel over the prompt itself (the cache holds nothing else yet), so the
        logits are exactly the ones ``__call__`` gives. Left-pad the prompts so the last slot is every row's last token.
        """
        cfg = self.cfg
        dt = compute_dtype(cfg.dtype)
        x = constrain(jnp.take(self.embed[...], input_ids, axis=0).astype(dt), ("act_batch", "act_length", "act_embed"))
        cos, sin = rope_tables(positions, inverse_frequencies(cfg.resolved_head_dim, cfg.rope_theta, cfg.rope_scaling))
        if cfg.scan_layers:
            graphdef, stacked = nnx.split(self.layers)

            def body(carry, xs):
                (h, cache), (params, layer) = carry, xs
                return nnx.merge(graphdef, params).prefill(h, cos, sin, cache, layer, segment_ids, positions), None

            (x, cache), _ = jax.lax.scan(body, (x, cache), (stacked, jnp.arange(cfg.num_layers)))
        else:
            for layer, block in enumerate(self.layers):
                x, cache = block.prefill(x, cos, sin, cache, layer, segment_ids, positions)
        x = self.final_norm(x[:, -1])  # only the newest slot predicts the next token
        logits = constrain(x @ self.head_kernel().astype(x.dtype), ("act_batch", "act_vocab"))
        return logits, cache.constrained()
