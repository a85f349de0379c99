"""Sharded creation of model parameters and optimizer state.

The model is built abstractly first (nnx.eval_shape), its logical axis metadata turned into NamedShardings through the
rules table, and then materialized by a jit with those out_shardings, so no host ever holds the whole model.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sftjax.config import ModelConfig
from sftjax.model import Llama
from sftjax.parallel.rules import spec_for


def abstract_model(cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
    return nnx.split(nnx.eval_shape(lambda: Llama(cfg, nnx.Rngs(0))))


def _nested_set(tree: dict, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def logical_axes(abstract_state: nnx.State) -> dict:
    """Pure nested dict (same keys as nnx.to_pure_dict) of each parameter's logical axes; scanned (stacked)
    parameters get a leading 'layers' axis."""
    out: dict = {}
    leaves = jax.tree_util.tree_flatten_with_path(abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
    for key_path, var in leaves:
        path = tuple(getattr(k, "key", getattr(k, "idx", k)) for k in key_path)
        axes = tuple(var.get_metadata().get("logical_axes") or ())
        ndim = len(var.get_value().shape)
        if len(axes) == ndim - 1:
            axes = ("layers",) + axes
        if len(axes) != ndim:
            axes = (None,) * ndim
        _nested_set(out, path, _Axes(axes))
    return out


class _Axes(tuple):
    """A tuple that jax.tree treats as a leaf (kept distinct from pytree tuples)."""


jax.tree_util.register_pytree_node(_Axes, lambda a: ((), tuple(a)), lambda aux, _: _Axes(aux))


def param_shardings(abstract_state: nnx.State, mesh: Mesh) -> dict:
    shapes = nnx.to_pure_dict(abstract_state)
    axes = logical_axes(abstract_state)
    return jax.tree.map(
        lambda s, a: NamedSharding(mesh, spec_for(tuple(a), s.shape, mesh)),
        shapes,
        axes,
        is_leaf=lambda x: isinstance(x, _Axes),
    )


def init_params(cfg: ModelConfig, seed: int, shardings: dict) -> dict:
    def create():
        return nnx.to_pure_dict(nnx.state(Llama(cfg, nnx.Rngs(seed))))

    return jax.jit(create, out_shardings=shardings)()


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
