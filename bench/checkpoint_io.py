"""Checkpoint and interop timings for the embedded default (SmolLM2-135M-Instruct) on this machine.

Prints: GGUF -> HF conversion, HF import into sharded parameters, Orbax save (blocking part and total) and restore of
the full train state (params + AdamW state), and HF export. Run: .venv/bin/python bench/checkpoint_io.py
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import jax

from sftjax.ckpt import hf
from sftjax.ckpt.checkpoints import Checkpointer, abstract_like
from sftjax.ckpt.gguf import gguf_to_hf, smollm2_gguf_path
from sftjax.config import OptimConfig, TrainConfig
from sftjax.parallel.mesh import make_mesh
from sftjax.train.optimizer import make_optimizer
from sftjax.train.state import init_train_state, train_state_layout


def timed(label: str, fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    jax.block_until_ready(out) if isinstance(out, (dict, jax.Array)) else None
    print(f"{label:<44} {time.perf_counter() - t0:7.2f} s")
    return out


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="sftjax-bench-"))
    quiet = lambda *_: None  # noqa: E731
    try:
        hf_dir = timed("GGUF -> HF directory (transformers)", gguf_to_hf, smollm2_gguf_path(), work / "hf", log=quiet)
        cfg = hf.read_hf_config(hf_dir)
        cfg.scan_layers = True
        mesh = make_mesh((1, 1, 1))
        optimizer, _ = make_optimizer(OptimConfig(), 100)
        _, abstract, shardings = train_state_layout(cfg, optimizer, mesh)
        params = timed("HF import -> sharded params (134.5M)", hf.load_hf_params, hf_dir, cfg,
                       shardings["params"], log=quiet)
        _, state, _ = init_train_state(cfg, optimizer, mesh, 0, params=params)
        ckpt = Checkpointer(work / "run", TrainConfig(), log=quiet)
        timed("Orbax save, blocking part (async)", ckpt.save, 1, state, {"data": {}})
        timed("Orbax save, until committed", ckpt.manager.wait_until_finished)
        target = abstract_like({k: abstract[k] for k in ("params", "opt_state")},
                               {k: shardings[k] for k in ("params", "opt_state")})
        timed("Orbax restore (params + AdamW state)", ckpt.restore_latest, target)
        ckpt.close()
        size = sum(f.stat().st_size for f in (work / "run").rglob("*") if f.is_file())
        print(f"{'checkpoint size on disk':<44} {size / 2**20:7.1f} MiB")
        timed("HF export (float32 safetensors)", hf.save_hf, params, cfg, work / "export", tokenizer_dir=hf_dir,
              log=quiet)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
