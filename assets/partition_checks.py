"""Asset checks with a result per partition, for assets whose runs may cover many partitions.

Dagster 1.13 attributes a check result to a partition only in a one-partition run; a
single-run backfill (the evaluation report, the bake quality check) must emit one
``AssetCheckEvaluation`` per partition, pointing at the materialization it judged, or the UI
shows no status for that partition.
"""

from __future__ import annotations

import warnings
from typing import Any

import dagster as dg

# Private, on purpose: Dagster 1.13 exports no constructor for the pointer from a check result
# to the materialization it belongs to. tests/assets/test_evaluation_assets.py and
# tests/baking/test_bake_batch.py read per-partition check status through the instance and
# fail if this breaks.
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)


def partitioned_check_spec(
    name: str, asset: dg.AssetKey, partitions_def: dg.PartitionsDefinition, **kwargs: Any
) -> dg.AssetCheckSpec:
    """A check with a result per partition (a Dagster 1.13 preview we opt into, pinned): the
    asset's check status then counts failing models instead of showing the latest one."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Specifying a partitions_def", category=dg.PreviewWarning
        )
        return dg.AssetCheckSpec(name, asset=asset, partitions_def=partitions_def, **kwargs)


def latest_target(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition_key: str
) -> AssetCheckEvaluationTargetMaterializationData | None:
    """The materialization of ``asset_key``'s partition a check result belongs to; without it
    Dagster treats the partition's result as outdated and shows no status for it."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition_key]), limit=1
    ).records
    if not records or records[0].run_id is None:
        return None
    record = records[0]
    return AssetCheckEvaluationTargetMaterializationData(
        storage_id=record.storage_id, run_id=record.run_id, timestamp=record.timestamp
    )
