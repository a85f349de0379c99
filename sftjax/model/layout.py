"""Model layout: the abstract model (shapes only), each parameter's logical axes, the parameter shardings they give
on a mesh, and sharded initialization. Training, checkpoint restore, the HF import and inference all build a model
through these, so the sharding of a parameter is decided once.

The model is built abstractly first (nnx.eval_shape), its logical axis metadata turned into NamedShardings through the
rules table (sftjax.parallel.rules), and then materialized by a jit with those out_shardings, so no host ever holds
the whole model.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from sftjax.config import ModelConfig
from sftjax.model.llama import Llama
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
