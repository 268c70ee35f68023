"""One object per key for the whole process, rebuilt when its configuration changes.

Breakers and rate limiters must be shared by every thread and every client of a process
(two assets calling the same provider share its limit and its health), so both keep theirs
here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")
C = TypeVar("C", bound=Hashable)


class ProcessShared(Generic[C, T]):
    def __init__(self, build: Callable[[str, C], T]):
        self._build = build
        self._items: dict[str, tuple[C, T]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, config: C) -> T:
        """The object for ``key``; a different ``config`` replaces it with a new one."""
        with self._lock:
            current = self._items.get(key)
            if current is None or current[0] != config:
                current = (config, self._build(key, config))
                self._items[key] = current
            return current[1]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
