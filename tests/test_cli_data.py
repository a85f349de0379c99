"""sftjax-data inspect: the contract JSON, the marked examples, and bad keys."""

import json
import subprocess
import sys

from tests.test_cli import ROOT, train_env


def run_data(*args):
    return subprocess.run([sys.executable, "-m", "sftjax.cli.data", *map(str, args)], cwd=ROOT, env=train_env(),
                          capture_output=True, text=True, timeout=300)


def test_inspect_writes_the_contract_json(tmp_path):
    out = tmp_path / "inspect.json"
    r = run_data("inspect", "data=fixture", "data.seq_len=256", "train.global_batch_size=4", "inspect.batches=3",
                 f"inspect.json={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["batches"] == 3 and 0.9 < report["fill"] <= 1
    for name in ("arith", "prose"):
        assert set(report["main"][name]) == {"examples", "tokens", "loss_tokens", "truncated", "dropped"}
    assert report["main"]["prose"]["truncated"] > 0  # long docstrings at seq_len 256, counted
    assert "⟦" in r.stdout and "stage main" in r.stdout and "fill" in r.stdout


def test_inspect_bad_input_is_reported(tmp_path):
    r = run_data("inspect", "data=fixture", "inspect.batchs=3")
    assert r.returncode == 2 and "inspect.batchs" in r.stderr and "batches" in r.stderr
    r = run_data("inspect", "data=fixture", "data.seq_lenn=3")
    assert r.returncode == 2 and "did you mean 'data.seq_len'" in r.stderr
