"""AdamW with linear warmup and cosine decay, weight decay masked off norms and biases, global-norm clipping."""

from __future__ import annotations

import itertools

import jax
import optax

from sftjax.config import OptimConfig


def lr_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    warmup = int(round(cfg.warmup_ratio * total_steps))
    peak, end = cfg.lr, cfg.lr * cfg.min_lr_ratio
    if warmup >= total_steps:
        return optax.linear_schedule(0.0, peak, max(total_steps, 1))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup > 0 else peak,
        peak_value=peak,
        warmup_steps=warmup,
        decay_steps=total_steps,  # optax counts the warmup inside decay_steps
        end_value=end,
    )


def decay_mask(params) -> dict:
    """True where weight decay applies: every parameter except norm scales and biases (the HF Trainer convention;
    embeddings are decayed)."""

    def keep(path, _):
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        leaf = names[-1]
        return not (leaf == "scale" or leaf.endswith("bias") or any("norm" in n for n in names))

    return jax.tree_util.tree_map_with_path(keep, params)


def staged_schedule(cfg: OptimConfig, stage_steps: list[int], stage_optims: list[OptimConfig | None]) -> optax.Schedule:
    """One warmup + cosine per stage when a stage sets its own learning rate (``data.stages[i].lr`` and friends),
    else one schedule over the whole run. Stage i's schedule restarts at its first step."""
    if all(o is None for o in stage_optims):
        return lr_schedule(cfg, sum(stage_steps))
    parts = [lr_schedule(o or cfg, n) for o, n in zip(stage_optims, stage_steps, strict=True) if n > 0]
    boundaries = list(itertools.accumulate(n for n in stage_steps if n > 0))[:-1]
    return optax.join_schedules(parts, boundaries)


def make_optimizer(cfg: OptimConfig, total_steps: int, schedule: optax.Schedule | None = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = schedule or lr_schedule(cfg, total_steps)
    parts = []
    if cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(
        optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask)
    )
    return optax.chain(*parts), schedule
