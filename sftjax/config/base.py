"""The error type and check helper shared by every part of the schema."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A config value is impossible; the message names the key and the expected value."""


def require(ok: bool, key: str, expected: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': expected {expected}, got {got!r}")


def is_number(v: Any) -> bool:
    """An int or float from parsed JSON/YAML, not a bool (which Python counts as an int)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)
