"""Token cross-entropy that computes logits only where there is a loss to take.

In SFT a large share of tokens (prompts, padding) carries no loss, and the vocabulary projection is the single
largest matmul of a small model. Each row's loss tokens are moved to the front (a stable argsort of the mask), the
projection and cross-entropy run over fixed-size chunks of that order, and chunks holding no loss token in any row are
skipped with lax.cond. Shapes stay static; the result is exact (masked tokens contribute 0 either way). Written by
hand: no library offers a masked, chunked linear + cross-entropy in JAX.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from sftjax.parallel.rules import activation_mesh


def masked_token_losses(hidden, head, targets, loss_mask, source_ids, *, chunk: int = 256):
    """hidden [b, s, d], head [d, vocab] -> (losses, mask, source_ids), each [b, s] in loss-first order per row.

    Sums over the returned arrays equal sums over the original order; per-token positions are permuted.
    """
    b, s, _ = hidden.shape
    chunk = min(chunk, s)
    if s % chunk:
        chunk = s  # one chunk: still exact, just no skipping
    order = jnp.argsort(~loss_mask, axis=1, stable=True)  # loss tokens first, original order kept within each part
    take = lambda x: jnp.take_along_axis(x, order if x.ndim == 2 else order[..., None], axis=1)  # noqa: E731
    h, t, m, src = take(hidden), take(targets), take(loss_mask), take(source_ids)
    n_loss = loss_mask.sum(axis=1).max()
    head = head.astype(hidden.dtype)
    pieces = []
    for c in range(s // chunk):
        sl = slice(c * chunk, (c + 1) * chunk)

        def compute(h_c, t_c, m_c):
            logits = (h_c @ head).astype(jnp.float32)
            return jnp.where(m_c, optax.softmax_cross_entropy_with_integer_labels(logits, t_c), 0.0)

        if c == 0:
            pieces.append(compute(h[:, sl], t[:, sl], m[:, sl]))
        else:
            pieces.append(
                jax.lax.cond(
                    n_loss > c * chunk,
                    compute,
                    lambda h_c, t_c, m_c: jnp.zeros(m_c.shape, jnp.float32),
                    h[:, sl],
                    t[:, sl],
                    m[:, sl],
                )
            )
    return jnp.concatenate(pieces, axis=1), m, src


def token_losses(graphdef, params, mb, mesh: Mesh | None = None):
    """Per-token cross entropy in float32, zero where loss_mask is false: (losses, mask, source_ids), each [b, s]
    in a per-row permuted order (see masked_token_losses)."""
    with activation_mesh(mesh):
        model = nnx.merge(graphdef, params)
        hidden = model.hidden_states(mb["input_ids"], mb["segment_ids"], mb["positions"])
        return masked_token_losses(hidden, model.head_kernel(), mb["targets"], mb["loss_mask"], mb["source_ids"])
