"""Sweeps: `sftjax-train -m experiment=NAME` runs a grid of jobs through Hydra's multirun.

Two things Hydra does not do are added here. Before anything launches, the grid is counted (the preset's
``hydra.sweeper.params`` merged with the command line's sweep overrides) and refused above ``sweep.max_jobs`` unless
``sweep.confirm=true``: a typo in an axis should not queue hundreds of jobs on a pod. While it runs, a manifest
(``SWEEP_DIR/manifest.json``) lists every job with its overrides, run directory and status; a job writes its own
``manifest/job_N.json`` (safe when jobs run in parallel or on other hosts) and the sweep's end merges them. A failed
job is recorded with its error and does not stop the jobs after it (every job of a batch is launched before Hydra
reports the first failure).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from sftjax.config import ConfigError


def count_jobs(overrides: list[str], sweeper_params: dict[str, Any] | None) -> tuple[int, dict[str, int]]:
    """(number of jobs, {key: values}) of the grid the basic sweeper would launch."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    by_key: dict[str, str] = {str(k): f"{k}={v}" for k, v in (sweeper_params or {}).items()}
    for arg in overrides:
        if "=" in arg and not arg.startswith("-"):
            by_key[arg.split("=", 1)[0].lstrip("+~")] = arg  # the command line wins over the preset
    axes = {}
    for key, text in by_key.items():
        try:
            parsed = OverridesParser.create().parse_overrides([text])[0]
        except Exception as e:  # Hydra's own parse errors are precise; keep them
            raise ConfigError(f"sweep axis '{key}': cannot parse {text!r}: {e}") from None
        if parsed.is_sweep_override():
            axes[key] = len(list(parsed.sweep_string_iterator()))
    return math.prod(axes.values()) if axes else 1, axes


def check_sweep_size(n_jobs: int, axes: dict[str, int], max_jobs: int, confirm: bool) -> None:
    if n_jobs > max_jobs and not confirm:
        grid = " x ".join(f"{k} ({n})" for k, n in axes.items())
        raise ConfigError(f"config key 'sweep.max_jobs': this sweep would launch {n_jobs} jobs ({grid}), more than "
                          f"sweep.max_jobs={max_jobs}; add sweep.confirm=true to launch them, or raise the limit")


class SweepManifest(Callback):
    """Hydra callback (conf/config.yaml registers it) writing the sweep manifest."""

    def on_multirun_start(self, config, **kwargs) -> None:
        root = Path(config.hydra.sweep.dir)
        (root / "manifest").mkdir(parents=True, exist_ok=True)
        self._write(root / "manifest.json", {"sweep_dir": str(root), "started": time.time(), "jobs": []})

    def on_job_start(self, config, **kwargs) -> None:
        if not self._multirun(config):
            return
        self._job(config, {"status": "running", "started": time.time()})

    def on_job_end(self, config, job_return, **kwargs) -> None:
        if not self._multirun(config):
            return
        from hydra.core.utils import JobStatus

        failed = job_return.status == JobStatus.FAILED
        entry = {"status": "failed" if failed else "completed", "ended": time.time()}
        if failed:
            err = job_return._return_value
            entry["error"] = f"{type(err).__name__}: {err}"[:2000]
            print(f"sweep: job {config.hydra.job.num} ({config.hydra.job.override_dirname}) failed: {entry['error']}"
                  " -- the other jobs go on")
        self._job(config, entry)
        self.merge(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config, **kwargs) -> None:
        manifest = self.merge(Path(config.hydra.sweep.dir))
        print(f"sweep: {manifest['counts']['completed']}/{len(manifest['jobs'])} jobs completed; manifest "
              f"{Path(config.hydra.sweep.dir) / 'manifest.json'}")

    @classmethod
    def merge(cls, root: Path) -> dict:
        """manifest.json from the per-job files. Run after every job too: when a job fails, Hydra raises once the
        batch is done and never calls on_multirun_end, and the manifest must still be complete."""
        jobs = [json.loads(p.read_text()) for p in sorted((root / "manifest").glob("job_*.json"),
                                                           key=lambda p: int(p.stem.split("_")[1]))]
        manifest = json.loads((root / "manifest.json").read_text()) if (root / "manifest.json").exists() else {}
        manifest.update(jobs=jobs, updated=time.time(),
                        counts={s: sum(j["status"] == s for j in jobs) for s in ("completed", "failed", "running")})
        cls._write(root / "manifest.json", manifest)
        return manifest

    @staticmethod
    def _multirun(config) -> bool:
        from hydra.types import RunMode

        return config.hydra.mode == RunMode.MULTIRUN

    def _job(self, config, update: dict) -> None:
        job = config.hydra.job
        path = Path(config.hydra.sweep.dir) / "manifest" / f"job_{job.num}.json"
        entry = json.loads(path.read_text()) if path.exists() else {
            "num": job.num, "overrides": list(config.hydra.overrides.task),
            "override_dirname": job.override_dirname, "run_dir": config.hydra.runtime.output_dir}
        entry.update(update)
        self._write(path, entry)

    @staticmethod
    def _write(path: Path, value: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(value, indent=1))
        tmp.replace(path)
