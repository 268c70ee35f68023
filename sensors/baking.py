"""The model drop sensor: a new or changed model in the drop location becomes a partition of
``models`` and one bake run.

The cursor remembers each drop's signature (sizes and mtimes, or S3 ETags), so a model is
baked once per version: the run key is the model name plus its signature's hash, which also
keeps a restarted daemon from requesting the same bake twice.
"""

from __future__ import annotations

import hashlib
import json

import dagster as dg

from assets.baking import BAKE_JOB, MODELS
from resources.baking import ModelIntakeResource


def bake_requests(
    drops: list, cursor: str | None, existing: set[str]
) -> tuple[list, list[str], str]:
    """(run requests, partitions to add, new cursor) for the drops found this tick."""
    seen: dict[str, str] = json.loads(cursor) if cursor else {}
    runs, new_partitions = [], []
    for drop in drops:
        if seen.get(drop.name) == drop.signature:
            continue
        if drop.name not in existing:
            new_partitions.append(drop.name)
        digest = hashlib.sha256(drop.signature.encode()).hexdigest()[:16]
        runs.append(
            dg.RunRequest(
                run_key=f"bake-{drop.name}-{digest}",
                partition_key=drop.name,
                tags={"flowstone/model_drop": drop.location},
            )
        )
        seen[drop.name] = drop.signature
    return runs, new_partitions, json.dumps(seen, sort_keys=True)


@dg.sensor(
    name="model_drop_sensor",
    job=BAKE_JOB,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Watches the model drop folder (or S3 prefix): adds a `models` partition for "
    "each new model and requests one bake per model version.",
)
def model_drop_sensor(context: dg.SensorEvaluationContext, models: ModelIntakeResource):
    drops = models.scan()
    existing = set(MODELS.get_partition_keys(dynamic_partitions_store=context.instance))
    runs, new_partitions, cursor = bake_requests(drops, context.cursor, existing)
    if not runs:
        return dg.SkipReason(f"no new or changed model in {models.resolved_location()}")
    return dg.SensorResult(
        run_requests=runs,
        cursor=cursor,
        dynamic_partitions_requests=[MODELS.build_add_request(new_partitions)]
        if new_partitions
        else [],
    )
