"""The training loop: mesh, data, sharded state (fresh, imported or resumed), AOT-compiled step, logging,
checkpoints, preemption and divergence stops."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from sftjax.ckpt.checkpoints import Checkpointer, abstract_like
from sftjax.config import Config, ConfigError, to_dict
from sftjax.data.batch import batch_spec, process_rows, to_device
from sftjax.data.pipeline import DataPipeline
from sftjax.data.tokenizer import run_tokenizer
from sftjax.model.attention import resolve as resolve_attention
from sftjax.model.flops import matmul_params, train_flops
from sftjax.parallel.mesh import initialize_distributed, make_mesh
from sftjax.train.metrics import MetricsWriter
from sftjax.train.optimizer import make_optimizer, staged_schedule
from sftjax.train.run_dir import check_run_dir, truncate_metrics
from sftjax.train.state import init_train_state, step_array, train_state_layout
from sftjax.train.step import jit_train_step, make_train_step


class TrainingDiverged(RuntimeError):
    pass


class Preempted(RuntimeError):
    """SIGTERM/SIGINT arrived; a checkpoint of the last finished step was saved."""

    def __init__(self, signum: int, step: int, where: Path):
        self.signum = signum
        super().__init__(f"{signal.Signals(signum).name} after step {step}: saved a checkpoint in {where}; "
                         "rerun the same command to resume")


# Keys that may change between a run and its resumption (they do not change what is computed).
RESUMABLE_CHANGES = ("run_dir", "train.max_steps", "train.log_every", "train.save_every", "train.keep_last",
                     "train.keep_best", "train.best_metric", "train.best_mode", "train.async_checkpointing",
                     "train.export_hf", "train.export_dtype", "train.peak_flops_per_device", "train.progress",
                     "train.tensorboard", "mesh.", "model.attention", "model.attention_block", "model.remat",
                     "model.init_from", "eval.", "sweep.")  # what is evaluated never changes what is trained


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resumable(saved: dict, current: dict) -> list[str]:
    """Refuse to resume under a config that computes something else; returns the tolerated differences."""
    a, b = _flat(saved), _flat(current)
    diffs = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    bad = [k for k in diffs if not any(k == p or (p.endswith(".") and k.startswith(p)) for p in RESUMABLE_CHANGES)]
    if bad:
        raise ConfigError(
            "config key 'run_dir': the run directory's checkpoint was made with a different config: "
            + "; ".join(f"{k}: {a.get(k)!r} then, {b.get(k)!r} now" for k in bad)
            + ". Use a new run_dir, or rerun with the original values."
        )
    return diffs


def attended_pairs(segment_ids: np.ndarray, positions: np.ndarray) -> float:
    """Causal (query, key) pairs inside real documents: sum of position+1 over non-padding tokens."""
    real = segment_ids > 0
    return float((positions[real] + 1).sum())


class _StopSignals:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps (a step is never cut in half)."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self):
        try:
            for s in (signal.SIGTERM, signal.SIGINT):
                self._previous[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            pass
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def agreed(self) -> int | None:
        """Every process must stop at the same step, or the checkpoint's collectives would hang."""
        if jax.process_count() == 1:
            return self.signum
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray(self.signum or 0, np.int32))
        return int(flags.max()) or None

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def train(cfg: Config, log=print) -> dict:
    initialize_distributed(cfg.mesh)
    mesh_shape = cfg.check_devices(jax.device_count(), jax.process_count())
    mesh = make_mesh(mesh_shape)
    attn = resolve_attention(cfg.model.attention, head_dim=cfg.model.resolved_head_dim, seq_len=cfg.data.seq_len)
    is_main = jax.process_index() == 0
    run_dir = Path(cfg.run_dir)
    resuming = check_run_dir(run_dir)
    source = None
    if cfg.model.init_from and not resuming:
        from sftjax.ckpt.init_from import resolve_init_source

        source = resolve_init_source(cfg.model.init_from, log=log)
    tokenizer = run_tokenizer(cfg, run_dir / "tokenizer" if resuming else None, source)
    rows, seq = cfg.train.global_batch_size, cfg.data.seq_len
    data = DataPipeline(cfg.data, tokenizer, seed=cfg.train.seed, global_rows=rows, max_steps=cfg.train.max_steps,
                        log=log, shard=(jax.process_index(), jax.process_count()))
    total_steps = data.total_steps
    log("data: " + "; ".join(f"stage {s['name']}: {s['steps']} steps" for s in data.stage_info()))
    schedule = staged_schedule(cfg.optim, data.steps, [s.optim(cfg.optim) for s in data.stages])
    optimizer, schedule = make_optimizer(cfg.optim, total_steps, schedule)
    graphdef, abstract_state, shardings = train_state_layout(cfg.model, optimizer, mesh)
    ckpt = Checkpointer(run_dir, cfg.train, log=log)
    restored = ckpt.restore_latest(abstract_like(
        {k: abstract_state[k] for k in ("params", "opt_state")},
        {k: shardings[k] for k in ("params", "opt_state")})) if resuming else None
    if resuming and restored is None:
        raise ConfigError(f"config key 'run_dir': no checkpoint in {ckpt.root} could be restored (see above)")
    history: list[dict] = []
    if restored is not None:
        start, state, meta = restored
        tolerated = check_resumable(meta["config"], to_dict(cfg))
        if tolerated:
            log(f"resume: config changes since the checkpoint: {', '.join(tolerated)}")
        state["step"] = step_array(start, shardings["step"])
        data.restore(meta["data"])
        history, dropped = truncate_metrics(run_dir, start) if is_main else ([], 0)
        log(f"resume: continuing {run_dir} from step {start}"
            + (f" (dropped {dropped} metrics lines logged after that checkpoint; they are recomputed)" if dropped
               else ""))
    else:
        start = 0
        params = None
        if source is not None:
            from sftjax.ckpt.init_from import load_initial_params

            params = load_initial_params(cfg.model, source, abstract_state["params"], shardings["params"], log=log)
        if is_main:
            _keep_tokenizer(run_dir, tokenizer, source)
        graphdef, state, shardings = init_train_state(cfg.model, optimizer, mesh, cfg.train.seed, params=params)
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
    procs, pid = jax.process_count(), jax.process_index()
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, batch_spec(mesh, rows, seq)).compile() if start < total_steps else None
    compile_s = time.perf_counter() - t0
    if compiled is not None:
        log(f"compiled train step in {compile_s:.1f}s (attention: {attn})")

    writer = MetricsWriter(run_dir, enabled=is_main, tensorboard=cfg.train.tensorboard)
    peak = cfg.train.peak_flops_per_device * jax.device_count()
    total_tokens = history[-1]["tokens"] if history else 0
    pending: list[tuple[int, dict, int]] = []  # (step, device metrics, cumulative tokens) awaiting the next log
    window_start, window_tokens, window_flops = time.perf_counter(), 0, 0.0
    first: dict = history[0] if history else {}
    last: dict = history[-1] if history else {}

    def meta_now() -> dict:
        return {"model": dataclasses.asdict(cfg.model), "config": to_dict(cfg), "data": data.state(),
                "metrics": last}

    def flush(stage: str, extra: dict | None = None, exclude_s: float = 0.0) -> None:
        """Log the steps since the last line; ``extra`` (eval scalars) joins the line, and ``exclude_s`` (the time
        the eval took) is left out of tokens/s and MFU."""
        nonlocal first, last, window_start, window_tokens, window_flops
        fetched = jax.device_get([m for _, m, _ in pending])
        elapsed = max(time.perf_counter() - window_start - exclude_s, 1e-9)
        for (s, _, _), m in zip(pending, fetched, strict=True):
            if not math.isfinite(float(m["loss"])):
                good = ckpt.steps()
                raise TrainingDiverged(
                    f"loss is {float(m['loss'])} at step {s}; stopping. Last good checkpoint: "
                    + (f"step {good[-1]} in {ckpt.root}" if good else f"none (no checkpoint was saved in {run_dir})")
                )
        s, _, tokens = pending[-1]
        # loss and loss/<source>: token-weighted means over the steps since the previous log line
        n_tok = sum(float(m["loss_tokens"]) for m in fetched)
        src_tok = sum(np.asarray(m["source_tokens"]) for m in fetched)
        src_sum = sum(np.asarray(m["source_loss"]) * np.asarray(m["source_tokens"]) for m in fetched)
        m = fetched[-1]
        last = {
            "step": s,
            "stage": stage,
            "loss": sum(float(f["loss"]) * float(f["loss_tokens"]) for f in fetched) / max(n_tok, 1.0),
            **{f"loss/{name}": float(src_sum[i] / src_tok[i]) for i, name in enumerate(data.source_names)
               if src_tok[i] > 0},
            "lr": float(m["lr"]),
            "grad_norm": float(m["grad_norm"]),
            "tokens": tokens,
            "tokens_per_s": window_tokens / elapsed,
            "mfu": window_flops / elapsed / peak,
            "fill": window_tokens / (len(fetched) * rows * seq),
            **(extra or {}),
        }
        writer.write(last)
        first = first or last
        bar.set_postfix(loss=f"{last['loss']:.4f}", tok_s=f"{last['tokens_per_s']:.0f}", mfu=f"{last['mfu']:.1%}")
        pending.clear()
        window_start, window_tokens, window_flops = time.perf_counter(), 0, 0.0

    if start >= total_steps:
        log(f"resume: {run_dir} is already complete at step {start} of {total_steps}")
    bar = tqdm(total=total_steps, initial=start, disable=not (cfg.train.progress and is_main),
               dynamic_ncols=True)
    step = start
    evaluate = Evaluator(cfg, graphdef, tokenizer, mesh, run_dir, writer, is_main, log)
    try:
        if cfg.eval.at_start and start == 0 and total_steps > 0:
            evaluate(state, 0, data.stages[data.stage].name)
        with _StopSignals() as stop:
            for step in range(start + 1, total_steps + 1):
                stage, global_batch, stage_ends = data.next_batch()  # the same on every process; each keeps its rows
                local = process_rows(global_batch, pid, procs)
                real = int((global_batch["segment_ids"] > 0).sum())
                flops = train_flops(cfg.model, real,
                                    attended_pairs(global_batch["segment_ids"], global_batch["positions"]))
                state, metrics = compiled(state, to_device(local, mesh, rows))
                total_tokens += real
                window_tokens += real
                window_flops += flops
                pending.append((step, metrics, total_tokens))
                bar.update(1)
                signum = stop.agreed()
                periodic = cfg.train.save_every and step % cfg.train.save_every == 0
                final = step == total_steps
                scores, eval_s = {}, 0.0
                if evaluate.due(step, stage_ends):
                    # the dispatched steps finish first, so their time counts as training, not as eval time
                    jax.block_until_ready(state)
                    t_eval = time.perf_counter()
                    scores = evaluate(state, step, stage)
                    eval_s = time.perf_counter() - t_eval
                if step % cfg.train.log_every == 0 or final or periodic or signum or stage_ends or scores:
                    # a checkpoint's step is always logged, so a resumed metrics.jsonl has no gap
                    flush(stage, scores, eval_s)
                if periodic or final or signum or stage_ends:
                    ckpt.save(step, state, meta_now(), last)
                if signum and not final:
                    raise Preempted(signum, step, ckpt.root)
    finally:
        bar.close()
        writer.close()
        ckpt.close()  # waits for async saves: a checkpoint that was started is finished before exit
    if cfg.train.export_hf:
        from sftjax.ckpt.hf import read_generation_config, save_hf

        tokenizer = run_dir / "tokenizer"
        save_hf(state["params"], cfg.model, run_dir / "hf", tokenizer_dir=tokenizer if tokenizer.is_dir() else None,
                generation_config=read_generation_config(run_dir), dtype=cfg.train.export_dtype,
                template=cfg.data.template, log=log)
    summary = {
        "steps": total_steps,
        "first_log": first,
        "last_log": last,
        "tokens": total_tokens,
        "compile_s": compile_s,
        "params": n_params,
        "matmul_params": matmul_params(cfg.model),
        "data": data.stats(),
    }
    if is_main:
        (run_dir / "data_stats.json").write_text(json.dumps(summary["data"], indent=2))
    summary["state"] = state  # the final train state (sharded arrays), for callers that continue with it
    return summary


class Evaluator:
    """The loop's eval hook: runs cfg.eval's suites on the current params, writes eval/step_N.json (process 0) and
    returns the flat scalars for the step's metrics line."""

    def __init__(self, cfg: Config, graphdef, tokenizer, mesh, run_dir: Path, writer, is_main: bool, log):
        self.cfg, self.graphdef, self.tokenizer, self.mesh = cfg, graphdef, tokenizer, mesh
        self.dir, self.writer, self.is_main, self.log = run_dir / "eval", writer, is_main, log
        self.judges = None  # local judge models, loaded on the first evaluation that needs one

    def due(self, step: int, stage_ends: bool) -> bool:
        e = self.cfg.eval
        return bool(e.suites) and ((e.every_n_steps > 0 and step % e.every_n_steps == 0)
                                   or (e.at_stage_end and stage_ends))

    def __call__(self, state, step: int, stage: str) -> dict:
        from sftjax.eval.runner import JudgeModels, run_suites, write_json

        if self.judges is None:
            self.judges = JudgeModels(self.cfg.model, self.mesh, self.cfg.eval, self.cfg.data.template, self.log)
        self.log(f"eval: step {step} ({stage})")
        out = run_suites(self.cfg.eval, graphdef=self.graphdef, params=state["params"], tokenizer=self.tokenizer,
                         data=self.cfg.data, mesh=self.mesh, max_positions=self.cfg.model.max_position_embeddings,
                         loss_rows=self.cfg.train.global_batch_size, log=self.log, judges=self.judges)
        if self.is_main:
            write_json(self.dir / f"step_{step}.json", {"step": step, "stage": stage, "suites": out["suites"]})
            if step == 0:  # before training there is no metrics line to join: TensorBoard only
                self.writer.scalars(step, out["metrics"])
        return out["metrics"]


def _keep_tokenizer(run_dir: Path, tokenizer, source) -> None:
    """The run directory keeps the tokenizer its data was made with and the generation config of its initial
    weights, so a resumed run reads the same tokens and an export of the run carries them."""
    from sftjax.ckpt.hf import save_tokenizer

    save_tokenizer(tokenizer, run_dir / "tokenizer")
    gen = source.generation_config if source is not None else None
    if gen is not None:
        (run_dir / "generation_config.json").write_text(json.dumps(gen, indent=2))
