"""LLM-judge scores in the shape of a metric, so `evaluation.yaml` can name a judge like any
other metric. The client is built from the metric's options (provider, model, timeout, retries,
rate limits) and uses the durable response cache, so re-scoring a partition costs no calls.

The metric registry (:mod:`flowstone.evaluation.metrics`) imports this module when a judge
metric runs; this module never imports the registry, so ``JudgedScores`` lives here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from flowstone.errors import FlowStoneError
from flowstone.evaluation.judges import METRICS as JUDGE_KINDS
from flowstone.evaluation.judges import Judgement, LLMJudge
from flowstone.llm.batch_api import BatchRequest
from flowstone.llm.batch_flow import BatchTarget, Ready, TargetFor, Waiting, plan_scope
from flowstone.llm.batch_store import BatchJob, BatchStore
from flowstone.llm.cache import cache_key
from flowstone.llm.config import ClientConfig, ProviderConfig
from flowstone.llm.errors import LLMError
from flowstone.llm.ratelimit import RateLimits
from flowstone.llm.retry import RetryPolicy

if TYPE_CHECKING:
    from flowstone.llm.client import LLMClient

#: The scope key that marks a recorded batch as a judge's (its value: the metric name). The
#: rest of the scope is the partition (suite, system), so the sensor launches the same
#: evaluation run for it as for a system's batch, and a predictions step never sees it.
JUDGE_SCOPE_KEY = "metric"
#: The judge options that build its client (the others say how to judge, or how to send).
CLIENT_OPTIONS = (
    "provider",
    "model",
    "base_url",
    "api_key",
    "max_attempts",
    "concurrency",
    "timeout_s",
    "retries",
    "requests_per_minute",
    "tokens_per_minute",
)


class JudgeProviderError(FlowStoneError):
    """The judge's provider failed after its retries (refused, timed out, 5xx, 401...).

    A bare ``LLMError`` names the provider but not which metric was judging; this names both,
    so the run's error says which `evaluation.yaml` entry to look at. ``cause`` is the
    ``LLMError`` (also chained as ``__cause__``).
    """

    def __init__(self, metric: str, provider: str, model: str, cause: BaseException):
        self.metric = metric
        self.provider = provider
        self.model = model
        self.cause = cause
        super().__init__(
            f"judge metric '{metric}': provider {provider}/{model} failed: {cause} (the judge's "
            f"provider, model, base_url, api_key, timeout_s and retries are options of "
            f"metrics.{metric} in evaluation.yaml)"
        )

    def __reduce__(self):
        # The default would call __init__ with the message alone (a process boundary would
        # turn the error into a TypeError).
        return (type(self), (self.metric, self.provider, self.model, self.cause))


class JudgedScores(list):
    """Scores from an LLM judge, one per case: the mean of the case's valid repeats, NaN when
    none was valid (never 0.0). ``replies`` holds, per case, the raw reply of a case none of
    whose repeats was valid (None otherwise); ``repeat_scores`` every repeat's score per case,
    in repeat order, NaN for an invalid one; ``cost_usd`` what all the judging cost."""

    def __init__(
        self,
        scores: list[float],
        replies: list[str | None],
        cost_usd: float = 0.0,
        repeat_scores: list[list[float]] | None = None,
    ):
        super().__init__(scores)
        self.replies = replies
        self.cost_usd = cost_usd
        self.repeat_scores = repeat_scores if repeat_scores is not None else [[s] for s in scores]

    @property
    def invalid(self) -> int:
        return sum(1 for s in self if s != s)  # NaN is the only value unequal to itself


def _score(judgement: Judgement) -> float:
    return judgement.score if judgement.valid and judgement.score is not None else math.nan


def _mean_of_valid(scores: Sequence[float]) -> float:
    valid = [s for s in scores if not math.isnan(s)]
    return sum(valid) / len(valid) if valid else math.nan


def _invalid_reply(repeats: Sequence[Judgement]) -> str | None:
    """What a reader sees for a case no repeat could score: the first repeat's raw reply (or
    why there was none); None when some repeat was valid."""
    if any(j.valid for j in repeats):
        return None
    return next((j.raw_reply for j in repeats if j.raw_reply), repeats[0].error or "")


@dataclass(frozen=True)
class JudgeSetup:
    """A judge metric's endpoint, client and judge, built one way for the online path, the
    batch submission and the sensor, so all three agree on the endpoint and the cache keys."""

    config: ProviderConfig
    client: LLMClient
    judge: LLMJudge


def build_judge(
    kind: str,
    *,
    provider: str = "anthropic",
    model: str = "claude-haiku-4-5",
    base_url: str | None = None,
    api_key: str | None = None,
    max_attempts: int = 3,
    concurrency: int = 4,
    timeout_s: float = 60.0,
    retries: int = 4,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
) -> JudgeSetup:
    """The judge of metric ``llm_<kind>`` on ``provider``/``model`` with the durable cache."""
    from flowstone.llm.client import LLMClient  # the SDK-backed client: loaded only to judge

    config = ProviderConfig(
        name=provider,
        kind=provider,
        model=model,
        base_url=base_url,
        api_key_ref=api_key,
        timeout_s=float(timeout_s),
        limits=RateLimits(
            requests_per_minute=requests_per_minute, tokens_per_minute=tokens_per_minute
        ),
        owner=f"judge llm_{kind}",
    )
    client = LLMClient(
        [config],
        ClientConfig(retry=RetryPolicy(max_attempts=retries + 1), max_concurrency=concurrency),
    )
    judge = LLMJudge(client, kind, max_attempts=max_attempts, concurrency=concurrency)
    return JudgeSetup(config, client, judge)


def client_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options of a judge metric's settings that :func:`build_judge` takes."""
    return {k: v for k, v in options.items() if k in CLIENT_OPTIONS}


def judge_scores(
    kind: str,
    predictions: Sequence[str],
    references: Sequence[str],
    contexts: Sequence[str | None] | None,
    *,
    repeats: int = 1,
    **client: Any,
) -> JudgedScores:
    """Scores per case from the judge :func:`build_judge` makes of ``client`` (its keyword
    options), each case judged ``repeats`` times (see :class:`JudgedScores`).

    ``retries`` are the client's retries of a transient provider failure after the first try;
    ``max_attempts`` is the judge's asking again after an unparseable reply. A provider that
    still fails raises :class:`JudgeProviderError` naming this metric. A judge in ``mode:
    batch`` comes here too, once its batch ended: every first attempt is then a cache hit.
    """
    metric = f"llm_{kind}"
    setup = build_judge(kind, **client)
    judge, config = setup.judge, setup.config
    ids = [f"case {i + 1}" for i in range(len(predictions))]
    try:
        rows = judge.judge_repeated(ids, predictions, references, contexts, repeats=repeats)
    except LLMError as exc:
        raise JudgeProviderError(metric, config.kind, config.model, exc) from exc
    repeat_scores = [[_score(j) for j in row] for row in rows]
    return JudgedScores(
        [_mean_of_valid(row) for row in repeat_scores],
        [_invalid_reply(row) for row in rows],
        sum(j.cost_usd for row in rows for j in row),
        repeat_scores,
    )


# -- mode: batch --------------------------------------------------------------------------------


def judge_batch_requests(
    setup: JudgeSetup,
    predictions: Sequence[str],
    references: Sequence[str],
    contexts: Sequence[str | None] | None,
    repeats: int = 1,
) -> list[BatchRequest]:
    """Every (case, repeat) first attempt the online judge would send, as a batch request
    whose custom id is the cache key that attempt looks up (endpoint, model, messages,
    params, repeat). Follow-ups after an unreadable reply depend on the reply, so they are
    never batched: they go online on the normal path."""
    contexts = list(contexts) if contexts is not None else [None] * len(predictions)
    config, judge = setup.config, setup.judge
    out = []
    for prediction, reference, context in zip(predictions, references, contexts, strict=True):
        if not judge.needs_call(context):
            continue
        messages = judge.first_messages(prediction, reference, context)
        for repeat in range(repeats):
            key = cache_key(config.endpoint, config.model, messages, judge.params, repeat)
            out.append(BatchRequest(key, tuple(messages), judge.params))
    return out


def plan_judge_batch(
    kind: str,
    predictions: Sequence[str],
    references: Sequence[str],
    contexts: Sequence[str | None] | None,
    scope: dict[str, str],
    options: Mapping[str, Any],
    store: BatchStore | None = None,
) -> Waiting | Ready:
    """Whether a batch judge's answers for the partition ``scope`` are all final, submitting
    those the response cache lacks as one batch when not (see ``batch_flow.plan_scope``).
    ``options`` are the metric's settings; a provider that refuses the batch raises
    :class:`JudgeProviderError` naming the metric."""
    metric = f"llm_{kind}"
    setup = build_judge(kind, **client_options(options))
    cache = setup.client.cache
    if cache is None:  # the judge's client always has one; a disabled cache cannot deliver
        raise JudgeProviderError(
            metric,
            setup.config.name,
            setup.config.model,
            LLMError("mode batch delivers its answers through the response cache, which is off"),
        )
    requests = judge_batch_requests(
        setup, predictions, references, contexts, int(options.get("repeats", 1))
    )
    try:
        return plan_scope(
            store or BatchStore(),
            {**scope, JUDGE_SCOPE_KEY: metric},
            metric,
            setup.config,
            requests,
            cache,
        )
    except LLMError as exc:
        raise JudgeProviderError(metric, setup.config.name, setup.config.model, exc) from exc


def is_judge_batch(job: BatchJob) -> bool:
    """Whether a recorded batch was submitted by a judge (not by a system)."""
    return JUDGE_SCOPE_KEY in job.scope


def judge_batch_target(job: BatchJob, options: Mapping[str, Any]) -> BatchTarget | None:
    """Where a judge batch's answers go, from its metric's current ``options``: None when the
    judge now names another endpoint (its answers would fill keys no one looks up)."""
    kind = job.scope[JUDGE_SCOPE_KEY].removeprefix("llm_")
    setup = build_judge(kind, **client_options(options))
    cache = setup.client.cache
    if cache is None or setup.config.endpoint != job.endpoint:
        return None
    return BatchTarget(setup.config, cache, setup.client.prices)


class _SuiteSettings(Protocol):
    @property
    def metrics(self) -> Mapping[str, Any]: ...  # name -> MetricSetting (its ``options``)


class _Settings(Protocol):
    """``config.EvaluationSettings`` as this module reads it (config imports the metric
    registry, which loads this module: naming it here would make an import circle)."""

    def for_suite(self, suite: str) -> _SuiteSettings: ...


def judge_batch_targets(settings: _Settings) -> TargetFor:
    """For the batch sensor: where a recorded judge batch's answers go, from the judge
    metric's current settings for the batch's suite (None when it is gone or moved)."""

    def target(job: BatchJob) -> BatchTarget | None:
        metric = job.scope.get(JUDGE_SCOPE_KEY, "")
        setting = settings.for_suite(job.scope.get("suite", "")).metrics.get(metric)
        if setting is None or metric.removeprefix("llm_") not in JUDGE_KINDS:
            return None
        return judge_batch_target(job, setting.options)

    return target
