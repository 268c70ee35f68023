"""A pid registry under ``<instance>/workers/`` so no worker outlives a dead pool for long.

Each live pool keeps one JSON file naming its own pid and start time and every worker it
spawned (pid, start time, process group). A new pool reads the files whose owner is gone and
terminates their workers: SIGTERM to the process group, then SIGKILL. A process is touched only
if its pid, its start time *and* its command line still match what was recorded, so a pid the
kernel reused for someone else's process is never signalled. A worker that is itself gone may
have left its group behind (processes its handlers started, when nothing killed the group): those
are found by group and session id and killed too, checked as
:func:`flowstone.workers.groups.orphaned_group_members` explains.

The folder may be shared by several hosts (a DAGSTER_HOME on NFS, several containers with one
volume). A pid means something only to the kernel that issued it, so each file also records its
host (hostname and kernel boot id): a pool judges and reaps only the files of its own host,
drops the files of its own earlier boots (those processes are gone), and leaves every other
host's files alone, live or not.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from flowstone import atomic
from flowstone.paths import instance_dir
from flowstone.workers.groups import kill_group, orphaned_group_members

WORKER_MARKER = "flowstone.workers.worker"
_START_TIME_TOLERANCE_S = 0.05


def default_registry_dir() -> Path:
    return instance_dir() / "workers"


@functools.lru_cache(maxsize=1)
def host_id() -> str:
    """This host: its name and the kernel's boot id (a container shares the boot id of its node
    but has its own hostname; a rebooted machine keeps its name but gets a new boot id)."""
    boot = ""
    with contextlib.suppress(OSError):
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return f"{socket.gethostname()}/{boot}"


def _host_relation(owner: dict[str, Any]) -> str:
    """``same`` host, ``rebooted`` (our hostname, an earlier boot: every process of it is gone)
    or ``other``. Files written before hosts were recorded count as this host's."""
    recorded = owner.get("host")
    if recorded is None or recorded == host_id():
        return "same"
    if str(recorded).partition("/")[0] == host_id().partition("/")[0]:
        return "rebooted"
    return "other"


def _create_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def _write_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Whole or not at all: another pool may read the file at any moment. The temporary name
    (``atomic.TEMP_PREFIX`` first) never matches the ``pool-*.json`` the readers glob."""
    atomic.write_text(path, json.dumps(payload, indent=1))


class PidRegistry:
    """The registry file of one pool (this process)."""

    def __init__(self, directory: Path | None = None):
        self.directory = Path(directory) if directory else default_registry_dir()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / f"pool-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        self._lock = threading.Lock()
        self._workers: dict[int, dict[str, Any]] = {}
        self._owner = {
            "pid": os.getpid(),
            "create_time": _create_time(os.getpid()),
            "host": host_id(),
        }

    def add(self, pid: int) -> None:
        entry = {"pid": pid, "pgid": pid, "create_time": _create_time(pid)}
        with self._lock:
            self._workers[pid] = entry
            self._flush()

    def discard(self, pid: int) -> None:
        with self._lock:
            if self._workers.pop(pid, None) is not None:
                self._flush()

    def remove(self) -> None:
        with self._lock:
            self._workers.clear()
            self.path.unlink(missing_ok=True)

    def _flush(self) -> None:
        _write_atomic(self.path, {"owner": self._owner, "workers": list(self._workers.values())})


def _owner_alive(owner: dict[str, Any]) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    started = _create_time(pid)
    recorded = owner.get("create_time")
    if started is None:
        return False
    return recorded is None or abs(started - float(recorded)) < _START_TIME_TOLERANCE_S


def _is_our_worker(entry: dict[str, Any]) -> bool:
    import psutil

    pid, recorded = entry.get("pid"), entry.get("create_time")
    if not isinstance(pid, int) or recorded is None:
        return False
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - float(recorded)) >= _START_TIME_TOLERANCE_S:
            return False
        return any(WORKER_MARKER in part for part in proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _terminate_group(pid: int, pgid: int, grace: float, create_time: float | None) -> None:
    """SIGTERM the group of a live worker, wait for the worker, then SIGKILL what is left."""
    import psutil

    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) != pgid:
            return  # not the group we started; leave it alone
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    else:
        kill_group(pgid)  # the worker ignored SIGTERM; it is still alive, so the group is ours
        return
    _kill_leftovers(pgid, create_time)  # what a handler started may ignore SIGTERM


def _kill_leftovers(pgid: int, create_time: float | None) -> bool:
    """SIGKILL the group a dead worker led, if processes are proven to remain in it."""
    if not orphaned_group_members(pgid, create_time):
        return False
    kill_group(pgid)
    return True


def reap_orphans(directory: Path | None = None, grace: float = 2.0) -> list[int]:
    """Terminate the workers, and the groups of dead workers, recorded by pools that are gone;
    returns the worker pids whose groups were signalled."""
    directory = Path(directory) if directory else default_registry_dir()
    if not directory.is_dir():
        return []
    reaped: list[int] = []
    for path in sorted(directory.glob("pool-*.json")):
        try:
            payload = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # being written right now, or not ours; never guess
        owner = payload.get("owner") or {}
        relation = _host_relation(owner)
        if relation == "rebooted":
            path.unlink(missing_ok=True)  # its workers died with that boot; nothing to signal
            continue
        if relation == "other" or _owner_alive(owner):
            continue  # another host's pool (its pids mean nothing here), or alive
        for entry in payload.get("workers") or []:
            pid = entry.get("pid")
            if not isinstance(pid, int):
                continue
            pgid, created = int(entry.get("pgid") or pid), entry.get("create_time")
            if _is_our_worker(entry):
                _terminate_group(pid, pgid, grace, created)
                reaped.append(pid)
            elif _kill_leftovers(pgid, created):  # the worker died; its group did not
                reaped.append(pid)
        path.unlink(missing_ok=True)
    return reaped


def live_registries(directory: Path | None = None) -> list[dict[str, Any]]:
    """The registry files of pools still running (for ``flowstone pool status``)."""
    directory = Path(directory) if directory else default_registry_dir()
    found = []
    for path in sorted(directory.glob("pool-*.json")) if directory.is_dir() else []:
        try:
            payload = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        owner = payload.get("owner") or {}
        relation = _host_relation(owner)
        if relation == "same":
            payload["alive"] = _owner_alive(owner)
        else:  # an earlier boot of this host is dead; another host's pool only it can judge
            payload["alive"] = False if relation == "rebooted" else None
        payload["file"] = str(path)
        found.append(payload)
    return found
