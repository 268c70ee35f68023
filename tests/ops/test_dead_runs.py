"""A run whose process is SIGKILLed stays STARTED under Dagster's default launcher; the dead run
check finds it by its recorded pid and marks it failed with the reason (run retries take it from
there), and never touches a run whose process is alive. Real runs in a child process, on a
throwaway instance; every wait is a bounded poll."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest
from support.polling import wait_for

from sensors.dead_runs import fail_dead_runs, find_dead_runs

RUN = textwrap.dedent(
    """
    import time
    import dagster as dg

    @dg.op
    def hang():
        time.sleep(600)

    @dg.job
    def slow():
        hang()

    with dg.DagsterInstance.get() as instance:
        slow.execute_in_process(instance=instance)
    """
)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def _started(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return [
        r.dagster_run
        for r in instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    ]


def test_a_killed_run_is_marked_failed_and_a_live_one_is_left_alone(home: Path) -> None:
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-c", RUN], env=env)
    try:
        with dg.DagsterInstance.get() as instance:
            assert wait_for(lambda: _started(instance), timeout=120), "the run never started"
            [run] = _started(instance)
            assert find_dead_runs(instance) == []  # alive: nothing to do
            assert fail_dead_runs(instance) == []
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
            [dead] = fail_dead_runs(instance)
            assert (dead.run_id, dead.pid) == (run.run_id, proc.pid)
            assert f"its process {proc.pid} has exited" in dead.reason
            after = instance.get_run_by_id(run.run_id)
            assert after is not None and after.status == dg.DagsterRunStatus.FAILURE
            [failure] = instance.get_records_for_run(
                run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE
            ).records
            assert "has exited while the run was STARTED" in (failure.event_log_entry.message or "")
            assert fail_dead_runs(instance) == []  # finished runs are not looked at again
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_sensor_is_registered_on_one_host_only() -> None:
    from flowstone.definitions import build_definitions

    def names(defs: dg.Definitions) -> set[str]:
        return {s.name for s in defs.sensors or []}

    assert "dead_run_sensor" in names(build_definitions())
    assert "dead_run_sensor" not in names(build_definitions(mode="celery"))


def test_the_sensor_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from flowstone.errors import ConfigError
    from sensors.dead_runs import INTERVAL_ENV, sensor_interval_s

    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert sensor_interval_s() == 60
    monkeypatch.setenv(INTERVAL_ENV, "10")
    assert sensor_interval_s() == 10
    for bad in ("0", "ten", "2.5"):
        monkeypatch.setenv(INTERVAL_ENV, bad)
        with pytest.raises(ConfigError, match=f"{INTERVAL_ENV}.*at least 1"):
            sensor_interval_s()


def test_the_default_instance_frees_dead_runs_slots_and_retries_only_dead_runs(
    tmp_path: Path,
) -> None:
    """dagster.yaml as `make ui` copies it: a killed run's pool slot is freed (else the baking
    pool's one slot stays taken), and only runs that died are re-executed: a failing step is
    its RetryPolicy's, a failed gate would fail again."""
    import shutil

    repo = Path(__file__).resolve().parents[2]
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(repo / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 5
        assert instance.run_retries_retry_on_asset_or_op_failure is False
