"""How far an LLM judge agrees with a suite's gold labels, and whether it can be trusted.

A judge's mean says nothing if the judge itself disagrees with people. On a suite whose cases
all carry a label, each judge metric is compared with the labels:

- numeric labels (gold scores): Spearman's rank correlation (``scipy.stats.spearmanr``) of the
  judge's valid scores with the labels. Ranks, not values: a judge on 0-1 and gold scores on
  1-5 agree when they order the cases alike.
- class labels: Cohen's kappa (``sklearn.metrics.cohen_kappa_score``) of the judge's verdict
  with the label. A judge gives a score, not a class, so its verdict is pass/fail by the
  metric's ``pass_score`` (the same rule as its pass rate), and a label is "pass" when it is
  the configured ``calibration.pass_label``, otherwise when it is the positive side of a
  well-known pair (pass/fail, yes/no, true/false, correct/incorrect, good/bad,
  positive/negative, case-insensitive). Other class labels without ``pass_label`` leave the
  agreement undefined, said so, rather than guessing which class is the good one.

The agreement is undefined (NaN, never 0.0) with fewer than two valid pairs or when either
side is constant: a judge that passes everything has a kappa of 0 or none at all and a
correlation of none, and neither is evidence about the judge. An undefined agreement counts as
uncalibrated, like a threshold that cannot compare counts as failed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import SupportsFloat

from flowstone.evaluation.config import CalibrationSetting

SPEARMAN = "spearman"
KAPPA = "cohen_kappa"
_SHOWN = {SPEARMAN: "spearman", KAPPA: "cohen's kappa"}
# Class-label pairs whose positive side is obvious; anything else needs calibration.pass_label.
KNOWN_PASS_LABELS = {
    "pass": "fail",
    "yes": "no",
    "true": "false",
    "correct": "incorrect",
    "good": "bad",
    "positive": "negative",
}


@dataclass(frozen=True)
class Calibration:
    """One judge metric's agreement with the gold labels of a partition.

    ``agreement`` is NaN when undefined, with ``reason`` saying why; ``cases`` counts the
    pairs it was computed over (valid judgements with a label).
    """

    metric: str
    method: str  # SPEARMAN or KAPPA
    agreement: float
    cases: int
    min_agreement: float
    reason: str | None = None

    @property
    def defined(self) -> bool:
        return not math.isnan(self.agreement)

    @property
    def calibrated(self) -> bool:
        """At or above the bar; an undefined agreement is never calibrated."""
        return self.defined and (
            self.agreement >= self.min_agreement or math.isclose(self.agreement, self.min_agreement)
        )

    def describe(self, decimals: int = 2) -> str:
        """``spearman 0.82 (n=30)``, or ``spearman undefined (n=1): <why>``."""
        shown = _SHOWN[self.method]
        if not self.defined:
            return f"{shown} undefined (n={self.cases}): {self.reason}"
        return f"{shown} {self.agreement:.{decimals}f} (n={self.cases})"

    def verdict(self, decimals: int = 2) -> str | None:
        """Why the metric is uncalibrated, or None when it is calibrated."""
        if self.calibrated:
            return None
        if not self.defined:
            return f"uncalibrated: agreement undefined ({self.reason})"
        return (
            f"uncalibrated: {_SHOWN[self.method]} {self.agreement:.{decimals}f} is below "
            f"the bar {self.min_agreement:.{decimals}f}"
        )

    def to_dict(self) -> dict:
        stored = asdict(self)
        stored["agreement"] = self.agreement if self.defined else None
        stored["calibrated"] = self.calibrated
        return stored


def _undefined_reason(pairs: int, judged: Sequence[object], gold: Sequence[object]) -> str | None:
    if pairs < 2:
        return f"fewer than two cases with both a valid judgement and a label ({pairs})"
    if len(set(judged)) < 2:
        return "the judge gave every case the same " + ("score" if _numbers(judged) else "verdict")
    if len(set(gold)) < 2:
        return "every label is the same"
    return None


def _numbers(values: Sequence[object]) -> bool:
    return all(isinstance(v, float) for v in values)


def spearman_agreement(
    metric: str, scores: Sequence[float], labels: Sequence[float], setting: CalibrationSetting
) -> Calibration:
    """Spearman's rho of the judge's valid scores with numeric gold labels."""
    pairs = [(float(s), float(y)) for s, y in zip(scores, labels, strict=True) if s == s]
    judged, gold = [s for s, _ in pairs], [y for _, y in pairs]
    reason = _undefined_reason(len(pairs), judged, gold)
    value = math.nan
    if reason is None:
        from scipy import stats

        value = float(stats.spearmanr(judged, gold).statistic)
    return Calibration(metric, SPEARMAN, value, len(pairs), setting.min_agreement, reason)


def pass_classes(labels: Sequence[str], pass_label: str | None) -> tuple[list[bool] | None, str]:
    """Each class label as pass (True) or fail, or None and why that cannot be decided."""
    stripped = [y.strip() for y in labels]
    if pass_label is not None:
        return [y == pass_label for y in stripped], ""
    seen = {y.lower() for y in stripped}
    for good, bad in KNOWN_PASS_LABELS.items():
        if seen <= {good, bad}:
            return [y.lower() == good for y in stripped], ""
    classes = ", ".join(sorted({*stripped})[:5])
    return None, (
        f"the class labels ({classes}) are not a pass/fail pair; set calibration.pass_label "
        "to the class a passing judgement stands for"
    )


def kappa_agreement(
    metric: str,
    scores: Sequence[float],
    labels: Sequence[str],
    pass_score: float,
    setting: CalibrationSetting,
) -> Calibration:
    """Cohen's kappa of the judge's pass/fail verdict (score >= ``pass_score``) with the
    label's pass/fail class."""
    gold_all, why = pass_classes(labels, setting.pass_label)
    valid = [(float(s), i) for i, s in enumerate(scores) if s == s]
    if gold_all is None:
        return Calibration(metric, KAPPA, math.nan, len(valid), setting.min_agreement, why)
    judged = [s >= pass_score or math.isclose(s, pass_score) for s, _ in valid]
    gold = [gold_all[i] for _, i in valid]
    reason = _undefined_reason(len(valid), judged, gold)
    value = math.nan
    if reason is None:
        from sklearn.metrics import cohen_kappa_score

        value = float(cohen_kappa_score(gold, judged))
    return Calibration(metric, KAPPA, value, len(valid), setting.min_agreement, reason)


def calibrate(
    metric: str,
    scores: Sequence[float],
    labels: Sequence[object],
    pass_score: float,
    setting: CalibrationSetting,
) -> Calibration | None:
    """The judge's agreement with ``labels``, or None when not every case carries a label
    (calibration is defined on a labelled suite only; one kind of label per suite)."""
    if not labels or any(y is None or (isinstance(y, float) and math.isnan(y)) for y in labels):
        return None
    if all(isinstance(y, str) for y in labels):
        return kappa_agreement(metric, scores, [str(y) for y in labels], pass_score, setting)
    numbers = [float(y) for y in labels if isinstance(y, SupportsFloat) and not isinstance(y, bool)]
    if len(numbers) != len(labels):
        return None  # a mix the suite loader refuses; nothing to compare
    return spearman_agreement(metric, scores, numbers, setting)
