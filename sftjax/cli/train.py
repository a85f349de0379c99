"""sftjax-train: `sftjax-train run_dir=DIR model=NAME [overrides]` (a Hydra app; `python -m sftjax.cli.train`)."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from sftjax.cli import config_errors
from sftjax.config import ConfigError, check_override_keys, compose_dict, register_configs, split_config_dir, to_config
from sftjax.train.run_dir import check_run_dir

log = logging.getLogger("sftjax")
logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU found" is not news on CPU/GPU
logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax narrates every save at INFO

register_configs()


class JobFailed(RuntimeError):
    """A sweep job's failure: raised (not sys.exit) so that Hydra records it and the sweep's other jobs still run."""


def _exit(code: int, message: str, multirun: bool) -> None:
    print(f"sftjax-train: {message}", file=sys.stderr)
    if multirun:
        raise JobFailed(message)
    sys.exit(code)


@hydra.main(version_base=None, config_path="pkg://sftjax.conf", config_name="config")
def _main(dcfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    if multirun:  # each job of a sweep trains in its own directory, SWEEP_DIR/<its overrides>
        dcfg.run_dir = HydraConfig.get().runtime.output_dir
    try:
        cfg = to_config(dcfg)
    except ConfigError as e:
        _exit(2, f"invalid config: {e}", multirun)
    from sftjax.train.loop import Preempted, TrainingDiverged, train  # heavy imports once the config is valid

    try:
        summary = train(cfg, log=log.info)
    except ConfigError as e:
        _exit(2, f"invalid config: {e}", multirun)
    except TrainingDiverged as e:
        _exit(3, f"training diverged: {e}", multirun)
    except Preempted as e:
        _exit(128 + e.signum, f"stopped by {e}", multirun)
    first, last = summary["first_log"], summary["last_log"]
    losses = ", ".join(
        f"{k[5:]} {first[k]:.3f} -> {last[k]:.3f}" for k in last if k.startswith("loss/") and k in first
    )
    log.info(
        f"done: {summary['steps']} steps, {summary['tokens']:,} tokens, compile {summary['compile_s']:.1f}s, "
        f"{last['tokens_per_s']:,.0f} tokens/s, MFU {last['mfu']:.1%}\n"
        f"loss (step {first['step']} -> {last['step']}): {first['loss']:.3f} -> {last['loss']:.3f} ({losses})\n"
        f"run directory: {cfg.run_dir}"
    )


def check_sweep(argv: list[str]) -> None:
    """Count a multirun's grid (the preset's hydra.sweeper.params and the command line) against sweep.max_jobs."""
    from hydra.errors import HydraException

    from sftjax.sweep import check_sweep_size, count_jobs

    config_dir, args = split_config_dir(argv)
    overrides = [a for a in args if not a.startswith("-")]
    plain = [o for o in overrides if not _is_sweep(o)]  # compose one point of the grid to read the preset
    try:
        composed = compose_dict(plain, config_dir=config_dir, hydra_keys=True)
    except HydraException as e:  # e.g. an unknown preset: Hydra's message lists the available ones
        raise ConfigError(str(e)) from None
    params = dict(composed.hydra.sweeper.get("params") or {})
    check_override_keys([f"{k}={v}" for k, v in params.items()])  # a preset's sweep axes are config keys too
    n_jobs, axes = count_jobs(overrides, params)
    check_sweep_size(n_jobs, axes, int(composed.sweep.max_jobs), bool(composed.sweep.confirm))
    grid = " x ".join(f"{k} ({n})" for k, n in axes.items()) or "no sweep axes"
    print(f"sftjax-train: sweep of {n_jobs} job(s): {grid}", file=sys.stderr)


def _is_sweep(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides([override])[0].is_sweep_override()
    except Exception:
        return False


def main() -> None:
    argv = sys.argv[1:]
    with config_errors("sftjax-train"):
        check_override_keys(argv)
        # Checked before Hydra starts too, because Hydra rewrites RUN_DIR/.hydra as soon as the job begins.
        for arg in argv:
            if arg.startswith("run_dir="):
                check_run_dir(arg.split("=", 1)[1])
        if "-m" in argv or "--multirun" in argv:
            check_sweep(argv)
    _main()


if __name__ == "__main__":
    main()
