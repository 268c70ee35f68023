"""Warehouse assets: evaluation scores and reports in the DuckDB warehouse that dbt reads.

Long format (one row per case x metric, one row per report x metric) so every suite shares
one table schema although suites score with different metrics. Same suite x system
partitions as the evaluation; the database I/O manager replaces exactly the partitions of a
run in one transaction. DuckDB lets one process write a file at a time, so every asset that
writes the warehouse (and the dbt build) runs in the ``warehouse`` pool, whose limit must be 1
(``assets.pools.ensure_pool_limits``), and retries a few times when another process holds the file.
"""

from datetime import UTC, datetime
from typing import Any

import dagster as dg

from assets.evaluation import OWNERS, PREFIX, PartitionBatch, evaluation_partitions
from assets.pools import WAREHOUSE_POOL
from flowstone.evaluation.catalog import Catalog

GROUP = "warehouse"
WAREHOUSE_JOB = "warehouse_job"
WAREHOUSE_IO_MANAGER_KEY = "warehouse_io_manager"
SCORES_KEY = dg.AssetKey([PREFIX, "warehouse_scores"])
REPORTS_KEY = dg.AssetKey([PREFIX, "warehouse_reports"])

# Another process (a dbt run outside Dagster, a notebook) may hold the DuckDB file; the pool
# only serialises Dagster steps. A short backoff covers a lock held for seconds.
WAREHOUSE_RETRY = dg.RetryPolicy(
    max_retries=3, delay=1.0, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


def build_warehouse_assets(catalog: Catalog) -> list:
    """The two warehouse assets for the catalog's suite x system partitions."""
    common: dict[str, Any] = dict(
        key_prefix=[PREFIX],
        partitions_def=evaluation_partitions(catalog),
        group_name=GROUP,
        owners=OWNERS,
        kinds={"python", "duckdb"},
        io_manager_key=WAREHOUSE_IO_MANAGER_KEY,
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool=WAREHOUSE_POOL,
        retry_policy=WAREHOUSE_RETRY,
        automation_condition=dg.AutomationCondition.eager(),
        code_version="1",
    )

    @dg.asset(
        **common,
        ins={"scores": dg.AssetIn(key=[PREFIX, "scores"])},
        description="Per-case scores in long format: suite, system, case_id, tags, metric, score.",
    )
    def warehouse_scores(context: dg.AssetExecutionContext, scores):
        from flowstone.warehouse import frames as warehouse_frames  # pandas: not at load

        batch = PartitionBatch(context)
        now = datetime.now(UTC)
        frames = {}
        for key in batch.keys:
            suite_name, system_name = batch.dims(key)
            metrics = list(catalog.settings.for_suite(suite_name).metrics)
            frame = warehouse_frames.long_scores(
                batch.input(scores, key), suite_name, system_name, metrics, now, context.run_id
            )
            batch.record(key, {"rows": len(frame), "metrics": ", ".join(metrics)})
            frames[key] = frame
        return batch.output(frames)

    @dg.asset(
        **common,
        ins={"report": dg.AssetIn(key=[PREFIX, "report"])},
        description="One row per report metric: mean, median, p95, min, pass rate, invalid "
        "judgements, threshold verdict and the regression flag.",
    )
    def warehouse_reports(context: dg.AssetExecutionContext, report):
        from flowstone.warehouse import frames as warehouse_frames  # pandas: not at load

        batch = PartitionBatch(context)
        now = datetime.now(UTC)
        frames = {}
        for key in batch.keys:
            value = batch.input(report, key)
            regressed = value.get("regressions", [])  # the report's own comparison
            frame = warehouse_frames.report_rows(
                value, value.get("previous_means", {}), regressed, now, context.run_id
            )
            batch.record(key, {"metrics": len(frame), "regressions": len(regressed)})
            frames[key] = frame
        return batch.output(frames)

    return [warehouse_scores, warehouse_reports]


warehouse_job = dg.define_asset_job(
    WAREHOUSE_JOB,
    selection=dg.AssetSelection.assets(SCORES_KEY, REPORTS_KEY),
    description="Evaluation scores and reports into the DuckDB warehouse.",
)
