"""What happens to a partition's batch: submitted by its step, advanced by the sensor.

Why two halves: no process may wait on a batch (it can take 24 hours). The step calls
:func:`plan_scope` and either finds every answer final (then it materializes, from the cache,
retrying online only what the batch could not answer) or submits what is missing and ends.
The sensor calls :func:`advance_batches` on each tick: it reads every pending batch's state,
fills the response cache from the ones that ended (priced at the batch price), sends expired
requests again once, reports a second expiry or a refused batch, and says which partitions
are ready for the run that materializes them.

A ``scope`` is the caller's name for a partition (``{"suite": ..., "system": ...}``); an
``owner`` names whose provider a batch goes to. This module knows neither suites nor systems.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from flowstone.llm.batch_api import BatchAPI, BatchRequest, BatchStatus, batch_api_for
from flowstone.llm.batch_store import BatchJob, BatchStore
from flowstone.llm.cache import ResponseCache
from flowstone.llm.config import ProviderConfig
from flowstone.llm.errors import LLMError
from flowstone.llm.pricing import PriceTable, batch_price
from flowstone.llm.redaction import get_logger
from flowstone.storage.sql import utcnow

log = get_logger(__name__)

#: How many times a batch's expired requests are submitted in all: once, then once again.
MAX_ATTEMPTS = 2


@dataclass(frozen=True)
class BatchTarget:
    """Where a batch's results go: the endpoint it was sent to, the response cache its
    answers fill and the prices its cost is computed from."""

    provider: ProviderConfig
    cache: ResponseCache
    prices: PriceTable


#: The target of a recorded batch, from its owner; None when the owner is gone from the config.
TargetFor = Callable[[BatchJob], "BatchTarget | None"]
ApiFor = Callable[[ProviderConfig], BatchAPI]


# -- the step ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Waiting:
    """The partition waits on ``jobs`` (one of them perhaps just submitted)."""

    jobs: tuple[BatchJob, ...]
    submitted: BatchJob | None = None
    cancelled: tuple[BatchJob, ...] = ()


@dataclass(frozen=True)
class Ready:
    """Every request is answered, or was settled by ``jobs`` (whose errors go online now)."""

    jobs: tuple[BatchJob, ...] = ()


def plan_scope(
    store: BatchStore,
    scope: dict[str, str],
    owner: str,
    provider: ProviderConfig,
    requests: Sequence[BatchRequest],
    cache: ResponseCache,
    api_for: ApiFor = batch_api_for,
) -> Waiting | Ready:
    """Whether the partition ``scope`` can be materialized now, submitting what it lacks.

    A request is missing when its answer is not in the cache. Missing requests that a pending
    batch carries wait for it; those a collected batch settled (it errored there) are retried
    online by the caller; the rest go out as one new batch. A pending batch that carries none
    of the missing requests any more (the prompts changed) is cancelled.
    """
    missing = {r.custom_id for r in requests if cache.get(r.custom_id) is None}
    open_jobs = store.for_scope(scope, ("pending", "collected"))
    pending = [j for j in open_jobs if j.state == "pending"]
    collected = tuple(j for j in open_jobs if j.state == "collected")
    cancelled = []
    for job in pending:
        if not job.custom_ids & missing:
            cancelled.append(cancel_job(store, job, provider, api_for, "the prompts changed"))
    pending = [j for j in pending if j.custom_ids & missing]
    covered = set().union(*(j.custom_ids for j in pending), *(j.settled for j in collected))
    uncovered = [r for r in requests if r.custom_id in missing - covered]
    unique = list({r.custom_id: r for r in uncovered}.values())
    if not unique:
        return Waiting(tuple(pending), None, tuple(cancelled)) if pending else Ready(collected)
    batch_id = api_for(provider).submit(unique)
    job = BatchJob(batch_id, owner, scope, provider.name, provider.endpoint, tuple(unique))
    store.add(job)
    log.info("submitted %s to %s", job.describe(), provider.name)
    return Waiting((*pending, job), job, tuple(cancelled))


def cancel_job(
    store: BatchStore, job: BatchJob, provider: ProviderConfig, api_for: ApiFor, why: str
) -> BatchJob:
    """Cancel ``job`` at the provider (its answers would be for requests no one asks now)."""
    try:
        api_for(provider).cancel(job.batch_id)
    except LLMError as exc:  # it ended meanwhile, or the provider is away: the record still goes
        log.warning("could not cancel %s: %s", job.describe(), exc)
    return store.set_state(job, "cancelled", f"cancelled: {why}")


# -- the sensor -------------------------------------------------------------------------------
@dataclass
class TickReport:
    """What one sensor tick did, for its log and for the runs it launches."""

    in_progress: list[tuple[BatchJob, BatchStatus | str]] = field(default_factory=list)
    collected: list[BatchJob] = field(default_factory=list)
    resubmitted: list[tuple[BatchJob, BatchJob]] = field(default_factory=list)
    failed: list[BatchJob] = field(default_factory=list)
    ready: list[tuple[dict[str, str], tuple[BatchJob, ...]]] = field(default_factory=list)


def advance_batches(
    store: BatchStore, target_for: TargetFor, api_for: ApiFor = batch_api_for
) -> TickReport:
    """Poll every pending batch once and move it on; then list the partitions that are ready
    (their newest batch is collected and none is pending)."""
    report = TickReport()
    touched: dict[str, dict[str, str]] = {}
    for job in store.in_states(("pending",)):
        touched[_scope_id(job.scope)] = job.scope
        target = target_for(job)
        if target is None:
            failed = store.set_state(
                job,
                "failed",
                f"{job.describe()}: system '{job.owner}' or its provider {job.provider} is no "
                "longer configured here; its answers were not collected",
            )
            report.failed.append(failed)
            continue
        _advance(store, job, target, api_for(target.provider), report)
    for job in store.in_states(("collected",)):
        touched[_scope_id(job.scope)] = job.scope
    for scope in touched.values():
        jobs = [j for j in store.for_scope(scope) if j.state != "cancelled"]
        if not jobs or any(j.state == "pending" for j in jobs):
            continue
        if jobs[-1].state == "collected":  # newest first a failure: reported, no run
            report.ready.append((scope, tuple(j for j in jobs if j.state == "collected")))
    return report


def _advance(
    store: BatchStore, job: BatchJob, target: BatchTarget, api: BatchAPI, report: TickReport
) -> None:
    try:
        status = api.status(job.batch_id)
        if status.state == "in_progress":
            report.in_progress.append((job, status))
            return
        if status.state == "failed":
            report.failed.append(
                store.set_state(
                    job,
                    "failed",
                    f"{job.describe()} was refused by {job.provider}: {status.detail}. "
                    "Rematerialize the partition to submit it again.",
                )
            )
            return
        results = api.results(job.batch_id, job.custom_ids)
    except LLMError as exc:  # the provider is away: the batch is still there next tick
        log.warning("could not poll %s: %s", job.describe(), exc)
        report.in_progress.append((job, f"poll failed: {exc}"))
        return
    ended = _collect(job, results, target)
    if not results.expired:
        report.collected.append(store.set_state(ended, "collected"))
        return
    if job.attempt >= MAX_ATTEMPTS:
        first = store.get(job.replaces) if job.replaces else None
        ids = ", ".join(b.batch_id for b in (first, job) if b is not None)
        report.failed.append(
            store.set_state(
                ended,
                "failed",
                f"{len(results.expired)} of {len(job.requests)} requests expired twice "
                f"unprocessed (batches {ids}, system '{job.owner}'): the provider did not get "
                "to them within its 24 h window and they are not sent again on their own. "
                "Rematerialize the partition to submit them again, or set the system's mode "
                "to online.",
            )
        )
        return
    again = [r for r in job.requests if r.custom_id in results.expired]
    try:
        batch_id = api.submit(again)
    except LLMError as exc:
        report.failed.append(
            store.set_state(
                ended,
                "failed",
                f"{len(again)} requests of {job.describe()} expired and could not be sent "
                f"again: {exc}. Rematerialize the partition to submit them again.",
            )
        )
        return
    retry = BatchJob(
        batch_id,
        job.owner,
        job.scope,
        job.provider,
        job.endpoint,
        tuple(again),
        attempt=job.attempt + 1,
        replaces=job.batch_id,
    )
    store.add(retry)
    old = store.set_state(
        ended,
        "collected",
        f"{len(again)} requests expired; sent again as batch {batch_id}",
    )
    report.resubmitted.append((old, retry))


def _collect(job: BatchJob, results, target: BatchTarget) -> BatchJob:
    """Price each answer at the batch price and put it in the response cache under its
    request's key, so the run that materializes the partition (and every rerun) reads it."""
    cost = 0.0
    input_tokens = output_tokens = 0
    kind = target.provider.kind
    for custom_id, completion in results.completions.items():
        price = target.prices.lookup(completion.model) or target.prices.lookup(
            target.provider.model
        )
        if price is None:
            target.prices.cost(target.provider.model, 0, 0)  # logs the missing price once
            priced = completion
        else:
            priced = completion.with_cost(
                batch_price(kind, price).cost(completion.input_tokens, completion.output_tokens)
            )
        target.cache.put(custom_id, priced)
        cost += priced.cost_usd
        input_tokens += priced.input_tokens
        output_tokens += priced.output_tokens
    for custom_id, why in results.errored.items():
        log.warning("%s: request %s failed in the batch: %s", job.describe(), custom_id, why)
    return replace(
        job,
        answered=tuple(sorted(results.completions)),
        errored=tuple(sorted(results.errored)),
        expired=tuple(sorted(results.expired)),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_usd=cost,
        ended_at=utcnow(),
    )


def _scope_id(scope: dict[str, str]) -> str:
    return "|".join(f"{k}={v}" for k, v in sorted(scope.items()))
