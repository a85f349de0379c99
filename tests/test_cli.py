"""sftjax-train end to end: the run directory contract, config errors, and divergence stops."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=tiny", "model.attention_block=64", "data.seq_len=128", "train.global_batch_size=4",
        "train.log_every=1"]


def train_env() -> dict:
    """One CPU device in the subprocess (the test process itself simulates 8)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    return env


def run_train(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "sftjax.cli.train", *args], env=train_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_train_writes_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    r = run_train(f"run_dir={run_dir}", *TINY, "train.max_steps=4", "train.progress=false")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run_dir / ".hydra" / "config.yaml").exists()
    records = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert [rec["step"] for rec in records] == [1, 2, 3, 4]
    for key in ("step", "stage", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "mfu", "fill"):
        assert key in records[-1], key
    # loss/<source> appears for every source that had loss tokens in the logged window
    assert any("loss/arith" in rec for rec in records) and any("loss/prose" in rec for rec in records)
    assert records[-1]["tokens"] > records[0]["tokens"] > 0
    assert 0 < records[-1]["fill"] <= 1
    stats = json.load(open(run_dir / "data_stats.json"))
    assert set(stats["main"]) == {"arith", "prose"}
    assert stats["main"]["arith"]["examples"] > 0
    assert any((run_dir / "tb").iterdir())
    assert "loss (step 1 -> 4)" in r.stdout + r.stderr
    assert "compiled train step" in (run_dir / "train.log").read_text()
    assert (run_dir / "checkpoints" / "4").is_dir()  # the end of a run is always checkpointed


def test_run_directory_without_checkpoints_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    again = run_train(f"run_dir={run_dir}", *TINY, "train.max_steps=2", "train.progress=false")
    assert again.returncode == 2 and "already holds a run" in again.stderr and "no checkpoint" in again.stderr
    assert (run_dir / "metrics.jsonl").read_text() == '{"step": 1}\n'  # nothing appended
    assert not (run_dir / ".hydra").exists()  # refused before Hydra writes anything


def test_train_config_error_names_key(tmp_path):
    r = run_train(f"run_dir={tmp_path / 'x'}", "optim.lr=-1")
    assert r.returncode == 2
    assert "optim.lr" in r.stderr and "positive" in r.stderr
    r = run_train(f"run_dir={tmp_path / 'y'}", "train.max_stpes=3")
    assert r.returncode == 2 and "did you mean 'train.max_steps'" in r.stderr


def test_train_checks_that_need_devices_fail_before_compiling(tmp_path):
    r = run_train(f"run_dir={tmp_path / 'm'}", "mesh.data=3")  # one CPU device in the subprocess
    assert r.returncode == 2 and "'mesh'" in r.stderr and "device count 1" in r.stderr
    assert "compiled" not in r.stdout + r.stderr
    r = run_train(f"run_dir={tmp_path / 'v'}", "model.vocab_size=100")
    assert r.returncode == 2 and "model.vocab_size" in r.stderr and ">= 259" in r.stderr


@pytest.mark.slow
def test_train_stops_on_nonfinite_loss(tmp_path):
    r = run_train(f"run_dir={tmp_path / 'nan'}", *TINY, "train.max_steps=6", "optim.lr=1e30", "optim.grad_clip=0",
                  "optim.warmup_ratio=0", "train.progress=false")
    assert r.returncode == 3, r.stderr[-2000:]
    assert "at step" in r.stderr and "Last good checkpoint" in r.stderr


@pytest.mark.slow
def test_train_runs_a_dmt_curriculum(tmp_path):
    """strategy=dmt end to end: two stages in order, metrics carry the stage, a checkpoint at each stage end and
    data_stats.json with the realized composition per stage."""
    run_dir = tmp_path / "dmt"
    r = run_train(f"run_dir={run_dir}", *TINY, "train.progress=false", "data.stages=[]", "strategy=dmt",
                  "strategy.specialized=[arith]", "strategy.general=[prose]", "strategy.epochs=1", "strategy.k=1/2",
                  "+strategy.amounts.arith=40", "+strategy.amounts.prose=1/10", "train.keep_last=5")
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    names = [rec["stage"] for rec in records]
    assert names[0] == "specialized" and names[-1] == "general_plus_k" and names == sorted(names, reverse=True)
    first_general = names.index("general_plus_k")
    steps = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [records[first_general - 1]["step"], records[-1]["step"]]  # one per stage end
    stats = json.load(open(run_dir / "data_stats.json"))
    assert stats["specialized"]["arith"]["examples"] == 40  # one epoch of the 40 selected
    assert stats["general_plus_k"]["arith"]["examples"] == 20 and stats["general_plus_k"]["prose"]["examples"] == 22


def user_config_dir(tmp_path: Path) -> Path:
    """A user's --config-dir holding only their own data/, eval/ and mesh/ mine.yaml (data: the fixture sources at
    seq 128; eval: a batch size of 3 and no suites)."""
    conf = tmp_path / "conf"
    for group in ("data", "eval", "mesh"):
        (conf / group).mkdir(parents=True)
    (conf / "eval" / "mine.yaml").write_text("batch_size: 3\nsuites: {}\n")
    fixture = (ROOT / "conf" / "data" / "fixture.yaml").read_text()
    (conf / "data" / "mine.yaml").write_text(fixture.replace("name: fixture", "name: mine")
                                             .replace("seq_len: 512", "seq_len: 128"))
    (conf / "mesh" / "mine.yaml").write_text("data: 1\nfsdp: 1\ntensor: 1\n")
    return conf


def test_config_dir_adds_to_the_package_configs_for_every_entry_point(tmp_path):
    """--config-dir DIR adds DIR to the search path (the package's conf/ stays) in train, eval, generate, data
    inspect and dryrun: a DIR with only the user's own data/NAME.yaml (eval: eval/NAME.yaml) is enough."""
    from sftjax.cli.dryrun import parse_args

    conf = user_config_dir(tmp_path)
    for module, args in (("train", [f"run_dir={tmp_path / 'r'}", "data=mine"]), ("eval", ["eval=mine"]),
                         ("generate", ["mesh=mine"])):
        r = subprocess.run([sys.executable, "-m", f"sftjax.cli.{module}", "--config-dir", str(conf), *args, "--cfg",
                            "job"], env=train_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (module, r.stderr[-2000:])
        expected = {"train": "name: mine", "eval": "batch_size: 3", "generate": "fsdp: 1"}[module]
        assert expected in r.stdout, (module, r.stdout)
    r = subprocess.run([sys.executable, "-m", "sftjax.cli.data", "inspect", "--config-dir", str(conf), "data=mine",
                        "train.global_batch_size=4", "inspect.batches=1"], env=train_env(), cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "stage main" in r.stdout
    cfg, _ = parse_args(["--config-dir", str(conf), "data=mine", "model=tiny"])
    assert cfg.data.name == "mine" and cfg.data.seq_len == 128 and cfg.model.name == "tiny"


def test_bad_input_is_reported_config_dir(tmp_path):
    from sftjax.cli.dryrun import parse_args
    from sftjax.config import ConfigError

    with pytest.raises(ConfigError, match="no such directory"):
        parse_args(["--config-dir", str(tmp_path / "nowhere"), "data=mine"])
    r = subprocess.run([sys.executable, "-m", "sftjax.cli.data", "inspect", "--config-dir", str(tmp_path),
                        "data=mine"], env=train_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "mine" in r.stderr and "Traceback" not in r.stderr
