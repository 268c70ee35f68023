"""The check every approval-gated asset runs first: was this run launched for an approved
request of this very asset, partition and upstream data version?

The approval sensors (``sensors/approvals.py``) launch gated runs with the request's id as a
tag; a manual "Materialize" in the UI has no such tag and is refused, so nobody skips the gate
by clicking.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from flowstone.approvals.flow import APPROVAL_REQUEST_TAG
from flowstone.approvals.machine import State


def approved_request(
    context: dg.AssetExecutionContext, approvals: Any, gated: dg.AssetKey, upstream: dg.AssetKey
) -> Any:
    """The approved request this run acts on; ``dg.Failure`` with the fix otherwise."""
    name = gated.to_user_string()
    partition = context.partition_key if context.has_partition_key else ""
    request_id = context.run.tags.get(APPROVAL_REQUEST_TAG)
    if not request_id:
        raise dg.Failure(
            f"{name} [{partition}] is gated on human approval and this run has no "
            f"'{APPROVAL_REQUEST_TAG}' tag. Approve its request (`flowstone approvals list`, "
            "then `flowstone approvals approve ID --token TOKEN`, or `--dev` on a machine without a signing secret); the approval sensor launches it."
        )
    request = approvals.store().get(request_id)
    if request.state != State.APPROVED:
        raise dg.Failure(
            f"{name} [{partition}]: approval request {request_id} is {request.state.value}, "
            "not approved; nothing changes."
        )
    if request.asset != name or request.partition != partition:
        raise dg.Failure(
            f"{name} [{partition}]: approval request {request_id} is for "
            f"{request.asset} [{request.partition}], not this partition."
        )
    latest = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=upstream, asset_partitions=[partition] if partition else None
        ),
        limit=1,
    ).records
    current = (
        (latest[0].asset_materialization.tags or {}).get("dagster/data_version") if latest else None
    )
    if current is not None and current != request.data_version:
        raise dg.Failure(
            f"{name} [{partition}]: approval {request_id} covers data version "
            f"{request.data_version} of {upstream.to_user_string()}, but its current "
            f"version is {current}; the approval sensor has opened a request for the new one."
        )
    return request
