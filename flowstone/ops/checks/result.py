"""What a check returns, and the small helpers every check formats its answer with.

Why its own module: the checks, the runner and the doctor's table all speak this one type,
and the wiring's instance check builds it too without importing any other check.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass(frozen=True)
class CheckResult:
    """One line of the doctor's report."""

    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 500 characters): a report cell, not
    a traceback."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]


def exception_chain(exc: BaseException | None) -> list[BaseException]:
    """``exc`` and its causes and contexts, outermost first: a client library's wrapper often
    hides the error that says what to fix."""
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen
