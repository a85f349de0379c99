"""The train state {params, opt_state, step}: its layout and shardings with nothing allocated, and its sharded
creation. The model's own layout (abstract model, logical axes, parameter shardings) is sftjax.model.layout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sftjax.config import ModelConfig
from sftjax.model.layout import abstract_model, init_params, param_shardings


def opt_state_shardings(optimizer: optax.GradientTransformation, abstract_params: dict, p_shardings: dict, mesh: Mesh):
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
    replicated = NamedSharding(mesh, PartitionSpec())
    return optax.tree_map_params(
        optimizer,
        lambda _, sharding: sharding,
        abstract_opt,
        p_shardings,
        transform_non_params=lambda _: replicated,
    )


def train_state_layout(cfg: ModelConfig, optimizer, mesh: Mesh):
    """(graphdef, abstract state, shardings) of {params, opt_state, step}, with nothing allocated: what a
    checkpoint restore or an HF import fills in."""
    graphdef, abstract = abstract_model(cfg)
    p_shard = param_shardings(abstract, mesh)
    abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(abstract))
    o_shard = opt_state_shardings(optimizer, abstract_params, p_shard, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    shardings = {"params": p_shard, "opt_state": o_shard, "step": replicated}
    abstract_state = {"params": abstract_params, "opt_state": jax.eval_shape(optimizer.init, abstract_params),
                      "step": jax.ShapeDtypeStruct((), jnp.int32)}
    return graphdef, abstract_state, shardings


def init_train_state(cfg: ModelConfig, optimizer, mesh: Mesh, seed: int, params: dict | None = None, step: int = 0):
    """Returns (graphdef, state, state_shardings); state = {params, opt_state, step}. ``params`` (already sharded)
    replaces the random init, e.g. weights imported from Hugging Face; the optimizer state always starts fresh."""
    graphdef, _, shardings = train_state_layout(cfg, optimizer, mesh)
    if params is None:
        params = init_params(cfg, seed, shardings["params"])
    opt_state = jax.jit(optimizer.init, out_shardings=shardings["opt_state"])(params)
    state = {"params": params, "opt_state": opt_state, "step": step_array(step, shardings["step"])}
    return graphdef, state, shardings


def step_array(step: int, sharding) -> jax.Array:
    return jax.device_put(jnp.asarray(step, jnp.int32), sharding)
