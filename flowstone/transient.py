"""Which failures are worth running again as they are.

Why: a bake step that retries every exception spends its retries, and the person's time, on a
config error or a model that cannot be quantized, which fail the same way each time; a step
that retries none gives up a whole run (a re-execution costs a new run worker, the code
location and torch's import) for a connection reset or an object store that refused one write.
The bake steps' retry policy (``assets/baking.py``) asks this module; everything else fails at
once with its own message.

Transient here: the OS's and the network's passing failures (``ConnectionError``,
``TimeoutError``, ``InterruptedError``, ``BlockingIOError``) and a soak benchmark's injected
fault (:class:`flowstone.faults.InjectedFault`), which stands for exactly those. An exception
counts when it, or one it was raised from, is of these kinds.
"""

from __future__ import annotations

from flowstone.faults import InjectedFault

TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    InterruptedError,
    BlockingIOError,
    InjectedFault,
)


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` or an exception in its cause chain is a passing failure."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, TRANSIENT_TYPES):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
