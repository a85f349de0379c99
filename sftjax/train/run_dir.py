"""Run-directory rules shared by the CLI (checked before Hydra writes .hydra/) and the loop.

Kept free of jax imports so the CLI can call it before anything heavy is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

from sftjax.config import ConfigError

METRICS = "metrics.jsonl"


def has_checkpoints(run_dir: str | Path) -> bool:
    root = Path(run_dir) / "checkpoints"
    return root.is_dir() and any(p.name.isdigit() for p in root.iterdir())


def check_run_dir(run_dir: str | Path) -> bool:
    """True when the run directory holds checkpoints to resume from. A directory that holds a run but no
    checkpoint is refused rather than having a second run's steps appended to its metrics."""
    if has_checkpoints(run_dir):
        return True
    metrics = Path(run_dir) / METRICS
    if metrics.exists() and metrics.stat().st_size > 0:
        raise ConfigError(
            f"config key 'run_dir': {metrics.parent} already holds a run (metrics.jsonl) but no checkpoint to resume "
            "from; expected a new or empty run directory, or one with checkpoints/"
        )
    return False


def truncate_metrics(run_dir: str | Path, last_step: int) -> tuple[list[dict], int]:
    """Keep the metrics lines up to the restored step (later ones are recomputed); returns (kept, dropped count)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return [], 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= last_step]
    if len(kept) != len(lines):
        path.write_text("".join(line + "\n" for line in kept))
    return [json.loads(line) for line in kept], len(lines) - len(kept)
