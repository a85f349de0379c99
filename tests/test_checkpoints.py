"""Orbax checkpoints: exact resume after SIGTERM, corrupt-checkpoint fallback, keep-last plus keep-best."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import orbax.checkpoint as ocp

from sftjax.ckpt.checkpoints import Checkpointer
from sftjax.config import TrainConfig
from tests.test_cli import ROOT, run_train, train_env

# Steps of ~0.2 s on 2 CPU cores, so a SIGTERM sent after step 3 lands well before the last step.
SLOW = ["model=tiny", "model.attention_block=128", "data.seq_len=512", "train.global_batch_size=8",
        "train.log_every=1", "train.progress=false", "optim.warmup_ratio=0",
        # two stages of 4 steps: an interruption after step 3 or later resumes across the stage boundary
        "data.stages=[{name: a, steps: 4, mix: {arith: {}}}, {name: b, steps: 4, mix: {arith: {}, prose: {}}}]"]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def final_params(run_dir: Path, step: int) -> list[np.ndarray]:
    manager = ocp.CheckpointManager((run_dir / "checkpoints").absolute(), item_names=("params", "opt_state", "meta"))
    got = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(),
                                                        opt_state=ocp.args.StandardRestore()))
    manager.close()
    return [np.asarray(x) for x in jax.tree.leaves((got.params, got.opt_state))]


@pytest.mark.slow
def test_resume_is_exact(tmp_path):
    """SIGTERM mid-run saves a checkpoint; the same command resumes it; the steps after the interruption log the
    same losses as an uninterrupted run and the final parameters and optimizer state are bit-identical."""
    whole = tmp_path / "whole"
    r = run_train(f"run_dir={whole}", *SLOW)
    assert r.returncode == 0, r.stderr[-3000:]

    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "sftjax.cli.train", f"run_dir={cut}", *SLOW], cwd=ROOT,
                            env=train_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = cut / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.005)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    stopped = max(losses(cut))
    assert 3 <= stopped < 8, f"the SIGTERM should land before the last step (stopped after {stopped})"
    assert f"after step {stopped}: saved a checkpoint" in err

    r = run_train(f"run_dir={cut}", *SLOW)  # the same command again
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"continuing {cut} from step {stopped}" in r.stdout + r.stderr
    a, b = losses(whole), losses(cut)
    assert sorted(b) == list(range(1, 9))
    stages = [json.loads(line)["stage"] for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert stages == ["a"] * 4 + ["b"] * 4
    assert all(a[s] == b[s] for s in range(1, 9)), (a, b)  # exact equality, not approximate
    for x, y in zip(final_params(whole, 8), final_params(cut, 8), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path):
    run_dir = tmp_path / "run"
    tiny = ["model=tiny", "model.attention_block=64", "data.seq_len=128", "train.global_batch_size=4",
            "train.log_every=1", "train.progress=false", "train.save_every=2"]
    r = run_train(f"run_dir={run_dir}", *tiny, "train.max_steps=4")
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4]
    for f in (run_dir / "checkpoints" / "4" / "params").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(b"garbage")  # the array data of the newest checkpoint is destroyed
    partial = run_dir / "checkpoints" / "5.orbax-checkpoint-tmp-1764570000"  # a save cut off by a kill -9
    (partial / "params").mkdir(parents=True)
    (partial / "params" / "d").write_bytes(b"half")
    r = run_train(f"run_dir={run_dir}", *tiny, "train.max_steps=6")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "step 4" in out and "unreadable" in out and "checkpoints.corrupt" in out
    assert f"continuing {run_dir} from step 2" in out
    assert "dropped 2 metrics lines" in out  # steps 3 and 4 were logged after checkpoint 2 and are recomputed
    assert sorted(losses(run_dir)) == [1, 2, 3, 4, 5, 6]
    assert any((run_dir / "checkpoints.corrupt").iterdir())
    assert not partial.exists()  # never mistaken for a checkpoint, and cleaned up


def test_checkpointer_keeps_last_and_best(tmp_path):
    cfg = TrainConfig(keep_last=2, keep_best=1, best_metric="loss", best_mode="min", async_checkpointing=False)
    ckpt = Checkpointer(tmp_path, cfg, log=lambda *_: None)
    state = {"params": {"w": jnp.ones(3)}, "opt_state": {"m": jnp.zeros(3)}}
    for step, loss in [(1, 5.0), (2, 1.0), (3, 4.0), (4, 3.0), (5, 6.0)]:
        ckpt.save(step, state, {"data": {}}, {"loss": loss})
    ckpt.close()
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4, 5]


@pytest.mark.slow
def test_rerun_of_a_finished_run_changes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    tiny = ["model=tiny", "model.attention_block=64", "data.seq_len=128", "train.global_batch_size=4",
            "train.log_every=1", "train.progress=false", "train.max_steps=3"]
    assert run_train(f"run_dir={run_dir}", *tiny).returncode == 0
    before = (run_dir / "metrics.jsonl").read_text()
    r = run_train(f"run_dir={run_dir}", *tiny)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "already complete at step 3" in r.stdout + r.stderr
    assert (run_dir / "metrics.jsonl").read_text() == before
    # a config that computes something else is refused, naming the key
    r = run_train(f"run_dir={run_dir}", *tiny, "optim.lr=0.5")
    assert r.returncode == 2 and "optim.lr" in r.stderr and "different config" in r.stderr
