"""What changed case by case between two materializations of one suite x system partition.

Why its own module: "which cases got worse since the last run, and what did the system say
instead?" is the question a mean cannot answer. Plain functions over the stored answers of
two kept versions of ``evaluation/scores`` (see ``flowstone.storage.versions``), so the page
and its tests share one decision of what counts as changed, newly failing or new.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from flowstone.web.records import SystemAnswer

Status = Literal["changed", "unchanged", "added", "removed"]
STATUSES: tuple[Status, ...] = ("changed", "added", "removed", "unchanged")
SORTS = {"drop": "largest drop first", "id": "suite order"}
_WORDS = re.compile(r"\s+|[^\s]+")


@dataclass(frozen=True)
class ScoreChange:
    """One metric on one case, before and after."""

    metric: str
    previous: float | None
    current: float | None
    previous_passed: bool | None
    current_passed: bool | None

    @property
    def delta(self) -> float | None:
        if self.previous is None or self.current is None:
            return None
        return self.current - self.previous

    @property
    def changed(self) -> bool:
        if self.previous is None or self.current is None:
            return (self.previous is None) != (self.current is None)
        return not math.isclose(self.previous, self.current, abs_tol=1e-12)

    @property
    def verdict(self) -> str:
        """'newly failing', 'newly passing' or '' (same verdict, or no pass score)."""
        if self.previous_passed is True and self.current_passed is False:
            return "newly failing"
        if self.previous_passed is False and self.current_passed is True:
            return "newly passing"
        return ""


@dataclass(frozen=True)
class Segment:
    """A run of words of the output diff: kept ('equal'), gone ('delete') or new ('insert')."""

    op: Literal["equal", "delete", "insert"]
    text: str


@dataclass(frozen=True)
class CaseChange:
    case_id: str
    status: Status
    previous: SystemAnswer | None
    current: SystemAnswer | None
    scores: tuple[ScoreChange, ...]

    @property
    def output_changed(self) -> bool:
        return (
            self.previous is not None
            and self.current is not None
            and self.previous.output != self.current.output
        )

    @property
    def worst_delta(self) -> float:
        """The largest drop of any metric (negative), or 0.0; sorts the worst case first."""
        deltas = [s.delta for s in self.scores if s.delta is not None]
        return min(deltas, default=0.0)

    @property
    def newly_failing(self) -> list[str]:
        return [s.metric for s in self.scores if s.verdict == "newly failing"]

    @property
    def newly_passing(self) -> list[str]:
        return [s.metric for s in self.scores if s.verdict == "newly passing"]

    def score(self, metric: str) -> ScoreChange | None:
        return next((s for s in self.scores if s.metric == metric), None)

    def output_diff(self) -> list[Segment]:
        """Word-level diff of the two outputs, whitespace kept, so a person sees the edit."""
        before = _WORDS.findall(self.previous.output if self.previous else "")
        after = _WORDS.findall(self.current.output if self.current else "")
        segments: list[Segment] = []
        matcher = difflib.SequenceMatcher(a=before, b=after, autojunk=False)
        for op, i1, i2, j1, j2 in matcher.get_opcodes():
            if op == "equal":
                segments.append(Segment("equal", "".join(before[i1:i2])))
                continue
            if i2 > i1:
                segments.append(Segment("delete", "".join(before[i1:i2])))
            if j2 > j1:
                segments.append(Segment("insert", "".join(after[j1:j2])))
        return segments


def _passes(answer: SystemAnswer | None, metric: str, pass_score: float | None) -> bool | None:
    return answer.passes(metric, pass_score) if answer is not None else None


def diff_cases(
    previous: Mapping[str, SystemAnswer],
    current: Mapping[str, SystemAnswer],
    metrics: Sequence[str],
    pass_scores: Mapping[str, float | None],
    order: Sequence[str] = (),
) -> list[CaseChange]:
    """Every case of either materialization, in ``order`` (the suite's), then any others.

    A case is 'changed' when its output or any metric's score differs; an invalid judgement
    (None) against a score counts as a change, never as 0.0."""
    ids = list(dict.fromkeys([*order, *current, *previous]))
    ids = [i for i in ids if i in current or i in previous]
    changes = []
    for case_id in ids:
        before, after = previous.get(case_id), current.get(case_id)
        scores = tuple(
            ScoreChange(
                metric=m,
                previous=before.scores.get(m) if before else None,
                current=after.scores.get(m) if after else None,
                previous_passed=_passes(before, m, pass_scores.get(m)),
                current_passed=_passes(after, m, pass_scores.get(m)),
            )
            for m in metrics
        )
        status: Status
        if before is None:
            status = "added"
        elif after is None:
            status = "removed"
        elif before.output != after.output or any(s.changed for s in scores):
            status = "changed"
        else:
            status = "unchanged"
        changes.append(CaseChange(case_id, status, before, after, scores))
    return changes


@dataclass(frozen=True)
class CaseDiffFilter:
    """The diff page's query parameters, so a filtered diff is a link."""

    metric: str
    show: str = "changed"  # changed, newly_failing or all
    sort: str = "drop"

    def apply(self, changes: Sequence[CaseChange]) -> list[CaseChange]:
        rows = list(changes)
        if self.show == "changed":
            rows = [c for c in rows if c.status != "unchanged"]
        elif self.show == "newly_failing":
            rows = [c for c in rows if c.newly_failing]
        if self.sort == "drop":
            rows.sort(key=lambda c: _delta_or_zero(c.score(self.metric)))
        return rows

    def query(self, **changes: str) -> dict[str, str]:
        values = {"metric": self.metric, "show": self.show, "sort": self.sort}
        values.update(changes)
        return {k: v for k, v in values.items() if v}


def _delta_or_zero(change: ScoreChange | None) -> float:
    delta = change.delta if change is not None else None
    return 0.0 if delta is None else delta


def counts(changes: Sequence[CaseChange]) -> dict[str, int]:
    """Cases per status, plus how many newly fail or newly pass any metric."""
    out: dict[str, int] = {s: sum(c.status == s for c in changes) for s in STATUSES}
    out["newly failing"] = sum(bool(c.newly_failing) for c in changes)
    out["newly passing"] = sum(bool(c.newly_passing) for c in changes)
    return out
