"""Helpers shared by the bench scripts: synthetic packed SFT rows, a measured matmul peak, memory figures.

Kept here so that every script packs the same documents and measures MFU against the same kind of peak.
"""

from __future__ import annotations

import itertools
import time

from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import OmegaConf

from sftjax.config import ModelConfig, to_model_config
from sftjax.data.batch import stack_rows
from sftjax.data.packing import pack, shifted

PRESETS = Path(__file__).resolve().parent.parent / "conf" / "model"
MODELS = ["58m"] + sorted(p.stem for p in PRESETS.glob("*.yaml"))


def model_config(name: str, max_positions: int, **overrides) -> ModelConfig:
    """``58m`` (Llama d512, 8 layers, 8 heads, ffn 1408, vocab 32000, untied: the CPU reference) or a conf/model
    preset's shapes (random init, never its init_from), with ``overrides`` (attention, scan_layers, remat, dtype...)."""
    if name == "58m":
        cfg = ModelConfig(name="bench58m", vocab_size=32000, hidden_size=512, intermediate_size=1408, num_layers=8,
                          num_heads=8, num_kv_heads=8, max_position_embeddings=max_positions, **overrides)
    else:
        values = OmegaConf.to_container(OmegaConf.load(PRESETS / f"{name}.yaml"))
        cfg = to_model_config({**values, "init_from": "", **overrides})
    cfg.validate()
    return cfg


def packed_rows(n_rows: int, seq: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Documents with realistic SFT lengths (log-normal, median ~350 tokens, 10-60% prompt, prompt not trained),
    best-fit packed into ``seq``-token rows by sftjax's own packer, so every framework sees the same rows."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_rows * 8):
        n = int(np.clip(rng.lognormal(np.log(350), 0.9), 16, seq + 1))
        prompt = int(n * rng.uniform(0.1, 0.6))
        docs.append(shifted(rng.integers(3, vocab, n).astype(np.int32), np.arange(n) >= prompt, 0))
    rows = list(itertools.islice(pack(grain.MapDataset.source(docs).to_iter_dataset(), seq), n_rows))
    assert len(rows) == n_rows, (len(rows), n_rows)
    return stack_rows(rows)


def compute_dtype():
    """What ModelConfig(dtype="auto") computes in: bfloat16 on GPU/TPU, float32 on CPU."""
    from sftjax.model.llama import compute_dtype as resolve

    return resolve("auto")


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` (which must return something to block on), after the caller's warm-up."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def matmul_peak(dtype, n: int | None = None, repeats: int = 10) -> float:
    """FLOP/s of one square matmul in ``dtype`` (median of ``repeats``): what this device reaches on the one op a
    transformer mostly is, a tighter yardstick than a datasheet peak. 8192^3 on accelerators, 2048^3 on CPU."""
    n = n or (2048 if jax.default_backend() == "cpu" else 8192)
    k1, k2 = jax.random.split(jax.random.key(0))
    a, b = jax.random.normal(k1, (n, n), dtype), jax.random.normal(k2, (n, n), dtype)
    f = jax.jit(jnp.matmul)
    jax.block_until_ready(f(a, b))
    return 2.0 * n**3 / median_seconds(lambda: f(a, b), repeats)


def device_peak_bytes() -> int | None:
    """Peak bytes in use on the first device since the process started (None where the backend does not say, e.g.
    CPU). A process-wide high-water mark: later runs in the same process report at least the earlier ones' peak."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def xla_bytes(compiled) -> int | None:
    """What XLA planned for one compiled executable (arguments + outputs + temporaries - donated), any backend."""
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)
    except Exception:  # noqa: BLE001 - not every backend/version reports it
        return None


def gib(b) -> str:
    if b is None:
        return "n/a"
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"


def short_error(e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {(lines[0] if lines else '')[:200]}"
