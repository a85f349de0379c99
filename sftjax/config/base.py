"""The error type and check helper shared by every part of the schema."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A config value is impossible; the message names the key and the expected value."""


def _require(ok: bool, key: str, expected: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': expected {expected}, got {got!r}")
