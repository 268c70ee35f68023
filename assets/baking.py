"""The model-baking line: one dynamic partition per model.
source_model -> baked_model -> bake_quality (blocking check) -> bake_profile -> bake_package
-> deployed_model (after a human approves), plus the two warehouse tables dbt reads. Each
asset body calls ``flowstone.baking``; the assets add partitions, pools, checks and the
metadata a person reads in the UI. A failure on any asset stops its partition there, so a
bad bake never overwrites what is downstream, and the deployed version stays as it was.
"""

from typing import Any

import dagster as dg

from assets.approval_gate import approved_request
from assets.metadata import to_metadata
from assets.pools import BAKING_POOL, WAREHOUSE_POOL
from flowstone.baking.records.bake import BakeRecord
from flowstone.baking.records.profile import ProfileRecord
from flowstone.baking.records.quality import QualityRecord
from flowstone.baking.records.source import SourceRecord
from flowstone.paths import bake_workspace

PREFIX = "baking"
GROUP = "baking"
OWNERS = ["team:ml-platform"]
MODELS = dg.DynamicPartitionsDefinition(name="models")
SOURCE_KEY = dg.AssetKey([PREFIX, "source_model"])
BAKED_KEY = dg.AssetKey([PREFIX, "baked_model"])
QUALITY_KEY = dg.AssetKey([PREFIX, "bake_quality"])
PROFILE_KEY = dg.AssetKey([PREFIX, "bake_profile"])
PACKAGE_KEY = dg.AssetKey([PREFIX, "bake_package"])
DEPLOYED_KEY = dg.AssetKey([PREFIX, "deployed_model"])
BAKE_WAREHOUSE_IO_MANAGER_KEY = "bake_warehouse_io_manager"
QUALITY_CHECK = "quality_threshold"

_common: dict[str, Any] = dict(
    key_prefix=[PREFIX], partitions_def=MODELS, group_name=GROUP, owners=OWNERS,
)  # fmt: skip


@dg.asset(
    **_common,
    kinds={"pytorch"},
    pool=BAKING_POOL,
    required_resource_keys={"models"},
    description="The dropped model, validated: it loads, a forward pass on a sample input runs, "
    "its size is within the limit; parameter count and sha256 recorded.",
)
def source_model(context: dg.AssetExecutionContext) -> dg.Output[dict]:
    from flowstone.baking.pipeline import prepare_source

    name = context.partition_key
    record = prepare_source(name, context.resources.models.local_path(name), bake_workspace())
    return dg.Output(
        record.to_dict(),
        metadata=to_metadata(record.metadata()),
        data_version=dg.DataVersion(record.version),
    )


@dg.asset(
    **_common,
    kinds={"pytorch", "onnx"},
    pool=BAKING_POOL,
    required_resource_keys={"models"},
    description="The configured passes in order (int8 quantisation, pruning, TorchScript, ONNX "
    "export and ONNX Runtime optimisation/quantisation), each checkpointed so a failed later "
    "pass resumes from the last good one.",
)
def baked_model(context: dg.AssetExecutionContext, source_model: dict) -> dg.Output[dict]:
    from flowstone.baking.budget import reserve_for_bake
    from flowstone.baking.pipeline import run_passes

    source = SourceRecord.from_dict(source_model)
    budget = context.resources.models.budget()
    with reserve_for_bake(budget, source, source.bake_config(), log=context.log.info) as held:
        baked = run_passes(source, log=context.log.info)
    return dg.Output(
        baked.to_dict(),
        metadata=to_metadata({**baked.metadata(source), **held.metadata()}),
        data_version=dg.DataVersion(baked.sha256[:16]),
    )


@dg.asset(
    **_common,
    kinds={"python"},
    pool=BAKING_POOL,
    required_resource_keys={"models"},
    check_specs=[
        dg.AssetCheckSpec(
            QUALITY_CHECK,
            asset=QUALITY_KEY,
            blocking=True,
            description="The configured quality metric meets its threshold.",
        )
    ],  # fmt: skip
    description="The baked model against the original on validation data: accuracy retention, "
    "label agreement and max logit difference (classifiers); cosine fidelity mean/min and "
    "Spearman rho of pair similarities (embedding models).",
)
def bake_quality(context: dg.AssetExecutionContext, source_model: dict, baked_model: dict):
    from flowstone.baking.budget import reserve_for_bake
    from flowstone.baking.quality import measure_quality

    source, baked = SourceRecord.from_dict(source_model), BakeRecord.from_dict(baked_model)
    config = source.bake_config()
    with reserve_for_bake(context.resources.models.budget(), source, config):
        quality = measure_quality(source, baked, config)
    yield dg.Output(quality.to_dict(), metadata=to_metadata(quality.metadata()))
    yield dg.AssetCheckResult(
        check_name=QUALITY_CHECK,
        passed=quality.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=to_metadata(quality.check_metadata()),
        description=quality.check_description(),
    )


@dg.asset(
    **_common,
    kinds={"python"},
    pool=BAKING_POOL,
    required_resource_keys={"models"},
    deps=[QUALITY_KEY],  # runs only after the blocking quality check passed
    description="Latency p50/p95 per batch size, throughput, size on disk and peak RSS of the "
    "baked model and the original, each in a fresh process after warm-up, same thread count.",
)
def bake_profile(
    context: dg.AssetExecutionContext, source_model: dict, baked_model: dict
) -> dg.Output[dict]:
    from flowstone.baking.budget import reserve_for_bake
    from flowstone.baking.chart import profile_chart
    from flowstone.baking.profile import profile_variants, profiling_sentences

    source, baked = SourceRecord.from_dict(source_model), BakeRecord.from_dict(baked_model)
    config = source.bake_config()
    sentences = profiling_sentences(source, config)
    with reserve_for_bake(context.resources.models.budget(), source, config):
        profile = profile_variants(source, baked, config, sentences)
    chart = profile_chart(profile, source, bake_workspace())
    return dg.Output(profile.to_dict(), metadata=to_metadata(profile.metadata(chart)))


@dg.asset(
    **_common,
    kinds={"python", "s3"},
    required_resource_keys={"notifications"},
    description="The baked artifact plus manifest.json (source and baked hashes, passes and "
    "config, quality and profile figures, library versions), one tar archive stored through "
    "the object-store I/O manager with its checksum.",
)
def bake_package(context: dg.AssetExecutionContext, source_model: dict, baked_model: dict,
                 bake_quality: dict, bake_profile: dict) -> dg.Output[bytes]:  # fmt: skip
    from flowstone.baking.package import build_manifest, build_package
    from flowstone.notifications.events import bake_ready

    baked = BakeRecord.from_dict(baked_model)
    manifest = build_manifest(SourceRecord.from_dict(source_model), baked,
                              QualityRecord.from_dict(bake_quality),
                              ProfileRecord.from_dict(bake_profile))  # fmt: skip
    package = build_package(manifest, baked)
    notifications = context.resources.notifications
    notifications.notify(bake_ready(manifest.model, manifest.summary_figures(),
                                    notifications.run_url(context.run_id), version=manifest.version))  # fmt: skip
    return dg.Output(
        package,
        metadata=to_metadata(manifest.metadata(len(package))),
        data_version=dg.DataVersion(manifest.baked.sha256[:16]),
    )


@dg.asset(
    **_common,
    kinds={"python"},
    required_resource_keys={"models", "approvals"},
    description="The approved package unpacked into the deployment location and made current. "
    "Runs only when launched by the approval sensor; `flowstone models rollback NAME` restores "
    "the previous version.",
)
def deployed_model(context: dg.AssetExecutionContext, bake_package: bytes) -> dg.MaterializeResult:
    request = approved_request(context, context.resources.approvals, DEPLOYED_KEY, PACKAGE_KEY)
    event = context.resources.models.deployments().deploy(
        context.partition_key, bake_package, approved_by=request.decided_by, request_id=request.id
    )
    return dg.MaterializeResult(
        metadata={
            "version": event["version"],
            "previous_version": event["previous"] or "",
            "approved_by": event["approved_by"] or "",
            "approval_request": request.id,
            "path": dg.MetadataValue.path(event["path"]),
        }
    )


_warehouse: dict[str, Any] = dict(
    **_common,
    kinds={"python", "duckdb"},
    io_manager_key=BAKE_WAREHOUSE_IO_MANAGER_KEY,
    pool=WAREHOUSE_POOL,
    retry_policy=dg.RetryPolicy(max_retries=3, delay=1.0, backoff=dg.Backoff.EXPONENTIAL),
    automation_condition=dg.AutomationCondition.eager(),
)


@dg.asset(**_warehouse, description="Bake quality rows for dbt: one per model version and variant.")
def warehouse_bake_quality(
    context: dg.AssetExecutionContext, source_model: dict, bake_quality: dict
):
    from flowstone.warehouse.bake_rows import quality_rows

    source, quality = SourceRecord.from_dict(source_model), QualityRecord.from_dict(bake_quality)
    return quality_rows(source, quality, context.run_id)


@dg.asset(
    **_warehouse, description="Bake profile rows for dbt: the original and the baked variant."
)
def warehouse_bake_profile(
    context: dg.AssetExecutionContext, source_model: dict, bake_profile: dict
):
    from flowstone.warehouse.bake_rows import profile_rows

    source, profile = SourceRecord.from_dict(source_model), ProfileRecord.from_dict(bake_profile)
    return profile_rows(source, profile, context.run_id)


BAKE_ASSETS = [source_model, baked_model, bake_quality, bake_profile, bake_package,
               deployed_model, warehouse_bake_quality, warehouse_bake_profile]  # fmt: skip
BAKE_JOB = dg.define_asset_job(
    "bake_model",
    selection=dg.AssetSelection.assets(*BAKE_ASSETS) - dg.AssetSelection.assets(DEPLOYED_KEY),
    partitions_def=MODELS,
    description="Validate, bake, measure and package one model; deployment waits for approval.",
)
