"""Thin console entry points."""

from __future__ import annotations

import contextlib
import sys

from sftjax.config import ConfigError


@contextlib.contextmanager
def config_errors(prog: str):
    """A bad config or input is the user's to fix: one line naming it and exit code 2, not a traceback."""
    try:
        yield
    except ConfigError as e:
        print(f"{prog}: invalid config: {e}", file=sys.stderr)
        sys.exit(2)
