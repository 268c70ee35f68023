"""Non-inferiority of a baked embedding model on task suites: what ``bake_quality``'s task gate
decides.

Why on the task and not only fidelity: a user decides on what the model does in their
evaluation, so each named suite is run the way the embedding-backed parts of the evaluation run
it, once with the original and once with the baked model: the dense nearest-sentence system
answers (a one-sentence input is its own answer) and ``embedding_similarity`` scores the answer
against the best reference, both by the model under test. The per-case differences (baked minus
original) are paired, and the baked model is non-inferior on a suite when the lower bound of the
one-sided ``confidence`` interval of their mean stays above ``-margin`` (a percentile paired
bootstrap: the two-sided interval at ``2 * confidence - 1``, seeded).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from flowstone.baking.artifacts import Artifact
from flowstone.baking.config import BakeConfig, TaskGate
from flowstone.baking.recipe_gate import ExtraGate
from flowstone.baking.records.bake import BakeRecord
from flowstone.baking.records.source import SourceRecord
from flowstone.baking.registry import ModelRef, ResolvedModel
from flowstone.cases import Case


@dataclass(frozen=True)
class SuiteVerdict:
    suite: str
    cases: int
    mean_original: float
    mean_baked: float
    difference: float  # mean of baked - original
    lower_bound: float  # one-sided, at the gate's confidence
    passed: bool


@dataclass(frozen=True)
class TaskGateResult:
    metric: str
    margin: float
    confidence: float
    suites: tuple[SuiteVerdict, ...]

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.suites)

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "margin": self.margin, "confidence": self.confidence,
                "suites": [asdict(s) for s in self.suites], "passed": self.passed}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskGateResult:
        return cls(data["metric"], data["margin"], data["confidence"],
                   tuple(SuiteVerdict(**s) for s in data["suites"]))  # fmt: skip

    def description(self) -> str:
        parts = [
            f"{s.suite}: {s.difference:+.4f} (one-sided {self.confidence:.0%} lower bound "
            f"{s.lower_bound:+.4f} vs -{self.margin:g}) {'ok' if s.passed else 'INFERIOR'}"
            for s in self.suites
        ]
        head = "non-inferior" if self.passed else "inferior"
        return f"baked {head} on {len(self.suites)} task suite(s): " + "; ".join(parts)

    def metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task_gate/margin": self.margin,
                               "task_gate/confidence": self.confidence}  # fmt: skip
        for s in self.suites:
            out[f"task/{s.suite}/original"] = round(s.mean_original, 4)
            out[f"task/{s.suite}/baked"] = round(s.mean_baked, 4)
            out[f"task/{s.suite}/difference"] = round(s.difference, 5)
            out[f"task/{s.suite}/lower_bound"] = round(s.lower_bound, 5)
        out["task_gate"] = "passed" if self.passed else "failed"
        return out


def case_scores(cases: list[Case], model: ResolvedModel) -> list[float]:
    """Each case's ``embedding_similarity`` of the dense nearest-sentence answer, by ``model``."""
    import numpy as np

    from flowstone import embedders
    from flowstone.systems.retrieval import candidate_sentences

    scores = []
    for case in cases:
        candidates = candidate_sentences(case)
        if len(candidates) == 1:
            answer = candidates[0]
        else:
            vectors = embedders.encode([case.input, *candidates], model=model)
            answer = candidates[int(np.argmax(vectors[1:] @ vectors[0]))]
        vectors = embedders.encode([answer, *case.references], model=model)
        scores.append(float(np.max(vectors[1:] @ vectors[0])))
    return scores


def decide(suite: str, before: Sequence[float], after: Sequence[float],
           gate: TaskGate) -> SuiteVerdict:  # fmt: skip
    """Non-inferiority of ``after`` (baked) against ``before`` (original), scores per case in
    the same order: the one-sided lower confidence bound of the mean difference must stay
    above ``-gate.margin``."""
    import numpy as np

    from flowstone.evaluation.statistics import bootstrap_ci

    diff = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    interval = bootstrap_ci(diff, level=2 * gate.confidence - 1, seed=0,
                            what=f"{suite}: baked - original")  # fmt: skip
    return SuiteVerdict(
        suite=suite, cases=int(diff.size), mean_original=float(np.mean(before)),
        mean_baked=float(np.mean(after)), difference=float(diff.mean()),
        lower_bound=interval.low, passed=bool(interval.low > -gate.margin),
    )  # fmt: skip


def task_gate(original: ResolvedModel, baked: ResolvedModel, gate: TaskGate,
              *, log: Any = None) -> TaskGateResult:  # fmt: skip
    """Run every suite of ``gate`` with both models and decide non-inferiority per suite."""
    from flowstone.baking.config import known_suites
    from flowstone.evaluation.suites import load_suite

    paths = known_suites()
    verdicts = []
    for name in gate.suites:
        cases = list(load_suite(paths[name], name).cases)
        verdict = decide(name, case_scores(cases, original), case_scores(cases, baked), gate)
        verdicts.append(verdict)
        if log:
            log(f"task suite {name}: original {verdict.mean_original:.4f}, baked "
                f"{verdict.mean_baked:.4f}, difference {verdict.difference:+.5f}, lower bound "
                f"{verdict.lower_bound:+.5f} (margin {gate.margin:g})")  # fmt: skip
    return TaskGateResult(gate.metric, gate.margin, gate.confidence, tuple(verdicts))


def under_test(source: SourceRecord, baked: BakeRecord) -> tuple[ResolvedModel, ResolvedModel]:
    """The original and the baked variant as resolved models: the bake under test is not yet
    what ``baked:NAME`` points to (that happens once it is packaged)."""
    original = _original(source)
    return original, ResolvedModel(original.ref, source.version, baked.sha256, baked.artifact)


def _original(source: SourceRecord) -> ResolvedModel:
    return ResolvedModel(ModelRef("baked", source.model), f"{source.version}-original", None,
                         source.original)  # fmt: skip


def search_gate(source: SourceRecord, config: BakeConfig) -> ExtraGate | None:
    """The task suites as a gate on every recipe candidate (``recipe: auto`` keeps the fastest
    that passes all the quality gates), or None when the config names no task suite."""
    if not config.task_gate.suites or config.recipe != "auto":
        return None
    original = _original(source)

    def check(artifact: Artifact) -> tuple[bool, str]:
        candidate = ResolvedModel(original.ref, f"candidate:{artifact.path}", None, artifact)
        result = task_gate(original, candidate, config.task_gate)
        return result.passed, result.description()

    return ExtraGate(f"task_gate:{config.task_gate.as_dict()}", check)
