"""Schedules and declarative automation for the evaluation and the analytics marts.

All stopped by default: a fresh clone should not start evaluating on its own. Turn them on in
the UI (Automation tab) or with ``dagster schedule start`` / ``dagster sensor start``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:  # define_asset_job's and build_schedule_from_partitioned_job's return
    # types, which Dagster does not re-export
    from dagster._core.definitions.partitions.partitioned_schedule import (
        UnresolvedPartitionedAssetScheduleDefinition,
    )
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
    )

NIGHTLY_EVALUATION_CRON = "0 2 * * *"


def build_nightly_evaluation_schedule(
    evaluation_job: UnresolvedAssetJobDefinition | dg.JobDefinition,
    partitions_def: dg.MultiPartitionsDefinition,
) -> dg.ScheduleDefinition:
    """Every suite x system partition of the evaluation job, one run request each, nightly.

    ``build_schedule_from_partitioned_job`` needs a time dimension; our partitions have none,
    so each tick requests them all (run keys per day make a re-tick idempotent).
    """

    @dg.schedule(
        job=evaluation_job,
        cron_schedule=NIGHTLY_EVALUATION_CRON,
        name="nightly_evaluation",
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Evaluates every suite x system partition at 02:00.",
    )
    def nightly_evaluation(context: dg.ScheduleEvaluationContext):
        day = context.scheduled_execution_time.strftime("%Y-%m-%d")
        for key in partitions_def.get_partition_keys():
            yield dg.RunRequest(run_key=f"{day}/{key}", partition_key=key)

    return nightly_evaluation


def build_dbt_schedule(
    dbt_job: UnresolvedAssetJobDefinition,
) -> UnresolvedPartitionedAssetScheduleDefinition | dg.ScheduleDefinition:
    """The whole dbt build once a day at 04:00, for the day-partitioned trend mart's latest
    day, whatever automation did in between (an unresolved schedule: ``Definitions`` resolves
    it against the job's assets)."""
    return dg.build_schedule_from_partitioned_job(
        dbt_job,
        name="daily_dbt_build",
        hour_of_day=4,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Builds and tests every dbt model at 04:00.",
    )


def build_warehouse_automation_sensor(
    selection: dg.AssetSelection,
) -> dg.AutomationConditionSensorDefinition:
    """Evaluates the marts' AutomationConditions (eager: refresh after upstream updates).

    Declared here so it starts STOPPED instead of Dagster's default automation sensor.
    """
    return dg.AutomationConditionSensorDefinition(
        "warehouse_automation",
        target=selection,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="Refreshes the warehouse and dbt marts after the evaluation updates.",
    )
