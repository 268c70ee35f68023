"""`flowstone doctor` on a healthy temp setup and on broken ones, through its CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import boto3
import pytest
import typer
from support.net import free_port
from typer.testing import CliRunner

from assets.instance_check import check_instance
from flowstone.ops.checks.object_store import check_object_store
from flowstone.ops.checks.runner import register_check, run_checks
from flowstone.ops.doctor import app as doctor_app

# mounted, with the wiring's instance check registered, the way flowstone/cli.py does it
register_check("instance", check_instance, before="warehouse")
root = typer.Typer()
root.add_typer(doctor_app, name="doctor")


@root.callback()
def _main() -> None:
    pass


def doctor(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(root, ["doctor", *args])
    return result.exit_code, result.output


def by_name(output: str) -> dict[str, dict]:
    return {row["name"]: row for row in json.loads(output)}


@pytest.mark.slow
def test_healthy_setup_is_all_ok(healthy, short_tmp, monkeypatch):
    from flowstone.workers.pool import WorkerPool
    from flowstone.workers.server import PoolServer

    pool = WorkerPool(bridge="echo", size=1, registry_dir=short_tmp / "w", health_interval_s=None)
    with PoolServer(pool, short_tmp / "p.sock") as server:
        monkeypatch.setenv("FLOWSTONE_POOL_SOCKET", str(server.socket_path))
        code, output = doctor("--json")
        table_code, table = doctor()
    assert code == 0, output
    rows = by_name(output)
    assert list(rows) == [
        "dagster instance", "warehouse", "object store", "provider credentials",
        "llm state", "pool bridges", "pool server", "dbt manifest",
    ]  # fmt: skip
    assert {name: row["status"] for name, row in rows.items() if row["status"] != "ok"} == {}
    assert "SqliteRunStorage" in rows["dagster instance"]["detail"]
    assert "1 tables" in rows["warehouse"]["detail"]
    assert "put, get and delete work" in rows["object store"]["detail"]
    assert f"set: {healthy.key_var}" in rows["provider credentials"]["detail"]
    assert "'echo' pool, 1/1 workers" in rows["pool server"]["detail"]
    assert "dbt 1.11.0, 1 nodes" in rows["dbt manifest"]["detail"]
    assert healthy.secret not in output
    assert not (healthy.objects / "_flowstone_doctor").exists()  # the probe cleaned up
    assert table_code == 0 and "8 ok, 0 warn, 0 fail" in table and healthy.secret not in table


def test_broken_setup_fails_with_fixes(healthy, short_tmp, monkeypatch):
    healthy.manifest.unlink()
    healthy.warehouse.write_bytes(b"this is not a DuckDB database\n" * 200)
    monkeypatch.delenv(healthy.key_var)
    monkeypatch.setenv("FLOWSTONE_POOL_SOCKET", str(short_tmp / "nobody.sock"))
    code, output = doctor("--json")
    assert code == 1
    rows = by_name(output)
    warehouse = rows["warehouse"]
    assert warehouse["status"] == "fail" and "cannot be opened as DuckDB" in warehouse["detail"]
    assert f"mv {healthy.warehouse} {healthy.warehouse}.broken" in warehouse["fix"]
    dbt = rows["dbt manifest"]
    assert dbt["status"] == "warn" and "missing" in dbt["detail"]
    assert dbt["fix"].startswith(f"cd {healthy.dbt_dir} && ") and dbt["fix"].endswith(" parse")
    credentials = rows["provider credentials"]
    assert credentials["status"] == "warn"
    assert f"missing: {healthy.key_var} (for claude)" in credentials["detail"]
    assert "skipped until set: claude" in credentials["detail"]
    assert credentials["fix"] == f"export {healthy.key_var}=... (or remove the systems)"
    server = rows["pool server"]
    assert server["status"] == "fail" and "flowstone pool serve --socket" in server["fix"]
    assert rows["dagster instance"]["status"] == "ok"
    code, table = doctor("--only", "warehouse", "--only", "dbt")
    assert code == 1 and "0 ok, 1 warn, 1 fail" in table
    code, _ = doctor("--only", "dbt")
    assert code == 0  # a warning alone passes...
    code, _ = doctor("--only", "dbt", "--strict")
    assert code == 1  # ...unless --strict
    code, output = doctor("--only", "nonsense")
    assert code == 2 and "unknown check(s) nonsense" in output


def test_object_store_probe_on_s3_then_endpoint_down(healthy, moto_server, monkeypatch):
    endpoint, server = moto_server
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="doctor-bucket")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    up = check_object_store("s3://doctor-bucket/flowstone")
    assert up.status == "ok", up
    assert f"s3://doctor-bucket/flowstone at {endpoint}" in up.detail
    listed = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket="doctor-bucket")
    assert listed["KeyCount"] == 0  # the probe object was deleted
    missing = check_object_store("s3://no-such-bucket")
    assert missing.status == "fail" and "aws s3 mb s3://no-such-bucket" in missing.fix
    server.stop()
    monkeypatch.setenv("FLOWSTONE_OBJECT_STORE_URL", "s3://doctor-bucket/flowstone")
    (down,) = run_checks(["object_store"], timeout_s=30)
    assert down.status == "fail" and "put failed" in down.detail
    assert down.fix == f"start the S3 service at {endpoint} or correct AWS_ENDPOINT_URL"
    assert down.seconds < 15


def test_instance_config_errors(healthy):
    config = healthy.home / "dagster.yaml"
    config.write_text("run_storage: [unclosed\n")
    bad_yaml = check_instance()
    assert bad_yaml.status == "fail" and "does not parse" in bad_yaml.detail
    port = free_port()
    config.write_text(
        "storage:\n  postgres:\n    postgres_db:\n      hostname: 127.0.0.1\n"
        f"      port: {port}\n      username: postgres\n      password: pg-secret-pw\n"
        "      db_name: flowstone\n"
    )
    down = check_instance()
    assert down.status == "fail" and "storage unreachable" in down.detail, down
    assert f"PostgreSQL at 127.0.0.1:{port}" in down.detail
    assert down.fix.startswith(f"start PostgreSQL at 127.0.0.1:{port}")
    assert "pg-secret-pw" not in down.detail + down.fix
    config.write_text("telemetry:\n  enabled: sometimes\n")
    rejected = check_instance()
    assert rejected.status == "fail" and "Dagster rejects dagster.yaml" in rejected.detail
    healthy.home.joinpath("dagster.yaml").unlink()
    defaults = check_instance()
    assert defaults.status == "warn" and "no dagster.yaml" in defaults.detail


@pytest.mark.slow
def test_doctor_as_a_command(healthy):
    """The module runs alone too; the exit code is what scripts and CI read."""
    healthy.manifest.unlink()
    healthy.dbt_dir.joinpath("dbt_project.yml").unlink()
    result = subprocess.run(
        [sys.executable, "-m", "flowstone.ops.doctor", "--json", "--only", "dbt"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["status"] == "fail" and "no dbt project" in row["detail"]


def test_instance_on_postgresql(healthy):
    """The scale-out instance: dagster-postgres storage on the PostgreSQL at 127.0.0.1:5432."""
    import uuid

    psycopg = pytest.importorskip("psycopg")
    admin = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}
    try:
        psycopg.connect(**admin, connect_timeout=2).close()
    except psycopg.OperationalError:
        pytest.skip("no PostgreSQL answers on 127.0.0.1:5432")
    name = f"fs_doctor_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        (healthy.home / "dagster.yaml").write_text(
            "storage:\n  postgres:\n    postgres_db:\n      hostname: 127.0.0.1\n"
            f"      port: 5432\n      username: postgres\n      password: ''\n      db_name: {name}\n"
        )
        result = check_instance()
    finally:
        with psycopg.connect(**admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert result.status == "ok", result
    assert "PostgresRunStorage, 0 runs" in result.detail


def test_credentials_for_vault_and_bad_references(healthy, monkeypatch):
    from flowstone.ops.checks.credentials import check_credentials

    text = healthy.systems.read_text()
    monkeypatch.delenv("VAULT_ADDR", raising=False)
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    healthy.systems.write_text(
        text.replace(f"env:{healthy.key_var}", "vault:secret/data/llm#anthropic")
    )
    vault = check_credentials()
    assert vault.status == "warn"
    assert "missing: VAULT_ADDR, VAULT_TOKEN (for claude)" in vault.detail
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:8200")
    monkeypatch.setenv("VAULT_TOKEN", "hvs.never-printed")
    ready = check_credentials()
    assert ready.status == "ok"
    assert "resolved at the first call: vault:secret/data/llm#anthropic" in ready.detail
    assert "hvs.never-printed" not in ready.detail
    healthy.systems.write_text(text.replace(f"env:{healthy.key_var}", "ssm:llm/key"))
    bad = check_credentials()
    assert bad.status == "fail" and "backend must be env, vault or aws" in bad.detail
