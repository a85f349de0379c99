"""The training loop: mesh, data, sharded state, AOT-compiled step, logging, divergence checks."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from sftjax.config import Config, ConfigError
from sftjax.data.fixture import FixtureStream
from sftjax.model.flops import matmul_params, train_flops
from sftjax.parallel.mesh import initialize_distributed, make_mesh
from sftjax.train.metrics import MetricsWriter
from sftjax.train.optimizer import make_optimizer
from sftjax.train.run_dir import ensure_new_run_dir
from sftjax.train.state import init_train_state
from sftjax.train.step import BATCH_DTYPES, batch_shardings, jit_train_step, make_train_step


class TrainingDiverged(RuntimeError):
    pass


def attended_pairs(segment_ids: np.ndarray, positions: np.ndarray) -> float:
    """Causal (query, key) pairs inside real documents: sum of position+1 over non-padding tokens."""
    real = segment_ids > 0
    return float((positions[real] + 1).sum())


def global_batch_to_device(local: dict[str, np.ndarray], mesh, global_rows: int) -> dict[str, jax.Array]:
    shardings = batch_shardings(mesh)
    return {
        k: jax.make_array_from_process_local_data(shardings[k], v, (global_rows,) + v.shape[1:])
        for k, v in local.items()
    }


def train(cfg: Config, log=print) -> dict:
    initialize_distributed(cfg.mesh)
    mesh_shape = cfg.check_devices(jax.device_count(), jax.process_count())
    mesh = make_mesh(mesh_shape)
    is_main = jax.process_index() == 0
    run_dir = Path(cfg.run_dir)
    ensure_new_run_dir(run_dir)

    data = FixtureStream(cfg.data, seed=cfg.train.seed)
    if cfg.model.vocab_size < data.tokenizer.vocab_size:
        raise ConfigError(
            f"config key 'model.vocab_size': expected >= {data.tokenizer.vocab_size} "
            f"(the '{cfg.data.tokenizer}' tokenizer's vocabulary), got {cfg.model.vocab_size}"
        )
    optimizer, schedule = make_optimizer(cfg.optim, cfg.train.max_steps)
    graphdef, state, shardings = init_train_state(cfg.model, optimizer, mesh, cfg.train.seed)
    n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
    log(f"model {cfg.model.name}: {n_params / 1e6:.2f}M parameters; mesh data={mesh_shape[0]} fsdp={mesh_shape[1]} "
        f"tensor={mesh_shape[2]} over {jax.device_count()} {jax.default_backend()} device(s), "
        f"{jax.process_count()} process(es)")

    step_fn = jit_train_step(
        make_train_step(graphdef, optimizer, schedule, grad_accum=cfg.train.grad_accum,
                        num_sources=len(data.source_names), mesh=mesh),
        shardings,
        mesh,
    )
    rows, seq = cfg.train.global_batch_size, cfg.data.seq_len
    procs, pid = jax.process_count(), jax.process_index()
    local_rows = rows // procs
    t0 = time.perf_counter()
    batch_spec = {k: jax.ShapeDtypeStruct((rows, seq), dt, sharding=batch_shardings(mesh)[k])
                  for k, dt in BATCH_DTYPES.items()}
    compiled = step_fn.lower(state, batch_spec).compile()
    compile_s = time.perf_counter() - t0
    log(f"compiled train step in {compile_s:.1f}s")

    writer = MetricsWriter(run_dir, enabled=is_main, tensorboard=cfg.train.tensorboard)
    peak = cfg.train.peak_flops_per_device * jax.device_count()
    total_tokens = 0
    pending: list[tuple[int, dict, int]] = []  # (step, device metrics, cumulative tokens) awaiting the next log
    window_start, window_tokens, window_flops = time.perf_counter(), 0, 0.0
    first: dict = {}
    last: dict = {}
    bar = tqdm(total=cfg.train.max_steps, disable=not (cfg.train.progress and is_main), dynamic_ncols=True)
    try:
        for step in range(1, cfg.train.max_steps + 1):
            global_batch = data.next_batch(rows)  # every process builds the same stream and keeps its own rows
            local = {k: v[pid * local_rows : (pid + 1) * local_rows] for k, v in global_batch.items()}
            real = int((global_batch["segment_ids"] > 0).sum())
            flops = train_flops(cfg.model, real, attended_pairs(global_batch["segment_ids"], global_batch["positions"]))
            state, metrics = compiled(state, global_batch_to_device(local, mesh, rows))
            total_tokens += real
            window_tokens += real
            window_flops += flops
            pending.append((step, metrics, total_tokens))
            bar.update(1)
            if step % cfg.train.log_every == 0 or step == cfg.train.max_steps:
                fetched = jax.device_get([m for _, m, _ in pending])
                elapsed = time.perf_counter() - window_start
                for (s, _, _), m in zip(pending, fetched, strict=True):
                    if not math.isfinite(float(m["loss"])):
                        raise TrainingDiverged(
                            f"loss is {float(m['loss'])} at step {s}; stopping. Last good checkpoint: none "
                            f"(no checkpoint has been saved in {run_dir})"
                        )
                s, _, tokens = pending[-1]
                # loss and loss/<source>: token-weighted means over the steps since the previous log line
                n_tok = sum(float(m["loss_tokens"]) for m in fetched)
                src_tok = sum(np.asarray(m["source_tokens"]) for m in fetched)
                src_sum = sum(np.asarray(m["source_loss"]) * np.asarray(m["source_tokens"]) for m in fetched)
                m = fetched[-1]
                last = {
                    "step": s,
                    "stage": "main",
                    "loss": sum(float(f["loss"]) * float(f["loss_tokens"]) for f in fetched) / max(n_tok, 1.0),
                    **{f"loss/{name}": float(src_sum[i] / src_tok[i]) for i, name in enumerate(data.source_names)
                       if src_tok[i] > 0},
                    "lr": float(m["lr"]),
                    "grad_norm": float(m["grad_norm"]),
                    "tokens": tokens,
                    "tokens_per_s": window_tokens / elapsed,
                    "mfu": window_flops / elapsed / peak,
                    "fill": window_tokens / (len(fetched) * rows * seq),
                }
                writer.write(last)
                first = first or last
                bar.set_postfix(loss=f"{last['loss']:.4f}", tok_s=f"{last['tokens_per_s']:.0f}",
                                mfu=f"{last['mfu']:.1%}")
                pending.clear()
                window_start, window_tokens, window_flops = time.perf_counter(), 0, 0.0
    finally:
        bar.close()
        writer.close()
    summary = {
        "steps": cfg.train.max_steps,
        "first_log": first,
        "last_log": last,
        "tokens": total_tokens,
        "compile_s": compile_s,
        "params": n_params,
        "matmul_params": matmul_params(cfg.model),
        "data": {name: vars(st) for name, st in data.stats.items()},
    }
    if is_main:
        (run_dir / "data_stats.json").write_text(json.dumps({"main": summary["data"]}, indent=2))
    summary["state"] = state  # the final train state (sharded arrays), for callers that continue with it
    return summary
