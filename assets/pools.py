"""The Dagster concurrency pools FlowStone's steps join, and the slot counts they start with.

A pool bounds a scarce thing across every run and process of the instance: the ``warehouse``
pool is the one writer DuckDB allows, ``baking`` keeps bakes from overrunning the host's
memory and cores, ``llm`` bounds provider calls of many workers (rate limits are per process).

Per-pool limits live in the instance database (dagster.yaml only holds a default limit):
:func:`ensure_pool_limits` or ``dagster instance concurrency set <pool> <limit>`` writes them.
"""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg

WAREHOUSE_POOL = "warehouse"
BAKING_POOL = "baking"
LLM_POOL = "llm"

# The warehouse limit must stay 1 (one DuckDB writer); the others are starting points.
DEFAULT_POOL_LIMITS: Mapping[str, int] = {WAREHOUSE_POOL: 1, BAKING_POOL: 1, LLM_POOL: 4}


def ensure_pool_limits(
    instance: dg.DagsterInstance, limits: Mapping[str, int] | None = None
) -> dict[str, int]:
    """Give each pool its slot count unless an operator already set one (UI or
    ``dagster instance concurrency set``). Returns the limits now in force for these pools."""
    storage = instance.event_log_storage
    wanted = dict(DEFAULT_POOL_LIMITS if limits is None else limits)
    known = set(storage.get_concurrency_keys())
    for pool, slots in wanted.items():
        if pool not in known:
            storage.set_concurrency_slots(pool, slots)
    return {pool: storage.get_concurrency_info(pool).slot_count for pool in wanted}
