"""The daily mart's day range: from vars by hand, from the environment when Dagster runs it, so
that the run keeps dbt's partial parsing (new vars make dbt re-parse the whole project)."""

import os
import subprocess

import pytest

from assets.dbt import DAY_ENV, environment
from flowstone.warehouse.project import dbt_executable

COMPILED = "target/compiled/flowstone/models/marts/score_trends_daily.sql"


def test_environment_sets_the_variables_for_the_block_only(monkeypatch):
    monkeypatch.setenv("FLOWSTONE_DBT_DAY_END", "before")
    monkeypatch.delenv("FLOWSTONE_DBT_DAY_START", raising=False)
    days = {"FLOWSTONE_DBT_DAY_START": "2026-05-01", "FLOWSTONE_DBT_DAY_END": "2026-05-02"}
    with environment(days):
        assert {k: os.environ[k] for k in days} == days
    assert "FLOWSTONE_DBT_DAY_START" not in os.environ
    assert os.environ["FLOWSTONE_DBT_DAY_END"] == "before"
    assert set(DAY_ENV.values()) == set(days)


@pytest.mark.slow  # three dbt invocations, a few seconds each
def test_days_from_the_environment_compile_as_vars_do_and_keep_partial_parsing(
    project_copy, tmp_path
):
    env = {k: v for k, v in os.environ.items() if k not in DAY_ENV.values()}
    env["FLOWSTONE_WAREHOUSE"] = str(tmp_path / "warehouse.duckdb")

    def dbt(*args: str, **extra: str) -> str:
        out = subprocess.run(
            [dbt_executable(), *args, "--profiles-dir", str(project_copy)],
            cwd=project_copy,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    def where() -> str:
        sql = (project_copy / COMPILED).read_text()
        return " ".join(sql[sql.index("where run_day") :].split()[:10])

    dbt("parse")
    log = dbt(
        "compile",
        "--select",
        "score_trends_daily",
        FLOWSTONE_DBT_DAY_START="2026-05-01",
        FLOWSTONE_DBT_DAY_END="2026-05-03",
    )
    assert "Unable to do partial parsing" not in log, log
    from_env = where()
    assert from_env == (
        "where run_day between cast('2026-05-01' as date) and cast('2026-05-03' as date)"
    )
    vars_ = '{"day_start": "2026-05-01", "day_end": "2026-05-03"}'
    log = dbt("compile", "--select", "score_trends_daily", "--vars", vars_)
    assert where() == from_env
    assert "Unable to do partial parsing" in log  # what the environment saves Dagster's runs
    # by hand, day_start alone is one day (the README's example)
    dbt("compile", "--select", "score_trends_daily", "--vars", '{"day_start": "2026-05-01"}')
    assert where().endswith("cast('2026-05-01' as date)")
