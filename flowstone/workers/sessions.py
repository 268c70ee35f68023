"""Session affinity: which worker holds a session's state, for how long, for how many sessions.

A session is a caller-chosen id. In ``hint`` mode a call prefers the session's worker but takes
any free one when that worker is busy (an affinity miss). In ``strict`` mode it waits for that
worker, and fails with SessionLostError if the worker died, because the state is gone. Sessions
expire after ``ttl_s`` without a call; past ``max_sessions`` the least recently used is dropped.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

SESSION_MODES = ("hint", "strict")


@dataclass
class Binding:
    worker_id: int
    worker_pid: int
    last_used: float


class SessionTable:
    """Not thread-safe on its own: the pool calls it under its lock."""

    def __init__(self, ttl_s: float, max_sessions: int):
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._bindings: OrderedDict[str, Binding] = OrderedDict()

    def get(self, session_id: str) -> Binding | None:
        binding = self._bindings.get(session_id)
        if binding is None:
            return None
        if time.monotonic() - binding.last_used > self.ttl_s:
            del self._bindings[session_id]
            return None
        return binding

    def bind(self, session_id: str, worker_id: int, worker_pid: int) -> None:
        self._bindings[session_id] = Binding(worker_id, worker_pid, time.monotonic())
        self._bindings.move_to_end(session_id)
        while len(self._bindings) > self.max_sessions:
            self._bindings.popitem(last=False)

    def drop(self, session_id: str) -> None:
        self._bindings.pop(session_id, None)

    def expire(self) -> int:
        """Drop sessions idle past the TTL; returns how many."""
        cutoff = time.monotonic() - self.ttl_s
        stale = [sid for sid, b in self._bindings.items() if b.last_used < cutoff]
        for sid in stale:
            del self._bindings[sid]
        return len(stale)

    def count_for(self, worker_id: int) -> int:
        return sum(1 for b in self._bindings.values() if b.worker_id == worker_id)

    def __len__(self) -> int:
        return len(self._bindings)
