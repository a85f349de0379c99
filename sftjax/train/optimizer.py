"""AdamW with linear warmup and cosine decay, weight decay masked off norms and biases, global-norm clipping."""

from __future__ import annotations

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


def make_optimizer(cfg: OptimConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = lr_schedule(cfg, total_steps)
    parts = []
    if cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(
        optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask)
    )
    return optax.chain(*parts), schedule
