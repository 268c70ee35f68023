"""Prompt-template systems in ``mode: batch``: their partitions through a provider batch API.

Why here: turning a suite into batch requests needs the system (its templates, its provider
chain, its response cache); everything about batches themselves is in ``flowstone.llm``.
:func:`predict_or_submit` is the predictions step of a batch system: either every answer is
final (in the cache, or settled by an ended batch) and the system predicts as usual, from
the cache, retrying online what the batch could not answer, or what is missing goes out as
one batch and the step reports :class:`PendingBatch` instead of predictions.
:func:`batch_targets` tells the sensor where a recorded batch's answers go.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TypeGuard

from flowstone.cases import Case
from flowstone.errors import SystemUnderTestError
from flowstone.llm.batch_api import BatchRequest
from flowstone.llm.batch_flow import BatchTarget, Ready, TargetFor, Waiting, plan_scope
from flowstone.llm.batch_store import BatchJob, BatchStore
from flowstone.llm.cache import cache_key
from flowstone.llm.errors import LLMError
from flowstone.llm.types import as_messages
from flowstone.systems.base import Prediction, Progress, System
from flowstone.systems.prompt_template import PromptTemplateSystem


@dataclass(frozen=True)
class PendingBatch:
    """The step's outcome while the provider works: which batches the partition waits on."""

    jobs: tuple[BatchJob, ...]
    submitted: BatchJob | None
    cancelled: tuple[BatchJob, ...] = ()

    def metadata(self) -> dict[str, object]:
        """What the partition shows while it waits (an observation in the UI)."""
        requests = sum(len(j.requests) for j in self.jobs)
        oldest = min(j.submitted_at for j in self.jobs)
        return {
            "llm_batch": "submitted" if self.submitted else "waiting",
            "llm_batch_ids": ", ".join(j.batch_id for j in self.jobs),
            "llm_batch_requests": requests,
            "llm_batch_provider": self.jobs[0].provider,
            "llm_batch_submitted_at": oldest.isoformat(timespec="seconds"),
            **(
                {"llm_batch_cancelled": ", ".join(j.batch_id for j in self.cancelled)}
                if self.cancelled
                else {}
            ),
            "next": "llm_batch_sensor launches the run that materializes this partition once "
            "the provider ended the batch (within 24 h)",
        }


@dataclass(frozen=True)
class BatchAnswers:
    """Predictions of a batch system, with what its ended batches answered and cost."""

    predictions: list[Prediction]
    jobs: tuple[BatchJob, ...]

    def metadata(self) -> dict[str, object]:
        if not self.jobs:
            return {"llm_mode": "batch"}
        return {
            "llm_mode": "batch",
            "llm_batch_ids": ", ".join(j.batch_id for j in self.jobs),
            "llm_batch_answers": sum(len(j.answered) for j in self.jobs),
            "llm_batch_errored": sum(len(j.errored) for j in self.jobs),
            "llm_batch_cost_usd": round(sum(j.cost_usd for j in self.jobs), 6),
        }


def is_batch_system(system: System) -> TypeGuard[PromptTemplateSystem]:
    """Whether ``system`` answers through a provider batch API (``mode: batch``)."""
    return isinstance(system, PromptTemplateSystem) and system.mode == "batch"


def batch_requests(
    system: PromptTemplateSystem, cases: Sequence[Case], suite: str | None
) -> list[tuple[int, Case, BatchRequest]]:
    """Every repeat of every case as a batch request to the system's first provider; the
    custom id is the response-cache key the online path looks that request up by."""
    provider = system.spec.providers[0]
    params = system.spec.params
    out = []
    for repeat in range(system.repeats):
        for case in cases:
            messages = as_messages(system.render(case, suite))
            key = cache_key(provider.endpoint, provider.model, messages, params, repeat)
            out.append((repeat, case, BatchRequest(key, messages, params)))
    return out


def predict_or_submit(
    system: PromptTemplateSystem,
    cases: Sequence[Case],
    scope: dict[str, str],
    *,
    suite: str | None = None,
    progress: Progress | None = None,
    store: BatchStore | None = None,
) -> PendingBatch | BatchAnswers:
    """The predictions of a batch system's partition, or the batch it now waits on."""
    system.check_keys()
    cache = system.client.cache
    if cache is None:  # refused at load; a system built in code may still get here
        raise SystemUnderTestError(
            f"system '{system.name}': mode batch needs the response cache; turn it on"
        )
    store = store or BatchStore()
    items = batch_requests(system, cases, suite)
    try:
        plan = plan_scope(
            store,
            scope,
            system.name,
            system.spec.providers[0],
            [request for _, _, request in items],
            cache,
        )
    except LLMError as exc:
        raise SystemUnderTestError(
            f"system '{system.name}': the batch could not be submitted: {exc}"
        ) from exc
    if isinstance(plan, Waiting):
        return PendingBatch(plan.jobs, plan.submitted, plan.cancelled)
    predictions = system.predict(cases, progress, suite=suite)
    answers = _batch_priced(predictions, items, plan, cache)
    for job in plan.jobs:
        store.set_state(job, "consumed")
    return BatchAnswers(answers, plan.jobs)


def _batch_priced(
    predictions: list[Prediction],
    items: list[tuple[int, Case, BatchRequest]],
    plan: Ready,
    cache,
) -> list[Prediction]:
    """The answers the partition's ended batches gave, read from the cache (where they cost
    nothing), carry what the batch cost instead and count as answered now, not as cache hits:
    this materialization is the one that paid for them. Reruns see plain cache hits."""
    answered = set().union(*(j.answered for j in plan.jobs)) if plan.jobs else set()
    if not answered:
        return predictions
    key_of = {(r, case.id): request.custom_id for r, case, request in items}
    out = []
    for p in predictions:
        key = key_of.get((p.repeat, p.case_id))
        stored = cache.get(key) if key in answered and p.cached else None
        out.append(replace(p, cost_usd=stored.cost_usd, cached=False) if stored else p)
    return out


def batch_targets(systems: Iterable[System]) -> TargetFor:
    """For the sensor: a recorded batch's endpoint, cache and prices, from its system."""
    by_name = {s.name: s for s in systems if isinstance(s, PromptTemplateSystem)}

    def target(job: BatchJob) -> BatchTarget | None:
        system = by_name.get(job.owner)
        if system is None or system.client.cache is None:
            return None
        provider = next((p for p in system.spec.providers if p.endpoint == job.endpoint), None)
        if provider is None:  # the system now names another endpoint: not ours to poll
            return None
        return BatchTarget(provider, system.client.cache, system.client.prices)

    return target
