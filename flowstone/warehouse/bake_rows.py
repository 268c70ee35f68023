"""The bake tables dbt reads (``baking.warehouse_bake_quality`` / ``_profile``), as frames.

One row per model version and variant. Figure columns are float64 even when a figure does not
apply to this model (NULL: a classifier has no Spearman rho), so every model writes the same
table schema and dbt's tests hold across models.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from flowstone.baking.records.profile import ProfileRecord
from flowstone.baking.records.quality import ClassifierFigures, QualityRecord
from flowstone.baking.records.source import SourceRecord

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

QUALITY_FLOATS = ("value", "threshold", "accuracy_original", "accuracy_baked", "fidelity",
                  "fidelity_min", "spearman_rho", "max_abs_logit_diff")  # fmt: skip
PROFILE_FLOATS = ("latency_p50_ms", "latency_p95_ms", "throughput_per_s")


def _frame(
    rows: list[dict[str, Any]], floats: Sequence[str], run_id: str, now: datetime | None
) -> pd.DataFrame:
    import pandas as pd

    stamp = (now or datetime.now(UTC)).replace(tzinfo=None)
    frame = pd.DataFrame([{**row, "materialized_at": stamp, "run_id": run_id} for row in rows])
    return frame.astype(dict.fromkeys(floats, "float64"))


def quality_rows(
    source: SourceRecord, quality: QualityRecord, run_id: str, now: datetime | None = None
) -> pd.DataFrame:
    """The baked variant's quality: the checked metric, and each figure where it applies."""
    figures = quality.figures
    if isinstance(figures, ClassifierFigures):
        classifier, embedding = figures, None
        agreement = figures.label_agreement
    else:
        classifier, embedding = None, figures
        agreement = figures.cosine_mean
    row = {
        "version": source.version,
        "variant": "baked",
        "task": source.task,
        "metric": quality.metric,
        "value": float(quality.value),
        "threshold": float(quality.threshold),
        "passed": bool(quality.passed),
        "accuracy_original": classifier.accuracy_original if classifier else None,
        "accuracy_baked": classifier.accuracy_baked if classifier else None,
        # cosine of unit vectors in float arithmetic can exceed 1 by an ulp; dbt tests [0, 1]
        "fidelity": min(1.0, agreement),
        "fidelity_min": embedding.cosine_min if embedding else None,
        "spearman_rho": embedding.spearman_rho if embedding else None,
        "max_abs_logit_diff": classifier.max_abs_logit_diff if classifier else None,
    }
    return _frame([row], QUALITY_FLOATS, run_id, now)


def profile_rows(
    source: SourceRecord, profile: ProfileRecord, run_id: str, now: datetime | None = None
) -> pd.DataFrame:
    """The original and the baked variant at the largest batch size profiled."""
    largest = profile.largest_batch
    rows = []
    for variant, figures in (("original", profile.original), ("baked", profile.baked)):
        timing = figures.per_batch[largest]
        rows.append({
            "version": source.version, "variant": variant, "batch_size": int(largest),
            "latency_p50_ms": timing.latency_p50_ms, "latency_p95_ms": timing.latency_p95_ms,
            "throughput_per_s": timing.throughput_per_s, "size_bytes": int(figures.size_bytes),
            "peak_memory_bytes": int(figures.peak_rss_bytes), "threads": int(profile.threads),
        })  # fmt: skip
    return _frame(rows, PROFILE_FLOATS, run_id, now)
