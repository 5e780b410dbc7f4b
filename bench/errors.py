"""Errors a user can act on.

`BenchInputError` is the one exception the CLI turns into a single line on stderr and exit code 2: a bad suite,
a bad argument or a missing file. Everything else that goes wrong inside a cell is recorded as a failed cell.
"""

from __future__ import annotations

STAGE_NOTE = "bench stage: "  # the prefix of the note bench.pipeline adds to an exception raised inside a stage


class BenchInputError(Exception):
    """A mistake in the user's input. The message names the file and the field."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None) -> None:
        self.file = file
        self.field = field
        self.detail = message
        where = ": ".join(part for part in (file, field) if part)
        super().__init__(f"{where}: {message}" if where else message)


class ConfigError(ValueError):
    """Raised by config dataclasses for a bad value; the suite loader adds the file and the path."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


class UnknownNameError(KeyError):
    """An axis name that no plugin registered; the message lists the valid ones."""

    def __init__(self, axis: str, name: str, valid: list[str]) -> None:
        self.axis = axis
        self.name = name
        self.valid = valid
        super().__init__(f"unknown {axis} '{name}'; valid: {', '.join(valid)}")

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return self.args[0]


class SkipCell(Exception):
    """Raised by a plugin when a combination cannot run; the message is the skip reason in the record."""
