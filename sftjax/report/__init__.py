"""Reports: aggregate run directories and sweeps into a markdown table and PNG plots (``sftjax-report``).

    from sftjax.report import collect_runs, make_plots, render, write_report
    write_report(["runs/sweep"], "report")     # report/report.md + report/*.png

:mod:`.collect` finds and reads runs and their coordinates, :mod:`.plots` draws, :mod:`.markdown` writes the table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from sftjax.report.collect import Collection, NoRunsError, Run, collect_runs
from sftjax.report.markdown import render, table
from sftjax.report.plots import Plot, make_plots

__all__ = ["Collection", "NoRunsError", "Plot", "Run", "collect_runs", "make_plots", "render", "table",
           "write_report"]


def write_report(dirs: list[str | Path], out: str | Path = "report", title: str = "sftjax report",
                 log: Callable[[str], None] = lambda m: None) -> tuple[Collection, list[Plot], Path]:
    """collect_runs + make_plots + render into OUT/report.md; returns what was collected, the plots and the md path.
    Raises NoRunsError when a directory holds no run (or no run at all could be read)."""
    col = collect_runs(dirs, log=log)
    if not col.runs:
        raise NoRunsError(f"no run could be read: {col.summary()}")
    out = Path(out)
    plots = make_plots(col, out)
    md = out / "report.md"
    md.write_text(render(col, plots, title))
    return col, plots, md
