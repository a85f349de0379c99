"""The metrics line (what one line of metrics.jsonl says about the steps since the previous one) and its writer
(metrics.jsonl + TensorBoard, process 0 only)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def metrics_line(fetched: list[dict], *, step: int, stage: str, tokens: int, source_names: list[str],
                 window_tokens: int, window_flops: float, elapsed_s: float, peak_flops: float,
                 row_tokens: int) -> dict:
    """One metrics line from the host copies of the train step's metrics since the previous line. loss and
    loss/<source> are token-weighted means over those steps (so a line means the same whatever log_every is);
    lr and grad_norm are the last step's; tokens/s and MFU are over ``elapsed_s``."""
    n_tok = sum(float(m["loss_tokens"]) for m in fetched)
    src_tok = sum(np.asarray(m["source_tokens"]) for m in fetched)
    src_sum = sum(np.asarray(m["source_loss"]) * np.asarray(m["source_tokens"]) for m in fetched)
    last = fetched[-1]
    elapsed_s = max(elapsed_s, 1e-9)
    return {
        "step": step,
        "stage": stage,
        "loss": sum(float(f["loss"]) * float(f["loss_tokens"]) for f in fetched) / max(n_tok, 1.0),
        **{f"loss/{name}": float(src_sum[i] / src_tok[i]) for i, name in enumerate(source_names) if src_tok[i] > 0},
        "lr": float(last["lr"]),
        "grad_norm": float(last["grad_norm"]),
        "tokens": tokens,
        "tokens_per_s": window_tokens / elapsed_s,
        "mfu": window_flops / elapsed_s / peak_flops,
        "fill": window_tokens / (len(fetched) * row_tokens),
    }


@dataclass
class Window:
    """The steps dispatched since the previous metrics line; their device metrics are fetched only when the line is
    written, so logging never stalls the dispatch of the next step."""

    pending: list = field(default_factory=list)  # (step, device metrics, cumulative tokens)
    start: float = field(default_factory=time.perf_counter)
    tokens: int = 0
    flops: float = 0.0

    def add(self, step: int, metrics: dict, cumulative_tokens: int, real_tokens: int, flops: float) -> None:
        self.pending.append((step, metrics, cumulative_tokens))
        self.tokens += real_tokens
        self.flops += flops

    def clear(self) -> None:
        self.pending, self.start, self.tokens, self.flops = [], time.perf_counter(), 0, 0.0


class MetricsWriter:
    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.file = open(run_dir / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.tb.add_scalar(key, value, record["step"])

    def scalars(self, step: int, values: dict) -> None:
        """TensorBoard only (values that belong to no metrics line, e.g. the eval before the first step)."""
        if self.enabled and self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep it visible rather than dropping it
    return v
