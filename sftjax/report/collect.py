"""Find run directories (single runs and Hydra sweeps) and read what sftjax wrote into them.

A run directory is any directory holding ``metrics.jsonl``, ``eval/step_N.json`` or ``.hydra/config.yaml``
(see docs/design.md, "Run directory"). For each run this reads the saved config, every metrics line, every
evaluation and ``data_stats.json``, and derives the run's experiment coordinates (model, strategy, DMT k, the data
amount of each source, epochs, seed). An ``sftjax-eval`` output file (``{"models": {init_from: {suite: ...}}}``)
given on the command line becomes one row per model.

Nothing is dropped silently: a file that cannot be read makes a warning naming it (the run is kept with what could
be read), and a run that cannot be placed at all is skipped with its reason, both listed in the report.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import types
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import yaml

from sftjax.config.base import ConfigError, is_number
from sftjax.config.data import parse_amount

# Directories inside a run directory that never hold another run.
RUN_INTERNALS = {"checkpoints", "tb", "tokenizer", "hf", "eval", ".hydra"}
STEP_FILE = re.compile(r"^step_(\d+)\.json$")
# Suite kinds whose metrics are abilities (higher is better, in [0, 1]); and the headline metrics of each kind.
COUNT_METRICS = ("n", "unparseable", "truncated_prompts", "tokens", "examples", "truncated", "dropped", "judged",
                 "raw_mean")


EVAL_ONLY = "(eval only)"  # the strategy coordinate of a model read from an sftjax-eval output (not trained here)


class NoRunsError(ValueError):
    """A directory given to the report holds no run directory."""


class Skip(Exception):
    """This directory cannot be reported as a run; the message is the reason."""


@dataclass
class Run:
    """One training run (or one model of an sftjax-eval output) and its coordinates."""

    path: Path
    name: str  # where it was found, relative to the directory given (for a sweep job: its override dirname)
    config: dict = field(default_factory=dict)  # .hydra/config.yaml as saved (interpolations left as text)
    overrides: list[str] = field(default_factory=list)  # .hydra/overrides.yaml
    coords: dict[str, Any] = field(default_factory=dict)  # see coordinates()
    stages: list[dict] = field(default_factory=list)  # [{"name", "epochs", "steps", "mix": {source: amount}}]
    metrics: list[dict] = field(default_factory=list)  # metrics.jsonl lines, in order
    evals: dict[int, dict] = field(default_factory=dict)  # step -> {suite: {"kind", "metrics"}}
    extra_eval: dict = field(default_factory=dict)  # suites of an sftjax-eval output inside eval/ (after training)
    data_stats: dict | None = None
    notes: list[str] = field(default_factory=list)  # what could not be read
    label: str = ""  # short name for tables and legends (set by Collection.assign_labels)

    @property
    def final(self) -> dict:
        """The last metrics line (empty when the run logged none)."""
        return self.metrics[-1] if self.metrics else {}

    @property
    def final_eval_step(self) -> int | None:
        return max(self.evals) if self.evals else None

    @property
    def final_eval(self) -> dict:
        """{suite: {"kind", "metrics"}} of the last evaluation, with an sftjax-eval output's suites on top."""
        out = dict(self.evals[max(self.evals)]) if self.evals else {}
        out.update(self.extra_eval)
        return out

    def knowledge_suite(self, step: int | None = None) -> str | None:
        """The name of the first knowledge suite evaluated at ``step`` (None: the final evaluation), else None."""
        suites = self.final_eval if step is None else self.evals.get(step, {})
        return next((name for name, v in suites.items() if v["kind"] == "knowledge"), None)

    def sources_with_loss(self) -> list[str]:
        seen: list[str] = []
        for line in self.metrics:
            seen += [k[5:] for k in line if k.startswith("loss/") and k[5:] not in seen]
        return seen

    def stage_ends(self) -> list[tuple[str, int]]:
        """(stage, last logged step) in order; the loop always logs a stage's last step."""
        out: list[tuple[str, int]] = []
        for line in self.metrics:
            stage = line.get("stage")
            if out and out[-1][0] == stage:
                out[-1] = (stage, line["step"])
            else:
                out.append((stage, line["step"]))
        return out

    def epoch_of(self, step: int) -> float | None:
        """Passes over the selected data at ``step``, counted across stages (every stage must be an epochs stage and
        the run must have reached its planned end); None when that cannot be known."""
        if step == 0:
            return 0.0
        ends = self.stage_ends()
        planned = [s["name"] for s in self.stages]
        if (not ends or [e[0] for e in ends] != planned or any(s.get("epochs") is None for s in self.stages)
                or self.config.get("train", {}).get("max_steps", -1) != -1):
            return None
        before, done = 0, 0.0
        for (_, end), stage in zip(ends, self.stages):
            if step <= end:
                return done + float(stage["epochs"]) * (step - before) / max(end - before, 1)
            before, done = end, done + float(stage["epochs"])
        return None


@dataclass
class Collection:
    runs: list[Run]
    skipped: list[tuple[str, str]]  # (directory, reason)
    warnings: list[str]  # "RUN: what could not be read"
    roots: list[str]
    sweeps: list[dict] = field(default_factory=list)  # {"dir", "swept": ["key=a,b", ...]}

    def summary(self) -> str:
        line = f"{len(self.runs)} run{'' if len(self.runs) == 1 else 's'}, {len(self.skipped)} skipped"
        if self.skipped:
            reasons: dict[str, int] = {}
            for _, r in self.skipped:
                reasons[r] = reasons.get(r, 0) + 1
            line += ": " + "; ".join(f"{r}" + (f" (x{n})" if n > 1 else "") for r, n in reasons.items())
        return line

    def varying(self, key: str, runs: list[Run] | None = None) -> list:
        """The distinct values of a coordinate among the runs (None included), in sorted order."""
        return sorted({r.coords.get(key) for r in (self.runs if runs is None else runs)}, key=sort_value)

    def coordinate_keys(self) -> list[str]:
        """Coordinates set in at least one run, in a fixed order (amounts in source order)."""
        keys = [k for k in ("model", "init_from", "strategy", "k", "schedule") if any(r.coords.get(k) for r in self.runs)]
        amounts: list[str] = []
        for r in self.runs:
            amounts += [k for k in r.coords if k.startswith("amount/") and k not in amounts]
        keys += amounts
        keys += [k for k in ("epochs", "seed") if any(r.coords.get(k) is not None for r in self.runs)]
        return keys

    def assign_labels(self) -> None:
        """A run's label names what sets it apart: the coordinates that vary, then the differing overrides, then
        its path."""
        # Among the trained runs only: a base model beside them does not make every label name the model.
        trained = [r for r in self.runs if r.coords.get("strategy") != EVAL_ONLY]
        keys = [k for k in self.coordinate_keys() if len([v for v in self.varying(k, trained) if v is not None]) > 1
                or (k == "schedule" and len(self.varying(k, trained)) > 1)]  # schedule: None (default) or "stage"
        for r in trained:
            parts = [r.coords[k] if k == "strategy" else f"{_short_key(k)}={fmt_value(r.coords[k])}"
                     for k in keys if r.coords.get(k) is not None]
            r.label = ", ".join(str(p) for p in parts)
        for r in self.runs:
            if r.coords.get("strategy") == EVAL_ONLY:
                r.label = str(r.coords.get('model') or r.name)
        by_label: dict[str, list[Run]] = {}
        for r in trained:
            by_label.setdefault(r.label, []).append(r)
        for same in by_label.values():
            if len(same) < 2:
                same[0].label = same[0].label or same[0].name
                continue
            common = set.intersection(*(set(r.overrides) for r in same))
            for r in same:
                extra = [_short_override(o) for o in r.overrides if o not in common and not o.startswith("run_dir=")]
                r.label = (", ".join(([r.label] if r.label else []) + extra) if extra
                           else f"{r.label} [{r.name}]" if r.label else r.name)


def _short_key(key: str) -> str:
    return key.removeprefix("amount/")


def _short_override(override: str) -> str:
    """``data.sources.facts.format=qa`` -> ``format=qa``: a label names the swept knob, not its config path."""
    key, sep, value = override.partition("=")
    return f"{key.lstrip('+~').rsplit('.', 1)[-1]}{sep}{value}" if sep else override


# -- values ----------------------------------------------------------------------------------------------------------


def amount_coordinate(value) -> Fraction | int | None:
    """A data amount as a report coordinate: a fraction of the source (<= 1), a count of examples (> 1), or None
    for what does not parse (a report shows it rather than failing)."""
    try:
        f = parse_amount(value, "amount")
    except ConfigError:
        return None
    return int(f) if f > 1 else f


def fmt_value(v) -> str:
    """How a coordinate or metric is written in the report."""
    if v is None:
        return "–"
    if isinstance(v, Fraction):
        return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v == int(v) and abs(v) < 1e6:
            return str(int(v))
        return f"{v:.4g}" if abs(v) >= 1e-3 else f"{v:.3g}"
    if isinstance(v, int) and abs(v) >= 10000:
        return f"{v:,}"
    return str(v)


def sort_value(v):
    """A sort key that orders None last and numbers before text."""
    if v is None:
        return (2, 0, "")
    if isinstance(v, (int, float, Fraction)) and not isinstance(v, bool):
        return (0, float(v), "")
    return (1, 0, str(v))



def _number(v):
    """metrics.jsonl writes NaN/inf as strings; read them back as floats."""
    if isinstance(v, str) and v.lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
        return float(v)
    return v


# -- the config ------------------------------------------------------------------------------------------------------


def stages_of(config: dict) -> list[dict]:
    """The stages a config trains, as plain dicts: data.stages when it sets them, else the ones the strategy preset
    builds (sftjax.config.strategy, the code training used), else one stage of every source."""
    data = config.get("data") or {}
    strategy = config.get("strategy") or {}
    sources = dict(data.get("sources") or {})
    if data.get("stages"):
        return [{"name": s.get("name", f"stage{i}"), "epochs": s.get("epochs"), "steps": s.get("steps"),
                 "mix": {n: str((m or {}).get("amount", "1")) for n, m in (s.get("mix") or {}).items()}}
                for i, s in enumerate(data["stages"])]
    if strategy.get("name", "none") != "none":
        from sftjax.config import StrategyConfig
        from sftjax.config.strategy import strategy_stages

        known = {f.name for f in dataclasses.fields(StrategyConfig)}
        s = StrategyConfig(**{k: v for k, v in strategy.items() if k in known})
        stages = strategy_stages(s, types.SimpleNamespace(stages=[], sources=sources))
        return [{"name": st.name, "epochs": st.epochs, "steps": st.steps,
                 "mix": {n: str(m.amount) for n, m in st.mix.items()}} for st in stages]
    return [{"name": "main", "epochs": None, "steps": None, "mix": {n: "1" for n in sources}}]


def coordinates(config: dict, stages: list[dict]) -> dict[str, Any]:
    """Where a run sits in an experiment: model, init_from, strategy, k (dmt), schedule (strategy.schedule when not
    the default), amount/<source> (its amount in the
    first stage that mixes it: the full amount, before dmt's k), epochs (per stage, when every stage has the same)
    and seed."""
    model = config.get("model") or {}
    strategy = config.get("strategy") or {}
    train = config.get("train") or {}
    name = strategy.get("name", "none")
    out: dict[str, Any] = {"model": model.get("name"), "init_from": model.get("init_from") or None,
                           "strategy": name, "k": amount_coordinate(strategy.get("k")) if name == "dmt" else None,
                           # strategy.schedule, only when it is not the default (one schedule over the run)
                           "schedule": strategy.get("schedule") if strategy.get("schedule", "run") != "run" else None}
    for stage in stages:
        for source, amount in stage["mix"].items():
            out.setdefault(f"amount/{source}", amount_coordinate(amount))
    epochs = {s.get("epochs") for s in stages}
    out["epochs"] = float(epochs.pop()) if len(epochs) == 1 and None not in epochs else None
    out["seed"] = train.get("seed")
    return out


# -- reading one run -------------------------------------------------------------------------------------------------


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{type(e).__name__}: {e}") from None


def _suites(record) -> dict:
    """{suite: {"kind", "metrics"}} from an eval record's "suites" (or from a {suite: ...} object), checked."""
    if not isinstance(record, dict) or not isinstance(record.get("suites", record), dict):
        raise ValueError("expected an object with 'suites'")
    out = {}
    for name, suite in record.get("suites", record).items():
        if not isinstance(suite, dict) or not isinstance(suite.get("metrics"), dict):
            raise ValueError(f"suite {name!r} has no 'metrics' object")
        out[name] = {"kind": suite.get("kind", "unknown"),
                     "metrics": {k: _number(v) for k, v in suite["metrics"].items()}}
    return out


def load_run(path: Path, name: str) -> Run:
    """Read one run directory; raises Skip when it cannot be reported."""
    run = Run(path=path, name=name)
    cfg_file = path / ".hydra" / "config.yaml"
    if cfg_file.is_file():
        try:
            config = yaml.safe_load(cfg_file.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise Skip(f"malformed .hydra/config.yaml ({type(e).__name__})") from None
        if not isinstance(config, dict):
            raise Skip(".hydra/config.yaml is not a mapping")
        run.config = config
    else:
        run.notes.append("no .hydra/config.yaml: its coordinates are unknown")
    ov_file = path / ".hydra" / "overrides.yaml"
    if ov_file.is_file():
        try:
            ov = yaml.safe_load(ov_file.read_text()) or []
            run.overrides = [str(o) for o in ov] if isinstance(ov, list) else []
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            run.notes.append(f"malformed .hydra/overrides.yaml ({type(e).__name__}), ignored")
    try:
        run.stages = stages_of(run.config) if run.config else []
    except Exception as e:  # a config this version cannot rebuild stages from: still report the run
        run.notes.append(f"cannot rebuild the data stages from the config ({e}); amounts unknown")
    run.coords = coordinates(run.config, run.stages) if run.config else {}

    metrics_file = path / "metrics.jsonl"
    bad: list[int] = []
    if metrics_file.is_file():
        try:
            lines = metrics_file.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            lines, bad = [], [0]
            run.notes.append(f"metrics.jsonl unreadable ({type(e).__name__})")
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad.append(i)
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
                bad.append(i)
                continue
            run.metrics.append({k: _number(v) for k, v in rec.items()})
        if bad and bad != [0]:
            run.notes.append(f"metrics.jsonl: {len(bad)} malformed line(s) ignored (first: line {bad[0]})")

    eval_dir = path / "eval"
    if eval_dir.is_dir():
        for f in sorted(eval_dir.glob("*.json")):
            m = STEP_FILE.match(f.name)
            try:
                record = _read_json(f)
                if m:
                    run.evals[int(m.group(1))] = _suites(record)
                elif isinstance(record, dict) and isinstance(record.get("models"), dict):
                    models = record["models"]
                    if len(models) != 1:
                        run.notes.append(f"eval/{f.name}: an sftjax-eval output of {len(models)} models; pass the "
                                         "file itself to report each")
                        continue
                    run.extra_eval.update(_suites(next(iter(models.values()))))
                else:
                    run.notes.append(f"eval/{f.name}: neither eval/step_N.json nor an sftjax-eval output, ignored")
            except ValueError as e:
                run.notes.append(f"eval/{f.name}: malformed ({e}), ignored")
    _evals_from_metrics(run)

    stats_file = path / "data_stats.json"
    if stats_file.is_file():
        try:
            run.data_stats = _read_json(stats_file)
        except ValueError as e:
            run.notes.append(f"data_stats.json: malformed ({e}), ignored")

    if not run.metrics and not run.evals and not run.extra_eval:
        if metrics_file.is_file():
            raise Skip("metrics.jsonl has no valid line" + (" (malformed)" if bad else " (empty)"))
        raise Skip("no metrics.jsonl or eval/step_N.json (the job failed or has not logged a step yet)")
    return run


def _evals_from_metrics(run: Run) -> None:
    """Evaluations whose eval/step_N.json is missing are read back from the eval/SUITE/METRIC keys of metrics.jsonl
    (kinds from the config's eval.suites)."""
    configured = (run.config.get("eval") or {}).get("suites") or {}
    kinds = {n: (s or {}).get("kind", "unknown") for n, s in configured.items()}
    recovered = []
    for line in run.metrics:
        keys = [k for k in line if k.startswith("eval/") and k.count("/") >= 2]
        if not keys or line["step"] in run.evals:
            continue
        suites: dict[str, dict] = {}
        for k in keys:
            _, suite, metric = k.split("/", 2)
            suites.setdefault(suite, {"kind": kinds.get(suite, "unknown"), "metrics": {}})["metrics"][metric] = line[k]
        run.evals[line["step"]] = suites
        recovered.append(line["step"])
    if recovered:
        run.notes.append(f"eval at step(s) {', '.join(map(str, recovered))} read from metrics.jsonl (no "
                         "eval/step_N.json)")


def load_eval_output(path: Path) -> list[Run]:
    """One Run per model of an sftjax-eval output file ({"models": {init_from: {suite: ...}}})."""
    try:
        record = _read_json(path)
    except ValueError as e:
        raise Skip(f"unreadable ({e})") from None
    if not isinstance(record, dict) or not isinstance(record.get("models"), dict) or not record["models"]:
        raise Skip("not an sftjax-eval output (expected {\"models\": {init_from: {suite: ...}}})")
    runs = []
    for spec, suites in record["models"].items():
        runs.append(Run(path=path, name=f"{path.name}:{spec}", coords={"model": spec, "strategy": EVAL_ONLY},
                        extra_eval=_suites(suites)))
    return runs


# -- finding runs ----------------------------------------------------------------------------------------------------


def is_run_dir(path: Path) -> bool:
    return ((path / "metrics.jsonl").is_file() or (path / ".hydra" / "config.yaml").is_file()
            or ((path / "eval").is_dir() and any(STEP_FILE.match(p.name) for p in (path / "eval").iterdir())))


def find_run_dirs(root: Path) -> list[Path]:
    """Every run directory at or under root (a sweep's jobs are subdirectories named by their overrides; a job's
    name may itself contain '/', so the search goes all the way down, skipping what lives inside a run)."""
    found = []
    for here, dirs, _ in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in RUN_INTERNALS and not d.startswith("."))
        if is_run_dir(Path(here)):
            found.append(Path(here))
    return found


def sweep_info(root: Path, warnings: list[str]) -> list[dict]:
    """Each sweep under root: its swept overrides (multirun.yaml) and, where sftjax.sweep wrote manifest.json, its
    jobs ({"run_dir", "status", "error", "override_dirname"}) and their counts."""
    out = []
    for f in sorted(root.rglob("multirun.yaml")):
        try:
            cfg = yaml.safe_load(f.read_text()) or {}
            hydra = cfg.get("hydra") or {}
            task = [str(o) for o in (hydra.get("overrides") or {}).get("task") or []]
            # a preset's own axes (hydra.sweeper.params), unless the command line set that key
            given = {o.split("=", 1)[0].lstrip("+~") for o in task}
            params = [f"{k}={v}" for k, v in ((hydra.get("sweeper") or {}).get("params") or {}).items()
                      if k not in given]
        except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError) as e:
            warnings.append(f"{f}: unreadable multirun.yaml ({type(e).__name__})")
            continue
        swept = [o for o in task + params if "," in o.split("=", 1)[-1] or "range(" in o]
        out.append({"dir": str(f.parent), "swept": swept, "jobs": [], "counts": {}})
    for f in sorted(root.rglob("manifest.json")):
        try:
            manifest = _read_json(f)
            jobs = [j for j in manifest.get("jobs", []) if isinstance(j, dict) and j.get("run_dir")]
        except (ValueError, AttributeError) as e:
            warnings.append(f"{f}: unreadable sweep manifest ({e})")
            continue
        sweep = next((s for s in out if s["dir"] == str(f.parent)), None)
        if sweep is None:
            sweep = {"dir": str(f.parent), "swept": [], "jobs": [], "counts": {}}
            out.append(sweep)
        sweep["jobs"] = jobs
        sweep["counts"] = {st: sum(j.get("status") == st for j in jobs) for st in ("completed", "failed", "running")}
    return out


def _job_status(sweeps: list[dict]) -> dict[Path, dict]:
    return {Path(j["run_dir"]).resolve(): j for s in sweeps for j in s["jobs"]}


def _first_line(text, limit: int = 300) -> str:
    lines = str(text or "").strip().splitlines()
    line = lines[0] if lines else "no error recorded"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def collect_runs(dirs: list[str | Path], log: Callable[[str], None] = lambda m: None) -> Collection:
    """Every run under every directory (or sftjax-eval output file) given. Raises NoRunsError naming a directory
    with no run in it, or one that does not exist."""
    runs: list[Run] = []
    skipped: list[tuple[str, str]] = []
    warnings: list[str] = []
    sweeps: list[dict] = []
    seen: set[Path] = set()
    for d in map(Path, dirs):
        if d.is_file():
            try:
                runs += load_eval_output(d)
            except (Skip, ValueError) as e:
                skipped.append((str(d), str(e)))
                log(f"skipped {d}: {e}")
            continue
        if not d.is_dir():
            raise NoRunsError(f"{d}: no such directory")
        found = find_run_dirs(d)
        if not found:
            raise NoRunsError(f"{d}: no run directories in it (looked for metrics.jsonl, eval/step_N.json and "
                              ".hydra/config.yaml at any depth)")
        here = sweep_info(d, warnings)
        sweeps += here
        jobs = _job_status(here)
        for path in found:
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            name = str(path.relative_to(d)) if path != d else d.name or str(d)
            job = jobs.get(path.resolve(), {})
            try:
                run = load_run(path, name)
            except Skip as e:
                why = f"sweep job failed: {_first_line(job.get('error'))}" if job.get("status") == "failed" else str(e)
                skipped.append((str(path), why))
                log(f"skipped {path}: {why}")
                continue
            if job.get("status") == "failed":
                run.notes.append(f"sweep job failed after logging: {_first_line(job.get('error'))}")
            elif job.get("status") == "running":
                run.notes.append("the sweep manifest lists this job as still running")
            for note in run.notes:
                warnings.append(f"{name}: {note}")
                log(f"warning: {name}: {note}")
            runs.append(run)
        for run_dir, job in jobs.items():  # a failed job that left no run directory is still counted
            if run_dir not in seen and job.get("status") == "failed":
                why = f"sweep job failed: {_first_line(job.get('error'))}"
                skipped.append((str(run_dir), why))
                log(f"skipped {run_dir}: {why}")
    col = Collection(runs=runs, skipped=skipped, warnings=warnings, roots=[str(d) for d in dirs], sweeps=sweeps)
    keys = col.coordinate_keys()  # not inside the key function: list.sort empties the list while it sorts
    col.runs.sort(key=lambda r: [sort_value(r.coords.get(k)) for k in keys] + [(1, 0, r.name)])
    col.assign_labels()
    return col


def headline_metrics(kind: str, metrics: dict) -> list[str]:
    """The metrics of a suite worth a column or a plot (not its counts)."""
    return [m for m, v in metrics.items() if m not in COUNT_METRICS and (is_number(v) or v is None)
            and not (kind == "judge" and (m.startswith("criterion/") or "/criterion/" in m))]


def ability_metrics(kind: str, metrics: dict) -> list[str]:
    """The headline abilities of a suite: math accuracy and answer format (the share in the ``#### N`` form), code
    pass@k, knowledge memorization and generalization, judge score."""
    if kind == "math":
        return [m for m in ("accuracy", "answer_format") if m in metrics]
    if kind == "code":
        return sorted((m for m in metrics if m.startswith("pass@")), key=lambda m: int(m[5:]) if m[5:].isdigit() else 0)
    if kind == "knowledge":
        return [m for m in ("memorization", "generalization") if m in metrics]
    if kind == "judge":
        return [m for m in ("score",) if m in metrics]
    return []


def rubric_suites(runs: list[Run]) -> list[tuple[str, list[str]]]:
    """(judge suite, its criteria) for every judge suite with per-criterion scores in the runs' final evaluations,
    criteria in the order the suite reports them (``overall`` last)."""
    out: dict[str, list[str]] = {}
    for r in runs:
        for suite, s in r.final_eval.items():
            if s["kind"] != "judge":
                continue
            names = [m[len("criterion/"):] for m in s["metrics"] if m.startswith("criterion/")]
            if names:
                seen = out.setdefault(suite, [])
                seen += [n for n in names if n not in seen]
    return [(suite, sorted(names, key=lambda n: n == "overall")) for suite, names in out.items()]
