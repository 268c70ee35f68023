"""Failpoints: named places where a soak benchmark can inject a fault into a real run.

Why in the product and not in the benchmark: the faults that matter (a step process killed in
the middle of a pass, a checkpoint damaged on disk, a pass that raises, the object store
refusing a write) happen inside a Dagster step, in a process the benchmark does not control.
A failpoint costs one environment lookup when no plan is set, which is always the case outside
``bench/bench_bake_soak.py``.

The plan is a JSON file named by ``FLOWSTONE_FAULTS``: a list of
``{"id", "point", "match", "action"}``. ``point`` is the failpoint's name (``pass`` or
``store:put``), ``match`` a dict of context values that must all equal the call's (e.g.
``{"model": "clf0042", "index": 1}``; a ``key_contains`` entry matches a substring of the
``key`` value), ``action`` one of:

- ``kill``: SIGKILL this process (a step process dying mid-pass);
- ``raise``: raise :class:`InjectedFault` (a pass or a write that fails once);
- ``truncate_checkpoint`` / ``corrupt_checkpoint``: damage the files of the checkpoint named
  by the call's ``checkpoint`` value (cut in half / bytes flipped in the middle), then SIGKILL.

Each fault fires once: before acting it records its id in ``<plan>.fired`` (appended and
fsynced), so the retried run passes the same point unharmed, as a transient fault would let it.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

ENV = "FLOWSTONE_FAULTS"


class InjectedFault(RuntimeError):
    """A fault a soak benchmark injected (never raised in normal operation)."""


def _fired_path(plan: Path) -> Path:
    return plan.with_name(plan.name + ".fired")


def fired(plan: Path) -> set[str]:
    """The ids of the faults of ``plan`` that have fired."""
    path = _fired_path(plan)
    if not path.exists():
        return set()
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _record(plan: Path, fault_id: str) -> None:
    with open(_fired_path(plan), "a", encoding="utf-8") as handle:
        handle.write(fault_id + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _matches(match: dict[str, Any], context: dict[str, Any]) -> bool:
    for key, wanted in match.items():
        if key == "key_contains":
            if str(wanted) not in str(context.get("key", "")):
                return False
        elif context.get(key) != wanted:
            return False
    return True


def _damage(folder: Path, how: str) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "record.json")
    for file in files[:1] or sorted(folder.rglob("record.json")):
        data = file.read_bytes()
        if how == "truncate_checkpoint":
            file.write_bytes(data[: len(data) // 2])
        else:
            middle = len(data) // 2
            file.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64])
                             + data[middle + 64 :])  # fmt: skip


def failpoint(point: str, **context: Any) -> None:
    """Act on the first unfired fault of the plan that matches ``point`` and ``context``."""
    value = os.environ.get(ENV)
    if not value:
        return
    plan = Path(value)
    try:
        faults = json.loads(plan.read_text())
    except (OSError, ValueError):
        return
    done = fired(plan)
    for fault in faults:
        if fault["id"] in done or fault["point"] != point:
            continue
        if not _matches(fault.get("match", {}), context):
            continue
        _record(plan, fault["id"])
        action = fault["action"]
        if action in ("truncate_checkpoint", "corrupt_checkpoint") and context.get("checkpoint"):
            _damage(Path(context["checkpoint"]), action)
            action = "kill"
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise InjectedFault(f"injected fault {fault['id']} at {point} ({context})")
