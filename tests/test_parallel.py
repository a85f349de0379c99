"""Two real processes on loopback (gloo collectives) match one process; logical axis rules are data."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from jax.sharding import PartitionSpec

from sftjax.parallel.rules import LOGICAL_AXIS_RULES, spec_for
from sftjax.parallel.mesh import make_mesh

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(pid, nproc, port, run_dir, out):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device per process
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen([sys.executable, "-m", "tests.multiprocess_worker", str(pid), str(nproc), str(port),
                             str(run_dir), str(out)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def losses(run_dir):
    return [json.loads(line)["loss"] for line in open(Path(run_dir) / "metrics.jsonl")]


@pytest.mark.slow
def test_sharded_equals_single_two_processes(tmp_path):
    port = free_port()
    procs = [launch(i, 2, port, tmp_path / "two", tmp_path / f"p{i}.npy") for i in range(2)]
    single = launch(0, 1, 0, tmp_path / "one", tmp_path / "single.npy")
    for p in procs + [single]:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-3000:]
    for i in range(2):
        info = json.load(open(str(tmp_path / f"p{i}.npy") + ".json"))
        assert (info["devices"], info["processes"]) == (2, 2)
        # each process tokenized only its share of every source (sftjax.data.distributed)
        assert sum(f"of them tokenized by process {i} of 2" in line for line in info["log"]) == 2, info["log"]
    np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=1e-5)
    a, b, ref = (np.load(tmp_path / f) for f in ("p0.npy", "p1.npy", "single.npy"))
    np.testing.assert_array_equal(a, b)  # both processes hold the same replicated parameters
    assert np.linalg.norm(a - ref) / np.linalg.norm(ref) < 1e-5


def test_logical_axis_rules_map_to_mesh_axes(eight_devices):
    mesh = make_mesh((2, 2, 2))
    assert dict(LOGICAL_AXIS_RULES)["embed"] == "fsdp"
    assert spec_for(("embed", "mlp"), (64, 176), mesh) == PartitionSpec("fsdp", "tensor")
    # a dimension that does not divide the mesh axis is replicated, not an error (SmolLM2's 3 KV heads on tensor=2)
    assert spec_for(("embed", "kv_heads", "head_dim"), (64, 3, 16), mesh) == PartitionSpec("fsdp", None, None)
    assert spec_for(("act_batch", "act_length", "act_embed"), (8, 128, 64), mesh) == PartitionSpec(
        ("data", "fsdp"), None, None)
