"""What repeated answers and repeated judgements say about a partition.

A system that samples (an LLM at temperature > 0) gives a different answer on each try, and a
judge a different score: one run's mean hides how much of it is luck. With ``repeats: N`` every
case is answered (or judged) N times; the case's score is its mean over the repeats, and this
module reports how far the repeats spread and which cases change their pass/fail verdict from
one repeat to the next: the cases whose result a single run cannot be trusted on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd


def repeats_column(metric: str) -> str:
    """The scores column holding each case's per-repeat scores of ``metric`` (a list)."""
    return f"{metric}_repeats"


def agreement_column(metric: str) -> str:
    return f"{metric}_judge_agreement"


def judge_spread_column(metric: str) -> str:
    return f"{metric}_judge_spread"


@dataclass(frozen=True)
class RepeatSummary:
    """One metric over a system's repeats: ``spread`` is the mean over cases of the standard
    deviation of a case's repeat scores; ``flipped`` the cases some repeats pass and some fail
    (at the metric's pass score)."""

    metric: str
    repeats: int
    spread: float
    flipped: tuple[str, ...]

    def to_dict(self) -> dict:
        return {**asdict(self), "flipped": list(self.flipped)}

    def describe(self) -> str:
        flips = f"{len(self.flipped)} case(s) flip" if self.flipped else "no case flips"
        return f"{self.repeats} repeats, spread ±{self.spread:.3f}, {flips}"


@dataclass(frozen=True)
class JudgeAgreement:
    """A judge metric over its own repeats: ``agreement`` is the share of judged answers
    whose valid judge repeats all give the same pass/fail verdict (1.0: the judge never
    changes its mind), ``spread`` the mean standard deviation of an answer's judge scores.
    ``cases`` counts the cases with an answer that had two valid judgements or more."""

    metric: str
    agreement: float
    spread: float
    cases: int

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"{self.agreement:.0%} of answers judged the same on every repeat, over "
            f"{self.cases} cases "
            f"(spread ±{self.spread:.3f})"
        )


def verdicts_agree(scores: Sequence[float], pass_score: float) -> float:
    """1.0 when every valid score gives the same pass/fail verdict, 0.0 when they differ,
    NaN with fewer than two valid scores (nothing to agree on)."""
    valid = [s for s in scores if s == s]
    if len(valid) < 2:
        return math.nan
    return float(len({s >= pass_score for s in valid}) == 1)


def spread_of(scores: Sequence[float]) -> float:
    """The standard deviation of the valid scores (NaN with fewer than two)."""
    valid = [s for s in scores if s == s]
    return float(np.std(valid)) if len(valid) >= 2 else math.nan


def repeat_summary(scores: pd.DataFrame, metric: str, pass_score: float) -> RepeatSummary | None:
    """The metric's spread and flips over the system's repeats; None with one answer a case."""
    column = repeats_column(metric)
    if column not in scores.columns:
        return None
    per_case = [list(map(float, values)) for values in scores[column]]
    if not per_case or max(len(values) for values in per_case) < 2:
        return None
    spreads = [spread_of(values) for values in per_case]
    known = [s for s in spreads if s == s]
    flipped = tuple(
        str(case)
        for case, values in zip(scores["case_id"], per_case, strict=True)
        if verdicts_agree(values, pass_score) == 0.0
    )
    return RepeatSummary(
        metric=metric,
        repeats=max(len(values) for values in per_case),
        spread=float(np.mean(known)) if known else math.nan,
        flipped=flipped,
    )


def judge_agreement(scores: pd.DataFrame, metric: str) -> JudgeAgreement | None:
    """The judge metric's agreement with itself over its repeats; None without judge repeats
    or when no answer had two readable judgements."""
    column = agreement_column(metric)
    if column not in scores.columns:
        return None
    agreement = scores[column].to_numpy(dtype=float)
    spread = scores[judge_spread_column(metric)].to_numpy(dtype=float)
    known = ~np.isnan(agreement)
    if not known.any():
        return None
    return JudgeAgreement(
        metric=metric,
        agreement=float(agreement[known].mean()),
        spread=float(np.nanmean(spread[known])) if (~np.isnan(spread[known])).any() else math.nan,
        cases=int(known.sum()),
    )
