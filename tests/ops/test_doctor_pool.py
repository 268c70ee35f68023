"""`flowstone doctor` on the host's shared pool: off, not running yet, running, failing to start."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from flowstone.cli import app as root
from flowstone.ops.checks.pool import check_pool_server
from flowstone.workers.autostart import AutoPool, AutoPoolError


@pytest.fixture
def auto_home(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = short_tmp / "h"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("FLOWSTONE_POOL", "on")
    monkeypatch.setenv("FLOWSTONE_POOL_IDLE_TIMEOUT", "120")
    monkeypatch.delenv("FLOWSTONE_POOL_SOCKET", raising=False)
    monkeypatch.delenv("FLOWSTONE_EXECUTOR", raising=False)
    return home


def test_off_is_reported_through_the_cli(auto_home, monkeypatch):
    monkeypatch.setenv("FLOWSTONE_POOL", "off")
    result = CliRunner().invoke(root, ["doctor", "--only", "pool_server", "--json"])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    assert row["status"] == "ok" and "off (FLOWSTONE_POOL=off)" in row["detail"]


def test_not_running_yet_is_fine_and_a_bad_setting_fails(auto_home, monkeypatch):
    result = check_pool_server()
    assert result.status == "ok"
    assert "not running; the first run that needs it starts it" in result.detail
    assert str(auto_home / "pool" / "metrics.sock") in result.detail
    assert not (auto_home / "pool").exists()  # the doctor never starts one
    monkeypatch.setenv("FLOWSTONE_POOL", "maybe")
    bad = check_pool_server()
    assert bad.status == "fail" and "FLOWSTONE_POOL" in bad.detail and "on or off" in bad.fix


def test_a_running_server_shows_its_pid_workers_and_idle_time_left(auto_home):
    info = AutoPool.from_env(bridge_options={}).ensure()
    try:
        result = check_pool_server()
        assert result.status == "ok", result
        assert (
            f"running on {auto_home / 'pool' / 'metrics.sock'}: pid {info['pid']}" in result.detail
        )
        assert "'metrics' pool, 1/1 workers" in result.detail
        assert "more idle (of 120s)" in result.detail
    finally:
        process = psutil.Process(info["pid"])
        process.kill()
        process.wait(10)


def test_a_failed_start_is_a_warning_with_its_log(auto_home):
    auto = AutoPool.from_env(command=[sys.executable, "-c", "raise SystemExit(4)"])
    with pytest.raises(AutoPoolError):
        auto.ensure()
    result = check_pool_server()
    assert result.status == "warn" and "last start failed" in result.detail
    assert "status 4" in result.detail and str(auto.log_path) in result.fix
