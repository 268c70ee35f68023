"""PythonWorkerPoolResource inside real Dagster runs: private pool per step, or a shared server."""

from __future__ import annotations

import dagster as dg
import pytest
from worker_helpers import alive

from flowstone.workers.errors import ServerUnavailableError
from flowstone.workers.pool import WorkerPool
from flowstone.workers.server import PoolServer
from resources.worker_pool import PythonWorkerPoolResource

seen: dict[str, object] = {}


@dg.asset
def echoed(worker_pool: PythonWorkerPoolResource) -> dg.MaterializeResult:
    values = worker_pool.map("echo:echo", [{"value": i} for i in range(10)])
    seen["mode"] = worker_pool.mode
    seen["pids"] = [w["pid"] for w in worker_pool.worker_list()]
    seen["stream"] = list(worker_pool.execute_stream("echo:count", {"n": 3}))
    return dg.MaterializeResult(metadata={"sum": sum(values), "mode": worker_pool.mode})


def _materialize(resource: PythonWorkerPoolResource) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [echoed], resources={"worker_pool": resource}, instance=dg.DagsterInstance.ephemeral()
    )


def test_private_pool_lives_for_the_step_only(monkeypatch, tmp_path):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    result = _materialize(PythonWorkerPoolResource(bridge="echo", workers=2, private_pool=True))
    assert result.success
    metadata = result.asset_materializations_for_node("echoed")[0].metadata
    assert metadata["sum"].value == 45 and metadata["mode"].value == "private"
    assert seen["stream"] == [0, 1, 2]
    assert len(seen["pids"]) == 2
    assert not any(alive(pid) for pid in seen["pids"])  # stopped in teardown


def test_steps_share_a_running_server(short_tmp, registry_dir):
    pool = WorkerPool(bridge="echo", size=2, registry_dir=registry_dir, health_interval_s=None)
    with PoolServer(pool, short_tmp / "dg.sock") as server:
        resource = PythonWorkerPoolResource(socket_path=str(server.socket_path))
        for _ in range(2):
            assert _materialize(resource).success
            assert seen["mode"] == "server"
            assert sorted(seen["pids"]) == sorted(pool.worker_pids())  # the same warm workers
        assert pool.stats()["requests"] >= 2 * 11


def test_configured_server_that_is_down_fails_or_falls_back(short_tmp, monkeypatch, tmp_path):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    missing = str(short_tmp / "down.sock")
    with pytest.raises(dg.DagsterResourceFunctionError) as caught:
        _materialize(
            PythonWorkerPoolResource(socket_path=missing, connect_timeout_s=0.3, bridge="echo")
        )
    assert isinstance(caught.value.__cause__, ServerUnavailableError)
    assert "flowstone pool serve" in str(caught.value.__cause__)
    result = _materialize(
        PythonWorkerPoolResource(
            socket_path=missing,
            connect_timeout_s=0.3,
            fallback_to_private_pool=True,
            bridge="echo",
            workers=1,
        )
    )
    assert result.success and seen["mode"] == "private"
