"""sftjax-dryrun: plans the real train step on fake devices; exit 0 fits, 1 does not fit, 2 bad config."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sftjax.cli.dryrun import device_count, fake_device_env, parse_args
from sftjax.config import ConfigError, ModelConfig
from sftjax.train.plan import check_divisibility, divisibility_problems

ROOT = Path(__file__).resolve().parents[1]
# scanned layers and one attention tile keep the compile short
TINY = ["model=tiny", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "data.seq_len=128", "model.scan_layers=true"]


def run_dryrun(*args: str) -> subprocess.CompletedProcess:
    # The CLI sets its own device count; drop the 8-device flags this test process runs with.
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    return subprocess.run([sys.executable, "-m", "sftjax.cli.dryrun", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_plan_prints_memory_and_flops(tmp_path):
    out = tmp_path / "plan.json"
    r = run_dryrun(*TINY, "dryrun.memory_gib=1", "dryrun.peak_flops=1e12", f"dryrun.json={out}")
    assert r.returncode == 0, r.stderr
    assert "on 8 fake cpu devices, mesh data=2 fsdp=2 tensor=2" in r.stdout
    for line in ("parameters (float32)", "optimizer state", "compiled: temporaries", "model FLOPs",
                 "step time at peak", "fits,"):
        assert line in r.stdout, r.stdout
    p = json.loads(out.read_text())
    m = p["memory_per_device"]
    assert p["devices"] == 8 and p["fits"] is True
    assert m["temporaries"] > 0 and m["total"] >= m["arguments"] > 0
    # the analytic shard sizes: AdamW keeps two float32 moments per parameter, sharded like it
    assert m["optimizer_state"] == pytest.approx(2 * m["parameters"], rel=0.01)
    assert m["arguments"] >= m["parameters"] + m["optimizer_state"] + m["batch"]
    tokens = 8 * 128
    assert p["tokens_per_step"] == tokens
    assert p["step_s_at_peak"] == pytest.approx(p["model_flops_per_step"] / (1e12 * 8))
    assert p["xla_flops_per_step"] > 0


def test_plan_that_does_not_fit_exits_1():
    r = run_dryrun(*TINY, "dryrun.memory_gib=0.000001")
    assert r.returncode == 1, r.stderr
    assert "DOES NOT FIT" in r.stdout
    assert "does not fit: the plan needs" in r.stderr and "more than dryrun.memory_gib=1e-06" in r.stderr


def test_mesh_that_does_not_divide_exits_2_naming_the_dimension():
    r = run_dryrun("model=tiny", "mesh.data=1", "mesh.tensor=8")  # tiny: 4 heads, 2 kv heads
    assert r.returncode == 2, r.stderr
    assert "sftjax-dryrun: invalid config: config key 'mesh.tensor'" in r.stderr
    assert "heads=4 (model.num_heads" in r.stderr and "is not divisible by mesh.tensor=8" in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_dryrun_keys_exit_2():
    r = run_dryrun("model=tiny", "dryrun.memory=3")
    assert r.returncode == 2 and "did you mean 'dryrun.memory_gib'" in r.stderr
    r = run_dryrun("model=tiny", "dryrun.devices=4", "mesh.data=8")
    assert r.returncode == 2 and "device count 4" in r.stderr


def test_divisibility_checker():
    tiny = ModelConfig()  # vocab 512, hidden 64, mlp 176, 4 heads, 2 kv heads
    assert divisibility_problems(tiny, {"data": 4, "fsdp": 8, "tensor": 2}) == []
    problems = divisibility_problems(tiny, {"data": 1, "fsdp": 1, "tensor": 4})
    assert len(problems) == 1 and problems[0].startswith("kv_heads=2 (model.num_kv_heads; layers.0.attn.k_proj")
    assert problems[0].endswith("is not divisible by mesh.tensor=4")
    problems = divisibility_problems(tiny, {"data": 1, "fsdp": 3, "tensor": 1})
    assert problems == ["embed=64 (model.hidden_size; embed and 15 more) is not divisible by mesh.fsdp=3"]
    odd_mlp = ModelConfig(num_heads=8, num_kv_heads=8, intermediate_size=180)
    with pytest.raises(ConfigError, match=r"config key 'mesh.tensor'.*: mlp=180 \(model.intermediate_size"):
        check_divisibility(odd_mlp, {"data": 1, "fsdp": 1, "tensor": 8})
    check_divisibility(tiny, {"data": 2, "fsdp": 2, "tensor": 2})  # no error


def test_device_count_and_env():
    cfg, dry = parse_args(["model=tiny", "mesh.fsdp=64"])  # mesh.data=-1 counts as 1
    assert device_count(cfg, dry) == 64
    cfg, dry = parse_args(["model=tiny", "mesh.fsdp=4", "dryrun.devices=16"])
    assert device_count(cfg, dry) == 16
    env = fake_device_env(64, {"XLA_FLAGS": "--xla_foo=1 --xla_force_host_platform_device_count=8"})
    assert env["XLA_FLAGS"] == "--xla_foo=1 --xla_force_host_platform_device_count=64"
    assert env["JAX_PLATFORMS"] == "cpu"
    with pytest.raises(ConfigError, match="dryrun.memory_gib"):
        parse_args(["model=tiny", "dryrun.memory_gib=-1"])
