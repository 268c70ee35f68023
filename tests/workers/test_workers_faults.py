"""Faults with real processes: kills, segfaults, memory caps, timeouts, dead parents, orphans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from support.polling import wait_for
from worker_helpers import HERE, alive, child_env

from flowstone.workers.errors import (
    WorkerCrashedError,
    WorkerOutOfMemoryError,
    WorkerTimeoutError,
)
from flowstone.workers.pool import WorkerPool
from flowstone.workers.process import classify_exit
from flowstone.workers.registry import reap_orphans

FAULTY = "faulty_bridge:FaultyBridge"


def test_worker_sigkilled_mid_call_is_classified_and_replaced(make_pool, tmp_path):
    pool = make_pool(bridge=FAULTY, size=2)
    before = set(pool.worker_pids())
    victim: dict = {}
    started = tmp_path / "hang-started"

    def kill_once_running():
        # the worker writes its pid once the call runs: killing it any earlier (between the
        # busy state and the request reaching the worker) is a call never delivered, which
        # the pool may rightly send elsewhere
        try:
            if wait_for(lambda: started.exists() and started.read_text(), timeout=200):
                victim["pid"] = int(started.read_text())
                os.kill(victim["pid"], signal.SIGKILL)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            victim["error"] = repr(exc)

    threading.Thread(target=kill_once_running, daemon=True).start()
    with pytest.raises(WorkerCrashedError) as caught:  # not idempotent: never retried
        pool.execute("faulty:hang", {"seconds": 260, "started": str(started)})
    assert "pid" in victim, victim  # the kill happened (not a hang that ended by itself)
    error = caught.value
    assert error.details["exit"]["signal"] == "SIGKILL"
    assert f"pid {victim['pid']}" in str(error) and "SIGKILL" in str(error)
    assert wait_for(lambda: len(pool.worker_pids()) == 2)
    after = set(pool.worker_pids())
    assert victim["pid"] not in after and len(after - before) == 1
    assert pool.stats()["crashes"] == 1 and pool.stats()["retries"] == 0
    assert pool.execute("faulty:pid") in after


def test_idempotent_command_is_retried_on_a_fresh_worker(make_pool, tmp_path):
    pool = make_pool(bridge=FAULTY, size=1)
    first = pool.execute("faulty:pid")
    answered_by = pool.execute("faulty:kill_once", {"marker": str(tmp_path / "died-once")})
    assert answered_by != first
    assert pool.stats()["retries"] == 1 and pool.stats()["crashes"] == 1


def test_idempotency_can_be_refused_per_call(make_pool, tmp_path):
    pool = make_pool(bridge=FAULTY, size=1)
    with pytest.raises(WorkerCrashedError):
        pool.execute("faulty:kill_once", {"marker": str(tmp_path / "m")}, idempotent=False)


def test_segfault_is_named(make_pool):
    pool = make_pool(bridge=FAULTY, size=1)
    with pytest.raises(WorkerCrashedError, match="SIGSEGV") as caught:
        pool.execute("faulty:segfault")
    assert caught.value.details["exit"]["kind"] == "segfault"
    assert pool.execute("faulty:pid")  # replaced


def test_exit_code_is_named(make_pool):
    pool = make_pool(bridge=FAULTY, size=1)
    with pytest.raises(WorkerCrashedError, match="exited with code 9"):
        pool.execute("faulty:exit_with", {"code": 9})


def test_memory_cap_kills_only_the_runaway_worker(make_pool):
    pool = make_pool(bridge=FAULTY, size=2, memory_limit_mb=300)
    survivor_pids = set(pool.worker_pids())
    assert pool.execute("faulty:allocate", {"megabytes": 20}) == 20 * 1024 * 1024
    with pytest.raises(
        WorkerOutOfMemoryError, match="ran out of memory \\(memory cap 300 MB\\)"
    ) as caught:
        pool.execute("faulty:allocate", {"megabytes": 2000})
    assert caught.value.details["exit"]["kind"] == "out_of_memory"
    assert wait_for(lambda: len(pool.worker_pids()) == 2)
    assert len(survivor_pids & set(pool.worker_pids())) == 1  # the other worker lived on
    assert pool.execute("faulty:allocate", {"megabytes": 20}) == 20 * 1024 * 1024


def test_timeout_kills_and_replaces_the_worker(make_pool):
    pool = make_pool(bridge=FAULTY, size=1)
    pid = pool.execute("faulty:pid")
    started = time.monotonic()
    with pytest.raises(WorkerTimeoutError, match="did not finish within 0.5s"):
        pool.execute("faulty:hang", {"seconds": 60}, timeout=0.5)
    assert time.monotonic() - started < 20  # the timeout fired; the hang would take 60 s
    assert not alive(pid)  # killed and reaped before the error was raised
    new_pid = pool.execute("faulty:pid")
    assert new_pid != pid
    assert pool.stats()["timeouts"] == 1


def test_health_check_replaces_a_frozen_worker(make_pool):
    pool = make_pool(bridge="echo", size=1, health_timeout_s=0.3)
    pid = pool.worker_pids()[0]
    os.kill(pid, signal.SIGSTOP)
    outcome = pool.check_health()
    assert outcome["replaced"] == 1
    assert wait_for(lambda: pool.worker_pids() and pool.worker_pids()[0] != pid)
    assert pool.execute("echo:echo", {"value": 5}) == 5
    assert pool.stats()["health_failures"] == 1


def test_health_loop_runs_on_its_interval(make_pool):
    pool = make_pool(bridge="echo", size=1, health_interval_s=0.2, health_timeout_s=0.3)
    pid = pool.worker_pids()[0]
    os.kill(pid, signal.SIGKILL)  # dies while idle
    assert wait_for(lambda: pool.worker_pids() and pool.worker_pids()[0] != pid)


def test_recycling_by_request_count(make_pool):
    pool = make_pool(bridge=FAULTY, size=1, max_requests=3)
    pids = [pool.execute("faulty:pid") for _ in range(7)]
    assert pids[0] == pids[1] == pids[2]
    assert pids[3] == pids[4] == pids[5] != pids[0]
    assert pids[6] != pids[3]
    assert pool.stats()["recycled"] == 2


def test_a_worker_over_max_rss_is_retired_when_handed_back(make_pool):
    """Under steady traffic a worker is never idle for the health loop to see: the bound must
    hold on the call path. Two threads keep the one worker busy, every call keeps 8 MB more,
    and no worker may serve a call after it answered one above the bound."""
    bound_mb = 80
    pool = make_pool(bridge=FAULTY, size=1, max_rss_mb=bound_mb, health_interval_s=None)
    replies: list[dict[str, int]] = []
    lock = threading.Lock()

    def hammer():
        for _ in range(15):
            reply = pool.execute("faulty:hold_and_report", {"megabytes": 8})
            with lock:
                replies.append(reply)

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(replies) == 30
    over = {r["pid"] for r in replies if r["rss"] > bound_mb * 1024 * 1024}
    assert over, "no call went above the bound: the test did not exercise recycling"
    for pid in over:
        served = [r for r in replies if r["pid"] == pid]
        first_over = next(i for i, r in enumerate(served) if r["rss"] > bound_mb * 1024 * 1024)
        assert first_over == len(served) - 1, f"pid {pid} served calls after crossing the bound"
    assert pool.stats()["recycled"] == len(over)
    assert max(r["rss"] for r in replies) < (bound_mb + 8 + 4) * 1024 * 1024


def test_recycling_of_idle_workers_by_age(make_pool):
    aged = make_pool(bridge="echo", size=1, max_age_s=0.2)
    first = aged.worker_pids()[0]
    time.sleep(0.3)
    aged.execute("echo:noop")  # served, then retired on release
    assert wait_for(lambda: aged.worker_pids() and aged.worker_pids()[0] != first)
    idle = make_pool(bridge="echo", size=1, max_age_s=0.2, health_interval_s=None)
    first = idle.worker_pids()[0]
    time.sleep(0.3)
    assert idle.check_health()["recycled"] == 1  # never called: the health pass retires it
    assert wait_for(lambda: idle.worker_pids() and idle.worker_pids()[0] != first)


PARENT_SCRIPT = """
import json, sys, time
from flowstone.workers.pool import WorkerPool
pool = WorkerPool(bridge="echo", size=3, registry_dir=sys.argv[1], health_interval_s=None).start()
print(json.dumps(pool.worker_pids()), flush=True)
time.sleep(60)
"""


def test_no_worker_survives_a_sigkilled_parent(tmp_path):
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_SCRIPT, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(tmp_path),
    )
    try:
        pids = json.loads(parent.stdout.readline())
        assert len(pids) == 3 and all(alive(p) for p in pids)
        parent.kill()
        parent.wait()
        assert wait_for(lambda: not any(alive(p) for p in pids), timeout=30), "orphaned workers"
    finally:
        parent.kill()
        parent.wait()


def test_registry_reaps_orphans_of_a_dead_pool_and_nothing_else(tmp_path):
    import psutil

    registry = tmp_path / "workers"
    registry.mkdir()
    config = {"target": "flowstone.workers.bridges.echo:EchoBridge", "name": "echo"}
    # A real worker whose pool is gone: its stdin stays open, so it would live forever.
    orphan = subprocess.Popen(
        [sys.executable, "-m", "flowstone.workers.worker", "--config", json.dumps(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    bystander = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        dead_owner = subprocess.Popen([sys.executable, "-c", "pass"])
        dead_owner.wait()
        ct = lambda pid: psutil.Process(pid).create_time()  # noqa: E731
        entries = [
            {"pid": orphan.pid, "pgid": orphan.pid, "create_time": ct(orphan.pid)},
            # Not a worker (command line differs): must be left alone.
            {"pid": bystander.pid, "pgid": bystander.pid, "create_time": ct(bystander.pid)},
        ]
        (registry / "pool-1-dead.json").write_text(
            json.dumps({"owner": {"pid": dead_owner.pid, "create_time": 1.0}, "workers": entries})
        )
        # A live pool's file (this process) is never reaped.
        (registry / "pool-2-live.json").write_text(
            json.dumps(
                {"owner": {"pid": os.getpid(), "create_time": ct(os.getpid())}, "workers": entries}
            )
        )
        with WorkerPool(
            bridge="echo", size=1, registry_dir=registry, health_interval_s=None
        ) as pool:
            assert pool.reaped_orphans == [orphan.pid]
        # Gone, killed by the reaper: SIGTERM, or SIGKILL once its grace ran out on a busy host.
        assert orphan.wait(timeout=60) in (-signal.SIGTERM, -signal.SIGKILL)
        assert bystander.poll() is None
        assert not (registry / "pool-1-dead.json").exists()
        assert (registry / "pool-2-live.json").exists()
        assert reap_orphans(registry) == []
    finally:
        for proc in (orphan, bystander):
            proc.kill()
            proc.wait()


def test_worker_exits_when_stdin_closes():
    config = {"target": "flowstone.workers.bridges.echo:EchoBridge", "name": "echo"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowstone.workers.worker", "--config", json.dumps(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=HERE,
    )
    proc.stdout.read(4)  # ready frame header: the worker is serving
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0


@pytest.mark.parametrize(
    ("code", "kind", "words"),
    [
        (-signal.SIGSEGV, "segfault", "SIGSEGV"),
        (-signal.SIGKILL, "signal", "OOM killer"),
        (-signal.SIGTERM, "signal", "SIGTERM"),
        (71, "out_of_memory", "out of memory"),
        (3, "exit_code", "code 3"),
    ],
)
def test_exit_classification(code, kind, words):
    info = classify_exit(code, memory_limit_mb=512)
    assert info.kind == kind and words in info.description
