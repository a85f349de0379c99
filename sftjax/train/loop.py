"""The training recipe. :func:`train` reads top to bottom: start the run, build the data, the optimizer and the
state (fresh, imported or resumed), compile the step, run the stages, finish. Each step is a function of this
module; logging and checkpoint cadence are plain functions."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from dataclasses import dataclass
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
from sftjax.model.flops import attended_pairs, matmul_params, train_flops
from sftjax.parallel.mesh import initialize_distributed, make_mesh
from sftjax.train.metrics import MetricsWriter, Window, metrics_line
from sftjax.train.optimizer import make_optimizer, staged_schedule
from sftjax.train.run_dir import check_resumable, check_run_dir, truncate_metrics
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


@dataclass
class Run:
    """What every step of the recipe reads: the config, the mesh, the run directory and where weights come from."""

    cfg: Config
    mesh: object
    mesh_shape: tuple[int, int, int]
    dir: Path
    resuming: bool
    source: object  # ckpt.init_from.InitSource, or None (random init, or resuming)
    attention: str
    ckpt: Checkpointer
    log: object

    @property
    def is_main(self) -> bool:
        return jax.process_index() == 0


@dataclass
class TrainState:
    """The sharded state {params, opt_state, step} with its shardings, the step it starts at, and the metrics
    lines already written before it (a resumed run's)."""

    graphdef: object
    state: dict
    shardings: dict
    start: int
    history: list[dict]


def train(cfg: Config, log=print) -> dict:
    run = start_run(cfg, log)
    try:
        tokenizer = run_tokenizer(cfg, run.dir / "tokenizer" if run.resuming else None, run.source)
        data = build_data(run, tokenizer)
        optimizer, schedule = build_optimizer(run, data)
        ts = build_or_restore_state(run, data, optimizer, tokenizer)
        compiled, compile_s = compile_step(run, data, optimizer, schedule, ts)
        state, lines = run_stages(run, data, compiled, ts, tokenizer)
    finally:
        run.ckpt.close()  # waits for async saves: a checkpoint that was started is finished before exit
    return finish(run, data, state, lines, compile_s)


def start_run(cfg: Config, log) -> Run:
    """Processes joined, mesh built, attention kernel chosen, run directory checked (new, or resumable)."""
    initialize_distributed(cfg.mesh)
    mesh_shape = cfg.check_devices(jax.device_count(), jax.process_count())
    run_dir = Path(cfg.run_dir)
    resuming = check_run_dir(run_dir)
    source = None
    if cfg.model.init_from and not resuming:  # a resumed run's weights are its own checkpoint
        from sftjax.ckpt.init_from import resolve_init_source

        source = resolve_init_source(cfg.model.init_from, log=log)
    attention = resolve_attention(cfg.model.attention, head_dim=cfg.model.resolved_head_dim, seq_len=cfg.data.seq_len)
    return Run(cfg, make_mesh(mesh_shape), mesh_shape, run_dir, resuming, source, attention,
               Checkpointer(run_dir, cfg.train, log=log), log)


def build_data(run: Run, tokenizer) -> DataPipeline:
    """Every source read, cleaned (hygiene: decontaminated against this run's eval suites) and tokenized; stages
    planned."""
    from sftjax.eval.contamination import eval_texts

    cfg = run.cfg
    data = DataPipeline(cfg.data, tokenizer, seed=cfg.train.seed, global_rows=cfg.train.global_batch_size,
                        max_steps=cfg.train.max_steps, log=run.log, shard=(jax.process_index(), jax.process_count()),
                        eval_texts=eval_texts(cfg.eval, cfg.data))
    run.log("data: " + "; ".join(f"stage {s['name']}: {s['steps']} steps" for s in data.stage_info()))
    return data


def build_optimizer(run: Run, data: DataPipeline):
    """AdamW with the learning-rate schedule over the data's stages (one cosine, or one per stage)."""
    o = run.cfg.optim
    return make_optimizer(o, data.total_steps, staged_schedule(o, data.steps, [s.optim(o) for s in data.stages]))


def build_or_restore_state(run: Run, data: DataPipeline, optimizer, tokenizer) -> TrainState:
    cfg, log = run.cfg, run.log
    graphdef, abstract_state, shardings = train_state_layout(cfg.model, optimizer, run.mesh)
    if run.resuming:
        ts = restore_state(run, data, graphdef, abstract_state, shardings)
    else:
        params = None
        if run.source is not None:
            from sftjax.ckpt.init_from import load_model

            params = load_model(run.source, cfg.model, run.mesh, strict=True, log=log).params
        if run.is_main:
            _keep_tokenizer(run.dir, tokenizer, run.source)
        graphdef, state, shardings = init_train_state(cfg.model, optimizer, run.mesh, cfg.train.seed, params=params)
        ts = TrainState(graphdef, state, shardings, 0, [])
    n_params = sum(x.size for x in jax.tree.leaves(ts.state["params"]))
    d, f, t = run.mesh_shape
    log(f"model {cfg.model.name}: {n_params / 1e6:.2f}M parameters; mesh data={d} fsdp={f} tensor={t} over "
        f"{jax.device_count()} {jax.default_backend()} device(s), {jax.process_count()} process(es)")
    return ts


def restore_state(run: Run, data: DataPipeline, graphdef, abstract_state: dict, shardings: dict) -> TrainState:
    """The newest checkpoint's params and optimizer state, the data position, and the metrics lines up to it."""
    keys = ("params", "opt_state")
    restored = run.ckpt.restore_latest(abstract_like({k: abstract_state[k] for k in keys},
                                                     {k: shardings[k] for k in keys}))
    if restored is None:
        raise ConfigError(f"config key 'run_dir': no checkpoint in {run.ckpt.root} could be restored (see above)")
    start, state, meta = restored
    tolerated = check_resumable(meta["config"], to_dict(run.cfg))
    if tolerated:
        run.log(f"resume: config changes since the checkpoint: {', '.join(tolerated)}")
    state["step"] = step_array(start, shardings["step"])
    data.restore(meta["data"])
    history, dropped = truncate_metrics(run.dir, start) if run.is_main else ([], 0)
    run.log(f"resume: continuing {run.dir} from step {start}"
            + (f" (dropped {dropped} metrics lines logged after that checkpoint; they are recomputed)" if dropped
               else ""))
    return TrainState(graphdef, state, shardings, start, history)


def compile_step(run: Run, data: DataPipeline, optimizer, schedule, ts: TrainState):
    """The train step, compiled ahead of time for the one batch shape; (None, 0.0) when nothing is left to run."""
    cfg = run.cfg
    step_fn = jit_train_step(
        make_train_step(ts.graphdef, optimizer, schedule, grad_accum=cfg.train.grad_accum,
                        num_sources=len(data.source_names), mesh=run.mesh),
        ts.shardings,
        run.mesh,
    )
    if ts.start >= data.total_steps:
        return None, 0.0
    t0 = time.perf_counter()
    compiled = step_fn.lower(ts.state, batch_spec(run.mesh, cfg.train.global_batch_size, cfg.data.seq_len)).compile()
    compile_s = time.perf_counter() - t0
    run.log(f"compiled train step in {compile_s:.1f}s (attention: {run.attention})")
    return compiled, compile_s


def is_log_step(step: int, log_every: int, *, final: bool, saving: bool, stopping: bool, stage_ends: bool,
                evaluated: bool) -> bool:
    """A line every log_every steps, and at every step that ends something or saves: a checkpoint's step is always
    logged, so a resumed metrics.jsonl has no gap, and eval scores always join a line."""
    return step % log_every == 0 or final or saving or stopping or stage_ends or evaluated


def is_save_step(step: int, save_every: int, *, final: bool, stopping: bool, stage_ends: bool) -> bool:
    """A checkpoint every save_every steps (0: never periodic), at the end of each stage and of the run, and when a
    stop signal arrived."""
    return bool(save_every and step % save_every == 0) or final or stopping or stage_ends


@dataclass
class Lines:
    """The metrics lines of this run so far: the first and the last written, and the tokens trained on."""

    first: dict
    last: dict
    tokens: int


def run_stages(run: Run, data: DataPipeline, compiled, ts: TrainState, tokenizer) -> tuple[dict, Lines]:
    """Every remaining step of every stage: train, evaluate when due, log, checkpoint, stop on a signal or a
    non-finite loss."""
    cfg, log, ckpt = run.cfg, run.log, run.ckpt
    total_steps, rows = data.total_steps, cfg.train.global_batch_size
    procs, pid = jax.process_count(), jax.process_index()
    state = ts.state
    lines = Lines(ts.history[0] if ts.history else {}, ts.history[-1] if ts.history else {},
                  ts.history[-1]["tokens"] if ts.history else 0)
    writer = MetricsWriter(run.dir, enabled=run.is_main, tensorboard=cfg.train.tensorboard)
    window = Window()

    if ts.start >= total_steps:
        log(f"resume: {run.dir} is already complete at step {ts.start} of {total_steps}")
    bar = tqdm(total=total_steps, initial=ts.start, disable=not (cfg.train.progress and run.is_main),
               dynamic_ncols=True)
    evaluate = Evaluator(cfg, ts.graphdef, tokenizer, run.mesh, run.dir, writer, run.is_main, log)
    try:
        if cfg.eval.at_start and ts.start == 0 and total_steps > 0:
            evaluate(state, 0, data.stages[data.stage].name)
        with _StopSignals() as stop:
            for step in range(ts.start + 1, total_steps + 1):
                stage, global_batch, stage_ends = data.next_batch()  # the same on every process; each keeps its rows
                real = int((global_batch["segment_ids"] > 0).sum())
                flops = train_flops(cfg.model, real,
                                    attended_pairs(global_batch["segment_ids"], global_batch["positions"]))
                state, metrics = compiled(state, to_device(process_rows(global_batch, pid, procs), run.mesh, rows))
                lines.tokens += real
                window.add(step, metrics, lines.tokens, real, flops)
                bar.update(1)
                signum = stop.agreed()
                final = step == total_steps
                scores, eval_s = {}, 0.0
                if evaluate.due(step, stage_ends):
                    # the dispatched steps finish first, so their time counts as training, not as eval time
                    jax.block_until_ready(state)
                    t_eval = time.perf_counter()
                    scores = evaluate(state, step, stage)
                    eval_s = time.perf_counter() - t_eval
                saving = is_save_step(step, cfg.train.save_every, final=final, stopping=bool(signum),
                                      stage_ends=stage_ends)
                if is_log_step(step, cfg.train.log_every, final=final, saving=saving, stopping=bool(signum),
                               stage_ends=stage_ends, evaluated=bool(scores)):
                    line = write_line(run, data, window, lines, writer, stage, scores, eval_s)
                    bar.set_postfix(loss=f"{line['loss']:.4f}", tok_s=f"{line['tokens_per_s']:.0f}",
                                    mfu=f"{line['mfu']:.1%}")
                if saving:
                    ckpt.save(step, state, {"model": dataclasses.asdict(cfg.model), "config": to_dict(cfg),
                                            "data": data.state(), "metrics": lines.last}, lines.last)
                if signum and not final:
                    raise Preempted(signum, step, ckpt.root)
    finally:
        bar.close()
        writer.close()
    return state, lines


def write_line(run: Run, data: DataPipeline, window: Window, lines: Lines, writer: MetricsWriter, stage: str,
               extra: dict, exclude_s: float) -> dict:
    """Fetch the window's metrics, stop on a non-finite loss, write the line (with ``extra``, the eval scores; the
    eval's ``exclude_s`` seconds are left out of tokens/s and MFU) and start a new window."""
    cfg = run.cfg
    fetched = jax.device_get([m for _, m, _ in window.pending])
    for (s, _, _), m in zip(window.pending, fetched, strict=True):
        check_finite(float(m["loss"]), s, run.ckpt, run.dir)
    line = metrics_line(fetched, step=window.pending[-1][0], stage=stage, tokens=window.pending[-1][2],
                        source_names=data.source_names, window_tokens=window.tokens, window_flops=window.flops,
                        elapsed_s=time.perf_counter() - window.start - exclude_s,
                        peak_flops=cfg.train.peak_flops_per_device * jax.device_count(),
                        row_tokens=cfg.train.global_batch_size * cfg.data.seq_len)
    lines.last = {**line, **extra}
    lines.first = lines.first or lines.last
    writer.write(lines.last)
    window.clear()
    return line


def check_finite(loss: float, step: int, ckpt: Checkpointer, run_dir: Path) -> None:
    if not math.isfinite(loss):
        good = ckpt.steps()
        raise TrainingDiverged(
            f"loss is {loss} at step {step}; stopping. Last good checkpoint: "
            + (f"step {good[-1]} in {ckpt.root}" if good else f"none (no checkpoint was saved in {run_dir})"))


def finish(run: Run, data: DataPipeline, state: dict, lines: Lines, compile_s: float) -> dict:
    """The optional HF export, data_stats.json, and the run's summary."""
    cfg = run.cfg
    if cfg.train.export_hf:
        from sftjax.ckpt.hf import read_generation_config, save_hf

        tokenizer = run.dir / "tokenizer"
        save_hf(state["params"], cfg.model, run.dir / "hf", tokenizer_dir=tokenizer if tokenizer.is_dir() else None,
                generation_config=read_generation_config(run.dir), dtype=cfg.train.export_dtype,
                template=cfg.data.template, log=run.log)
    summary = {
        "steps": data.total_steps,
        "first_log": lines.first,
        "last_log": lines.last,
        "tokens": lines.tokens,
        "compile_s": compile_s,
        "params": sum(x.size for x in jax.tree.leaves(state["params"])),
        "matmul_params": matmul_params(cfg.model),
        "data": data.stats(),
    }
    if run.is_main:
        (run.dir / "data_stats.json").write_text(json.dumps(summary["data"], indent=2))
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
