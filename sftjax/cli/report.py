"""sftjax-report: aggregate run directories and sweeps into a markdown table and PNG plots.

    sftjax-report runs/sweep_strategy runs/sweep_k [--out report] [--title "Dong et al. replication"]

Each DIR may be a run directory, a sweep directory (Hydra multirun) or any directory above them; an sftjax-eval
output JSON file is read too (one row per model). Writes OUT/report.md and OUT/*.png (see sftjax.report.plots for
which plots and when). Exit status 2 when a DIR holds no run.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sftjax-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="run directories, sweeps, or directories above them")
    parser.add_argument("--out", default="report", help="output directory for report.md and the PNGs (default: "
                        "report)")
    parser.add_argument("--title", default="sftjax report", help="the report's title")
    args = parser.parse_args(argv)

    from sftjax.report import NoRunsError, write_report

    try:
        col, plots, md = write_report(args.dirs, args.out, args.title,
                                      log=lambda m: print(f"sftjax-report: {m}", file=sys.stderr))
    except NoRunsError as e:
        print(f"sftjax-report: {e}", file=sys.stderr)
        sys.exit(2)
    drawn = [p.file for p in plots if p.file]
    print(f"sftjax-report: {col.summary()}; wrote {md} and {len(drawn)} plot(s): {', '.join(drawn) or 'none'}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
