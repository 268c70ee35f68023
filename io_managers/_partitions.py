"""Turn a Dagster input/output context into the partitions our storage layer understands.

A one-dimensional (static, time-window or dynamic) partition becomes its key string; a
multi-partition becomes ``{dimension: key}``. Shared by the object-store, REST and database
I/O managers so that all three lay partitions out the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

PartitionSpec = str | dict[str, str]


def partition_specs(context: dg.InputContext | dg.OutputContext) -> list[tuple[str, PartitionSpec]]:
    """``[(partition_key, spec)]`` for every partition of the context; ``[]`` if unpartitioned."""
    if not context.has_asset_partitions:
        return []
    partitions_def = context.asset_partitions_def
    keys = list(context.asset_partition_keys)
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        specs: list[tuple[str, PartitionSpec]] = []
        for key in keys:
            multi = partitions_def.get_partition_key_from_str(str(key))
            specs.append((str(key), dict(multi.keys_by_dimension)))
        return specs
    return [(str(key), str(key)) for key in keys]


def split_multi_partition_output(
    context: dg.OutputContext, obj: Any, specs: list[tuple[str, PartitionSpec]]
) -> list[tuple[str, PartitionSpec, Any]]:
    """Pair each partition with its value.

    One partition: the object itself. Several partitions in one run (a single-run backfill):
    the asset must return a dict keyed by partition key with exactly those keys.
    """
    if len(specs) == 1:
        key, spec = specs[0]
        return [(key, spec, obj)]
    if not isinstance(obj, Mapping):
        raise dg.Failure(
            f"asset {context.asset_key.to_user_string()} materialized {len(specs)} partitions in "
            f"one run but returned {type(obj).__name__}; return a dict keyed by partition key "
            "(one value per partition)"
        )
    by_key = {str(k): v for k, v in obj.items()}
    wanted = {k for k, _ in specs}
    if set(by_key) != wanted:
        raise dg.Failure(
            f"asset {context.asset_key.to_user_string()} returned values for partitions "
            f"{sorted(by_key)} but the run covers {sorted(wanted)}; return exactly one value per "
            "partition of the run"
        )
    return [(key, spec, by_key[key]) for key, spec in specs]
