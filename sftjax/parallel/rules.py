"""Logical axis names -> mesh axes, kept as data in one table.

Parameters and activations are annotated with logical names (``('embed', 'mlp')``); this table is the only place that
decides how those names map onto the (data, fsdp, tensor) mesh. A dimension whose size does not divide evenly by the
mesh axes it maps to is replicated instead (e.g. SmolLM2's 3 KV heads on tensor=2), and :func:`explain` reports it.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Mapping, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or tuple of axes, or None = replicated)
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # parameters
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    # activations
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_vocab", "tensor"),
)

_RULES = dict(LOGICAL_AXIS_RULES)


def shard_dims(logical: Sequence[str | None], shape: Sequence[int] | None = None,
               mesh_shape: Mapping[str, int] | None = None) -> list[tuple]:
    """The sharding rule, once: per dimension, (the mesh axes that shard it or None, and the axes its rule names
    when their size does not divide the dimension, else None). A mesh axis shards at most one dimension of an array;
    an undivided dimension is replicated. ``spec_for`` builds specs from this and ``sftjax-dryrun`` reports the
    undivided dimensions from it."""
    out: list[tuple] = []
    used: set[str] = set()
    for i, name in enumerate(logical):
        if name is None:
            out.append((None, None))
            continue
        if name not in _RULES:
            raise KeyError(f"logical axis {name!r} has no rule in sftjax.parallel.rules.LOGICAL_AXIS_RULES")
        axes = _RULES[name]
        axes_t = (axes,) if isinstance(axes, str) else tuple(axes or ())
        if not axes_t or any(a in used for a in axes_t):
            out.append((None, None))
        elif shape is not None and mesh_shape is not None and shape[i] % math.prod(mesh_shape[a] for a in axes_t):
            out.append((None, axes_t))
        else:
            used.update(axes_t)
            out.append((axes, None))
    return out


def spec_for(logical: Sequence[str | None], shape: Sequence[int] | None = None, mesh: Mesh | None = None) -> PartitionSpec:
    """PartitionSpec for logical names; with shape+mesh, uneven dimensions fall back to replication."""
    mesh_shape = dict(mesh.shape) if mesh is not None else None
    return PartitionSpec(*(axes for axes, _ in shard_dims(logical, shape, mesh_shape)))


# The mesh that activation constraints refer to; set by the train step builder, unset for plain model calls.
_ACTIVE_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("sftjax_active_mesh", default=None)


@contextlib.contextmanager
def activation_mesh(mesh: Mesh | None):
    token = _ACTIVE_MESH.set(mesh)
    try:
        yield
    finally:
        _ACTIVE_MESH.reset(token)


def active_mesh() -> Mesh | None:
    """The mesh set by :func:`activation_mesh` (None for plain model calls)."""
    return _ACTIVE_MESH.get()


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
    """Sharding constraint by logical names; a no-op outside :func:`activation_mesh`."""
    mesh = _ACTIVE_MESH.get()
    if mesh is None or mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec_for(logical, x.shape, mesh)))
