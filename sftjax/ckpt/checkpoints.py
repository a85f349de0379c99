"""Orbax checkpoints of the train state, and reading parameters back from any sftjax directory.

A checkpoint is one Orbax step directory with three items: ``params`` and ``opt_state`` (sharded arrays, restored
straight into the current mesh's shardings, so a run may resume on a different mesh) and ``meta`` (JSON: the step,
the model config, the full config, the data iterator's state and the metrics logged at that step). The model config
inside ``meta`` makes every checkpoint self-describing: ``sftjax-convert sftjax-to-hf`` and ``model.init_from`` need
nothing else. Orbax writes into a temporary directory and renames it when complete, so a save cut off half-way never
looks like a checkpoint; a complete one that later fails to restore is moved aside and the previous one is used.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from sftjax.config import ConfigError, ModelConfig, TrainConfig

FORMAT = "sftjax-checkpoint/1"
CHECKPOINTS = "checkpoints"


def abstract_like(tree, shardings):
    """Shape/dtype/sharding targets for Orbax restore."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class Checkpointer:
    """Saves every ``train.save_every`` steps (async), at the end and on preemption; keeps the last
    ``train.keep_last`` plus the best ``train.keep_best`` by ``train.best_metric``."""

    def __init__(self, run_dir: Path, tcfg: TrainConfig, log=print):
        self.root = Path(run_dir).absolute() / CHECKPOINTS
        self.log = log
        self.best_metric = tcfg.best_metric
        policies: list = [pp.LatestN(tcfg.keep_last)]
        if tcfg.keep_best > 0:
            policies.append(pp.BestN(get_metric_fn=lambda m: m[self.best_metric], reverse=tcfg.best_mode == "min",
                                     n=tcfg.keep_best, keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=pp.AnyPreservationPolicy(policies),
            enable_async_checkpointing=tcfg.async_checkpointing,
            cleanup_tmp_directories=True,  # half-written saves of a killed run are removed, never restored
        )
        self.manager = ocp.CheckpointManager(self.root, options=options, item_names=("params", "opt_state", "meta"))

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: dict, meta: dict, metrics: dict | None = None) -> None:
        value = (metrics or {}).get(self.best_metric)
        ranked = {self.best_metric: float(value)} if isinstance(value, (int, float)) else None
        t0 = time.perf_counter()
        self.manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(state["params"]),
                opt_state=ocp.args.StandardSave(state["opt_state"]),
                meta=ocp.args.JsonSave({"format": FORMAT, "step": step, **meta}),
            ),
            metrics=ranked,
            force=True,
        )
        self.log(f"checkpoint: step {step} saving to {self.root / str(step)} "
                 f"({time.perf_counter() - t0:.2f}s blocking, the rest in the background)")

    def restore_latest(self, abstract_state: dict) -> tuple[int, dict, dict] | None:
        """(step, state, meta) of the newest checkpoint that restores; unreadable ones are moved aside."""
        for step in reversed(self.steps()):
            t0 = time.perf_counter()
            try:
                got = self.manager.restore(step, args=ocp.args.Composite(
                    params=ocp.args.StandardRestore(abstract_state["params"]),
                    opt_state=ocp.args.StandardRestore(abstract_state["opt_state"]),
                    meta=ocp.args.JsonRestore(),
                ))
            except Exception as e:  # any failure to read means this checkpoint cannot be trusted
                aside = self._move_aside(step)
                self.log(f"checkpoint: step {step} in {self.root} is unreadable ({type(e).__name__}: "
                         f"{str(e)[:300]}); moved it to {aside} and trying the previous one")
                continue
            self.log(f"checkpoint: restored step {step} in {time.perf_counter() - t0:.2f}s")
            return step, {"params": got.params, "opt_state": got.opt_state}, got.meta
        return None

    def _move_aside(self, step: int) -> Path:
        aside = self.root.parent / f"{CHECKPOINTS}.corrupt" / f"{step}-{int(time.time())}"
        if jax.process_index() == 0:
            aside.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(self.root / str(step)), aside)
        self.manager.reload()
        return aside

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def checkpoint_root(src: str | Path) -> Path:
    """The Orbax root inside a run directory, an sftjax directory, or the root itself."""
    src = Path(src)
    if (src / CHECKPOINTS).is_dir():
        return src / CHECKPOINTS
    if src.is_dir() and any(p.name.isdigit() for p in src.iterdir()):
        return src
    if src.is_dir() and (src / "meta").is_dir():
        return src.parent
    hf = (src / "config.json").exists()
    hint = f"; it holds config.json: for a Hugging Face directory write hf:{src}" if hf else ""
    raise ConfigError(f"{src}: not a run directory or an sftjax checkpoint directory (no {CHECKPOINTS}/){hint}")


def _reader(root: Path) -> ocp.CheckpointManager:
    """A read-only manager (Orbax says so in three warnings per manager; they are not news here)."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        return ocp.CheckpointManager(root.absolute(), options=ocp.CheckpointManagerOptions(read_only=True),
                                     item_names=("params", "opt_state", "meta"))
    finally:
        absl.setLevel(level)


def latest_meta(src: str | Path) -> tuple[Path, int, dict]:
    """(root, step, meta) of the newest checkpoint under ``src`` (a run dir, an sftjax dir, or one step dir)."""
    src = Path(src)
    root = checkpoint_root(src)
    manager = _reader(root)
    steps = sorted(manager.all_steps())
    if src.parent == root and src.name.isdigit():
        steps = [int(src.name)]
    if not steps:
        raise ConfigError(f"{root}: no checkpoint found")
    meta = manager.restore(steps[-1], args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    manager.close()
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{root / str(steps[-1])}: not an sftjax checkpoint (meta format {meta.get('format')!r})")
    return root, steps[-1], meta


def restore_params(root: Path, step: int, abstract_params: dict) -> dict:
    manager = _reader(root)
    got = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params)))
    manager.close()
    return got.params


def trained_template(meta: dict) -> str:
    """The chat template a checkpoint's run trained with (its recorded data.template); ``auto`` when it records none
    (an imported checkpoint)."""
    return ((meta.get("config") or {}).get("data") or {}).get("template") or "auto"


def model_config_of(meta: dict) -> ModelConfig:
    from sftjax.config import to_model_config

    return to_model_config(meta["model"])


def save_params_only(dst: Path, params: dict, model_cfg: ModelConfig, extra: dict | None = None) -> Path:
    """An sftjax directory holding one parameter-only checkpoint (step 0), as ``hf-to-sftjax`` writes it."""
    import dataclasses

    manager = ocp.CheckpointManager((dst / CHECKPOINTS).absolute(), item_names=("params", "opt_state", "meta"))
    meta = {"format": FORMAT, "step": 0, "model": dataclasses.asdict(model_cfg), **(extra or {})}
    manager.save(0, args=ocp.args.Composite(params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)),
                 force=True)
    manager.wait_until_finished()
    manager.close()
    return dst

