"""Pools per framework: one server, a WorkerPool per bridge of pools.yaml, routed by prefix.

Real worker processes throughout; the servers bind Unix sockets in short temporary folders.
Every wait is a bounded poll (no timing assertions), so the tests hold on a busy 2-core host.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from support.polling import wait_for
from worker_helpers import HERE, alive, child_env

from flowstone.errors import ConfigError
from flowstone.workers.errors import (
    BridgeUnavailableError,
    RemoteError,
    UnknownBridgeError,
    WorkerOutOfMemoryError,
)
from flowstone.workers.pools_config import (
    ENV_VAR,
    load_pools_config,
    parse_pools_config,
    pools_config_path,
)
from flowstone.workers.server import PoolClient, PoolServer
from flowstone.workers.supervisor import BridgePools

FAULTY = "faulty_bridge:FaultyBridge"
FRAMEWORK = "framework_bridge:FrameworkBridge"
UNSET_VAR = "FLOWSTONE_TEST_SURELY_UNSET_VAR_7F3A"
GONE_WITHIN_S = 30.0
REPO_ROOT = Path(__file__).resolve().parents[2]


def _write(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


@contextlib.contextmanager
def _serve_in_process(
    short_tmp: Path, registry_dir: Path, bridges: dict[str, Any]
) -> Iterator[tuple[PoolServer, PoolClient]]:
    config = parse_pools_config({"bridges": bridges}, "test-pools.yaml")
    pools = BridgePools(
        config,
        environ={},  # no `requires` variable is ever set here
        registry_dir=registry_dir,
        pythonpath=[str(HERE)],
        health_interval_s=None,
        start_timeout_s=60,
    )
    server = PoolServer(pools, short_tmp / "b.sock")
    try:
        server.start()
        with PoolClient(server.socket_path, connect_timeout_s=10) as client:
            yield server, client
    finally:
        server.shutdown()


def _pids(client: PoolClient, bridge: str) -> set[int]:
    return {row["pid"] for row in client.workers() if row["bridge"] == bridge}


# Two bridges behind one socket ---------------------------------------------------------------


def test_a_memory_hog_in_one_bridge_never_touches_the_other(short_tmp, registry_dir):
    bridges = {
        "hog": {"target": FAULTY, "workers": 1, "memory_limit_mb": 300},
        "echo": {"workers": 2},
    }
    with _serve_in_process(short_tmp, registry_dir, bridges) as (server, client):
        echo_pids, hog_pids = _pids(client, "echo"), _pids(client, "hog")
        assert len(echo_pids) == 2 and len(hog_pids) == 1
        answered: list[int] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def traffic() -> None:
            with PoolClient(server.socket_path, connect_timeout_s=10) as own:
                i = 0
                while not stop.is_set():
                    try:
                        if own.execute("echo:echo", {"value": i}) != i:
                            errors.append(AssertionError(f"wrong answer to {i}"))
                        answered.append(i)
                    except BaseException as exc:
                        errors.append(exc)
                        return
                    i += 1

        caller = threading.Thread(target=traffic, daemon=True)
        caller.start()
        try:
            assert wait_for(lambda: len(answered) >= 5 or errors, timeout=60)
            with pytest.raises(WorkerOutOfMemoryError, match="ran out of memory") as caught:
                client.execute("hog:allocate", {"megabytes": 2000})
            assert caught.value.details["bridge"] == "hog"
            assert caught.value.details["command"] == "hog:allocate"
            seen = len(answered)
            assert wait_for(lambda: len(answered) >= seen + 5 or errors, timeout=60)
            # The hog's bridge replaced its own worker; echo's workers are the same ones.
            assert wait_for(lambda: len(_pids(client, "hog") - hog_pids) == 1, timeout=60)
        finally:
            stop.set()
            caller.join(60)
        assert not caller.is_alive()
        assert errors == []
        assert answered == list(range(len(answered)))  # every call answered, in order
        assert _pids(client, "echo") == echo_pids
        stats = client.stats()
        assert stats["bridges"]["echo"]["failed"] == 0
        assert stats["bridges"]["echo"]["restarts"] == 0
        assert stats["bridges"]["hog"]["restarts"] == 1
        assert client.execute("hog:allocate", {"megabytes": 20}) == 20 * 1024 * 1024


def test_a_bridge_missing_a_required_variable_is_reported_not_started(short_tmp, registry_dir):
    bridges = {
        "echo": {"workers": 1},
        "needy": {"target": FAULTY, "requires": [UNSET_VAR]},
    }
    with _serve_in_process(short_tmp, registry_dir, bridges) as (server, client):
        stats = client.stats()
        assert "needy" not in stats["bridges"]
        assert UNSET_VAR in stats["unavailable"]["needy"]["reason"]
        assert stats["unavailable"]["needy"]["requires"] == [UNSET_VAR]
        assert {row["bridge"] for row in client.workers()} == {"echo"}
        assert client.execute("echo:echo", {"value": 3}) == 3
        with pytest.raises(BridgeUnavailableError) as caught:
            client.execute("needy:pid")
        message = str(caught.value)
        assert "'needy'" in message and "needy:pid" in message and UNSET_VAR in message
        assert "serving: echo" in message
        assert caught.value.details["reason"] == stats["unavailable"]["needy"]["reason"]
        with pytest.raises(UnknownBridgeError, match="no bridge 'nope'.*serving: echo") as unknown:
            client.execute("nope:run")
        assert not isinstance(unknown.value, BridgeUnavailableError)
        with pytest.raises(UnknownBridgeError, match="bridge:command"):
            client.execute("ping")


def test_a_framework_exception_crosses_typed_and_names_bridge_and_command(short_tmp, registry_dir):
    bad_yaml = "key: [unclosed"
    try:
        yaml.safe_load(bad_yaml)
    except yaml.YAMLError as exc:
        expected_type, expected_text = type(exc).__name__, str(exc).splitlines()[0]
    with _serve_in_process(short_tmp, registry_dir, {"fw": {"target": FRAMEWORK}}) as (_, client):
        assert client.execute("fw:parse", {"text": "a: 1"}) == {"a": 1}
        with pytest.raises(RemoteError) as caught:
            client.execute("fw:parse", {"text": bad_yaml})
        error = caught.value
        assert error.remote_type == expected_type
        assert expected_text in str(error)
        assert "yaml" in error.remote_traceback and "in parse" in error.remote_traceback
        assert "'fw:parse'" in str(error) and "bridge 'fw'" in str(error)
        assert error.details == {"bridge": "fw", "command": "fw:parse"}
        bridge = client.stats()["bridges"]["fw"]
        assert bridge["framework"] == "PyYAML"
        assert bridge["framework_version"] == importlib.metadata.version("PyYAML")
        assert "fw:parse" in bridge["commands"] and "fw:ping" in bridge["commands"]
        assert bridge["failed"] == 1 and bridge["restarts"] == 0  # the worker stayed up


# Config errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bridges", "key", "fragment"),
    [
        (
            {"echo": {"workers": "two"}},
            "bridges.echo.workers",
            "must be an integer >= 1, got 'two'",
        ),
        ({"echo": {"memory_limit_mb": 1.5}}, "bridges.echo.memory_limit_mb", "integer >= 1"),
        ({"echo": {"timeout_s": -1}}, "bridges.echo.timeout_s", "positive number"),
        ({"echo": {"preload": "yes"}}, "bridges.echo.preload", "true or false"),
        ({"echo": {"requires": ["NOT A NAME"]}}, "bridges.echo.requires[0]", "variable name"),
        ({"echo": {"wokers": 2}}, "bridges.echo.wokers", "unknown key"),
        ({"echo": {"target": "not a target"}}, "bridges.echo.target", "package.module:Class"),
        ({"nosuchbridge": {}}, "bridges.nosuchbridge", "unknown bridge 'nosuchbridge'"),
        ({"echo": {"overflow": -1}}, "bridges.echo.overflow", "integer >= 0, got -1"),
        ({"echo": {"overflow": "two"}}, "bridges.echo.overflow", "integer >= 0, got 'two'"),
        ({"echo": {"overflow_idle_s": 0}}, "bridges.echo.overflow_idle_s", "positive number"),
        ({"pool": {}}, "bridges.pool", "not 'pool'"),
    ],
)
def test_config_errors_name_the_file_and_the_key(tmp_path, bridges, key, fragment):
    path = _write(tmp_path / "my-pools.yaml", {"bridges": bridges})
    with pytest.raises(ConfigError) as caught:
        load_pools_config(path)
    assert caught.value.key == key
    assert str(path) in str(caught.value) and f"'{key}'" in str(caught.value)
    assert fragment in str(caught.value)


def test_overflow_loads_into_the_pool_config(tmp_path):
    path = _write(
        tmp_path / "p.yaml",
        {"bridges": {"echo": {"workers": 1, "overflow": 2, "overflow_idle_s": 5}, "fw": {}}},
    )
    config = load_pools_config(path, known_bridges=["echo", "fw"])
    echo, fw = config.bridges["echo"], config.bridges["fw"]
    pool = echo.pool_config(health_interval_s=None)
    assert (pool.size, pool.overflow, pool.overflow_idle_s) == (1, 2, 5.0)
    assert echo.limits()["overflow"] == 2 and echo.limits()["overflow_idle_s"] == 5.0
    assert (fw.overflow, fw.pool_config().overflow, fw.pool_config().overflow_idle_s) == (0, 0, 30)


def test_config_file_level_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="unknown key"):
        load_pools_config(_write(tmp_path / "a.yaml", {"bridges": {"echo": {}}, "extra": 1}))
    with pytest.raises(ConfigError, match="at least one bridge"):
        load_pools_config(_write(tmp_path / "b.yaml", {"bridges": {}}))
    broken = tmp_path / "c.yaml"
    broken.write_text("bridges: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pools_config(broken)
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "missing.yaml"))
    assert pools_config_path() == (tmp_path / "missing.yaml").resolve()
    with pytest.raises(ConfigError, match=f"missing.yaml.*cannot read.*{ENV_VAR}"):
        load_pools_config()


def test_the_shipped_pools_yaml_is_valid_and_maps_onto_pool_configs():
    config = load_pools_config(REPO_ROOT / "pools.yaml")
    assert list(config.bridges) == ["metrics", "inference"]
    metrics = config.bridges["metrics"]
    assert metrics.workers == 1 and metrics.preload is True
    pool = metrics.pool_config(health_interval_s=None)
    assert (pool.bridge, pool.size, pool.bridge_options["preload"]) == ("metrics", 1, True)
    assert pool.memory_limit_mb == metrics.memory_limit_mb
    assert pool.default_timeout_s == metrics.timeout_s and pool.health_interval_s is None


def test_config_and_bridge_options_are_exclusive(tmp_path):
    from typer.testing import CliRunner

    from flowstone.workers.cli import app

    path = _write(tmp_path / "p.yaml", {"bridges": {"echo": {}}})
    for extra in (["--bridge", "echo"], ["--workers", "3"]):
        result = CliRunner().invoke(app, ["serve", "--config", str(path), *extra])
        assert result.exit_code != 0
        flat = " ".join(result.output.replace("\u2502", " ").split())  # unwrap rich's error box
        assert "--config sets every bridge" in flat


# A server process: entry points, the CLI, SIGKILL ---------------------------------------------

USER_BRIDGE = """
import os

from flowstone.workers.bridge import Bridge, command


class UserBridge(Bridge):
    name = "user-bridge-class"
    framework = "userbridge"

    @command
    def shout(self, text: str) -> dict:
        return {"text": text.upper(), "pid": os.getpid()}


class NotABridge:
    pass
"""

ENTRY_POINTS = """\
[flowstone.bridges]
userb = userbridge:UserBridge
broken = userbridge_missing_module:Nothing
notbridge = userbridge:NotABridge
"""


def _plugin_dir(root: Path) -> Path:
    """An installed distribution as importlib.metadata finds it: a package and its dist-info."""
    plugins = root / "plugins"
    (plugins / "userbridge").mkdir(parents=True)
    (plugins / "userbridge" / "__init__.py").write_text(textwrap.dedent(USER_BRIDGE))
    dist = plugins / "userbridge-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: userbridge\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    return plugins


def _start_server(
    sock: Path, config: Path, env: dict[str, str]
) -> tuple[subprocess.Popen, list[str]]:
    """The supervisor as a CLI process; returns it and its start-up lines (ready + reasons)."""
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "flowstone.workers.cli", "serve"),
            *("--socket", str(sock), "--config", str(config)),
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "workers ready" in line, line + proc.stderr.read()
    return proc, [line]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flowstone.workers.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow  # starts a pool server (a CLI process)
def test_entry_point_bridges_serve_and_broken_ones_are_reported(short_tmp, tmp_path):
    plugins = _plugin_dir(tmp_path)
    env = child_env(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(plugins), env["PYTHONPATH"]])
    env.pop(UNSET_VAR, None)
    config = _write(
        tmp_path / "pools.yaml",
        {
            "bridges": {
                "echo": {"workers": 1},
                "userb": {"workers": 1},
                "broken": None,
                "notbridge": None,
                "needy": {"target": FAULTY, "requires": [UNSET_VAR]},
            }
        },
    )
    sock = short_tmp / "e.sock"
    proc, _ = _start_server(sock, config, env)
    try:
        with PoolClient(sock, connect_timeout_s=10) as client:
            reply = client.execute("userb:shout", {"text": "hi"})
            assert reply["text"] == "HI" and reply["pid"] in _pids(client, "userb")
            assert client.execute("echo:echo", {"value": 1}) == 1
            stats = client.stats()
            assert sorted(stats["bridges"]) == ["echo", "userb"]
            assert stats["bridges"]["userb"]["framework_version"] == "0.1"
            assert "userb:shout" in stats["bridges"]["userb"]["commands"]
            reasons = {name: entry["reason"] for name, entry in stats["unavailable"].items()}
            assert sorted(reasons) == ["broken", "needy", "notbridge"]
            assert "broken = userbridge_missing_module:Nothing" in reasons["broken"]
            assert "userbridge_missing_module" in reasons["broken"]
            assert "flowstone.bridges" in reasons["broken"]
            assert "notbridge = userbridge:NotABridge" in reasons["notbridge"]
            assert "not a subclass" in reasons["notbridge"]
            assert UNSET_VAR in reasons["needy"]
            with pytest.raises(BridgeUnavailableError, match="userbridge_missing_module"):
                client.execute("broken:run")
        status = _cli(env, "status", "--socket", str(sock))
        assert status.returncode == 0, status.stderr
        info = _cli(env, "info", "--socket", str(sock))
        assert info.returncode == 0, info.stderr
        for output in (status.stdout, info.stdout):
            assert "userb" in output and "userb:shout" in output
            assert "not running" in output and UNSET_VAR in output
            assert "userbridge_missing_module" in output
        assert "framework userbridge 0.1" in info.stdout
        stop = _cli(env, "stop", "--socket", str(sock))
        assert stop.returncode == 0, stop.stderr
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait()


def _group(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group pgid."""
    members = []
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
    return members


@pytest.mark.slow  # starts a pool server (a CLI process)
def test_a_sigkilled_supervisor_leaves_no_worker_of_any_bridge(short_tmp, tmp_path):
    config = _write(
        tmp_path / "pools.yaml",
        {"bridges": {"echo": {"workers": 2}, "fw": {"target": FRAMEWORK, "workers": 1}}},
    )
    sock = short_tmp / "k.sock"
    proc, _ = _start_server(sock, config, child_env(tmp_path))
    try:
        with PoolClient(sock, connect_timeout_s=10) as client:
            assert client.execute("fw:parse", {"text": "a: 1"}) == {"a": 1}
            workers = {row["pid"]: row["bridge"] for row in client.workers()}
        assert sorted(workers.values()) == ["echo", "echo", "fw"]
        assert all(alive(pid) for pid in workers)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        assert wait_for(lambda: not any(alive(pid) for pid in workers), timeout=GONE_WITHIN_S)
        for pid in workers:  # nor the worker's guard, nor anything in its group
            assert wait_for(lambda pid=pid: not _group(pid), timeout=GONE_WITHIN_S), _group(pid)
    finally:
        proc.kill()
        proc.wait()


# The on-demand pool is the metrics bridge of this supervisor -------------------------------------


def test_only_serves_a_subset_and_one_bridge_takes_workers_and_options(tmp_path):
    path = _write(
        tmp_path / "p.yaml",
        {
            "bridges": {
                "metrics": {"workers": 2, "preload": False, "options": {"a": 1}},
                "echo": {},
            }
        },  # fmt: skip
    )
    config = load_pools_config(path)
    only = config.only(["metrics"], workers=1, options={"preload": True, "b": 2})
    [spec] = only.bridges.values()
    assert (spec.workers, spec.preload, dict(spec.options)) == (1, True, {"a": 1, "b": 2})
    assert list(config.only(["echo", "metrics"]).bridges) == ["echo", "metrics"]
    with pytest.raises(ConfigError, match=r"'bridges.nope': not in the file .*echo, metrics"):
        config.only(["nope"])
    with pytest.raises(ConfigError, match="override one bridge"):
        config.only(["echo", "metrics"], workers=2)


def test_the_on_demand_pool_runs_the_metrics_bridge_of_pools_yaml(tmp_path, monkeypatch):
    from flowstone.workers.autostart import AutoPool, metrics_pools_config

    monkeypatch.setenv(ENV_VAR, str(_write(tmp_path / "p.yaml", {"bridges": {"metrics": {}}})))
    assert metrics_pools_config() == tmp_path / "p.yaml"
    command = AutoPool.from_env(workers=1).server_command()
    at = command.index("--config")
    assert command[at + 1 : at + 4] == [str(tmp_path / "p.yaml"), "--only", "metrics"]
    assert "--bridge" not in command
    # without a metrics bridge in the file (or without the file): the plain metrics server
    monkeypatch.setenv(ENV_VAR, str(_write(tmp_path / "q.yaml", {"bridges": {"echo": {}}})))
    assert metrics_pools_config() is None
    assert "--bridge" in AutoPool.from_env().server_command()
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "missing.yaml"))
    assert metrics_pools_config() is None


def test_serve_only_starts_just_that_bridge_of_the_file(short_tmp, tmp_path):
    path = _write(
        tmp_path / "p.yaml", {"bridges": {"echo": {"workers": 2}, "other": {"target": FAULTY}}}
    )
    socket_path = short_tmp / "o.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowstone.workers.cli", "serve", "--socket", str(socket_path),
         "--config", str(path), "--only", "echo", "--workers", "1"],
        env=child_env(tmp_path / "home"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: socket_path.exists() or proc.poll() is not None, timeout=120)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        with PoolClient(socket_path, connect_timeout_s=30) as client:
            wait_for(lambda: client.stats()["bridges"].get("echo", {}).get("workers_alive") == 1,
                     timeout=120)  # fmt: skip
            stats = client.stats()
            assert list(stats["bridges"]) == ["echo"] and not stats["unavailable"]
            assert stats["bridges"]["echo"]["size"] == 1  # --workers overrode the file's 2
            with pytest.raises(UnknownBridgeError, match="no bridge 'other'"):
                client.execute("other:ping", {})
            client.shutdown()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# Overflow workers stay within their bridge -----------------------------------------------------


def test_a_burst_on_one_bridge_starts_overflow_workers_for_that_bridge_only(registry_dir, tmp_path):
    config = parse_pools_config(
        {"bridges": {"burst": {"target": FAULTY, "overflow": 1}, "echo": {"workers": 1}}},
        "test-pools.yaml",
    )
    pools = BridgePools(
        config,
        environ={},
        registry_dir=registry_dir,
        pythonpath=[str(HERE)],
        health_interval_s=None,
        start_timeout_s=60,
    )
    gate = tmp_path / "release"
    with pools:
        stats = pools.stats()["bridges"]
        assert (stats["burst"]["overflow"], stats["echo"]["overflow"]) == (1, 0)
        echo_pids = pools.worker_pids()["echo"]
        held: list[int] = []
        holder = threading.Thread(
            target=lambda: held.append(pools.execute("burst:wait_for", {"marker": str(gate)}))
        )
        holder.start()
        try:
            assert wait_for(lambda: pools.stats()["bridges"]["burst"]["workers_busy"] == 1)
            # burst's only worker is held: this call is served by burst's overflow worker
            overflow_pid = pools.execute("burst:pid")
            burst, echo = (pools.stats()["bridges"][name] for name in ("burst", "echo"))
            assert burst["workers_alive"] == 2 and burst["workers_overflow"] == 1
            assert burst["overflow_started"] == 1 and burst["restarts"] == 0
            assert echo["workers_alive"] == 1 and echo["started"] == 1
            assert echo["overflow_started"] == 0 and pools.worker_pids()["echo"] == echo_pids
            assert overflow_pid in pools.worker_pids()["burst"]
        finally:
            gate.touch()
            holder.join(60)
        assert held and held[0] != overflow_pid
