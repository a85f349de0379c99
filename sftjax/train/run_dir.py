"""Run-directory and resume rules shared by the CLI (checked before Hydra writes .hydra/) and the loop.

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
