"""Settings read from environment variables, checked the same way everywhere: a bad value is a
ConfigError naming the variable, never a silent default."""

from __future__ import annotations

import os

from flowstone.errors import ConfigError


def positive_int(name: str, default: int, what: str = "an integer") -> int:
    """``$name`` as an integer >= 1 (``default`` when unset)."""
    raw = os.environ.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"environment variable {name}", raw, f"must be {what}, at least 1")
    return value
