"""The ``echo`` bridge: cheap commands for smoke tests, health checks and benchmarks.

``flowstone pool serve --bridge echo`` gives a pool that starts in a fraction of a second, which
is the quickest way to check that the pool, the socket and the Dagster resource are wired up.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from flowstone.workers.bridge import Bridge, command


class EchoBridge(Bridge):
    name = "echo"

    @command(idempotent=True)
    def noop(self) -> None:
        """Nothing at all: the pool's own round-trip cost."""
        return None

    @command(idempotent=True)
    def echo(self, value: Any = None) -> Any:
        return value

    @command(idempotent=True)
    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @command(idempotent=True)
    def count(self, n: int, delay_s: float = 0.0) -> Iterator[int]:
        """Stream 0..n-1, one chunk each (optionally spaced by ``delay_s``)."""
        for i in range(n):
            if delay_s:
                time.sleep(delay_s)
            yield i

    @command
    def remember(self, key: str, value: Any) -> int:
        """Keep a value in this worker (session-affinity state); returns how many are kept."""
        store = self.__dict__.setdefault("_memory", {})
        store[key] = value
        return len(store)

    @command(idempotent=True)
    def recall(self, key: str) -> Any:
        store = self.__dict__.get("_memory", {})
        if key not in store:
            raise KeyError(
                f"'{key}' is not stored in this worker (a different worker, or it restarted)"
            )
        return store[key]
