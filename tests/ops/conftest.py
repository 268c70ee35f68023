"""Fixtures for the doctor tests: a healthy FlowStone setup in a temp folder, and moto's S3
server (copied from tests/storage/conftest.py, here function-scoped so a test can stop it)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.net import free_port

SECRET = "sk-ant-api03-DOCTORnever-print-me-0123456789"
KEY_VAR = "FLOWSTONE_TEST_DOCTOR_KEY"


@dataclass
class Setup:
    root: Path
    home: Path
    warehouse: Path
    objects: Path
    systems: Path
    dbt_dir: Path
    key_var: str = KEY_VAR
    secret: str = SECRET

    @property
    def manifest(self) -> Path:
        return self.dbt_dir / "target" / "manifest.json"


@pytest.fixture
def healthy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Setup:
    """Instance, warehouse, object store, systems.yaml, dbt project: everything in order."""
    import duckdb

    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    warehouse = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(warehouse)) as conn:
        conn.execute("CREATE TABLE scores (suite VARCHAR, mean DOUBLE)")
    (tmp_path / "prompt.j2").write_text("{{ input }}")
    systems = tmp_path / "systems.yaml"
    systems.write_text(
        "systems:\n"
        "  - name: offline\n    template: prompt.j2\n"
        "    providers: [{kind: local, model: local-baseline}]\n"
        "  - name: claude\n    template: prompt.j2\n"
        f"    providers: [{{kind: anthropic, model: claude-haiku-4-5, api_key: 'env:{KEY_VAR}'}}]\n"
    )
    dbt_dir = tmp_path / "dbt"
    (dbt_dir / "models").mkdir(parents=True)
    (dbt_dir / "dbt_project.yml").write_text("name: tiny\nversion: '1.0'\nprofile: tiny\n")
    (dbt_dir / "models" / "m.sql").write_text("select 1 as x\n")
    (dbt_dir / "target").mkdir()
    manifest = dbt_dir / "target" / "manifest.json"
    manifest.write_text(json.dumps({"metadata": {"dbt_version": "1.11.0"}, "nodes": {"a": {}}}))
    later = time.time() + 5
    os.utime(manifest, (later, later))
    env = {
        "DAGSTER_HOME": str(home),
        "FLOWSTONE_WAREHOUSE": str(warehouse),
        "FLOWSTONE_OBJECT_STORE_URL": str(tmp_path / "objects"),
        "FLOWSTONE_SYSTEMS_CONFIG": str(systems),
        "FLOWSTONE_DBT_PROJECT_DIR": str(dbt_dir),
        KEY_VAR: SECRET,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("FLOWSTONE_POOL_SOCKET", raising=False)
    return Setup(tmp_path, home, warehouse, tmp_path / "objects", systems, dbt_dir)


@pytest.fixture
def moto_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, object]]:
    """(endpoint, server) of a moto S3 server on loopback; the test may stop it early."""
    from moto.server import ThreadedMotoServer

    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        monkeypatch.setenv(name, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    stopped = []
    original_stop = server.stop

    def stop() -> None:
        if not stopped:
            stopped.append(True)
            original_stop()

    server.stop = stop
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        stop()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory for Unix sockets (their paths are limited to 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="fsd-", dir="/tmp") as path:
        yield Path(path)
