"""sftjax-train: `sftjax-train run_dir=DIR model=NAME [overrides]` (a Hydra app; `python -m sftjax.cli.train`)."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from sftjax.cli import config_errors
from sftjax.config import check_override_keys, register_configs, to_config
from sftjax.train.run_dir import check_run_dir

log = logging.getLogger("sftjax")
logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU found" is not news on CPU/GPU
logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax narrates every save at INFO

register_configs()


@hydra.main(version_base=None, config_path="pkg://sftjax.conf", config_name="config")
def _main(dcfg: DictConfig) -> None:
    with config_errors("sftjax-train"):
        cfg = to_config(dcfg)
    from sftjax.train.loop import Preempted, TrainingDiverged, train  # heavy imports once the config is valid

    try:
        with config_errors("sftjax-train"):
            summary = train(cfg, log=log.info)
    except TrainingDiverged as e:
        print(f"sftjax-train: training diverged: {e}", file=sys.stderr)
        sys.exit(3)
    except Preempted as e:
        print(f"sftjax-train: stopped by {e}", file=sys.stderr)
        sys.exit(128 + e.signum)
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


def main() -> None:
    argv = sys.argv[1:]
    with config_errors("sftjax-train"):
        check_override_keys(argv)
        # Checked before Hydra starts too, because Hydra rewrites RUN_DIR/.hydra as soon as the job begins.
        for arg in argv:
            if arg.startswith("run_dir="):
                check_run_dir(arg.split("=", 1)[1])
    _main()


if __name__ == "__main__":
    main()
