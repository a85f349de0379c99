"""Run-directory rules shared by the CLI (checked before Hydra writes .hydra/) and the loop.

Kept free of jax imports so the CLI can call it before anything heavy is loaded.
"""

from __future__ import annotations

from pathlib import Path

from sftjax.config import ConfigError


def ensure_new_run_dir(run_dir: str | Path) -> None:
    """Resuming needs checkpoints (not written yet): refuse a directory that already holds a run rather than append
    a second run's steps to its metrics."""
    metrics = Path(run_dir) / "metrics.jsonl"
    if metrics.exists() and metrics.stat().st_size > 0:
        raise ConfigError(
            f"config key 'run_dir': {metrics.parent} already holds a run (metrics.jsonl); resuming is not available "
            "yet, expected a new or empty run directory"
        )
