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
    # Against human gold scores (STS 0-5): Spearman's rho of each model's pair cosines with the
    # scores, on ``gold_source`` (the validation file when it carries scores, else the shipped
    # set); drop = original - baked, positive when the baked model ranks worse. None in records
    # stored before these were measured.
    gold_pairs: int | None = None
    gold_source: str | None = None
    spearman_gold_original: float | None = None
    spearman_gold_baked: float | None = None
    spearman_gold_drop: float | None = None

    @property
    def has_gold(self) -> bool:
        return self.spearman_gold_drop is not None


Figures = ClassifierFigures | EmbeddingFigures
GOLD_FIGURES = ("spearman_gold_original", "spearman_gold_baked", "spearman_gold_drop")


def _figures_from(data: dict[str, Any]) -> Figures:
    kind = EmbeddingFigures if "spearman_rho" in data else ClassifierFigures
    # fields with a default (the gold figures) may be missing from records stored before them
    return kind(**{f.name: data[f.name] for f in fields(kind) if f.name in data})


@dataclass(frozen=True)
class QualityRecord:
    """The figures, the configured metric with its value and threshold, and the verdict."""

    figures: Figures
    metric: str
    value: float
    threshold: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        # a figure not measured (None) is left out, so an older record writes back unchanged
        figures = {k: v for k, v in asdict(self.figures).items() if v is not None}
        return {
            **figures,
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

    def _gold(self) -> EmbeddingFigures | None:
        figures = self.figures
        return figures if isinstance(figures, EmbeddingFigures) and figures.has_gold else None

    def metadata(self) -> dict[str, Any]:
        """Every number as a float (figures, value, threshold; the Spearman rhos against gold
        scores to 4 decimals), then where the gold scores came from, the metric and verdict."""
        numbers = {
            k: round(float(v), 4) if k in GOLD_FIGURES else float(v)
            for k, v in self.to_dict().items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        gold = self._gold()
        source = {"gold_source": gold.gold_source} if gold else {}
        return {**numbers, **source, "metric": self.metric, "passed": self.passed}

    def check_metadata(self) -> dict[str, Any]:
        checked = {"metric": self.metric, "value": float(self.value), "threshold": self.threshold}
        gold = self._gold()
        if gold is None:
            return checked
        figures = {k: round(float(getattr(gold, k)), 4) for k in GOLD_FIGURES}
        return {
            **checked,
            **figures,
            "gold_pairs": gold.gold_pairs,
            "gold_source": gold.gold_source,
        }

    def check_description(self) -> str:
        text = (
            f"{self.metric} = {self.value:.4f} against a threshold of {self.threshold}; a "
            "failing check stops this bake before profiling and packaging."
        )
        gold = self._gold()
        if gold is None:
            return text
        return (
            f"{text} Spearman against gold scores ({gold.gold_pairs} pairs, {gold.gold_source}): "
            f"original {gold.spearman_gold_original:.4f}, baked {gold.spearman_gold_baked:.4f}, "
            f"drop {gold.spearman_gold_drop:.4f}."
        )
