"""The dbt project as Dagster assets: staging views, history and marts over the warehouse.

Sources carry ``meta.dagster.asset_key`` so the graph links the FlowStone warehouse assets to
the dbt models; dbt tests become asset checks (a failed test counts its offending rows). The
daily trend mart is partitioned by day and receives the day range through dbt vars. Every dbt
invocation runs in the ``warehouse`` pool, the one writer DuckDB allows.
"""

import contextlib
import os
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets
from filelock import FileLock

from assets.pools import WAREHOUSE_POOL
from flowstone.warehouse.project import dbt_executable, dbt_project_dir, manifest_is_stale

if TYPE_CHECKING:  # define_asset_job's return type, which Dagster does not re-export
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
    )

GROUP = "analytics"
DBT_JOB = "dbt_build_job"
DAILY_TAG = "daily"
DAILY_START = "2026-01-01"
LOCK_MESSAGE = "Could not set lock on file"
# end_offset=1: today's partition exists, so a demo run can build today's trend.
DAILY_PARTITIONS = dg.DailyPartitionsDefinition(start_date=DAILY_START, end_offset=1)


def load_dbt_project() -> DbtProject:
    """The project, with a manifest that matches its files (``dbt parse`` if stale)."""
    project = DbtProject(project_dir=dbt_project_dir())
    if manifest_is_stale(project.project_dir, project.manifest_path):
        # A file lock: `dagster dev` loads the code location in several processes at once, and
        # only the first to get the lock parses; the others find a fresh manifest.
        project.manifest_path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(project.manifest_path.with_name("manifest.json.lock"), timeout=600):
            if manifest_is_stale(project.project_dir, project.manifest_path):
                parse_dbt_project(project)
    return project


def parse_dbt_project(project: DbtProject) -> None:
    """``dbt parse``: writes target/manifest.json; reads files only (no warehouse, no network).
    A parse error (bad YAML, unknown ref) stops the code location with dbt's message."""
    dbt_resource(project).cli(["parse", "--quiet"], target_path=project.target_path).wait()


class FlowStoneDbtTranslator(DagsterDbtTranslator):
    """Models under ``analytics/<name>`` in the ``analytics`` group, refreshed eagerly."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            return super().get_asset_key(dbt_resource_props)
        return dg.AssetKey([GROUP, dbt_resource_props["name"]])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return GROUP

    def get_automation_condition(
        self, dbt_resource_props: Mapping[str, Any]
    ) -> dg.AutomationCondition | None:
        if dbt_resource_props["resource_type"] != "model":
            return None
        return dg.AutomationCondition.eager()


# The daily mart's day range, read by the model (vars day_start/day_end, by hand, win): an
# environment variable rather than --vars, since new vars make dbt re-parse the whole project
# on every run while a changed environment variable re-parses only the files that read it.
DAY_ENV = {"day_start": "FLOWSTONE_DBT_DAY_START", "day_end": "FLOWSTONE_DBT_DAY_END"}


def day_vars(context: dg.AssetExecutionContext) -> dict[str, str]:
    """The run's day range as dbt vars (a single-run backfill covers several days)."""
    window = context.partition_time_window
    last_day = window.end - timedelta(days=1)
    return {
        "day_start": window.start.strftime("%Y-%m-%d"),
        "day_end": last_day.strftime("%Y-%m-%d"),
    }


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` in ``os.environ`` for the block (dbt's process copies it when it starts),
    then the variables as they were."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_dbt(
    context: dg.AssetExecutionContext,
    dbt: DbtCliResource,
    args: list[str],
    env: Mapping[str, str] | None = None,
) -> Iterator[Any]:
    """``dbt <args>`` (with ``env`` in its environment) with events streamed to Dagster; a
    DuckDB lock held by another process is retried, any other failure raises dbt's own
    message."""
    with environment(env or {}):
        invocation = dbt.cli(args, context=context, raise_on_error=False)
    yield from invocation.stream()
    error = invocation.get_error()
    if error is None:
        return
    if LOCK_MESSAGE in str(error):
        raise dg.RetryRequested(max_retries=3, seconds_to_wait=2) from error
    raise error


def build_dbt_assets(project: DbtProject) -> list[dg.AssetsDefinition]:
    """Two dbt multi-assets: the day-partitioned trend mart and everything else."""
    translator = FlowStoneDbtTranslator()

    @dbt_assets(
        manifest=project.manifest_path,
        project=project,
        exclude=f"tag:{DAILY_TAG}",
        name="dbt_models",
        dagster_dbt_translator=translator,
        pool=WAREHOUSE_POOL,
    )
    def dbt_models(context: dg.AssetExecutionContext, dbt: DbtCliResource):
        yield from run_dbt(context, dbt, ["build"])

    @dbt_assets(
        manifest=project.manifest_path,
        project=project,
        select=f"tag:{DAILY_TAG}",
        name="dbt_daily_models",
        dagster_dbt_translator=translator,
        partitions_def=DAILY_PARTITIONS,
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool=WAREHOUSE_POOL,
    )
    def dbt_daily_models(context: dg.AssetExecutionContext, dbt: DbtCliResource):
        days = {DAY_ENV[name]: day for name, day in day_vars(context).items()}
        yield from run_dbt(context, dbt, ["build"], env=days)

    return [dbt_models, dbt_daily_models]


def dbt_resource(project: DbtProject) -> DbtCliResource:
    """The resource under key ``dbt``, running the venv's dbt."""
    return DbtCliResource(project_dir=project, dbt_executable=dbt_executable())


def build_dbt_job(dbt_defs: list[dg.AssetsDefinition]) -> "UnresolvedAssetJobDefinition":
    """``dbt build`` of every model and its tests, as one job (the daily schedule's target)."""
    return dg.define_asset_job(
        DBT_JOB,
        selection=dg.AssetSelection.assets(*dbt_defs),
        description="dbt build: staging, history, marts and their tests.",
    )
