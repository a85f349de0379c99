"""The jitted train step: a pure function (state, batch) -> (state, metrics).

Loss normalization is exact: token losses are summed over every micro-batch and device and divided once by the number
of loss tokens in the whole global batch, so any split into batch x grad_accum x devices gives the same loss and
gradient (not a mean of per-micro-batch means).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sftjax.data.batch import batch_shardings
from sftjax.model.loss import token_losses
from sftjax.parallel.rules import activation_mesh, constrain



def _sums(graphdef, params, mb, num_sources: int, mesh):
    tok, mask, sources = token_losses(graphdef, params, mb, mesh)
    onehot = jax.nn.one_hot(sources, num_sources, dtype=jnp.float32) * mask[..., None]
    return tok.sum(), (jnp.einsum("bs,bsn->n", tok, onehot), onehot.sum(axis=(0, 1)))


def split_micro_batches(batch: dict, grad_accum: int, mesh: Mesh | None) -> dict:
    """[B, ...] -> [grad_accum, B/grad_accum, ...], interleaved so every device keeps its own rows."""

    def split(x):
        y = x.reshape(x.shape[0] // grad_accum, grad_accum, *x.shape[1:]).swapaxes(0, 1)
        with activation_mesh(mesh):
            return constrain(y, (None, "act_batch") + (None,) * (y.ndim - 2))

    return jax.tree.map(split, batch)


def loss_and_grads(graphdef, params, batch, *, grad_accum: int, num_sources: int, mesh: Mesh | None = None):
    """Global-batch loss and gradient: sums over micro-batches (a lax.scan), one division by the loss-token count.

    Returns (loss, grads, aux) with aux = per-source loss sums and token counts and the loss-token count."""
    grad_fn = jax.value_and_grad(lambda p, mb: _sums(graphdef, p, mb, num_sources, mesh), has_aux=True)
    if grad_accum == 1:
        (loss_sum, (src_loss, src_count)), grads = grad_fn(params, batch)
    else:

        def body(carry, mb):
            g_acc, l_acc, s_acc, c_acc = carry
            (l, (s, c)), g = grad_fn(params, mb)
            return (jax.tree.map(jnp.add, g_acc, g), l_acc + l, s_acc + s, c_acc + c), None

        zeros = jnp.zeros((num_sources,), jnp.float32)
        init = (jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.float32), zeros, zeros)
        (grads, loss_sum, src_loss, src_count), _ = jax.lax.scan(body, init, split_micro_batches(batch, grad_accum, mesh))
    n_tokens = batch["loss_mask"].sum()
    denom = jnp.maximum(n_tokens, 1).astype(jnp.float32)
    grads = jax.tree.map(lambda g: g / denom, grads)
    return loss_sum / denom, grads, {"source_loss": src_loss, "source_tokens": src_count, "loss_tokens": n_tokens}


def make_train_step(graphdef, optimizer, schedule, *, grad_accum: int, num_sources: int, mesh: Mesh | None = None):
    def train_step(state, batch):
        params = state["params"]
        loss, grads, aux = loss_and_grads(graphdef, params, batch, grad_accum=grad_accum, num_sources=num_sources,
                                          mesh=mesh)
        src_count = aux["source_tokens"]
        updates, opt_state = optimizer.update(grads, state["opt_state"], params)
        new_state = {
            "params": optax.apply_updates(params, updates),
            "opt_state": opt_state,
            "step": state["step"] + 1,
        }
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "lr": schedule(state["step"]),
            "loss_tokens": aux["loss_tokens"],
            "source_loss": aux["source_loss"] / jnp.maximum(src_count, 1.0),
            "source_tokens": src_count,
        }
        return new_state, metrics

    return train_step


def jit_train_step(step_fn, state_shardings, mesh: Mesh):
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, batch_shardings(mesh)),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )
