"""Case-level progress for long predictions (LLM systems), shown by the CLI while it runs.

Asset bodies cannot reach the terminal, so the CLI registers a listener here for the runs it
executes in its own process; without a listener, progress reports are dropped at no cost.
"""

from __future__ import annotations

from collections.abc import Callable

Listener = Callable[[str, int, int], None]  # (label, done, total)
_listener: Listener | None = None


def set_listener(listener: Listener | None) -> None:
    global _listener
    _listener = listener


def reporter(label: str, total: int) -> Callable[[int], None] | None:
    """A ``progress(done)`` callback for one batch, or None when nobody listens."""
    listener = _listener
    if listener is None:
        return None
    return lambda done: listener(label, done, total)
