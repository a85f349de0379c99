"""Plan a run without running it: lower and compile the real train step on the current devices (for sftjax-dryrun,
fake CPU devices) from shapes alone, and report per-device memory and FLOPs.

Nothing is allocated: the train state is the abstract layout of :func:`sftjax.train.state.train_state_layout` and
the batch is a ``ShapeDtypeStruct`` per key of the batch contract, so a 33B model plans on a laptop. The jax backend
must already hold the target device count (``XLA_FLAGS=--xla_force_host_platform_device_count=N``), which the CLI
arranges before jax starts.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict

import jax
import numpy as np
from flax import nnx

from sftjax.config import Config, ConfigError, ModelConfig
from sftjax.data.batch import batch_shardings, batch_spec
from sftjax.model.layout import abstract_model, logical_axes
from sftjax.model.flops import matmul_params, param_count, train_flops
from sftjax.parallel.mesh import make_mesh
from sftjax.parallel.rules import MESH_AXES, shard_dims
from sftjax.train.optimizer import make_optimizer
from sftjax.train.state import train_state_layout
from sftjax.train.step import jit_train_step, make_train_step

GIB = 2**30
SCHEDULE_STEPS = 1000  # the learning-rate schedule's length changes no shape; any value compiles the same step

# logical parameter axis -> the config key that sets its size
_MODEL_KEYS = {
    "vocab": "model.vocab_size",
    "embed": "model.hidden_size",
    "mlp": "model.intermediate_size",
    "heads": "model.num_heads",
    "kv_heads": "model.num_kv_heads",
    "head_dim": "model.head_dim",
    "layers": "model.num_layers",
}


def _path_str(key_path) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in key_path)


def _undivided(cfg: ModelConfig, mesh_shape: dict[str, int]) -> list[tuple[tuple[str, ...], str]]:
    _, abstract = abstract_model(cfg)
    found: dict[tuple, list[str]] = defaultdict(list)

    def visit(key_path, leaf, axes):
        for name, dim, (_, undivided) in zip(tuple(axes), leaf.shape, shard_dims(tuple(axes), leaf.shape, mesh_shape)):
            if undivided:
                size = math.prod(mesh_shape[a] for a in undivided)
                found[(name, dim, undivided, size)].append(_path_str(key_path))

    jax.tree_util.tree_map_with_path(visit, nnx.to_pure_dict(abstract), logical_axes(abstract))
    out = []
    for (name, dim, mesh_axes, size), paths in found.items():
        where = paths[0] + (f" and {len(paths) - 1} more" if len(paths) > 1 else "")
        axes = "*".join(f"mesh.{a}" for a in mesh_axes)
        out.append((mesh_axes, f"{name}={dim} ({_MODEL_KEYS.get(name, 'model')}; {where}) is not divisible by "
                               f"{axes}={size}"))
    return out


def divisibility_problems(cfg: ModelConfig, mesh_shape: dict[str, int]) -> list[str]:
    """Every parameter dimension that its mesh axes (``LOGICAL_AXIS_RULES``) do not divide, one line per
    (dimension, mesh axes), e.g. ``heads=32 (model.num_heads; layers.0.attn.q_proj and 3 more) is not divisible by
    mesh.tensor=3``. sftjax-train would replicate such a dimension (``spec_for``); a plan names it instead."""
    return [line for _, line in _undivided(cfg, mesh_shape)]


def check_divisibility(cfg: ModelConfig, mesh_shape: dict[str, int]) -> None:
    """Raise a ConfigError (keyed by the first offending mesh axis) naming every dimension of the model that the
    mesh does not divide."""
    problems = _undivided(cfg, mesh_shape)
    if problems:
        mesh = " x ".join(f"{a}={mesh_shape[a]}" for a in MESH_AXES)
        raise ConfigError(f"config key 'mesh.{problems[0][0][0]}': the mesh {mesh} does not divide the model "
                          f"{cfg.name}: " + "; ".join(line for _, line in problems))


def _shard_bytes(tree, shardings) -> int:
    """Bytes one device holds of ``tree`` (ShapeDtypeStructs) under ``shardings``: the sum of its shard sizes."""
    sizes = jax.tree.map(lambda x, s: math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize, tree, shardings)
    return int(sum(jax.tree.leaves(sizes)))


def _flops_from(cost) -> float | None:
    """compiled.cost_analysis() is a dict on this jax (a list of one dict on older ones); None if it has no flops."""
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    flops = float(cost["flops"])
    return flops if flops > 0 else None


def plan(cfg: Config, *, peak_flops: float, memory_gib: float = 0.0, strict: bool = True, log=None) -> dict:
    """Lower and compile ``cfg``'s train step on ``jax.devices()`` and return the plan (JSON-able dict).

    Raises ConfigError before compiling when the mesh does not match the device count, the batch does not split over
    data x fsdp, or (``strict``) the mesh does not divide a parameter dimension."""
    from sftjax.model.llama import compute_dtype

    n = jax.device_count()
    mesh_shape = cfg.check_devices(n)
    mesh_dict = dict(zip(MESH_AXES, mesh_shape))
    if strict:
        check_divisibility(cfg.model, mesh_dict)
    problems = divisibility_problems(cfg.model, mesh_dict)
    mesh = make_mesh(mesh_shape)
    optimizer, schedule = make_optimizer(cfg.optim, SCHEDULE_STEPS)
    graphdef, abstract, shardings = train_state_layout(cfg.model, optimizer, mesh)
    state_spec = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
    rows, seq = cfg.train.global_batch_size, cfg.data.seq_len
    b_shard = batch_shardings(mesh)
    abstract_batch = batch_spec(mesh, rows, seq)
    step_fn = jit_train_step(
        make_train_step(graphdef, optimizer, schedule, grad_accum=cfg.train.grad_accum,
                        num_sources=max(len(cfg.data.sources), 1), mesh=mesh),
        shardings, mesh)

    if log:
        log(f"lowering and compiling the train step on {n} {jax.default_backend()} devices ...")
    t0 = time.perf_counter()
    lowered = step_fn.lower(state_spec, abstract_batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()

    mem = compiled.memory_analysis()
    field = lambda name: int(getattr(mem, name, 0) or 0) if mem is not None else 0  # noqa: E731
    compiled_mem = {k: field(f"{k}_size_in_bytes") for k in ("argument", "output", "alias", "temp", "generated_code")}
    total = (compiled_mem["argument"] + compiled_mem["output"] - compiled_mem["alias"] + compiled_mem["temp"]
             + compiled_mem["generated_code"])
    params_b = _shard_bytes(abstract["params"], shardings["params"])
    opt_b = _shard_bytes(abstract["opt_state"], shardings["opt_state"])
    batch_b = _shard_bytes(abstract_batch, b_shard)

    tokens = rows * seq
    pairs = rows * seq * (seq + 1) / 2  # full rows of one document each: every causal (query, key) pair
    model_flops = train_flops(cfg.model, tokens, pairs)
    xla_per_device = _flops_from(compiled.cost_analysis())
    step_s = model_flops / (peak_flops * n)
    limit = memory_gib * GIB
    return {
        "model": cfg.model.name,
        "parameters": param_count(cfg.model)["total"],
        "matmul_parameters": matmul_params(cfg.model),
        "devices": n,
        "backend": jax.default_backend(),
        "mesh": mesh_dict,
        "global_batch_size": rows,
        "seq_len": seq,
        "grad_accum": cfg.train.grad_accum,
        "compute_dtype": str(compute_dtype(cfg.model.dtype)),
        "attention": cfg.model.attention if cfg.model.attention != "auto" else
        ("sdpa" if jax.default_backend() == "gpu" else "blockwise"),
        "remat": cfg.model.remat,
        "scan_layers": cfg.model.scan_layers,
        "replicated": problems,  # non-empty only when strict=False
        "lower_s": t1 - t0,
        "compile_s": t2 - t1,
        "memory_per_device": {
            "parameters": params_b,
            "optimizer_state": opt_b,
            "batch": batch_b,
            "arguments": compiled_mem["argument"],
            "outputs": compiled_mem["output"],
            "aliased": compiled_mem["alias"],
            "temporaries": compiled_mem["temp"],
            "generated_code": compiled_mem["generated_code"],
            "total": total,
        },
        "memory_limit": int(limit) if memory_gib > 0 else None,
        "fits": None if memory_gib <= 0 else total <= limit,
        "tokens_per_step": tokens,
        "model_flops_per_step": model_flops,
        "xla_flops_per_step": None if xla_per_device is None else xla_per_device * n,
        "peak_flops_per_device": peak_flops,
        "step_s_at_peak": step_s,
        "tokens_per_s_at_peak": tokens / step_s,
    }

