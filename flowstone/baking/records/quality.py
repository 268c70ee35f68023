"""How close the baked model stays to the original: what ``bake_quality`` stores and checks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class ClassifierFigures:
    """A classifier against the original on labelled validation data."""

    examples: int
    accuracy_original: float
    accuracy_baked: float
    accuracy_retention: float
    label_agreement: float
    max_abs_logit_diff: float


@dataclass(frozen=True)
class EmbeddingFigures:
    """An embedding model against the original on sentence pairs (see ``baking.fidelity``)."""

    pairs: int
    sentences: int
    spearman_rho: float
    cosine_mean: float
    cosine_min: float
    max_abs_similarity_diff: float
    validation: str


Figures = ClassifierFigures | EmbeddingFigures


def _figures_from(data: dict[str, Any]) -> Figures:
    kind = EmbeddingFigures if "spearman_rho" in data else ClassifierFigures
    return kind(**{f.name: data[f.name] for f in fields(kind)})


@dataclass(frozen=True)
class QualityRecord:
    """The figures, the configured metric with its value and threshold, and the verdict."""

    figures: Figures
    metric: str
    value: float
    threshold: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self.figures),
            "metric": self.metric,
            "value": self.value,
            "threshold": self.threshold,
            "passed": self.passed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QualityRecord:
        return cls(
            figures=_figures_from(data),
            metric=data["metric"],
            value=data["value"],
            threshold=data["threshold"],
            passed=data["passed"],
        )

    def metadata(self) -> dict[str, Any]:
        """Every number as a float (figures, value, threshold), then the metric and verdict."""
        numbers = {
            k: float(v)
            for k, v in self.to_dict().items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        return {**numbers, "metric": self.metric, "passed": self.passed}

    def check_metadata(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": float(self.value), "threshold": self.threshold}

    def check_description(self) -> str:
        return (
            f"{self.metric} = {self.value:.4f} against a threshold of {self.threshold}; a "
            "failing check stops this bake before profiling and packaging."
        )
