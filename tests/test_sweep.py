"""Sweeps: experiment presets compose at both scales, the grid is counted before launching, and a multirun writes a
manifest in which a failed job is recorded while the others still run."""

import json
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_module

from sftjax.config import ConfigError, register_configs, to_config
from sftjax.sweep import check_sweep_size, count_jobs
from tests.test_cli import ROOT, train_env

PRESETS = {  # preset -> its sweep axes at paper scale
    "dong2023_amounts": {"size": 3, "strategy.specialized": 4, "strategy.amount": 5},
    "dong2023_strategies": {"size": 3, "strategy": 4},
    "dong2023_dmt_k": {"size": 3, "strategy.k": 5},
    "zhang2023": {"size": 2, "data.stages.0.mix.general.weight": 5},
    "finetunebench": {"data.sources.facts.format": 4},  # size 7b only: not a sweep axis
}


def composed(*overrides, hydra=False):
    register_configs()
    with initialize_config_module(config_module="sftjax.conf", version_base=None):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_compose_at_both_scales(preset):
    paper = composed(f"experiment={preset}", hydra=True)
    assert count_jobs([], dict(paper.hydra.sweeper.params))[1] == PRESETS[preset]
    cfg = to_config(composed(f"experiment={preset}"))
    assert cfg.model.name.startswith("llama1_") and cfg.data.stages
    cpu = composed(f"experiment={preset}", "scale=cpu", hydra=True)
    assert cpu.hydra.sweeper.params.size == "cpu"
    cfg = to_config(composed(f"experiment={preset}", "scale=cpu"))
    assert cfg.model.name == "smollm2_135m" and cfg.data.seq_len == 512 and cfg.train.global_batch_size == 4


def test_sweep_counts_the_grid():
    n, axes = count_jobs(["strategy.k=1,1/4", "optim.lr=1e-5"], {"size": "7b,13b", "strategy.k": "1,1/4,1/16"})
    assert (n, axes) == (4, {"size": 2, "strategy.k": 2})  # the command line replaced the preset's k axis
    assert count_jobs(["optim.lr=range(1,4)"], None)[0] == 3
    check_sweep_size(4, axes, 4, False)
    with pytest.raises(ConfigError, match=r"sweep.max_jobs.*4 jobs.*size \(2\) x strategy.k \(2\)"):
        check_sweep_size(4, axes, 3, False)
    check_sweep_size(4, axes, 3, True)


def run_train(*args, cwd=ROOT, timeout=600):
    return subprocess.run([sys.executable, "-m", "sftjax.cli.train", *args], env=train_env(), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def test_bad_input_is_reported_sweep(tmp_path):
    r = run_train("-m", f"run_dir={tmp_path / 's'}", "experiment=dong2023_amounts", "sweep.max_jobs=10")
    assert r.returncode == 2 and "would launch 60 jobs" in r.stderr and "sweep.confirm=true" in r.stderr
    assert not (tmp_path / "s").exists()  # refused before anything launched
    r = run_train("-m", f"run_dir={tmp_path / 's'}", "experiment=nope")
    assert r.returncode == 2 and "nope" in r.stderr and "dong2023_strategies" in r.stderr  # the valid presets
    r = run_train("-m", f"run_dir={tmp_path / 's'}", "strategy.kk=1,2")
    assert r.returncode == 2 and "strategy.kk" in r.stderr and "did you mean" in r.stderr


def test_sweep_manifest_records_a_failed_job_and_runs_the_rest(tmp_path):
    root = tmp_path / "sweep"
    r = run_train("-m", f"run_dir={root}", "model=tiny", "model.attention_block=64", "data.seq_len=128",
                  "train.global_batch_size=2", "train.max_steps=1", "train.progress=false", "train.tensorboard=false",
                  "optim.lr=-1,1e-3")
    assert r.returncode != 0  # the sweep as a whole reports the failure
    manifest = json.loads((root / "manifest.json").read_text())
    jobs = {j["overrides"][-1]: j for j in manifest["jobs"]}
    assert manifest["counts"] == {"completed": 1, "failed": 1, "running": 0}
    assert jobs["optim.lr=-1"]["status"] == "failed" and "optim.lr" in jobs["optim.lr=-1"]["error"]
    ok = jobs["optim.lr=0.001"]
    assert ok["status"] == "completed" and "optim.lr=0.001" in ok["run_dir"]
    assert (tmp_path / "sweep" / ok["override_dirname"] / "metrics.jsonl").exists()  # its own run directory
    assert "failed" in r.stdout + r.stderr and "the other jobs go on" in r.stdout + r.stderr
