"""Runs whose process died: found and marked failed, so run retries can take them up.

Why: Dagster's default run launcher cannot check a run worker's health, so a run whose
process was SIGKILLed (the OOM killer, a host under pressure) stays STARTED for ever and its
partitions look in progress; ``run_retries`` never sees a failure to retry. On one host the
process is ours to check: every run records the pid it executes in (an engine event with
``pid`` metadata, from the launcher or the in-process executor). When that pid is gone, or
now belongs to a process started after the event (a reused pid), the run is dead: it is
reported failed with the reason, and ``dagster.yaml``'s ``run_retries`` re-executes it from its
failure, where the bake's pass checkpoints resume. Only for one host: on Celery or Kubernetes
the pids belong to other machines (the definitions register the sensor in default mode only).

The check is Dagster through and through (the instance, its runs and events), so it lives
with the wiring; ``bench/bench_bake_soak.py`` calls :func:`fail_dead_runs` as the sensor does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dagster as dg

# A process started this much after its run's pid event is another process with the same pid.
_REUSED_AFTER_S = 1.0
INTERVAL_ENV = "FLOWSTONE_DEAD_RUN_INTERVAL_S"


def sensor_interval_s() -> int:
    """How often the sensor looks (``FLOWSTONE_DEAD_RUN_INTERVAL_S``, default 60 s): the most
    a dead run waits before run retries see it. One query of STARTED runs and a pid check each."""
    from flowstone.env import positive_int

    return positive_int(INTERVAL_ENV, 60, "a whole number of seconds")


@dataclass(frozen=True)
class DeadRun:
    run_id: str
    job_name: str
    pid: int
    reason: str


def _last_pid(instance: dg.DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """The pid (and the event's time) the run last said it executes in."""
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, ascending=False, limit=50
    ).records
    for record in records:
        event = record.event_log_entry
        data = event.dagster_event.event_specific_data if event.dagster_event else None
        metadata = getattr(data, "metadata", None) or {}
        pid = metadata.get("pid")
        value = getattr(pid, "value", pid)
        if value is not None:
            return int(str(value)), float(event.timestamp)
    return None


def _gone(pid: int, since: float) -> str | None:
    """Why process ``pid`` (seen at ``since``) is not the run's any more, or None."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return f"its process {pid} has exited"
        if process.create_time() > since + _REUSED_AFTER_S:
            return f"its process {pid} has exited (the pid now belongs to another process)"
    except psutil.NoSuchProcess:
        return f"its process {pid} has exited"
    except psutil.AccessDenied:
        return None
    return None


def find_dead_runs(instance: dg.DagsterInstance, limit: int = 200) -> list[DeadRun]:
    """STARTED runs whose recorded process is gone."""
    dead = []
    records = instance.get_run_records(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]), limit=limit
    )
    for record in records:
        run = record.dagster_run
        found = _last_pid(instance, run.run_id)
        if found is None:
            continue
        reason = _gone(*found)
        if reason:
            dead.append(DeadRun(run.run_id, run.job_name, found[0], reason))
    return dead


def fail_dead_runs(instance: dg.DagsterInstance, limit: int = 200) -> list[DeadRun]:
    """Mark each dead run failed (with why), so run retries re-execute it; returns them."""
    dead = find_dead_runs(instance, limit)
    for item in dead:
        run = instance.get_run_by_id(item.run_id)
        if run is not None and not run.is_finished:
            instance.report_run_failed(
                run, message=f"Run {item.run_id} failed: {item.reason} while the run was STARTED"
            )
    return dead


def describe(dead: list[DeadRun]) -> list[dict[str, Any]]:
    return [{"run_id": d.run_id, "job": d.job_name, "pid": d.pid, "reason": d.reason}
            for d in dead]  # fmt: skip


@dg.sensor(
    name="dead_run_sensor",
    minimum_interval_seconds=sensor_interval_s(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks failed the runs whose process died (SIGKILL, the OOM killer) while they "
    "were STARTED, with the reason, so dagster.yaml's run_retries re-executes them from their "
    "failure and the bake's pass checkpoints resume.",
)
def dead_run_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    dead = fail_dead_runs(context.instance)
    for item in dead:
        context.log.warning(f"run {item.run_id} ({item.job_name}) marked failed: {item.reason}")
    if dead:
        return dg.SkipReason(f"marked {len(dead)} dead run(s) failed for run retries")
    return dg.SkipReason("every STARTED run's process is alive")
