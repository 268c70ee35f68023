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

from assets.dbt import build_dbt_assets, dbt_resource, load_dbt_project
from assets.evaluation import evaluation_partitions
from assets.warehouse import (
    GROUP as WAREHOUSE_GROUP,
)
from assets.warehouse import (
    WAREHOUSE_IO_MANAGER_KEY,
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
        assets=[*warehouse, *dbt_defs],
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
    not loaded. Returns one result per job name (the warehouse's first failed run, else its
    last); dbt is skipped if the warehouse failed.
    """
    ensure_warehouse_pool(instance)
    job = defs.resolve_job_def(WAREHOUSE_JOB)
    all_keys = job.partitions_def.get_partition_keys()
    wanted = set(partition_keys)
    ordered = [k for k in all_keys if k in wanted]
    if not ordered:
        raise ValueError(f"none of {list(partition_keys)} is a partition of {WAREHOUSE_JOB}")
    from flowstone.cli import execute_partitions  # the demo's runner; typer stays off load

    first = all_keys.index(ordered[0])
    contiguous = all_keys[first : first + len(ordered)] == ordered
    runs = execute_partitions(
        job,
        instance,
        ordered,
        single_run=contiguous and len(ordered) > 1,
        run_config=run_config or {},
    )
    failed = [result for result in runs.values() if not result.success]
    results = {WAREHOUSE_JOB: failed[0] if failed else runs[ordered[-1]]}
    if results[WAREHOUSE_JOB].success:
        today = datetime.now(UTC).strftime("%Y-%m-%d")
        results[DBT_JOB] = defs.resolve_job_def(DBT_JOB).execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config=run_config or {},
            partition_key=today,
        )
    return results
