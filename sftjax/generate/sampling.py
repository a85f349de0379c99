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


def nucleus(logits, ordered, top_p):
    """``logits`` [b, vocab] with every token outside the smallest set holding ``top_p`` of the mass dropped to -inf;
    ``ordered``: the same logits sorted in descending order; ``top_p``: a scalar or one value per row."""
    probs = jax.nn.softmax(ordered, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # keep a token while the mass above it is below top_p
    kept = jnp.sum(mass_before < jnp.reshape(top_p, (-1, 1)), axis=-1, keepdims=True)  # >= 1: the top token
    cutoff = jnp.take_along_axis(ordered, kept - 1, axis=-1)
    return jnp.where(logits >= cutoff, logits, -jnp.inf)


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
        logits = nucleus(logits, jnp.sort(logits, axis=-1)[:, ::-1], top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def sample_rows(logits, seeds, steps, temperature, top_k, top_p):
    """[b, vocab] -> [b] int32 with each row's own sampling parameters; temperature 0 is the argmax. The key of row r
    is fold_in(key(seeds[r]), steps[r]): a request's draws do not depend on its neighbours."""
    logits = logits.astype(jnp.float32)
    best = greedy(logits)

    def sampled(_):
        scaled = logits / jnp.maximum(temperature, 1e-6)[:, None]
        ordered = jnp.sort(scaled, axis=-1)[:, ::-1]
        vocab = scaled.shape[-1]
        kth = jnp.take_along_axis(ordered, jnp.clip(top_k - 1, 0, vocab - 1)[:, None], axis=-1)
        scaled = jnp.where((top_k[:, None] <= 0) | (scaled >= kth), scaled, -jnp.inf)
        ordered = jnp.where((top_k[:, None] <= 0) | (ordered >= kth), ordered, -jnp.inf)
        scaled = nucleus(scaled, ordered, top_p)
        keys = jax.vmap(lambda s, i: jax.random.fold_in(jax.random.key(s), i))(seeds, steps)
        drawn = jax.vmap(lambda k, lg: jax.random.categorical(k, lg))(keys, scaled).astype(jnp.int32)
        return jnp.where(temperature > 0, drawn, best)

    return jax.lax.cond(jnp.any(temperature > 0), sampled, lambda _: best, None)
