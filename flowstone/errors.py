"""Errors FlowStone raises for bad input.

They carry the place (file, line, field or config key) so that the message a person sees in
the Dagster UI or the CLI says exactly what to fix.
"""

from __future__ import annotations


class FlowStoneError(Exception):
    """Base class for errors a user can act on."""


class SuiteError(FlowStoneError):
    """A suite file that cannot be used: names the file, the line and the field."""

    def __init__(
        self, path: object, message: str, line: int | None = None, field: str | None = None
    ):
        where = f"{path}"
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line
        self.field = field


class ConfigError(FlowStoneError):
    """A configuration value that is out of range or unknown: names the file and the key."""

    def __init__(self, source: object, key: str, message: str):
        super().__init__(f"{source}: '{key}': {message}")
        self.source = source
        self.key = key


class SystemUnderTestError(FlowStoneError):
    """A system under evaluation failed or is misconfigured."""
