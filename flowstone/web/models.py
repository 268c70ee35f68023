"""One model's page: its stored bake records, the warehouse's bake rows, deployments, chart.

Why these sources: the bake assets store their records in the object store (the latest bake of
the model), the warehouse holds the rows dbt reads (one per model version and variant, the
latest run's), the deployment root keeps every deploy and rollback, and ``bake_profile`` draws
the chart beside the version's checkpoints in the bake workspace.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from flowstone.baking.chart import chart_path
from flowstone.baking.deploy import Deployments
from flowstone.baking.records.profile import ProfileRecord
from flowstone.baking.records.quality import QualityRecord
from flowstone.baking.records.source import SourceRecord
from flowstone.web.records import BakeProfileRow, BakeQualityRow
from flowstone.web.sources import Readers


@dataclass(frozen=True)
class DeploymentEvent:
    """A deploy or rollback from the deployment record (``flowstone models deployments``)."""

    action: str
    version: str
    previous: str | None
    at: str
    approved_by: str | None

    @classmethod
    def from_stored(cls, event: dict[str, Any]) -> DeploymentEvent:
        return cls(
            action=str(event.get("action", "")),
            version=str(event.get("version", "")),
            previous=event.get("previous"),
            at=str(event.get("at", "")),
            approved_by=event.get("approved_by"),
        )


@dataclass(frozen=True)
class ModelView:
    model: str
    source: SourceRecord | None
    quality: QualityRecord | None
    profile: ProfileRecord | None
    chart: Path | None
    quality_rows: list[BakeQualityRow] = field(default_factory=list)
    profile_rows: list[BakeProfileRow] = field(default_factory=list)
    deployed: str | None = None
    deployments: list[DeploymentEvent] = field(default_factory=list)

    @property
    def has_chart(self) -> bool:
        return self.chart is not None and self.chart.is_file()

    def quality_figures(self) -> list[tuple[str, Any]]:
        """The quality record's figures by name, in the record's order."""
        if self.quality is None:
            return []
        return [
            (k, v)
            for k, v in self.quality.to_dict().items()
            if k not in ("metric", "value", "threshold", "passed", self.quality.metric)
        ]

    def latency_rows(self) -> list[dict[str, Any]]:
        """Per batch size: p50 and p95 of both variants and the ratios."""
        if self.profile is None:
            return []
        rows = []
        for batch in map(str, self.profile.batch_sizes):
            original = self.profile.original.per_batch[batch]
            baked = self.profile.baked.per_batch[batch]
            ratio = self.profile.ratios[batch]
            rows.append(
                {
                    "batch": batch,
                    "p50_original": original.latency_p50_ms,
                    "p50_baked": baked.latency_p50_ms,
                    "p95_original": original.latency_p95_ms,
                    "p95_baked": baked.latency_p95_ms,
                    "speedup": ratio.speedup_p50,
                    "throughput_ratio": ratio.throughput_ratio,
                }
            )
        return rows


def load_model_view(readers: Readers, model: str, with_history: bool = True) -> ModelView:
    """Everything stored about ``model``; ``with_history`` adds the warehouse rows and the
    deployment record (the overview needs only the latest records)."""
    stored = readers.stored()
    raw_source = stored.bake_value("source_model", model)
    raw_quality = stored.bake_value("bake_quality", model)
    raw_profile = stored.bake_value("bake_profile", model)
    source = SourceRecord.from_dict(raw_source) if raw_source else None
    view = ModelView(
        model=model,
        source=source,
        quality=QualityRecord.from_dict(raw_quality) if raw_quality else None,
        profile=ProfileRecord.from_dict(raw_profile) if raw_profile else None,
        chart=chart_path(source, readers.sources.bake_workspace) if source else None,
    )
    if not with_history:
        return view
    warehouse = readers.warehouse()
    state = Deployments(readers.sources.deployments_dir).state(model)
    return replace(
        view,
        quality_rows=warehouse.bake_quality(model),
        profile_rows=warehouse.bake_profile(model),
        deployed=state.get("current"),
        deployments=[DeploymentEvent.from_stored(e) for e in reversed(state.get("history", []))],
    )
