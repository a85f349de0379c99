"""Launchers: what cannot run here (gcloud on a TPU pod, sbatch/srun) is checked as far as it can be: shell syntax,
the exact commands from --dry-run/DRY_RUN=1, the scripts run against stub gcloud/scontrol/srun, Hydra composition of
every conf/hydra/launcher option, and the sbatch script submitit writes for hydra/launcher=slurm."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.utils import get_class
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from sftjax.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SCRIPTS = ["local.sh", "tpu_pod.sh", "slurm.sbatch"]
VENV_TRAIN = ROOT / ".venv" / "bin" / "sftjax-train"  # what slurm.sbatch runs when the submission dir has it
# prints its own environment's SFTJAX_*/JAX_* and its arguments as one JSON line: stands in for sftjax-train
ECHO_TRAIN = """#!/usr/bin/env python3
import json, os, sys
env = {k: v for k, v in os.environ.items() if k.startswith(("SFTJAX_", "JAX_"))}
print(json.dumps({"env": env, "args": sys.argv[1:]}))
sys.exit(int(os.environ.get("ECHO_TRAIN_FAIL_ID", "-1") == os.environ.get("SFTJAX_PROCESS_ID")))
"""


def script(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def base_env(**extra) -> dict:
    """The test process simulates 8 devices through XLA_FLAGS; the scripts' children should not inherit that."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS" and not k.startswith(("SLURM_", "SFTJAX_"))}
    env.update(extra)
    return env


def run(cmd, env=None, cwd=ROOT, timeout=60):
    return subprocess.run(cmd, env=env or base_env(), cwd=cwd, capture_output=True, text=True, timeout=timeout)


def echoes(stdout: str) -> list[dict]:
    return [json.loads(line[line.index('{"env"'):]) for line in stdout.splitlines() if '{"env"' in line]


@pytest.mark.parametrize("name", SCRIPTS)
def test_launch_script_shell_syntax(name):
    path = LAUNCH / name
    assert os.access(path, os.X_OK), f"{name} is not executable"
    r = run(["bash", "-n", str(path)])
    assert r.returncode == 0, r.stderr


# --- TPU pod -----------------------------------------------------------------------------------------------------

TPU_FLAGS = {"--project": "my-proj", "--zone": "us-central2-b", "--tpu": "pod-v4-32"}
TPU = [word for flag, value in TPU_FLAGS.items() for word in (flag, value)]
TRICKY = "data.sources.mine.path=/mnt/shared/my data/it's $HOME.jsonl"  # a space, a quote and a $ survive


def test_tpu_pod_dry_run_prints_gcloud_command_for_every_worker():
    r = run([LAUNCH / "tpu_pod.sh", *TPU, "--dry-run", "--", "sftjax-train", "run_dir=/mnt/shared/runs/x", TRICKY,
             "optim.lr=3e-4"])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout
    argv = shlex.split(lines[0])
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod-v4-32"]
    assert "--worker=all" in argv
    assert argv[argv.index("--project") + 1] == "my-proj" and argv[argv.index("--zone") + 1] == "us-central2-b"
    remote = shlex.split(argv[argv.index("--command") + 1])
    assert remote[:3] == ["cd", "~/sftjax", "&&"]
    i = remote.index("sftjax-train")
    # the command as given, each word intact, with mesh.auto=true appended: jax.distributed detects the pod itself
    assert remote[i:] == ["sftjax-train", "run_dir=/mnt/shared/runs/x", TRICKY, "optim.lr=3e-4", "mesh.auto=true"]


def test_tpu_pod_runs_the_quoted_command_in_a_worker_shell(tmp_path):
    """A stub gcloud runs --command in bash as a worker would; a stub sftjax-train reports what it received."""
    workdir = tmp_path / "home" / "sftjax"
    script(workdir / ".venv" / "bin" / "sftjax-train", ECHO_TRAIN)
    gcloud = script(tmp_path / "bin" / "gcloud", '#!/usr/bin/env bash\n'
                    'echo "gcloud $*" >&2\n'
                    'while [[ $# -gt 0 && "$1" != --command ]]; do shift; done\n'
                    'HOME="$FAKE_HOME" exec bash -c "$2"\n')
    env = base_env(PATH=f"{gcloud.parent}:{os.environ['PATH']}", FAKE_HOME=str(tmp_path / "home"))
    r = run([LAUNCH / "tpu_pod.sh", *TPU, "--", "sftjax-train", "run_dir=/mnt/shared/runs/x", TRICKY], env=env)
    assert r.returncode == 0, r.stderr
    assert "--worker=all" in r.stderr
    (got,) = echoes(r.stdout)
    assert got["args"] == ["run_dir=/mnt/shared/runs/x", TRICKY, "mesh.auto=true"]


@pytest.mark.parametrize("flag", ["--project", "--zone", "--tpu"])
def test_tpu_pod_missing_flag_is_named(flag):
    args = [word for other, value in TPU_FLAGS.items() if other != flag for word in (other, value)]
    r = run([LAUNCH / "tpu_pod.sh", *args, "--dry-run", "--", "sftjax-train", "run_dir=/mnt/shared/x"])
    assert r.returncode == 2 and f"missing {flag}" in r.stderr, r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize("args,message", [
    ([], "missing the command"),
    (["sftjax-train", "model=tiny"], "missing run_dir"),
    (["sftjax-train", "run_dir=runs/x"], "is relative"),
    (["sftjax-train", "run_dir=gs://bucket/x"], "gs:// is not supported"),
])
def test_tpu_pod_bad_command_is_refused(args, message):
    r = run([LAUNCH / "tpu_pod.sh", *TPU, "--dry-run", "--", *args])
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_tpu_pod_other_commands_and_explicit_auto_pass_unchanged():
    r = run([LAUNCH / "tpu_pod.sh", *TPU, "--workdir", "/opt/my repo", "--gcloud-flag=--internal-ip", "--dry-run",
             "--", "sftjax-train", "run_dir=/mnt/x", "mesh.auto=false"])
    argv = shlex.split(r.stdout)
    assert "--internal-ip" in argv
    remote = shlex.split(argv[argv.index("--command") + 1])
    assert remote[:2] == ["cd", "/opt/my repo"] and remote[-1] == "mesh.auto=false" and "mesh.auto=true" not in remote
    r = run([LAUNCH / "tpu_pod.sh", *TPU, "--dry-run", "--", "pip", "install", "-e", "."])
    argv = shlex.split(r.stdout)
    assert shlex.split(argv[argv.index("--command") + 1])[-4:] == ["pip", "install", "-e", "."]


# --- SLURM (sbatch) ----------------------------------------------------------------------------------------------

def slurm_env(tmp_path: Path, ntasks=16, nodes=2, **extra) -> dict:
    """A fake allocation of `nodes` nodes; scontrol expands the node list, srun runs the tasks of one node."""
    bin_dir = tmp_path / "bin"
    script(bin_dir / "scontrol", '#!/usr/bin/env bash\n[[ "$1 $2" == "show hostnames" ]] || exit 1\n'
           'echo gpu-node07; echo gpu-node08\n')
    script(bin_dir / "srun", '#!/usr/bin/env bash\n'  # srun [--opts] CMD...: run CMD once per task of node 0
           'echo "srun $*" >> "$SRUN_LOG"\nn=1\n'
           'while [[ "$1" == --* ]]; do case "$1" in --ntasks-per-node=*) n=${1#*=} ;; esac; shift; done\n'
           'for ((i = 0; i < n; i++)); do SLURM_PROCID=$i SLURM_LOCALID=$i "$@" || exit $?; done\n')
    env = base_env(PATH=f"{bin_dir}:{os.environ['PATH']}", SRUN_LOG=str(tmp_path / "srun.log"),
                   SLURM_JOB_ID="4242", SLURM_JOB_NAME="sftjax", SLURM_JOB_NODELIST="gpu-node[07-08]",
                   SLURM_NTASKS=str(ntasks), SLURM_JOB_NUM_NODES=str(nodes), SLURM_SUBMIT_DIR=str(ROOT),
                   SFTJAX_SHARED_DIR=str(tmp_path / "shared"))
    env.update(extra)
    return env


def test_slurm_dry_run_prints_exports_and_srun(tmp_path):
    env = slurm_env(tmp_path, DRY_RUN="1", SFTJAX_PORT="29500")
    r = run(["bash", LAUNCH / "slurm.sbatch", "run_dir=exp1", "model=tiny", TRICKY], env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    # names as sftjax/parallel/mesh.py reads them; coordinator = first host of the allocation
    assert lines[:2] == ["export SFTJAX_COORDINATOR=gpu-node07:29500", "export SFTJAX_NUM_PROCESSES=16"]
    srun = shlex.split("\n".join(lines[3:]))
    assert srun[:4] == ["srun", "--kill-on-bad-exit=1", "--ntasks=16", "--ntasks-per-node=8"]
    task = srun[srun.index("-c") + 1]
    assert "export SFTJAX_PROCESS_ID=$SLURM_PROCID" in task and "JAX_LOCAL_DEVICE_IDS" in task
    assert srun[-4:] == [str(VENV_TRAIN) if os.access(VENV_TRAIN, os.X_OK) else "sftjax-train", f"run_dir={tmp_path}/shared/exp1",
                         "model=tiny", TRICKY]
    assert not (tmp_path / "srun.log").exists() and not (tmp_path / "shared").exists()  # nothing ran or was made


@pytest.mark.parametrize("visible,ntasks,expected", [
    ("0,1,2,3", 4, ["0", "1", "2", "3"]),  # one process per GPU
    ("0,1,2,3", 2, ["0,1", "2,3"]),
    ("0,1,2,3", 1, ["0,1,2,3"]),  # one process per node with all its GPUs
    ("5", 4, ["0", "0", "0", "0"]),  # SLURM bound one GPU to each task already
])
def test_slurm_tasks_get_process_ids_and_their_gpus(tmp_path, visible, ntasks, expected):
    echo = script(tmp_path / "echo-train", ECHO_TRAIN)
    env = slurm_env(tmp_path, ntasks=ntasks, nodes=1, SFTJAX_TRAIN=str(echo), CUDA_VISIBLE_DEVICES=visible)
    r = run(["bash", LAUNCH / "slurm.sbatch", "run_dir=exp1", "train.seed=3"], env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    tasks = echoes(r.stdout)
    assert [t["env"]["SFTJAX_PROCESS_ID"] for t in tasks] == [str(i) for i in range(ntasks)]
    assert [t["env"]["JAX_LOCAL_DEVICE_IDS"] for t in tasks] == expected
    for t in tasks:
        assert t["env"]["SFTJAX_NUM_PROCESSES"] == str(ntasks)
        assert t["env"]["SFTJAX_COORDINATOR"] == f"gpu-node07:{20000 + 4242 % 20000}"
        assert t["args"] == [f"run_dir={tmp_path}/shared/exp1", "train.seed=3"]
    assert (tmp_path / "shared" / "exp1").is_dir()


def test_slurm_task_failure_is_the_job_status(tmp_path):
    echo = script(tmp_path / "echo-train", ECHO_TRAIN)
    env = slurm_env(tmp_path, ntasks=2, nodes=1, SFTJAX_TRAIN=str(echo), ECHO_TRAIN_FAIL_ID="1")
    r = run(["bash", LAUNCH / "slurm.sbatch", "run_dir=/abs/exp"], env=env, cwd=tmp_path)
    assert r.returncode == 1 and echoes(r.stdout)[0]["args"] == ["run_dir=/abs/exp"]


@pytest.mark.parametrize("drop,args,message", [
    ("SFTJAX_SHARED_DIR", ["run_dir=exp1"], "SFTJAX_SHARED_DIR is not set"),
    ("SLURM_JOB_ID", [], "SLURM_JOB_ID is not set"),
    ("SLURM_NTASKS", [], "SLURM_NTASKS is not set"),
])
def test_slurm_misconfiguration_is_named(tmp_path, drop, args, message):
    env = slurm_env(tmp_path, DRY_RUN="1")
    del env[drop]
    r = run(["bash", LAUNCH / "slurm.sbatch", *args], env=env, cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_slurm_default_run_dir_is_job_name_and_id_under_shared(tmp_path):
    r = run(["bash", LAUNCH / "slurm.sbatch"], env=slurm_env(tmp_path, DRY_RUN="1"), cwd=tmp_path)
    assert f"run_dir={tmp_path}/shared/sftjax-4242" in r.stdout, r.stdout + r.stderr


def test_slurm_sbatch_header():
    head = [line for line in (LAUNCH / "slurm.sbatch").read_text().splitlines() if line.startswith("#SBATCH")]
    options = {line.split()[1].split("=")[0] for line in head}
    assert {"--nodes", "--ntasks-per-node", "--gpus-per-node", "--cpus-per-task", "--time"} <= options
    per_node = {line.split("=")[0].split()[1]: line.split("=")[1] for line in head}
    assert per_node["--ntasks-per-node"] == per_node["--gpus-per-node"]  # one process per GPU


# --- local -------------------------------------------------------------------------------------------------------

def test_local_dry_run_two_processes_on_loopback():
    r = run([LAUNCH / "local.sh", "--processes", "2", "--port", "23456", "--dry-run", "run_dir=runs/x",
             "model=tiny"])
    assert r.returncode == 0, r.stderr
    commands = [shlex.split(line) for line in r.stdout.strip().splitlines()]
    assert len(commands) == 2
    for i, argv in enumerate(commands):
        assert argv[0] == "env"
        assert {"SFTJAX_COORDINATOR=127.0.0.1:23456", "SFTJAX_NUM_PROCESSES=2", f"SFTJAX_PROCESS_ID={i}",
                "JAX_PLATFORMS=cpu"} <= set(argv)
        assert argv[-3:] == [".venv/bin/sftjax-train", "run_dir=runs/x", "model=tiny"]


def test_local_dry_run_one_process_is_the_plain_command():
    r = run([LAUNCH / "local.sh", "--dry-run", "run_dir=runs/x", "a=b c"])
    assert shlex.split(r.stdout) == [".venv/bin/sftjax-train", "run_dir=runs/x", "a=b c"]
    r = run([LAUNCH / "local.sh", "--processes", "0"])
    assert r.returncode == 2 and "--processes" in r.stderr


def test_local_processes_run_together_and_a_failure_is_the_status(tmp_path):
    echo = script(tmp_path / "echo-train", ECHO_TRAIN)
    r = run([LAUNCH / "local.sh", "-n", "2", "run_dir=x"], env=base_env(SFTJAX_TRAIN=str(echo)))
    assert r.returncode == 0, r.stderr
    got = sorted(echoes(r.stdout), key=lambda t: t["env"]["SFTJAX_PROCESS_ID"])
    assert [t["env"]["SFTJAX_PROCESS_ID"] for t in got] == ["0", "1"]
    assert {t["env"]["SFTJAX_COORDINATOR"] for t in got} == {got[0]["env"]["SFTJAX_COORDINATOR"]}
    assert "[p0] {" in r.stdout and "[p1] {" in r.stdout
    r = run([LAUNCH / "local.sh", "-n", "2", "run_dir=x"], env=base_env(SFTJAX_TRAIN=str(echo),
                                                                      ECHO_TRAIN_FAIL_ID="1"))
    assert r.returncode == 1 and "exited with status 1" in r.stderr


# --- Hydra launcher configs --------------------------------------------------------------------------------------

def compose_launcher(*overrides):
    register_configs()
    with initialize_config_module(config_module="sftjax.conf", version_base=None):
        return compose(config_name="config", overrides=["run_dir=/shared/sweep", *overrides],
                       return_hydra_config=True)


@pytest.mark.parametrize("launcher,target", [
    ("local", "hydra._internal.core_plugins.basic_launcher.BasicLauncher"),
    ("local_parallel", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"),
    ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
])
def test_every_launcher_composes(launcher, target):
    cfg = compose_launcher(f"hydra/launcher={launcher}", *(["hydra.launcher.partition=gpu"] * (launcher == "slurm")))
    resolved = OmegaConf.to_container(cfg.hydra.launcher, resolve=True, throw_on_missing=True)
    assert resolved["_target_"] == target
    get_class(target)  # the plugin is installed
    assert cfg.model.name == "tiny"  # the job config is untouched


def test_slurm_launcher_values():
    cfg = compose_launcher("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.nodes=2",
                           "hydra.launcher.gpus_per_node=4", "hydra.launcher.account=proj")
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["partition"] == "gpu" and launcher["account"] == "proj" and launcher["nodes"] == 2
    assert launcher["tasks_per_node"] == 4  # follows gpus_per_node: one process per GPU
    assert launcher["submitit_folder"] == "/shared/sweep/.submitit/%j"  # beside the runs, on shared storage
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    import dataclasses
    assert set(launcher) == {f.name for f in dataclasses.fields(SlurmQueueConf)}  # every plugin key, no stray one


def test_slurm_launcher_without_partition_names_the_key():
    cfg = compose_launcher("hydra/launcher=slurm")
    with pytest.raises(MissingMandatoryValue) as e:
        OmegaConf.to_container(cfg.hydra.launcher, resolve=True, throw_on_missing=True)
    assert "hydra.launcher.partition" in str(e.value)
    with pytest.raises(Exception, match="partiton"):
        compose_launcher("hydra/launcher=slurm", "hydra.launcher.partiton=gpu")


def test_local_parallel_launcher_hides_accelerators():
    launcher = compose_launcher("hydra/launcher=local_parallel").hydra.launcher
    assert launcher.gpus_per_node == 0 and "export JAX_PLATFORMS=cpu" in launcher.setup


def sweep_env(tmp_path: Path) -> dict:
    bin_dir = tmp_path / "bin"  # submitit looks for srun and submits with sbatch; this sbatch keeps the script
    script(bin_dir / "srun", "#!/bin/sh\nexit 1\n")
    script(bin_dir / "sbatch", '#!/usr/bin/env bash\nfor a in "$@"; do [[ -f "$a" ]] && cp "$a" "$CAPTURE"; done\n'
           'echo "sbatch: error: stub" >&2\nexit 1\n')
    return base_env(PATH=f"{bin_dir}:{os.environ['PATH']}", CAPTURE=str(tmp_path / "job.sh"), JAX_PLATFORMS="cpu")


def test_slurm_sweep_writes_the_sbatch_script(tmp_path):
    """sftjax-train -m hydra/launcher=slurm: one array job with the launcher's resources, srun per task."""
    sweep = tmp_path / "sweep"
    r = run([sys.executable, "-m", "sftjax.cli.train", "-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
             "hydra.launcher.nodes=2", "hydra.launcher.account=proj", "mesh.auto=true", f"run_dir={sweep}",
             "train.seed=1,2,3"], env=sweep_env(tmp_path))
    assert "sbatch: error: stub" in r.stderr, r.stderr[-3000:]
    job = (tmp_path / "job.sh").read_text()
    for line in ("--partition=gpu", "--account=proj", "--nodes=2", "--gpus-per-node=8", "--ntasks-per-node=8",
                 "--cpus-per-task=8", "--time=1440", "--array=0-2%3", f"--output={sweep}/.submitit/"):
        assert f"#SBATCH {line}" in job, job
    assert "export PYTHONUNBUFFERED=1" in job and "srun " in job and "submitit.core._submit" in job


def test_slurm_sweep_without_partition_fails_naming_it(tmp_path):
    r = run([sys.executable, "-m", "sftjax.cli.train", "-m", "hydra/launcher=slurm", f"run_dir={tmp_path / 's'}",
             "train.seed=1,2"], env=sweep_env(tmp_path))
    assert r.returncode != 0 and "hydra.launcher.partition" in r.stderr
    assert not (tmp_path / "job.sh").exists()


@pytest.mark.slow
def test_local_launcher_sweep_runs_two_tiny_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    r = run([sys.executable, "-m", "sftjax.cli.train", "-m", "hydra/launcher=local", f"run_dir={sweep}",
             "model=tiny", "data.seq_len=128", "train.global_batch_size=2", "train.max_steps=1",
             "train.progress=false", "train.tensorboard=false", "train.seed=0,1"],
            env=base_env(JAX_PLATFORMS="cpu"), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = sorted(p.name for p in sweep.iterdir() if (p / "metrics.jsonl").exists())
    # each job trains in SWEEP_DIR/<its overrides>
    assert len(runs) == 2 and "train.seed=0" in runs[0].split(",") and "train.seed=1" in runs[1].split(","), runs
