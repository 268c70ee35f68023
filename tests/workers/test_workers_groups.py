"""Nothing a handler starts outlives its worker, and a dead idle worker is never handed a call.

Each test makes a handler start ``sleep 300`` (a grandchild of the pool), ends the worker one
way (close, crash, recycling, timeout, a SIGKILLed pool parent or pool server) and then polls,
with a generous deadline, until the worker's whole process group is empty.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from support.polling import wait_for
from worker_helpers import alive, child_env

from flowstone.workers.errors import WorkerCrashedError, WorkerTimeoutError
from flowstone.workers.registry import reap_orphans
from flowstone.workers.server import PoolClient

FAULTY = "faulty_bridge:FaultyBridge"
GONE_WITHIN_S = 30.0  # a bound for a loaded CI host; an empty group is usually milliseconds away


def _group(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group pgid."""
    members = []
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
    return members


def _grandchild(pid_file: Path) -> psutil.Process | None:
    """The subprocess the handler started (None if it is already gone and reaped)."""
    assert wait_for(pid_file.exists, timeout=60), "the handler never started its subprocess"
    try:
        return psutil.Process(int(pid_file.read_text()))
    except psutil.NoSuchProcess:
        return None


def _gone(proc: psutil.Process | None) -> bool:
    if proc is None:
        return True
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def leftovers() -> Iterator[list[psutil.Process | None]]:
    """Grandchildren to kill after the test, whatever it asserted (never leave a sleep behind)."""
    procs: list[psutil.Process | None] = []
    yield procs
    for proc in procs:
        with contextlib.suppress(psutil.Error, AttributeError):
            proc.kill()  # type: ignore[union-attr]


@pytest.mark.parametrize("how", ["close", "crash", "recycle", "timeout"])
def test_a_handlers_subprocess_dies_with_its_worker(make_pool, tmp_path, leftovers, how):
    pool = make_pool(bridge=FAULTY, size=1, max_requests=1 if how == "recycle" else None)
    worker_pid = pool.worker_pids()[0]
    pid_file = tmp_path / "grandchild.pid"
    args = {"pid_file": str(pid_file)}
    if how == "crash":
        with pytest.raises(WorkerCrashedError):
            pool.execute("faulty:spawn_grandchild", {**args, "then": "die"})
    elif how == "timeout":
        with pytest.raises(WorkerTimeoutError):
            pool.execute("faulty:spawn_grandchild", {**args, "then": "hang"}, timeout=2.0)
    else:
        pool.execute("faulty:spawn_grandchild", args)
    grandchild = _grandchild(pid_file)
    leftovers.append(grandchild)
    if how == "close":
        assert not _gone(grandchild)  # the worker is alive and idle: so is what it started
        pool.close()
    assert wait_for(lambda: _gone(grandchild), timeout=GONE_WITHIN_S), (
        f"the handler's subprocess outlived its worker ({how})"
    )
    assert wait_for(lambda: not _group(worker_pid), timeout=GONE_WITHIN_S), _group(worker_pid)
    if how != "close":
        assert pool.execute("faulty:pid") != worker_pid  # and the pool serves on


def test_without_its_guard_the_pool_still_kills_the_group(make_pool, tmp_path, leftovers):
    """Defence in depth: the pool kills a worker's group itself when it ends the worker."""
    pool = make_pool(bridge=FAULTY, size=1, bridge_options={"kill_guard": True})
    with pytest.raises(WorkerCrashedError):
        pool.execute("faulty:spawn_grandchild", {"pid_file": str(tmp_path / "a"), "then": "die"})
    crashed = _grandchild(tmp_path / "a")
    leftovers.append(crashed)
    assert wait_for(lambda: _gone(crashed), timeout=GONE_WITHIN_S)
    assert wait_for(pool.worker_pids)
    worker_pid = pool.worker_pids()[0]
    assert _group(worker_pid) == [worker_pid]  # the replacement, without its guard
    pool.execute("faulty:spawn_grandchild", {"pid_file": str(tmp_path / "b")})
    closed = _grandchild(tmp_path / "b")
    leftovers.append(closed)
    pool.close()
    assert wait_for(lambda: _gone(closed), timeout=GONE_WITHIN_S)
    assert wait_for(lambda: not _group(worker_pid), timeout=GONE_WITHIN_S)


PARENT_SCRIPT = """
import json, sys, time
from flowstone.workers.pool import WorkerPool
pool = WorkerPool(bridge="faulty_bridge:FaultyBridge", size=1, registry_dir=sys.argv[1],
                  health_interval_s=None).start()
pool.execute("faulty:spawn_grandchild", {"pid_file": sys.argv[2]})
print(json.dumps(pool.worker_pids()), flush=True)
time.sleep(300)
"""


def test_a_sigkilled_pool_parent_leaves_no_grandchild(tmp_path, leftovers):
    pid_file = tmp_path / "grandchild.pid"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_SCRIPT, str(tmp_path / "registry"), str(pid_file)],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(tmp_path),
    )
    try:
        assert parent.stdout is not None
        (worker_pid,) = json.loads(parent.stdout.readline())
        grandchild = _grandchild(pid_file)
        leftovers.append(grandchild)
        assert not _gone(grandchild)
        parent.kill()
        parent.wait()
        assert wait_for(lambda: _gone(grandchild), timeout=GONE_WITHIN_S)
        assert wait_for(lambda: not _group(worker_pid), timeout=GONE_WITHIN_S), _group(worker_pid)
    finally:
        parent.kill()
        parent.wait()


@pytest.mark.slow  # starts a pool server (a CLI process)
def test_a_sigkilled_pool_server_leaves_no_grandchild(short_tmp, tmp_path, leftovers):
    sock = short_tmp / "g.sock"
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "flowstone.workers.cli", "serve"),
            *("--socket", str(sock), "--bridge", FAULTY, "--workers", "1"),
        ],
        env=child_env(tmp_path),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        line = server.stderr.readline()
        assert "workers ready" in line, line
        pid_file = tmp_path / "grandchild.pid"
        with PoolClient(sock) as client:
            client.execute("faulty:spawn_grandchild", {"pid_file": str(pid_file)})
            (worker_pid,) = [w["pid"] for w in client.workers()]
        grandchild = _grandchild(pid_file)
        leftovers.append(grandchild)
        assert not _gone(grandchild)
        server.kill()
        server.wait()
        assert wait_for(lambda: _gone(grandchild), timeout=GONE_WITHIN_S)
        assert wait_for(lambda: not _group(worker_pid), timeout=GONE_WITHIN_S), _group(worker_pid)
    finally:
        server.kill()
        server.wait()


LEADER_SCRIPT = """
import subprocess
print(subprocess.Popen(["sleep", "300"]).pid, flush=True)
"""


def test_reap_finds_the_group_of_a_worker_that_died(tmp_path, leftovers):
    """The guard normally kills a dead worker's group at once; when nothing did (the guard was
    killed alone, a pool of an older version), `flowstone pool reap` finds what is left."""
    registry = tmp_path / "workers"
    registry.mkdir()
    entries, members = [], []
    for _ in range(2):
        # A "worker" that leads its group and session, starts a subprocess and is gone.
        leader = subprocess.Popen(
            [sys.executable, "-c", LEADER_SCRIPT],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert leader.stdout is not None
        member = psutil.Process(int(leader.stdout.readline()))
        leftovers.append(member)
        created = psutil.Process(leader.pid).create_time()
        leader.wait()
        entries.append({"pid": leader.pid, "pgid": leader.pid, "create_time": created})
        members.append(member)
    entries[1]["create_time"] += 3600  # a group older than its recorded worker: not ours
    dead_owner = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_owner.wait()
    (registry / "pool-1-dead.json").write_text(
        json.dumps({"owner": {"pid": dead_owner.pid, "create_time": 1.0}, "workers": entries})
    )
    assert reap_orphans(registry) == [entries[0]["pid"]]
    assert wait_for(lambda: _gone(members[0]), timeout=GONE_WITHIN_S)
    assert not _gone(members[1])  # left alone: nothing proved it belonged to the dead worker


def test_a_dead_idle_worker_is_replaced_before_a_call_reaches_it(make_pool):
    """An idle worker killed, then five non-idempotent calls: all five run on a live worker.
    Then every worker killed: the call waits for a replacement instead of failing."""
    pool = make_pool(bridge=FAULTY, size=2)
    victim = pool.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: not alive(victim))  # dead, not yet noticed by the pool
    served_by = [pool.execute("faulty:pid", idempotent=False) for _ in range(5)]
    assert victim not in served_by and set(served_by) <= set(pool.worker_pids())
    assert pool.stats()["dead_idle"] == 1
    assert wait_for(lambda: sum(w["state"] == "idle" for w in pool.workers()) == 2)
    victims = pool.worker_pids()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not any(alive(pid) for pid in victims))
    assert pool.execute("faulty:echo", {"value": 7}) == 7  # echo is not idempotent
    stats = pool.stats()
    assert stats["failed"] == 0 and stats["succeeded"] == 6 and stats["retries"] == 0
    assert stats["dead_idle"] == 3


def _unread(fd: int) -> int:
    import array
    import fcntl
    import termios

    count = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, count)
    return count[0]


def test_a_request_a_dead_worker_never_read_is_sent_again(make_pool):
    """The request is written to a frozen worker, which is then killed with it unread: not
    delivered, so it goes to the replacement though the command is not idempotent."""
    pool = make_pool(bridge=FAULTY, size=1)
    (worker,) = pool._workers.values()
    os.kill(worker.pid, signal.SIGSTOP)
    stopped = psutil.Process(worker.pid)
    assert wait_for(lambda: stopped.status() == psutil.STATUS_STOPPED)  # it can read nothing now
    results: list[object] = []
    caller = threading.Thread(
        target=lambda: results.append(pool.execute("faulty:echo", {"value": "once"}))
    )
    caller.start()
    try:
        assert wait_for(lambda: _unread(worker.stdin_fd) > 0)  # written, and not read
        os.kill(worker.pid, signal.SIGKILL)
        caller.join(60)
        assert results == ["once"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGKILL)
        caller.join(60)
    stats = pool.stats()
    assert stats["redelivered"] == 1 and stats["retries"] == 0 and stats["failed"] == 0


def test_the_worker_guard_is_in_the_group_and_leaves_with_it(make_pool):
    """Each worker has one guard process in its group (its watcher), and stdin of /dev/null for
    what handlers start."""
    pool = make_pool(bridge=FAULTY, size=1)
    worker_pid = pool.worker_pids()[0]
    guard = [pid for pid in _group(worker_pid) if pid != worker_pid]
    assert len(guard) == 1 and psutil.Process(guard[0]).ppid() == worker_pid
    assert os.readlink(f"/proc/{worker_pid}/fd/0") == os.devnull
    pool.close()
    assert wait_for(lambda: not _group(worker_pid), timeout=GONE_WITHIN_S)
