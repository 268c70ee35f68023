"""The model-baking line: one dynamic partition per model.
source_model -> baked_model -> bake_quality (blocking check) -> bake_profile -> bake_package
-> deployed_model (after a human approves), plus the two warehouse tables dbt reads. Each
asset body calls ``flowstone.baking``; the assets add partitions, pools, checks and the
metadata a person reads in the UI. A failure on any asset stops its partition there, so a
bad bake never overwrites what is downstream, and the deployed version stays as it was.
A backfill of many models is one run on one host (``assets/model_batch.py``): each body bakes
model after model with per-model metadata and check results, and a failure stops that run's
models at the failing asset.
"""

from typing import Any

import dagster as dg

from assets.approval_gate import approved_request
from assets.metadata import to_metadata
from assets.model_batch import ModelBatch
from assets.partition_checks import partitioned_check_spec
from assets.pools import BAKING_POOL, WAREHOUSE_POOL
from flowstone.baking.records.bake import BakeRecord
from flowstone.baking.records.profile import ProfileRecord
from flowstone.baking.records.quality import QualityRecord
from flowstone.baking.records.source import SourceRecord
from flowstone.paths import bake_workspace
from flowstone.transient import is_transient
from flowstone.web.links import model_url

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
TASK_CHECK = "task_non_inferiority"
SPEED_CHECK = "speed_floor"

_common: dict[str, Any] = dict(
    key_prefix=[PREFIX], partitions_def=MODELS, group_name=GROUP, owners=OWNERS,
)  # fmt: skip
# The bake steps run again, in the same run, after a passing failure (flowstone.transient: a
# reset connection, a write the object store refused once); finished pass checkpoints make the
# second attempt cheap. Any other failure fails the step at once (ModelBatch's retry_only).
BAKE_RETRY = dg.RetryPolicy(max_retries=2, delay=1.0, backoff=dg.Backoff.EXPONENTIAL)


@dg.asset(
    **_common,
    kinds={"pytorch"},
    pool=BAKING_POOL,
    retry_policy=BAKE_RETRY,
    required_resource_keys={"models"},
    description="The dropped model, validated: it loads, a forward pass on a sample input runs, "
    "its size is within the limit; parameter count and sha256 recorded.",
)
def source_model(context: dg.AssetExecutionContext) -> dg.Output:
    from flowstone.baking.pipeline import prepare_source

    def one(name: str) -> dg.Output[dict]:
        record = prepare_source(name, context.resources.models.local_path(name), bake_workspace())
        return dg.Output(
            record.to_dict(),
            metadata=to_metadata(record.metadata()),
            data_version=dg.DataVersion(record.version),
        )

    return ModelBatch(context, is_transient).run(one)


@dg.asset(
    **_common,
    kinds={"pytorch", "onnx"},
    pool=BAKING_POOL,
    retry_policy=BAKE_RETRY,
    required_resource_keys={"models"},
    description="The configured passes in order (int8 quantisation, pruning, TorchScript, ONNX "
    "export and ONNX Runtime optimisation/quantisation), each checkpointed so a failed later "
    "pass resumes from the last good one.",
)
def baked_model(context: dg.AssetExecutionContext, source_model: dict) -> dg.Output:
    from flowstone.baking.budget import reserve_for_bake
    from flowstone.baking.pipeline import run_passes

    budget = context.resources.models.budget()

    def one(name: str, source_model: dict) -> dg.Output[dict]:
        source = SourceRecord.from_dict(source_model)
        config = source.bake_config()
        from flowstone.evaluation.model_gate import search_gate

        gate = search_gate(source, config)
        with reserve_for_bake(budget, source, config, log=context.log.info) as held:
            baked = run_passes(source, log=context.log.info, extra_gate=gate)
        return dg.Output(
            baked.to_dict(),
            metadata=to_metadata({**baked.metadata(source), **held.metadata()}),
            data_version=dg.DataVersion(baked.sha256[:16]),
        )

    return ModelBatch(context, is_transient).run(one, source_model=source_model)


# A multi-asset only for can_subset: it makes the check's output optional, so a run of many
# models can give each model its own result (as assets/evaluation.py's report does).
@dg.multi_asset(
    name=f"{PREFIX}__bake_quality",  # the step key the @asset had
    outs={
        "bake_quality": dg.AssetOut(
            key=QUALITY_KEY,
            group_name=GROUP,
            owners=OWNERS,
            kinds={"python"},
            description="The baked model against the original on validation data: accuracy "
            "retention, label agreement and max logit difference (classifiers); cosine "
            "fidelity mean/min and Spearman rho of pair similarities (embedding models).",
        )
    },
    ins={"source_model": dg.AssetIn(key=SOURCE_KEY), "baked_model": dg.AssetIn(key=BAKED_KEY)},
    partitions_def=MODELS,
    pool=BAKING_POOL,
    retry_policy=BAKE_RETRY,
    required_resource_keys={"models"},
    check_specs=[
        partitioned_check_spec(
            QUALITY_CHECK,
            QUALITY_KEY,
            MODELS,
            blocking=True,
            description="The configured quality metric meets its threshold.",
        ),
        partitioned_check_spec(
            TASK_CHECK,
            QUALITY_KEY,
            MODELS,
            blocking=True,
            description="On each task suite of the bake config (quality.task_suites), the "
            "baked model's per-case scores are non-inferior to the original's: the one-sided "
            "lower bound of the paired mean difference stays above -margin.",
        ),
    ],  # fmt: skip
    can_subset=True,
)
def bake_quality(context: dg.AssetExecutionContext, source_model: dict, baked_model: dict):
    from flowstone.baking.budget import reserve_for_bake
    from flowstone.baking.quality import measure_quality

    def one(name: str, source_model: dict, baked_model: dict) -> tuple[QualityRecord, Any]:
        source, baked = SourceRecord.from_dict(source_model), BakeRecord.from_dict(baked_model)
        config = source.bake_config()
        with reserve_for_bake(context.resources.models.budget(), source, config):
            quality = measure_quality(source, baked, config)
            gate = None
            if config.task_gate.suites:
                from flowstone.evaluation.model_gate import task_gate, under_test

                original, candidate = under_test(source, baked)
                gate = task_gate(original, candidate, config.task_gate, log=context.log.info)
        return quality, gate

    batch = ModelBatch(context, is_transient)
    results = batch.each(one, source_model=source_model, baked_model=baked_model)
    outputs = {
        name: dg.Output(
            {**quality.to_dict(), "task_gate": gate.to_dict() if gate else None},
            metadata=to_metadata({**quality.metadata(), **(gate.metadata() if gate else {})}),
        )
        for name, (quality, gate) in results.items()
    }
    yield batch.output(outputs, output_name="bake_quality")
    for name, (quality, gate) in results.items():  # each model's own, after its materialization
        result = dg.AssetCheckResult(
            check_name=QUALITY_CHECK,
            passed=quality.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata=to_metadata(quality.check_metadata()),
            description=quality.check_description(),
        )
        yield batch.check(result, name, QUALITY_KEY, blocking=True)
        task = dg.AssetCheckResult(
            check_name=TASK_CHECK,
            passed=gate.passed if gate else True,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata=to_metadata(gate.metadata() if gate else {"task_suites": 0}),
            description=gate.description()
            if gate
            else "no task suites in the bake config (quality.task_suites): fidelity only",
        )
        yield batch.check(task, name, QUALITY_KEY, blocking=True)


# A multi-asset for the same reason as bake_quality: a check result per model in a batch run.
@dg.multi_asset(
    name=f"{PREFIX}__bake_profile",  # the step key the @asset had
    outs={
        "bake_profile": dg.AssetOut(
            key=PROFILE_KEY,
            group_name=GROUP,
            owners=OWNERS,
            kinds={"python"},
            description="Latency p50/p95 per batch size, throughput, size on disk and peak RSS "
            "of the baked model and the original, measured in rounds: both interleaved, a fresh "
            "process each per round, same threads, until the throughput ratio's confidence "
            "interval is within the configured width (else the profile is noisy and gives no "
            "headline). Records the CPU model and flags, threads and load.",
        )
    },
    ins={"source_model": dg.AssetIn(key=SOURCE_KEY), "baked_model": dg.AssetIn(key=BAKED_KEY)},
    deps=[QUALITY_KEY],  # runs only after the blocking quality checks passed
    partitions_def=MODELS,
    pool=BAKING_POOL,
    retry_policy=BAKE_RETRY,
    required_resource_keys={"models"},
    check_specs=[
        partitioned_check_spec(
            SPEED_CHECK,
            PROFILE_KEY,
            MODELS,
            blocking=True,
            description="The baked model is not slower than the floor (speed.floor, default "
            "1.0x of the original's throughput): fails when the upper bound of the throughput "
            "ratio's confidence interval is below it.",
        )
    ],
    can_subset=True,
)
def bake_profile(context: dg.AssetExecutionContext, source_model: dict, baked_model: dict):
    from flowstone.baking.budget import reserve_for_bake
    from flowstone.baking.chart import profile_chart
    from flowstone.baking.profile import MeasuringServers, profile_variants, profiling_sentences

    def one(name: str, source_model: dict, baked_model: dict) -> tuple[ProfileRecord, Any, float]:
        source, baked = SourceRecord.from_dict(source_model), BakeRecord.from_dict(baked_model)
        config = source.bake_config()
        sentences = profiling_sentences(source, config)
        with reserve_for_bake(context.resources.models.budget(), source, config):
            profile = profile_variants(source, baked, config, sentences, log=context.log.info,
                                       servers=servers)  # fmt: skip
        chart = profile_chart(profile, source, bake_workspace())
        return profile, chart, config.speed.floor

    batch = ModelBatch(context, is_transient)
    with MeasuringServers() as servers:  # the step's models share their imports
        profiles = batch.each(one, source_model=source_model, baked_model=baked_model)
    outputs = {
        name: dg.Output(
            profile.to_dict(),
            metadata={
                **to_metadata(profile.metadata(chart)),
                "chart_view": dg.MetadataValue.url(model_url(name)),  # the chart, served
            },
        )
        for name, (profile, chart, _) in profiles.items()
    }
    yield batch.output(outputs, output_name="bake_profile")
    for name, (profile, _, floor) in profiles.items():
        passed, description = profile.speed_verdict(floor)
        result = dg.AssetCheckResult(
            check_name=SPEED_CHECK,
            passed=passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=description,
            metadata=to_metadata(profile.speed_check_metadata(floor)),
        )
        yield batch.check(result, name, PROFILE_KEY, blocking=True)


@dg.asset(
    **_common,
    kinds={"python", "s3"},
    retry_policy=BAKE_RETRY,
    required_resource_keys={"notifications"},
    description="The baked artifact plus manifest.json (source and baked hashes, passes and "
    "config, quality and profile figures, library versions), one tar archive stored through "
    "the object-store I/O manager with its checksum.",
)
def bake_package(context: dg.AssetExecutionContext, source_model: dict, baked_model: dict,
                 bake_quality: dict, bake_profile: dict) -> dg.Output:  # fmt: skip
    from flowstone.baking.package import build_manifest, build_package
    from flowstone.baking.registry import record_passed
    from flowstone.notifications.events import bake_ready

    notifications = context.resources.notifications

    def one(name: str, source_model: dict, baked_model: dict, bake_quality: dict,
            bake_profile: dict) -> dg.Output[bytes]:  # fmt: skip
        baked = BakeRecord.from_dict(baked_model)
        manifest = build_manifest(SourceRecord.from_dict(source_model), baked,
                                  QualityRecord.from_dict(bake_quality),
                                  ProfileRecord.from_dict(bake_profile),
                                  task_gate=bake_quality.get("task_gate"))  # fmt: skip
        package = build_package(manifest, baked)
        # Gates passed (the blocking quality and speed checks ran before this step): from now
        # on baked:NAME means this bake, and evaluations that use it go stale.
        record_passed(bake_workspace(), name, manifest.version, baked.sha256, baked.artifact,
                      manifest.config)  # fmt: skip
        notifications.notify(bake_ready(manifest.model, manifest.summary_figures(),
                                        notifications.run_url(context.run_id), version=manifest.version))  # fmt: skip
        return dg.Output(
            package,
            metadata=to_metadata(manifest.metadata(len(package))),
            data_version=dg.DataVersion(manifest.baked.sha256[:16]),
        )

    return ModelBatch(context, is_transient).run(one, source_model=source_model, baked_model=baked_model,
                                   bake_quality=bake_quality, bake_profile=bake_profile)  # fmt: skip


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

    def one(name: str, source_model: dict, bake_quality: dict):
        source = SourceRecord.from_dict(source_model)
        return quality_rows(source, QualityRecord.from_dict(bake_quality), context.run_id)

    return ModelBatch(context).run(one, source_model=source_model, bake_quality=bake_quality)


@dg.asset(
    **_warehouse, description="Bake profile rows for dbt: the original and the baked variant."
)
def warehouse_bake_profile(
    context: dg.AssetExecutionContext, source_model: dict, bake_profile: dict
):
    from flowstone.warehouse.bake_rows import profile_rows

    def one(name: str, source_model: dict, bake_profile: dict):
        source = SourceRecord.from_dict(source_model)
        return profile_rows(source, ProfileRecord.from_dict(bake_profile), context.run_id)

    return ModelBatch(context).run(one, source_model=source_model, bake_profile=bake_profile)


BAKE_ASSETS = [source_model, baked_model, bake_quality, bake_profile, bake_package,
               deployed_model, warehouse_bake_quality, warehouse_bake_profile]  # fmt: skip
BAKE_JOB = dg.define_asset_job(
    "bake_model",
    selection=dg.AssetSelection.assets(*BAKE_ASSETS) - dg.AssetSelection.assets(DEPLOYED_KEY),
    partitions_def=MODELS,
    description="Validate, bake, measure and package one model; deployment waits for approval.",
)


def bake_assets(backfill_policy: dg.BackfillPolicy | None = None) -> list[dg.AssetsDefinition]:
    """``BAKE_ASSETS`` with ``backfill_policy`` on the bake job's assets. The default, one run
    for a whole backfill, is the one-host choice (``assets/model_batch.py`` says why); the drop
    sensor still requests a run per model, and ``deployed_model`` a run per approval. Set here
    rather than in the decorators, where the beta parameter warns as the location loads."""
    policy = backfill_policy or dg.BackfillPolicy.single_run()
    return [
        a if a.key == DEPLOYED_KEY else a.with_attributes(backfill_policy=policy)
        for a in BAKE_ASSETS
    ]
