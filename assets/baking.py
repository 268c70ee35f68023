"""The model-baking line: one dynamic partition per model.
source_model -> baked_model -> bake_quality (blocking check) -> bake_profile -> bake_package
-> deployed_model (after a human approves), plus the two warehouse tables dbt reads. Each
asset body calls ``flowstone.baking``; the assets add partitions, pools, checks and the
metadata a person reads in the UI. A failure on any asset stops its partition there, so a
bad bake never overwrites what is downstream, and the deployed version stays as it was.
"""

from datetime import UTC, datetime
from typing import Any

import dagster as dg

from assets.approval_gate import approved_request
from assets.pools import BAKING_POOL, WAREHOUSE_POOL
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


def _mb(n: float) -> float:
    return round(n / 2**20, 2)


def _record_and_config(source_model: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    from flowstone.baking.pipeline import config_of

    return source_model, config_of(source_model)


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
    path = context.resources.models.local_path(name)
    record = prepare_source(name, path, bake_workspace())
    return dg.Output(
        record,
        metadata={
            "version": record["version"],
            "kind": record["kind"],
            "task": record["task"],
            "parameters": record["parameters"],
            "size_mb": _mb(record["size_bytes"]),
            "sha256": record["sha256"],
            "forward_ms": record["forward_ms"],
            "load_seconds": record["load_seconds"],
            "passes": ", ".join(p["name"] for p in record["config"]["passes"]),
            "bake_config": record["config"]["source"],
            "path": dg.MetadataValue.path(record["source_path"]),
        },
        data_version=dg.DataVersion(record["version"]),
    )


def _passes_table(passes: list[dict[str, Any]]) -> str:
    rows = [
        "| # | pass | options | format | size (MB) | seconds | resumed |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, p in enumerate(passes, start=1):
        rows.append(f"| {i} | {p['pass']} | {p['options'] or ''} | {p['format']} | {_mb(p['size_bytes'])} | "
                    f"{p['seconds']} | {'yes' if p['resumed'] else ''} |")  # fmt: skip
    return "\n".join(rows)


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
    from flowstone.baking.budget import estimate_mb
    from flowstone.baking.pipeline import run_passes

    record, config = _record_and_config(source_model)
    budget = context.resources.models.budget()
    need = estimate_mb(record["size_bytes"], config.memory_estimate_mb)
    with budget.reserve(record["model"], need, on_wait=lambda mb: context.log.info(
            f"waiting for {mb:.0f} MB of the {budget.budget_mb:.0f} MB bake memory budget")) as waited:  # fmt: skip
        baked = run_passes(record, log=context.log.info)
    return dg.Output(
        baked,
        metadata={
            "version": record["version"],
            "format": baked["artifact"]["format"],
            "size_mb": _mb(baked["size_bytes"]),
            "size_ratio": round(baked["size_bytes"] / record["size_bytes"], 3),
            "sha256": baked["sha256"],
            "resumed_passes": baked["resumed_passes"],
            "passes": dg.MetadataValue.md(_passes_table(baked["passes"])),
            "memory_reserved_mb": round(need, 1),
            "memory_wait_seconds": round(waited, 1),
        },
        data_version=dg.DataVersion(baked["sha256"][:16]),
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
    from flowstone.baking.budget import estimate_mb
    from flowstone.baking.quality import measure_quality

    record, config = _record_and_config(source_model)
    budget = context.resources.models.budget()
    with budget.reserve(
        record["model"], estimate_mb(record["size_bytes"], config.memory_estimate_mb)
    ):
        quality = measure_quality(record, baked_model, config)
    figures = {
        k: v for k, v in quality.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    yield dg.Output(quality, metadata={**{k: float(v) for k, v in figures.items()},
                                       "metric": quality["metric"], "passed": quality["passed"]})  # fmt: skip
    yield dg.AssetCheckResult(
        check_name=QUALITY_CHECK,
        passed=quality["passed"],
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "metric": quality["metric"],
            "value": float(quality["value"]),
            "threshold": quality["threshold"],
        },  # fmt: skip
        description=f"{quality['metric']} = {quality['value']:.4f} against a threshold of "
        f"{quality['threshold']}; a failing check stops this bake before profiling and packaging.",
    )


def _profile_table(profile: dict[str, Any]) -> str:
    rows = ["| batch | p50 original (ms) | p50 baked (ms) | p95 original | p95 baked | throughput x |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    for b in map(str, profile["batch_sizes"]):
        o, k, r = (
            profile["original"]["per_batch"][b],
            profile["baked"]["per_batch"][b],
            profile["ratios"][b],
        )
        rows.append(f"| {b} | {o['latency_p50_ms']:.2f} | {k['latency_p50_ms']:.2f} | {o['latency_p95_ms']:.2f} | "
                    f"{k['latency_p95_ms']:.2f} | {r['throughput_ratio']:.2f} |")  # fmt: skip
    return "\n".join(rows)


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
    from flowstone.baking.budget import estimate_mb
    from flowstone.baking.chart import profile_chart
    from flowstone.baking.profile import profile_variants
    from flowstone.baking.quality import resolve_validation, validation_pairs

    record, config = _record_and_config(source_model)
    sentences: list[str] = []
    if config.task == "embedding":
        pairs = validation_pairs(record, resolve_validation(record, config.validation))
        sentences = [s for pair in pairs[:64] for s in pair]
    budget = context.resources.models.budget()
    with budget.reserve(
        record["model"], estimate_mb(record["size_bytes"], config.memory_estimate_mb)
    ):
        profile = profile_variants(record, baked_model, config, sentences)
    chart = profile_chart(profile, f"{record['model']} {record['version']}: original vs baked",
                          bake_workspace() / record["model"] / record["version"] / "profile.png")  # fmt: skip
    largest = str(max(profile["batch_sizes"]))
    return dg.Output(
        profile,
        metadata={
            "threads": profile["threads"],
            "load_average": profile["load_average"],
            f"throughput_ratio_batch_{largest}": round(profile["throughput_ratio"], 3),
            f"baked_throughput_per_s_batch_{largest}": round(
                profile["baked"]["per_batch"][largest]["throughput_per_s"], 1
            ),
            "size_ratio": round(profile["size_ratio"], 3),
            "peak_rss_ratio": round(profile["peak_rss_ratio"], 3),
            "baked_peak_rss_mb": _mb(profile["baked"]["peak_rss_bytes"]),
            "latency": dg.MetadataValue.md(_profile_table(profile)),
            "chart": dg.MetadataValue.path(str(chart)),
        },
    )


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

    manifest = build_manifest(source_model, baked_model, bake_quality, bake_profile)
    package = build_package(manifest, baked_model)
    figures = {"version": manifest["version"], bake_quality["metric"]: round(bake_quality["value"], 4),
               "throughput x": round(bake_profile["throughput_ratio"], 2),
               "size x": round(bake_profile["size_ratio"], 3)}  # fmt: skip
    context.resources.notifications.notify(
        bake_ready(
            source_model["model"],
            figures,
            context.resources.notifications.run_url(context.run_id),
            version=manifest["version"],
        )  # fmt: skip
    )
    return dg.Output(
        package,
        metadata={
            "version": manifest["version"],
            "package_mb": _mb(len(package)),
            "baked_sha256": manifest["baked"]["sha256"],
            "source_sha256": manifest["source"]["sha256"],
            "manifest": dg.MetadataValue.json(
                {k: manifest[k] for k in ("model", "version", "baked", "quality", "libraries")}
            ),
        },
        data_version=dg.DataVersion(manifest["baked"]["sha256"][:16]),
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


def _rows(
    context: dg.AssetExecutionContext, rows: list[dict[str, Any]], floats: tuple[str, ...]
) -> Any:
    """The rows as a frame whose figure columns are float64 even when a figure does not apply
    to this model (NULL), so every model writes the same table schema."""
    import pandas as pd

    now = datetime.now(UTC).replace(tzinfo=None)
    frame = pd.DataFrame(
        [{**row, "materialized_at": now, "run_id": context.run_id} for row in rows]
    )
    return frame.astype(dict.fromkeys(floats, "float64"))


_warehouse: dict[str, Any] = dict(
    **_common,
    kinds={"python", "duckdb"},
    io_manager_key=BAKE_WAREHOUSE_IO_MANAGER_KEY,
    pool=WAREHOUSE_POOL,
    retry_policy=dg.RetryPolicy(max_retries=3, delay=1.0, backoff=dg.Backoff.EXPONENTIAL),
    automation_condition=dg.AutomationCondition.eager(),
)


QUALITY_FLOATS = ("value", "threshold", "accuracy_original", "accuracy_baked", "fidelity",
                  "fidelity_min", "spearman_rho", "max_abs_logit_diff")  # fmt: skip


@dg.asset(**_warehouse, description="Bake quality rows for dbt: one per model version and variant.")
def warehouse_bake_quality(
    context: dg.AssetExecutionContext, source_model: dict, bake_quality: dict
):
    task = source_model["task"]
    return _rows(context, [{
        "version": source_model["version"], "variant": "baked", "task": task,
        "metric": bake_quality["metric"], "value": float(bake_quality["value"]),
        "threshold": float(bake_quality["threshold"]), "passed": bool(bake_quality["passed"]),
        "accuracy_original": bake_quality.get("accuracy_original"),
        "accuracy_baked": bake_quality.get("accuracy_baked"),
        # cosine of unit vectors in float arithmetic can exceed 1 by an ulp; dbt tests [0, 1]
        "fidelity": min(1.0, bake_quality.get("cosine_mean", bake_quality.get("label_agreement"))),
        "fidelity_min": bake_quality.get("cosine_min"),
        "spearman_rho": bake_quality.get("spearman_rho"),
        "max_abs_logit_diff": bake_quality.get("max_abs_logit_diff"),
    }], QUALITY_FLOATS)  # fmt: skip


@dg.asset(
    **_warehouse, description="Bake profile rows for dbt: the original and the baked variant."
)
def warehouse_bake_profile(
    context: dg.AssetExecutionContext, source_model: dict, bake_profile: dict
):
    largest = str(max(bake_profile["batch_sizes"]))
    rows = []
    for variant in ("original", "baked"):
        figures = bake_profile[variant]
        rows.append({
            "version": source_model["version"], "variant": variant, "batch_size": int(largest),
            "latency_p50_ms": figures["per_batch"][largest]["latency_p50_ms"],
            "latency_p95_ms": figures["per_batch"][largest]["latency_p95_ms"],
            "throughput_per_s": figures["per_batch"][largest]["throughput_per_s"],
            "size_bytes": int(figures["size_bytes"]), "peak_memory_bytes": int(figures["peak_rss_bytes"]),
            "threads": int(bake_profile["threads"]),
        })  # fmt: skip
    return _rows(context, rows, ("latency_p50_ms", "latency_p95_ms", "throughput_per_s"))


BAKE_ASSETS = [source_model, baked_model, bake_quality, bake_profile, bake_package,
               deployed_model, warehouse_bake_quality, warehouse_bake_profile]  # fmt: skip
BAKE_JOB = dg.define_asset_job(
    "bake_model",
    selection=dg.AssetSelection.assets(*BAKE_ASSETS) - dg.AssetSelection.assets(DEPLOYED_KEY),
    partitions_def=MODELS,
    description="Validate, bake, measure and package one model; deployment waits for approval.",
)
