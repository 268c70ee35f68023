"""End to end on Dagster's scale-out: PostgreSQL instance (deploy/dagster.yaml unchanged), the
queued run coordinator in `dagster-daemon run`, two Celery workers on a Redis broker, and an
asset backfill of six evaluation partitions, during which one worker is killed (SIGKILL to its
whole process group) in the middle of a step.

Checked: the backfill completes; every partition of every evaluation asset is materialized
exactly once, by exactly one successful run; steps ran in both workers (the worker hostname is
in each step's "Executing steps ... in celery worker" event); the step that was running on the
killed worker ran again on the other one and succeeded. Every process the test started is gone
at the end.

The slow step that gets killed is the predictions of a prompt-template LLM system whose
OpenAI-compatible server (the stub on loopback) answers each case after 0.6 s.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.scaleout import stack as st

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ASSETS = ("suite", "predictions", "scores", "report")
DEADLINE_S = 225  # everything, set-up included, inside pytest's 240 s
VISIBILITY_S = 20  # a lost worker's step comes back this long after it was handed out


def _partition(run) -> str:
    tags = run.tags
    if "dagster/partition" in tags:
        return tags["dagster/partition"]
    start, end = (
        tags.get("dagster/asset_partition_range_start"),
        tags.get("dagster/asset_partition_range_end"),
    )
    assert start == end, f"run {run.run_id} covers {start}..{end}, expected one partition a run"
    return start


def _step_events(instance, backfill_id: str) -> list[tuple[str, str, str, str | None]]:
    """(partition, step, "start" | "success", celery worker) for every run of the backfill."""
    import dagster as dg
    from dagster._core.events import DagsterEventType

    out = []
    wanted = {DagsterEventType.ENGINE_EVENT, DagsterEventType.STEP_SUCCESS}
    for run in instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id})):
        partition = _partition(run)
        for entry in instance.all_logs(run.run_id, of_type=wanted):
            event = entry.dagster_event
            if event.event_type == DagsterEventType.STEP_SUCCESS:
                out.append((partition, event.step_key, "success", None))
                continue
            worker = (event.engine_event_data.metadata or {}).get("Celery worker")
            if worker is not None:
                out.append((partition, event.step_key, "start", worker.value))
    return out


def _logs(stack: st.LocalStack) -> str:
    return "\n".join(
        f"----- {name}.log (tail)\n{stack.log(name)[-2500:]}" for name in ("daemon", "w1", "w2")
    )


def test_backfill_on_celery_survives_a_killed_worker(tmp_path: Path, monkeypatch) -> None:
    import dagster as dg
    from dagster._core.execution.backfill import BulkActionStatus
    from support.llm_stub_server import StubLLMServer

    from assets.pools import ensure_pool_limits
    from flowstone.definitions import build_definitions

    started = time.monotonic()
    deadline = started + DEADLINE_S

    def remaining() -> float:
        return max(1.0, deadline - time.monotonic())

    with contextlib.ExitStack() as cleanup:
        stub = cleanup.enter_context(StubLLMServer(latency_s=0.6))
        pg = cleanup.enter_context(st.fresh_database("fs_celery_test"))
        broker = cleanup.enter_context(st.redis_url())
        celery_yaml = st.celery_config_copy(
            tmp_path,
            visibility_timeout=VISIBILITY_S,
            unacked_restore_interval=2,
            unacked_restore_throttle=1,
        )
        catalog = st.write_catalog(
            tmp_path,
            suites=2,
            cases_per_suite=6,
            llm_systems=[
                {
                    "name": "stub-llm",
                    "providers": [
                        {
                            "kind": "openai",
                            "model": "stub-model",
                            "base_url": stub.openai_url,
                            "api_key": "env:STUB_LLM_KEY",
                        }
                    ],
                }
            ],
            # No cache: the rerun of the killed step calls the server again, like the first run.
            systems_defaults={"cache": False, "concurrency": 1, "retry": {"max_attempts": 2}},
        )
        env = {
            **pg,
            **catalog,
            "STUB_LLM_KEY": "stub-key",
            "DAGSTER_HOME": str(st.dagster_home(tmp_path)),
            "FLOWSTONE_OUTPUTS_DIR": str(tmp_path / "outputs"),
            "FLOWSTONE_EXECUTOR": "celery",
            "FLOWSTONE_CELERY_CONFIG": str(celery_yaml),
            "FLOWSTONE_CELERY_BROKER": broker,
            "FLOWSTONE_CELERY_BACKEND": broker,
            "FLOWSTONE_APPROVALS_DB_URL": st.pg_url(pg),
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        child_env = {
            **os.environ,
            "PYTHONPATH": str(st.REPO),
            "PATH": f"{st.BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }

        # The schema is created once, here: processes that all start on an empty database race
        # to create the same tables.
        instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
        cleanup.callback(instance.dispose)
        assert ensure_pool_limits(instance) == {"warehouse": 1, "baking": 1, "llm": 4}

        defs = build_definitions(mode="celery")
        graph = defs.resolve_asset_graph()
        keys = [dg.AssetKey(["evaluation", name]) for name in ASSETS]
        partitions = [
            p
            for p in graph.get(keys[0]).partitions_def.get_partition_keys()
            if p.split("|")[1] in ("echo", "nearest-sentence", "stub-llm")
        ]
        assert len(partitions) == 6, partitions

        # Submitted before the daemon starts, so its first backfill iteration picks it up.
        backfill_id = st.submit_backfill(instance, graph, keys, partitions, "scale-out test")

        stack = st.LocalStack(tmp_path, child_env)
        survivors: list[int] = []
        cleanup.callback(lambda: survivors.extend(stack.close()))
        stack.start_daemon(st.workspace_file(tmp_path))
        stack.start_worker("w1", celery_yaml)
        stack.start_worker("w2", celery_yaml)

        def backfill_status():
            return instance.get_backfill(backfill_id).status

        # Wait for an LLM predictions step to be running on some worker, then kill that worker.
        def running_llm_step():
            if backfill_status() != BulkActionStatus.REQUESTED:
                raise AssertionError(f"backfill ended early: {backfill_status()}\n{_logs(stack)}")
            events = _step_events(instance, backfill_id)
            done = {(p, s) for p, s, kind, _ in events if kind == "success"}
            for partition, step, kind, worker in events:
                if (
                    kind == "start"
                    and step == "evaluation__predictions"
                    and partition.endswith("|stub-llm")
                    and (partition, step) not in done
                ):
                    return partition, worker

        try:
            victim_partition, victim_worker = st.wait_for(
                running_llm_step, remaining(), "an LLM predictions step on a worker", 0.3
            )
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{_logs(stack)}") from None
        victim = victim_worker.split("@")[0]
        stack.kill(victim)  # SIGKILL to dagster-celery, the Celery master and its pool process
        survivor_worker = {"w1": "w2", "w2": "w1"}[victim]

        def all_runs_finished():
            runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
            return len(runs) >= len(partitions) and all(r.is_finished for r in runs)

        try:
            st.wait_for(all_runs_finished, remaining(), "every run of the backfill to finish", 1)
            status = st.wait_for(
                lambda: backfill_status() != BulkActionStatus.REQUESTED and backfill_status(),
                remaining(),
                "the backfill daemon to close the backfill",
                1,
            )
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{_logs(stack)}") from None

        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
        assert status == BulkActionStatus.COMPLETED_SUCCESS, _logs(stack)
        assert Counter(r.status for r in runs) == {dg.DagsterRunStatus.SUCCESS: len(partitions)}
        assert sorted(_partition(r) for r in runs) == sorted(partitions)

        for key in keys:
            records = instance.fetch_materializations(key, limit=1000).records
            counts = Counter(r.partition_key for r in records)
            assert counts == dict.fromkeys(partitions, 1), f"{key.to_user_string()}: {counts}"

        events = _step_events(instance, backfill_id)
        workers = {worker for _, _, kind, worker in events if kind == "start"}
        assert {w.split("@")[0] for w in workers} == {"w1", "w2"}, events
        killed_step = [
            (kind, worker)
            for p, s, kind, worker in events
            if p == victim_partition and s == "evaluation__predictions"
        ]
        starts = [w.split("@")[0] for kind, w in killed_step if kind == "start"]
        assert starts[0] == victim and survivor_worker in starts[1:], killed_step
        assert [kind for kind, _ in killed_step].count("success") == 1, killed_step
        # Every (partition, step) succeeded once; only the killed one was started twice.
        successes = Counter((p, s) for p, s, kind, _ in events if kind == "success")
        assert set(successes.values()) == {1} and len(successes) == len(partitions) * 4

    assert survivors == [], f"processes left running: {survivors}"
    assert time.monotonic() - started < 240
