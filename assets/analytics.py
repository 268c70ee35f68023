"""Warehouse + dbt wiring in one place: assets, jobs, schedules, automation and resources.

``build_analytics_definitions`` returns a ``Definitions`` the code location merges with its
own; ``materialize_analytics`` runs the warehouse and dbt jobs in this process (what
``flowstone demo`` does after the evaluation).
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition,  # what define_asset_job returns; not re-exported
)
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from assets.dbt import build_dbt_assets, dbt_resource, load_dbt_project
from assets.evaluation import evaluation_partitions
from assets.warehouse import (
    GROUP as WAREHOUSE_GROUP,
)
from assets.warehouse import (
    WAREHOUSE_IO_MANAGER_KEY,
    bake_table_specs,
    build_warehouse_assets,
    ensure_warehouse_pool,
)
from flowstone.evaluation.catalog import Catalog
from io_managers.database import DatabaseIOManager
from sensors.schedules import (
    build_dbt_schedule,
    build_nightly_evaluation_schedule,
    build_warehouse_automation_sensor,
)

WAREHOUSE_JOB = "warehouse_job"
DBT_JOB = "dbt_build_job"


def build_analytics_definitions(
    catalog: Catalog,
    evaluation_job: UnresolvedAssetJobDefinition,
    project=None,
) -> dg.Definitions:
    """Warehouse assets, dbt assets, their jobs, the nightly and daily schedules (stopped), the
    automation sensor (stopped) and the ``warehouse_io_manager`` and ``dbt`` resources."""
    project = project or load_dbt_project()
    warehouse = build_warehouse_assets(catalog)
    dbt_defs = build_dbt_assets(project)
    warehouse_job = dg.define_asset_job(
        WAREHOUSE_JOB,
        selection=dg.AssetSelection.assets(*warehouse),
        description="Evaluation scores and reports into the DuckDB warehouse.",
    )
    dbt_job = dg.define_asset_job(
        DBT_JOB,
        selection=dg.AssetSelection.assets(*dbt_defs),
        description="dbt build: staging, history, marts and their tests.",
    )
    return dg.Definitions(
        assets=[*warehouse, *dbt_defs, *bake_table_specs()],
        jobs=[warehouse_job, dbt_job],
        schedules=[
            build_nightly_evaluation_schedule(evaluation_job, evaluation_partitions(catalog)),
            build_dbt_schedule(dbt_job),
        ],
        sensors=[
            build_warehouse_automation_sensor(
                dg.AssetSelection.groups(WAREHOUSE_GROUP) | dg.AssetSelection.assets(*dbt_defs)
            )
        ],
        resources={
            WAREHOUSE_IO_MANAGER_KEY: DatabaseIOManager(),
            "dbt": dbt_resource(project),
        },
    )


def materialize_analytics(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    partition_keys: Sequence[str],
    run_config: dict | None = None,
) -> dict[str, dg.ExecuteInProcessResult]:
    """Warehouse partitions (one run over ``partition_keys``), then the dbt build for today.

    One warehouse run when the keys are a contiguous range of the partitions definition (a
    single-run backfill), else one run per key so a failed evaluation partition in between is
    not loaded. Returns the last result per job name; dbt is skipped if the warehouse failed.
    """
    ensure_warehouse_pool(instance)
    job = defs.resolve_job_def(WAREHOUSE_JOB)
    ordered = [k for k in job.partitions_def.get_partition_keys() if k in set(partition_keys)]
    if not ordered:
        raise ValueError(f"none of {list(partition_keys)} is a partition of {WAREHOUSE_JOB}")
    results = {WAREHOUSE_JOB: _run_warehouse(job, instance, ordered, run_config or {})}
    if results[WAREHOUSE_JOB].success:
        today = datetime.now(UTC).strftime("%Y-%m-%d")
        results[DBT_JOB] = defs.resolve_job_def(DBT_JOB).execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config=run_config or {},
            partition_key=today,
        )
    return results


def _run_warehouse(job, instance, keys: list[str], run_config: dict):
    all_keys = job.partitions_def.get_partition_keys()
    first = all_keys.index(keys[0])
    if all_keys[first : first + len(keys)] == keys:
        target = (
            {"partition_key": keys[0]}
            if len(keys) == 1
            else {
                "tags": {
                    ASSET_PARTITION_RANGE_START_TAG: keys[0],
                    ASSET_PARTITION_RANGE_END_TAG: keys[-1],
                }
            }
        )
        return job.execute_in_process(
            instance=instance, raise_on_error=False, run_config=run_config, **target
        )
    result = None
    for key in keys:
        result = job.execute_in_process(
            instance=instance, raise_on_error=False, run_config=run_config, partition_key=key
        )
        if not result.success:
            break
    return result
