"""Next-token selection from logits: greedy, or temperature sampling narrowed by top-k and/or top-p (nucleus).

Filters run on the temperature-scaled logits and drop tokens to -inf, so ``jax.random.categorical`` only ever draws
from the kept set; the highest-scoring token is always kept, which is why top-k = 1 or a tiny top-p is greedy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def greedy(logits: jax.Array) -> jax.Array:
    """[b, vocab] -> [b] int32: the argmax (lowest id on exact ties, like torch)."""
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def sample_logits(logits: jax.Array, key: jax.Array, temperature, top_k: int = 0, top_p=None) -> jax.Array:
    """[b, vocab] -> [b] int32, one independent draw per row.

    ``temperature`` (> 0) and ``top_p`` may be traced scalars so that sweeping them does not recompile; ``top_k`` is a
    static int (0 = off) because it fixes a shape; ``top_p=None`` skips the sort that the nucleus filter needs.
    """
    logits = logits.astype(jnp.float32) / temperature
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits >= kth, logits, -jnp.inf)
    if top_p is not None:
        ordered = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs  # keep a token while the mass above it is below top_p
        kept = jnp.sum(mass_before < top_p, axis=-1, keepdims=True)  # >= 1: the top token has nothing above it
        cutoff = jnp.take_along_axis(ordered, kept - 1, axis=-1)
        logits = jnp.where(logits >= cutoff, logits, -jnp.inf)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
