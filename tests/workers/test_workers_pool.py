"""The pool with real worker processes: dispatch, streaming, errors, sessions, saturation, stats."""

from __future__ import annotations

import threading
import time

import pytest
from support.polling import wait_for

from flowstone.workers.errors import (
    BridgeError,
    PoolSaturatedError,
    RemoteError,
    SessionLostError,
    UnknownCommandError,
    WorkerCrashedError,
    WorkerStartError,
)
from flowstone.workers.pool import WorkerPool

FAULTY = "faulty_bridge:FaultyBridge"


def _hold_a_worker(pool, marker, session_id=None):
    """A call that keeps one worker busy until marker is created; returns (thread, results)."""
    results = []
    thread = threading.Thread(
        target=lambda: results.append(
            pool.execute("faulty:wait_for", {"marker": str(marker)}, session_id=session_id)
        )
    )
    busy = pool.stats()["workers_busy"]
    thread.start()
    assert wait_for(lambda: pool.stats()["workers_busy"] == busy + 1), "the holder never ran"
    return thread, results


def test_execute_with_dict_list_and_no_args(make_pool):
    pool = make_pool(bridge="echo", size=2)
    assert pool.execute("echo:echo", {"value": {"a": [1, 2.5]}}) == {"a": [1, 2.5]}
    assert pool.execute("echo:echo", ["positional"]) == "positional"
    assert pool.execute("echo", {"value": 3}) == 3  # the bridge prefix is optional
    assert pool.execute("echo:noop") is None
    assert pool.execute("ping")["pong"] is True
    info = pool.execute("echo:info")
    assert {c["name"] for c in info["commands"]} >= {
        "noop",
        "ping",
        "info",
        "stats",
        "cleanup",
        "count",
    }


def test_workers_start_concurrently_and_report_ready(registry_dir, tmp_path):
    from worker_helpers import HERE

    gate = tmp_path / "setup-gate"
    pool = WorkerPool(
        bridge=FAULTY,
        size=4,
        registry_dir=registry_dir,
        pythonpath=[str(HERE)],
        health_interval_s=None,
        bridge_options={"setup_gate": str(gate)},
    )
    try:
        pool.start(wait=False)
        # No worker can finish setup before the gate opens: started one after another, only
        # one would ever be starting.
        assert wait_for(lambda: pool.stats()["workers_starting"] == 4)
        assert pool.worker_pids() == []
        gate.touch()
        pool.await_ready(timeout=120)
        rows = pool.workers()
        assert len(rows) == 4 and {r["state"] for r in rows} == {"idle"}
        assert len({r["pid"] for r in rows}) == 4
        assert all(r["rss_mb"] and r["rss_mb"] > 1 for r in rows)
    finally:
        pool.close()


def test_streaming_yields_chunks_as_they_come(make_pool, tmp_path):
    gated = make_pool(bridge=FAULTY, size=1)
    gate = tmp_path / "second-chunk"
    stream = gated.execute_stream("faulty:gated_count", {"marker": str(gate), "timeout_s": 60})
    # The worker yields 1 only after the gate opens, which happens only once 0 arrived here:
    # a stream buffered until the end would see "gate timed out" instead.
    assert next(stream) == 0
    gate.touch()
    assert list(stream) == [1]
    pool = make_pool(bridge="echo", size=1)
    assert list(pool.execute_stream("echo:count", {"n": 3, "delay_s": 0.05})) == [0, 1, 2]
    assert pool.execute("echo:count", {"n": 4}) == [0, 1, 2, 3]
    assert list(pool.execute_stream("echo:echo", {"value": "one"})) == ["one"]


def test_abandoned_stream_is_drained_and_the_worker_kept(make_pool):
    pool = make_pool(bridge="echo", size=1)
    pid = pool.worker_pids()[0]
    stream = pool.execute_stream("echo:count", {"n": 50})
    assert next(stream) == 0
    stream.close()
    assert pool.execute("echo:echo", {"value": 1}) == 1
    assert pool.worker_pids() == [pid]


def test_unknown_command_fails_without_a_round_trip(make_pool):
    pool = make_pool(bridge="echo", size=1)
    with pytest.raises(UnknownCommandError, match="echo:noop"):
        pool.execute("echo:missing")
    with pytest.raises(UnknownCommandError):
        pool.execute("metrics:compute")  # another bridge's namespace
    assert pool.stats()["requests"] == 0


def test_handler_error_comes_back_typed_and_worker_stays_up(make_pool):
    pool = make_pool(bridge=FAULTY, size=1)
    pid = pool.execute("faulty:pid")
    with pytest.raises(RemoteError) as caught:
        pool.execute("faulty:boom", {"message": "row 3 has no text"})
    assert caught.value.remote_type == "ValueError"
    assert "row 3 has no text" in str(caught.value)
    assert "in boom" in caught.value.remote_traceback
    assert pool.execute("faulty:pid") == pid
    stats = pool.stats()
    assert stats["failed"] == 1 and stats["crashes"] == 0


def test_prints_in_handlers_do_not_corrupt_frames(make_pool):
    pool = make_pool(bridge=FAULTY, size=1)
    assert pool.execute("faulty:chatty") == "still framed"
    assert pool.execute("faulty:chatty") == "still framed"


def test_unserialisable_result_is_a_typed_error(make_pool):
    pool = make_pool(bridge=FAULTY, size=1)
    pid = pool.execute("faulty:pid")
    with pytest.raises(RemoteError, match="result cannot be sent"):
        pool.execute("faulty:bad_result")
    assert pool.execute("faulty:pid") == pid


def test_map_keeps_order_and_uses_all_workers(make_pool):
    pool = make_pool(bridge=FAULTY, size=2)
    pids = pool.map("faulty:pid", [None] * 40)
    assert len(pids) == 40 and len(set(pids)) == 2
    pool2 = make_pool(bridge="echo", size=2)
    assert pool2.map("echo:echo", [{"value": i} for i in range(100)]) == list(range(100))


def test_saturation_fails_fast_past_the_queue(make_pool, tmp_path):
    pool = make_pool(bridge=FAULTY, size=1, queue_size=1)
    gate = tmp_path / "release"
    first, results = _hold_a_worker(pool, gate)
    second = threading.Thread(
        target=lambda: results.append(pool.execute("faulty:echo", {"value": "queued"}))
    )
    second.start()
    assert wait_for(lambda: pool.stats()["queue_depth"] == 1)
    # Fails at once (the full-queue message, not the queue-timeout one) while the only worker
    # cannot free up: the gate is still closed.
    with pytest.raises(PoolSaturatedError, match="pool saturated: .* 1 calls already wait"):
        pool.execute("faulty:pid")
    assert first.is_alive() and second.is_alive() and results == []
    gate.touch()
    first.join()
    second.join()
    assert sorted(map(str, results)) == sorted([str(pool.worker_pids()[0]), "queued"])
    assert pool.stats()["saturated"] == 1


def test_queue_wait_is_bounded(make_pool, tmp_path):
    pool = make_pool(bridge=FAULTY, size=1, queue_timeout_s=0.3)
    gate = tmp_path / "release"
    blocker, _ = _hold_a_worker(pool, gate)
    with pytest.raises(PoolSaturatedError, match="within 0.3s"):
        pool.execute("faulty:pid")
    assert blocker.is_alive()  # the wait gave up: the worker never became free
    gate.touch()
    blocker.join()
    assert pool.stats()["saturated"] == 1 and pool.stats()["queue_depth"] == 0


def test_fifo_dispatch_serves_waiters_in_order(make_pool, tmp_path):
    pool = make_pool(bridge=FAULTY, size=1)
    gate = tmp_path / "release"
    order = []
    blocker, _ = _hold_a_worker(pool, gate)
    threads = []
    for i in range(5):
        t = threading.Thread(
            target=lambda i=i: order.append(pool.execute("faulty:echo", {"value": i}))
        )
        t.start()
        threads.append(t)
        assert wait_for(lambda i=i: pool.stats()["queue_depth"] == i + 1)  # queued in turn
    gate.touch()
    for t in [blocker, *threads]:
        t.join()
    assert order == [0, 1, 2, 3, 4]


def test_session_affinity_hint_keeps_state_on_one_worker(make_pool):
    pool = make_pool(bridge="echo", size=3)
    for i in range(6):
        pool.execute("echo:remember", {"key": f"k{i}", "value": i}, session_id="alice")
    assert pool.execute("echo:recall", {"key": "k5"}, session_id="alice") == 5
    stats = pool.stats()
    assert stats["affinity_hits"] == 6 and stats["sessions"] == 1
    assert sum(r["sessions"] for r in pool.workers()) == 1


def test_session_hint_falls_back_when_its_worker_is_busy(make_pool, tmp_path):
    pool = make_pool(bridge=FAULTY, size=2)
    home = pool.execute("faulty:pid", session_id="s")
    gate = tmp_path / "release"
    busy, held_by = _hold_a_worker(pool, gate, session_id="s")
    other = pool.execute("faulty:pid", session_id="s")  # hint: take the free worker
    gate.touch()
    busy.join()
    assert held_by == [home]  # the session's own worker was the busy one
    assert other != home
    assert pool.stats()["affinity_misses"] >= 1


def test_strict_session_waits_for_its_worker(make_pool, tmp_path):
    pool = make_pool(bridge=FAULTY, size=2, session_mode="strict")
    home = pool.execute("faulty:pid", session_id="s")
    gate = tmp_path / "release"
    busy, held_by = _hold_a_worker(pool, gate, session_id="s")
    answers = []
    waiter = threading.Thread(
        target=lambda: answers.append(pool.execute("faulty:pid", session_id="s"))
    )
    waiter.start()
    # It queues although the other worker is idle, and cannot be served before the gate opens.
    assert wait_for(lambda: pool.stats()["queue_depth"] == 1)
    assert pool.stats()["workers_idle"] == 1 and waiter.is_alive() and answers == []
    gate.touch()
    busy.join()
    waiter.join()
    assert held_by == [home] and answers == [home]


def test_strict_session_is_lost_when_its_worker_dies(make_pool):
    pool = make_pool(bridge=FAULTY, size=2, session_mode="strict")
    pool.execute("faulty:pid", session_id="s")
    with pytest.raises(WorkerCrashedError):
        pool.execute("faulty:kill_self", session_id="s")
    with pytest.raises(SessionLostError, match="state is lost"):
        pool.execute("faulty:pid", session_id="s")
    pool.execute("faulty:pid", session_id="s")  # a new session starts on any worker


def test_sessions_expire_and_are_capped(make_pool):
    pool = make_pool(bridge="echo", size=1, session_ttl_s=0.3, max_sessions=3)
    for i in range(5):
        pool.execute("echo:noop", session_id=f"s{i}")
    assert pool.stats()["sessions"] == 3
    time.sleep(0.4)
    pool.check_health()
    assert pool.stats()["sessions"] == 0


def test_unknown_bridge_is_rejected_before_any_worker_starts(registry_dir):
    with pytest.raises(BridgeError, match="neither a registered name"):
        WorkerPool(bridge="nope", registry_dir=registry_dir)
    with pytest.raises(BridgeError, match="cannot import module"):
        WorkerPool(bridge="no_such_module:Thing", registry_dir=registry_dir)
    with pytest.raises(ValueError, match="size must be >= 1"):
        WorkerPool(bridge="echo", size=0, registry_dir=registry_dir)


def test_bridge_failing_at_start_is_reported(make_pool):
    with pytest.raises(WorkerStartError, match="setup refused on purpose"):
        make_pool(bridge=FAULTY, size=1, bridge_options={"fail_setup": True}, max_start_failures=2)


def test_stats_report_latency_percentiles(make_pool):
    pool = make_pool(bridge="echo", size=2)
    for _ in range(200):
        pool.execute("echo:noop")
    stats = pool.stats()
    assert stats["requests"] == 200 and stats["succeeded"] == 200
    latency = stats["latency"]
    assert 0 < latency["p50_ms"] <= latency["p95_ms"] <= latency["p99_ms"]
    assert stats["workers_alive"] == 2 and stats["queue_depth"] == 0
    assert sum(r["requests"] for r in pool.workers()) == 200
    # Milliseconds of the whole call: calls that sleep 0.25 s cannot report less than 250.
    sleepy = make_pool(bridge="echo", size=1)
    for _ in range(3):
        sleepy.execute("echo:sleep", {"seconds": 0.25})
    assert sleepy.stats()["latency"]["p50_ms"] >= 250


def test_close_stops_every_worker(registry_dir):
    from worker_helpers import alive

    pool = WorkerPool(
        bridge="echo", size=2, registry_dir=registry_dir, health_interval_s=None
    ).start()
    pids = pool.worker_pids()
    assert list(registry_dir.glob("pool-*.json"))
    pool.close()
    assert not any(alive(pid) for pid in pids)
    assert not list(registry_dir.glob("pool-*.json"))
    from flowstone.workers.errors import PoolClosedError

    with pytest.raises(PoolClosedError):
        pool.execute("echo:noop")


# Overflow workers ---------------------------------------------------------------------------------


def _burst(pool, gate):
    """A burst on a size=1 pool: hold the base worker until gate, then make a call that only an
    overflow worker can serve (the gate opens only once it answered). Returns (base, overflow)
    pids."""
    holder, held = _hold_a_worker(pool, gate)
    overflow_pid = pool.execute("faulty:pid")
    assert holder.is_alive() and held == []  # the base worker was busy all along
    gate.touch()
    holder.join(60)
    return held[0], overflow_pid


def test_overflow_worker_serves_a_call_that_would_queue(make_pool, tmp_path):
    pool = make_pool(bridge=FAULTY, size=1, overflow=1)
    assert pool.stats()["overflow"] == 1 and pool.stats()["workers_overflow"] == 0
    base_pid, overflow_pid = _burst(pool, tmp_path / "release")
    assert overflow_pid != base_pid and sorted(pool.worker_pids()) == sorted(
        [base_pid, overflow_pid]
    )
    rows = {row["pid"]: row["overflow"] for row in pool.workers()}
    assert rows == {base_pid: False, overflow_pid: True}
    stats = pool.stats()
    assert stats["overflow_started"] == 1 and stats["started"] == 2  # never a third worker
    assert stats["workers_alive"] == 2 and stats["workers_overflow"] == 1
    assert stats["workers_pending"] == 0 and stats["overflow_retired"] == 0
    pool.await_ready(timeout=10)  # counts the base size only: still true with the extra worker


def test_overflow_is_capped(make_pool, tmp_path):
    pool = make_pool(bridge=FAULTY, size=1, overflow=1)
    gate = tmp_path / "release"
    results: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(pool.execute("faulty:wait_for", {"marker": str(gate)}))
        )
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    # Two callers queued behind the base worker, but one overflow worker only: it takes one of
    # them and the third call waits for a free worker.
    assert wait_for(lambda: pool.stats()["workers_busy"] == 2 and pool.stats()["queue_depth"] == 1)
    for _ in range(20):
        stats = pool.stats()
        assert stats["workers_alive"] + stats["workers_starting"] + stats["workers_pending"] <= 2
        time.sleep(0.02)
    gate.touch()
    for thread in threads:
        thread.join(60)
    assert len(results) == 3 and len(set(results)) == 2
    stats = pool.stats()
    assert stats["started"] == 2 and stats["overflow_started"] == 1
    assert stats["workers_alive"] == 2 and stats["succeeded"] == 3


def test_idle_overflow_workers_are_retired_and_base_workers_kept(make_pool, tmp_path):
    from worker_helpers import alive

    pool = make_pool(bridge=FAULTY, size=1, overflow=1, overflow_idle_s=0.2)
    base_pid, overflow_pid = _burst(pool, tmp_path / "release")
    time.sleep(0.3)  # both workers now idle past overflow_idle_s
    outcome = pool.check_health()
    assert outcome["overflow_retired"] == 1 and outcome["recycled"] == 0
    assert wait_for(lambda: pool.stats()["workers_alive"] == 1, timeout=10)
    assert wait_for(lambda: not alive(overflow_pid), timeout=10)
    time.sleep(0.3)
    assert pool.check_health()["overflow_retired"] == 0  # the idle base worker stays
    assert pool.worker_pids() == [base_pid]
    stats = pool.stats()
    assert stats["overflow_retired"] == 1 and stats["recycled"] == 0
    assert stats["workers_overflow"] == 0 and stats["workers_pending"] == 0
    assert stats["workers_starting"] == 0 and stats["started"] == 2  # nothing replaced it
    assert pool.execute("faulty:pid") == base_pid
    # The next burst may start an overflow worker again.
    _, again = _burst(pool, tmp_path / "release-again")
    assert again not in (base_pid, overflow_pid) and pool.stats()["overflow_started"] == 2


def test_a_killed_overflow_worker_is_not_replaced(make_pool, tmp_path):
    import os
    import signal

    from worker_helpers import alive

    pool = make_pool(bridge=FAULTY, size=1, overflow=1)
    base_pid, overflow_pid = _burst(pool, tmp_path / "release")
    os.kill(overflow_pid, signal.SIGKILL)
    assert wait_for(lambda: not alive(overflow_pid), timeout=10)
    for _ in range(3):
        assert pool.execute("faulty:pid") == base_pid
    pool.check_health()  # finds the dead worker if no call picked it
    assert wait_for(lambda: pool.worker_pids() == [base_pid], timeout=10)
    stats = pool.stats()
    assert stats["workers_overflow"] == 0 and stats["workers_pending"] == 0
    assert stats["workers_starting"] == 0 and stats["started"] == 2


def test_an_overflow_worker_that_fails_to_start_leaves_the_pool_serving(make_pool, tmp_path):
    # max_start_failures=1: one failed start of a base worker would stop the pool.
    pool = make_pool(bridge=FAULTY, size=1, overflow=1, max_start_failures=1)
    pool.config.bridge_options["fail_setup"] = True  # workers spawned from now on fail
    gate = tmp_path / "release"
    holder, held = _hold_a_worker(pool, gate)
    answers: list[int] = []
    queued = threading.Thread(target=lambda: answers.append(pool.execute("faulty:pid")))
    queued.start()
    assert wait_for(lambda: pool.stats()["overflow_start_failures"] == 1)
    assert queued.is_alive() and answers == []  # still queued for the base worker
    gate.touch()
    holder.join(60)
    queued.join(60)
    assert answers == held and pool.execute("faulty:pid") == held[0]
    stats = pool.stats()
    assert stats["overflow_started"] == 1 and stats["start_failures"] == 1
    assert stats["started"] == 2 and stats["workers_pending"] == 0  # not retried
    assert pool.worker_pids() == held


def test_overflow_config_is_checked(registry_dir):
    with pytest.raises(ValueError, match="overflow must be >= 0"):
        WorkerPool(bridge="echo", overflow=-1, registry_dir=registry_dir)
    with pytest.raises(ValueError, match="overflow_idle_s must be positive"):
        WorkerPool(bridge="echo", overflow_idle_s=0, registry_dir=registry_dir)
