"""A gated asset: promote an evaluated system only after a human approved its report.

``build_promotion_asset`` makes the gated asset for any partitioned upstream (by default the
evaluation ``report``, partitioned suite x system). Its body refuses to run unless the run was
launched by the approval decisions sensor for an approved request of this very partition and
of the upstream's current data version, so a manual "Materialize" in the UI cannot skip the
gate.
"""

import json

import dagster as dg

from assets.approval_gate import approved_request
from assets.evaluation import REPORT_KEY
from flowstone import atomic
from flowstone.paths import outputs_dir
from resources.approvals import ApprovalsResource

PROMOTED_SYSTEM_KEY = dg.AssetKey("promoted_system")


def build_promotion_asset(
    partitions_def: dg.PartitionsDefinition | None,
    upstream_key: dg.AssetKey = REPORT_KEY,
    key: dg.AssetKey = PROMOTED_SYSTEM_KEY,
    group_name: str = "promotion",
    approvals_resource_key: str = "approvals",
) -> dg.AssetsDefinition:
    """The gated asset ``key``, downstream of ``upstream_key`` with the same partitions."""
    gated = key.to_user_string()

    @dg.asset(
        key=key,
        deps=[upstream_key],
        partitions_def=partitions_def,
        group_name=group_name,
        kinds={"python"},
        owners=["team:ml-platform"],
        required_resource_keys={approvals_resource_key},
        description=f"Promotion of an approved {upstream_key.to_user_string()} partition. Runs "
        "only when launched by the approval sensor (it refuses manual launches).",
    )
    def _promoted(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        approvals: ApprovalsResource = getattr(context.resources, approvals_resource_key)
        partition = context.partition_key if context.has_partition_key else ""
        request = approved_request(context, approvals, key, upstream_key)
        record = {
            "asset": gated,
            "partition": partition,
            "upstream": upstream_key.to_user_string(),
            "upstream_data_version": request.data_version,
            "approval_request": request.id,
            "approved_by": request.decided_by,
            "approved_at": request.decided_at.isoformat() if request.decided_at else None,
            "comment": request.comment,
            "summary": request.summary,
        }
        safe = partition.replace("|", "__").replace("/", "_") or "default"
        path = outputs_dir() / "promotions" / key.to_python_identifier() / f"{safe}.json"
        atomic.write_text(path, json.dumps(record, indent=2, sort_keys=True, default=str))
        return dg.MaterializeResult(
            metadata={
                "approval_request": request.id,
                "approved_by": request.decided_by or "",
                "comment": request.comment or "",
                "upstream_data_version": request.data_version,
                "promotion_record": dg.MetadataValue.path(str(path)),
            }
        )

    return _promoted
