"""A memory budget shared by every bake on the host.

The Dagster ``baking`` pool caps how many bake steps run at once, but models differ in size:
ten small classifiers fit where two large encoders do not. Each memory-heavy step reserves
its estimate here before it loads anything and waits while the reservations of live
processes would exceed the budget. Reservations live in a SQLite file, so they hold across
the processes of one host (a multi-host deployment gives each host its own budget); a
crashed step's reservation is reclaimed because its pid is gone.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from flowstone.baking.errors import BakeError

if TYPE_CHECKING:  # pragma: no cover
    from flowstone.baking.config import BakeConfig
    from flowstone.baking.records.source import SourceRecord

DEFAULT_BUDGET_MB = float(os.environ.get("FLOWSTONE_BAKE_MEMORY_BUDGET_MB", "8192"))
# A bake process holds the interpreter, torch and ONNX Runtime besides the model itself.
RUNTIME_BASELINE_MB = 600.0
MODEL_FACTOR = 4.0  # original + baked copy + activations + the profiling child


def estimate_mb(size_bytes: int, configured: float | None = None) -> float:
    """What a bake of a model of ``size_bytes`` needs at its peak (config wins)."""
    if configured:
        return float(configured)
    return RUNTIME_BASELINE_MB + MODEL_FACTOR * size_bytes / 2**20


class MemoryBudget:
    """Reservations against ``budget_mb`` in the SQLite file at ``path``."""

    def __init__(self, path: Path, budget_mb: float = DEFAULT_BUDGET_MB):
        self.path = Path(path)
        self.budget_mb = float(budget_mb)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(
                "create table if not exists reservations (pid integer, owner text, mb real, since real)"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30, isolation_level=None)

    def _live(self, db: sqlite3.Connection) -> float:
        rows = db.execute("select rowid, pid, mb from reservations").fetchall()
        total = 0.0
        for rowid, pid, mb in rows:
            if psutil.pid_exists(pid):
                total += mb
            else:
                db.execute("delete from reservations where rowid = ?", (rowid,))
        return total

    def reserved_mb(self) -> float:
        with contextlib.closing(self._connect()) as db:
            db.execute("begin immediate")
            total = self._live(db)
            db.execute("commit")
            return total

    @contextlib.contextmanager
    def reserve(self, owner: str, mb: float, *, timeout: float = 3600.0, poll: float = 0.5,
                on_wait: object = None) -> Iterator[float]:  # fmt: skip
        """Hold ``mb`` of the budget while the block runs; waits (up to ``timeout``) for room."""
        if mb > self.budget_mb:
            raise BakeError(owner, "memory_budget", f"needs an estimated {mb:.0f} MB, more than the whole "
                            f"budget of {self.budget_mb:.0f} MB (FLOWSTONE_BAKE_MEMORY_BUDGET_MB, or "
                            "memory_estimate_mb in the bake config)")  # fmt: skip
        deadline = time.monotonic() + timeout
        waited = 0.0
        rowid = None
        with contextlib.closing(self._connect()) as db:
            while rowid is None:
                db.execute("begin immediate")
                if self._live(db) + mb <= self.budget_mb:
                    rowid = db.execute(
                        "insert into reservations values (?, ?, ?, ?)",
                        (os.getpid(), owner, mb, time.time()),
                    ).lastrowid
                db.execute("commit")
                if rowid is None:
                    if time.monotonic() > deadline:
                        raise BakeError(owner, "memory_budget", f"waited {timeout:.0f} s for {mb:.0f} MB of the "
                                        f"{self.budget_mb:.0f} MB budget")  # fmt: skip
                    if on_wait and waited == 0.0:
                        on_wait(mb)  # type: ignore[operator]
                    time.sleep(poll)
                    waited += poll
            try:
                yield waited
            finally:
                db.execute("delete from reservations where rowid = ?", (rowid,))


@dataclass(frozen=True)
class Reservation:
    """What a bake step held of the budget, and how long it waited for room."""

    mb: float
    waited_seconds: float

    def metadata(self) -> dict[str, Any]:
        return {
            "memory_reserved_mb": round(self.mb, 1),
            "memory_wait_seconds": round(self.waited_seconds, 1),
        }


@contextlib.contextmanager
def reserve_for_bake(
    budget: MemoryBudget,
    source: SourceRecord,
    config: BakeConfig,
    *,
    log: Callable[[str], None] | None = None,
) -> Iterator[Reservation]:
    """Hold the estimate for baking ``source`` (its config's ``memory_estimate_mb`` wins) while
    the block runs; ``log`` hears once if the step has to wait for room."""
    need = estimate_mb(source.size_bytes, config.memory_estimate_mb)

    def on_wait(mb: float) -> None:
        if log:
            log(f"waiting for {mb:.0f} MB of the {budget.budget_mb:.0f} MB bake memory budget")

    with budget.reserve(source.model, need, on_wait=on_wait if log else None) as waited:
        yield Reservation(need, waited)
