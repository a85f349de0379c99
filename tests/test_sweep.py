"""Sweeps: experiment presets compose at both scales, the grid is counted before launching, and a multirun writes a
manifest in which a failed job is recorded while the others still run."""

import json
import subprocess
import sys
from pathlib import Path

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


@pytest.mark.slow
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
    assert (Path(ok["run_dir"]) / "metrics.jsonl").exists() and Path(ok["run_dir"]).parent == root
    assert "failed" in r.stdout + r.stderr and "the other jobs go on" in r.stdout + r.stderr


# One grid point of each preset at scale=cpu, end to end on freshly prepared real data (a small share of it). The
# model is the tiny one (model=tiny wins over size=cpu's SmolLM2) so the five runs fit in CI; dense attention
# because byte-level rows of 2048 would otherwise make the blockwise kernel slow to compile. Evaluation runs at the
# first stage's end with small suite limits (the Dong presets share eval=dong: exercised once).
DONG_EVAL = ["eval.suites.math.limit=2", "eval.suites.math.max_new_tokens=8", "eval.suites.code.limit=1",
             "eval.suites.code.max_new_tokens=8", "eval.suites.math_loss.limit=4", "eval.suites.code_loss.limit=4",
             "eval.suites.general_loss.limit=4"]
POINTS = {
    "dong2023_strategies": ["strategy=dmt", *DONG_EVAL],
    "dong2023_amounts": ["strategy.specialized=[math,general]", "strategy.amount=1/4", "eval.at_stage_end=false"],
    "dong2023_dmt_k": ["strategy.k=1/16", "eval.at_stage_end=false"],
    "zhang2023": ["data.stages.0.mix.general.weight=0.25", "eval.suites.math.limit=2",
                  "eval.suites.math.max_new_tokens=8", "eval.suites.general_loss.limit=4", "eval.suites.rubric.limit=1",
                  "eval.suites.rubric.max_new_tokens=8", "eval.suites.rubric.judge.max_new_tokens=8",
                  "eval.suites.rubric.judge.retries=0"],
    "finetunebench": ["data.sources.facts.format=masking", "eval.suites.knowledge.limit=10",
                      "eval.suites.knowledge.max_new_tokens=8"],
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("presets")
    r = subprocess.run([sys.executable, "-m", "sftjax.cli.data", "prepare", "--limit", "24", "--out",
                        str(root / "data" / "prepared"), "--sources", "math,code,general,knowledge"],
                       env=train_env(), cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return root


@pytest.mark.slow
@pytest.mark.parametrize("preset", POINTS)
def test_preset_runs_end_to_end_at_cpu_scale(prepared, preset):
    run_dir = prepared / "runs" / preset
    r = run_train("-m", f"experiment={preset}", "scale=cpu", f"run_dir={run_dir}", "model=tiny",
                  "model.attention=dense", "data.seq_len=2048", "train.max_steps=1", "train.progress=false",
                  "train.tensorboard=false", *POINTS[preset], cwd=prepared)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["counts"] == {"completed": 1, "failed": 0, "running": 0}  # one grid point: one job
    job = manifest["jobs"][0]
    assert "size=cpu" in job["override_dirname"]  # scale=cpu put the job on the CPU size
    out = Path(job["run_dir"])
    assert "eval." not in out.name and len(out.name) <= 160
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 1
    if "eval.at_stage_end=false" not in POINTS[preset]:
        suites = json.loads((out / "eval" / "step_1.json").read_text())["suites"]
        assert suites and all(s["metrics"] for s in suites.values())


def test_job_dirname_drops_eval_keys_and_stays_short():
    from sftjax.config import job_dirname

    assert job_dirname("eval.suites.math.limit=2,size=cpu,strategy=dmt,train.progress=False") == "size=cpu,strategy=dmt"
    long = ",".join(f"data.sources.s{i}.path=/some/long/path/{i}.jsonl" for i in range(20))
    a, b = job_dirname(long), job_dirname(long + ",x=1")
    assert len(a) <= 160 and a != b and "/" not in a  # distinct jobs keep distinct directories
    assert job_dirname("") == "default"
    # eval keys removed with ~ are dropped too; fractions are shown, not hashed like paths (the amounts study's
    # directories were 'experiment=dong2023_amounts,...,~eval.suites.code=null-da19c199ff', the amount hidden)
    assert job_dirname("strategy.amount=1/256,strategy.specialized=[math],~eval.suites.code=null") == (
        "strategy.amount=1_256,strategy.specialized=[math]")


def test_job_dirname_names_paths_by_hash():
    """A data path shared by every job must not bury the swept keys (the FineTuneBench study's directories were
    'data.sources.facts.format=qa,data.sources.facts.path=runs_study_..._train.jsonl,experimen-94fc16303a')."""
    from sftjax.config import job_dirname

    path = "data.sources.facts.path=runs/study/data/knowledge_${data.sources.facts.format}_train.jsonl"
    qa = job_dirname(f"data.sources.facts.format=qa,{path},experiment=finetunebench,optim.lr=1e-05")
    masking = job_dirname(f"data.sources.facts.format=masking,{path},experiment=finetunebench,optim.lr=1e-05")
    assert qa.startswith("data.sources.facts.format=qa,experiment=finetunebench,optim.lr=1e-05-")
    assert "knowledge" not in qa and qa != masking
    other = job_dirname(f"data.sources.facts.format=qa,{path.replace('study', 'other')},experiment=finetunebench,"
                        "optim.lr=1e-05")
    assert other != qa  # jobs that differ only by a path still get their own directories
