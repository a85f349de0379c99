"""Run untrusted Python (model-written code) in a separate, contained process.

Generated code is arbitrary code: it can loop forever, fork-bomb, allocate all memory, fill the disk, open network
connections or delete files. A timeout alone handles only the first, so each program runs under layered limits:

* a fresh temporary directory as cwd (removed afterwards) and an environment holding only ``PATH``;
* ``resource`` limits set in ``preexec_fn``: RLIMIT_CPU (CPU seconds), RLIMIT_AS (address space per process, so a huge
  allocation raises MemoryError instead of swapping), RLIMIT_FSIZE (largest file written, including captured
  output), RLIMIT_CORE 0 and RLIMIT_NPROC;
* a wall-clock timeout after which the whole process group is SIGKILLed (``start_new_session=True`` + ``killpg``).

RLIMIT_NPROC is **ignored for root** (the kernel exempts CAP_SYS_RESOURCE/CAP_SYS_ADMIN; verified on our machines:
20 forks succeed as root under a limit of 5), and our evaluation jobs run as root. So, when running as root with
util-linux ``unshare``/``setpriv`` available (mode ``"namespaced"``), the program additionally runs:

* in a new network namespace (``unshare --net``): only a down loopback exists, so no connection of any kind leaves
  the sandbox, not even to 127.0.0.1 of the host;
* in a new PID namespace (``unshare --pid --fork --kill-child``): when the program's main process exits or is killed
  the kernel kills every process left inside, so a daemonised or forked child cannot outlive the check;
* as a fresh unprivileged uid with no supplementary groups and ``no_new_privs`` (``setpriv``), so RLIMIT_NPROC
  applies (counted for that uid alone, which no other process uses), setuid binaries cannot regain root, and the
  filesystem outside the temporary directory is only as writable as it is for "other";
* in a per-run cgroup (v1 ``pids`` and ``memory`` controllers when writable): ``pids.max`` caps the process count
  independently of uids and ``memory.limit_in_bytes`` caps the total memory of all its processes (RLIMIT_AS is per
  process, so it alone lets N processes use N GiB). The cgroup is drained with SIGKILL and removed afterwards.

Without root (mode ``"rlimits"``), namespaces and uid switching are unavailable: RLIMIT_NPROC then does apply (it is
set relative to the user's current process count), and the network is only blocked by a prelude that replaces the
``socket`` module's constructors before the untrusted code runs. That prelude is bypassable (``import _socket``), so
this mode is weaker and says so in :attr:`SandboxResult.mechanisms`.
"""

from __future__ import annotations

import functools
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path


_NET_PRELUDE = '''\
def _sftjax_block_network():
    import socket

    def blocked(*args, **kwargs):
        raise PermissionError("network access is disabled in the sftjax sandbox")

    for name in ("socket", "create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo"):
        setattr(socket, name, blocked)


_sftjax_block_network()
del _sftjax_block_network
'''


# The first process of a PID namespace is its init, and the kernel drops signals whose default action would kill
# init (SIGXCPU from RLIMIT_CPU, SIGTERM, ...). So the program must not be that init: a shell is, and it reports the
# program's death by signal N as exit status 128+N (the trailing ``exit`` stops the shell from exec'ing in place).
# When the shell exits, the kernel SIGKILLs everything else left in the namespace.
# The shell stays root (it only waits); setpriv drops the program itself to the sandbox uid.
_INIT_SCRIPT = (
    'unset PWD OLDPWD; setpriv="$0"; uid="$1"; shift; '
    '"$setpriv" --reuid="$uid" --regid="$uid" --clear-groups --no-new-privs -- "$@"; exit $?'
)


def _namespaced_cmd(uid: int, argv: list[str]) -> list[str]:
    return [shutil.which("unshare"), "--net", "--pid", "--fork", "--kill-child", "/bin/sh", "-c", _INIT_SCRIPT,
            shutil.which("setpriv"), str(uid), *argv]


@dataclass(frozen=True)
class Limits:
    """Resource limits for one run; ``cpu_s`` defaults to the wall timeout rounded up plus one second."""

    timeout_s: float = 10.0
    cpu_s: int | None = None
    memory_bytes: int = 1 << 30
    max_procs: int = 32
    file_size_bytes: int = 16 << 20
    output_chars: int = 8192


@dataclass
class SandboxResult:
    """How a sandboxed program ended.

    ``status``: ``passed`` (exit 0), ``failed`` (non-zero exit, e.g. an AssertionError or MemoryError), ``timeout``
    (wall clock exceeded, group killed), ``killed`` (ended by a signal: RLIMIT_CPU, the memory cgroup's OOM killer,
    ...), ``error`` (the sandbox itself could not run it). In namespaced mode a signal death is seen through the init
    shell as exit status 128+N, so a program that itself calls ``sys.exit(137)`` also reads as ``killed``; either way
    it did not pass.
    """

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    mechanisms: tuple[str, ...] = ()
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class Isolation:
    mode: str  # "namespaced" | "rlimits"
    interpreter: str
    pids_root: Path | None = None
    memory_root: Path | None = None
    reasons: tuple[str, ...] = field(default=())


_uid_lock = threading.Lock()
_uids_in_use: set[int] = set()
UID_BASE, _UID_SPAN = 2_000_000_000, 100_000_000  # far above any real account; nothing else runs as these


def _uid_processes(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            pids.append(int(entry))
                        break
        except OSError:
            continue
    return pids


def _acquire_uid() -> int:
    with _uid_lock:
        while True:
            uid = UID_BASE + random.randrange(_UID_SPAN)
            if uid not in _uids_in_use and not _uid_processes(uid):
                _uids_in_use.add(uid)
                return uid


def _release_uid(uid: int) -> None:
    with _uid_lock:
        _uids_in_use.discard(uid)


def _writable_cgroup(root: Path) -> Path | None:
    try:
        probe = root / f"sftjax-probe-{os.getpid()}-{random.randrange(1 << 30)}"
        probe.mkdir()
        probe.rmdir()
        return root
    except OSError:
        return None


def _memory_cgroup_root() -> Path | None:
    """Our own v1 memory cgroup: a child of it inherits whatever limit the container already has."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, rel = line.split(":", 2)
            if "memory" in controllers.split(","):
                return _writable_cgroup(Path("/sys/fs/cgroup/memory") / rel.lstrip("/"))
    except (OSError, ValueError):
        pass
    return None


@functools.lru_cache(maxsize=1)
def isolation() -> Isolation:
    """Detect (once) the strongest containment this machine allows; probing is cheap and its answer never changes."""
    reasons = []
    unshare, setpriv = shutil.which("unshare"), shutil.which("setpriv")
    if os.geteuid() != 0:
        reasons.append("not root: no namespaces or uid switch")
    elif not (unshare and setpriv):
        reasons.append("util-linux unshare/setpriv not found")
    else:
        uid = _acquire_uid()
        try:
            # The unprivileged uid must be able to start the interpreter and import the stdlib; a Python installed
            # under a private home may not be, so fall back to the system Python of the same version (HumanEval
            # needs only the stdlib). The probe also proves the uid switch really happened.
            candidates = [sys.executable, f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"]
            for interp in candidates:
                cmd = _namespaced_cmd(uid, [interp, "-I", "-c", "import os, sys; sys.exit(os.getuid() != %d)" % uid])
                try:
                    ok = subprocess.run(cmd, env={}, capture_output=True, timeout=30).returncode == 0
                except (OSError, subprocess.TimeoutExpired):
                    ok = False
                if ok:
                    return Isolation("namespaced", interp, _writable_cgroup(Path("/sys/fs/cgroup/pids")),
                                      _memory_cgroup_root())
            reasons.append("namespaced probe failed for " + ", ".join(candidates))
        finally:
            _release_uid(uid)
    return Isolation("rlimits", sys.executable, reasons=tuple(reasons))


def _make_cgroups(iso: Isolation, limits: Limits, name: str) -> list[tuple[str, Path]]:
    made = []
    for kind, root, settings in (
        ("pids", iso.pids_root, {"pids.max": str(limits.max_procs)}),
        # Total memory of all processes: each may use memory_bytes (RLIMIT_AS), together at most twice that.
        ("memory", iso.memory_root, {"memory.limit_in_bytes": str(2 * limits.memory_bytes),
                           "memory.memsw.limit_in_bytes": str(2 * limits.memory_bytes)}),
    ):
        if root is None:
            continue
        d = root / name
        try:
            d.mkdir()
            for key, value in settings.items():
                if (d / key).exists():
                    (d / key).write_text(value)
            made.append((kind, d))
        except OSError:
            _remove_cgroup(d)
    return made


def _remove_cgroup(d: Path, deadline_s: float = 10.0) -> None:
    """SIGKILL everything inside until it is empty, then remove it (a fork bomb may refill it a few rounds)."""
    end = time.monotonic() + deadline_s
    while d.exists():
        try:
            pids = [int(p) for p in (d / "cgroup.procs").read_text().split()]
        except OSError:
            pids = []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            d.rmdir()
            return
        except OSError:
            if time.monotonic() > end:
                return
            time.sleep(0.01)


def _preexec(limits: Limits, cpu_s: int, nproc: int, cgroup_procs: list[str]):
    def fn() -> None:
        pid = str(os.getpid()).encode()
        for path in cgroup_procs:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size_bytes, limits.file_size_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))

    return fn


def _read_truncated(path: Path, limit: int) -> str:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    text = data[:limit].decode("utf-8", errors="replace")
    return text + "\n...[truncated]" if len(data) > limit else text


def run_python(source: str, limits: Limits = Limits()) -> SandboxResult:
    """Run ``source`` as a Python program under the strongest containment available; never raises for bad code."""
    iso = isolation()
    cpu_s = limits.cpu_s if limits.cpu_s is not None else int(limits.timeout_s) + 1
    base = Path(tempfile.mkdtemp(prefix="sftjax-sandbox-"))
    uid = _acquire_uid() if iso.mode == "namespaced" else None
    cgroups: list[tuple[str, Path]] = []
    start = time.monotonic()
    try:
        os.chmod(base, 0o711)  # traversable by the sandbox uid, not listable; out/ stays private to us
        work, out = base / "work", base / "out"
        work.mkdir(mode=0o700)
        out.mkdir(mode=0o700)
        program = work / "program.py"
        if iso.mode == "namespaced":
            program.write_text(source, encoding="utf-8")
            os.chown(work, uid, uid)
            mechanisms = ["tmp-cwd", "empty-env", "rlimits", "wall-timeout+killpg", "netns", "pidns",
                          "unprivileged-uid", "no-new-privs"]
            cmd = _namespaced_cmd(uid, [iso.interpreter, "-I", str(program)])
            nproc = limits.max_procs
            cgroups = _make_cgroups(iso, limits, f"sftjax-sandbox-{os.getpid()}-{uid}")
            mechanisms += [f"cgroup-{kind}" for kind, _ in cgroups]
        else:
            program.write_text(_NET_PRELUDE + "\n" + source, encoding="utf-8")
            mechanisms = ["tmp-cwd", "empty-env", "rlimits", "wall-timeout+killpg", "socket-prelude(weak)"]
            if os.geteuid() == 0:
                mechanisms.append("RLIMIT_NPROC-ignored-for-root")
            cmd = [iso.interpreter, "-I", str(program)]
            # Non-root RLIMIT_NPROC counts every process of this user, so allow max_procs more than exist now.
            nproc = len(_uid_processes(os.getuid())) + limits.max_procs
        with open(out / "stdout", "wb") as so, open(out / "stderr", "wb") as se:
            try:
                with warnings.catch_warnings():
                    # JAX warns on every fork; the child here only sets limits and execs, touching no JAX state
                    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
                    proc = subprocess.Popen(
                        cmd, cwd=work, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                        stdin=subprocess.DEVNULL, stdout=so, stderr=se, start_new_session=True, close_fds=True,
                        preexec_fn=_preexec(limits, cpu_s, nproc, [str(c / "cgroup.procs") for _, c in cgroups]),
                    )
            except (OSError, subprocess.SubprocessError) as e:
                return SandboxResult("error", None, "", "", time.monotonic() - start, tuple(mechanisms),
                                     f"could not start sandbox: {e}")
            timed_out = False
            try:
                rc = proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                # Always, not only on timeout: children left behind by a finished program die with it.
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            rc = proc.wait()
        duration = time.monotonic() - start
        for _, c in cgroups:
            _remove_cgroup(c)
        if uid is not None:
            for _ in range(100):  # anything of this uid that escaped the group and the namespace
                pids = _uid_processes(uid)
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.01)
        stdout = _read_truncated(out / "stdout", limits.output_chars)
        stderr = _read_truncated(out / "stderr", limits.output_chars)
        if timed_out:
            status, detail = "timeout", f"exceeded {limits.timeout_s:g} s wall clock"
        elif rc == 0:
            status, detail = "passed", ""
        elif rc < 0 or rc > 128:
            sig = -rc if rc < 0 else rc - 128
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = f"signal {sig}"
            status, detail = "killed", f"killed by {name}"
        else:
            status, detail = "failed", f"exit status {rc}"
        return SandboxResult(status, rc, stdout, stderr, duration, tuple(mechanisms), detail)
    finally:
        if uid is not None:
            _release_uid(uid)
        shutil.rmtree(base, ignore_errors=True)
