"""LLM-judge scores in the shape of a metric, so `evaluation.yaml` can name a judge like any
other metric. The client is built from the metric's options (provider, model, timeout, retries,
rate limits) and uses the durable response cache, so re-scoring a partition costs no calls.

The metric registry (:mod:`flowstone.evaluation.metrics`) imports this module when a judge
metric runs; this module never imports the registry, so ``JudgedScores`` lives here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from flowstone.errors import FlowStoneError
from flowstone.evaluation.judges import Judgement, LLMJudge
from flowstone.llm.config import ClientConfig, ProviderConfig
from flowstone.llm.errors import LLMError
from flowstone.llm.ratelimit import RateLimits
from flowstone.llm.retry import RetryPolicy


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


def judge_scores(
    kind: str,
    predictions: Sequence[str],
    references: Sequence[str],
    contexts: Sequence[str | None] | None,
    *,
    provider: str,
    model: str,
    base_url: str | None = None,
    api_key: str | None = None,
    max_attempts: int = 3,
    concurrency: int = 4,
    timeout_s: float = 60.0,
    retries: int = 4,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
    repeats: int = 1,
) -> JudgedScores:
    """Scores per case from a judge built on ``provider``/``model``, each case judged
    ``repeats`` times (see :class:`JudgedScores`).

    ``retries`` are the client's retries of a transient provider failure after the first try;
    ``max_attempts`` is the judge's asking again after an unparseable reply. A provider that
    still fails raises :class:`JudgeProviderError` naming this metric.
    """
    from flowstone.llm.client import LLMClient  # the SDK-backed client: loaded only to judge

    metric = f"llm_{kind}"
    config = ProviderConfig(
        name=provider,
        kind=provider,
        model=model,
        base_url=base_url,
        api_key_ref=api_key,
        timeout_s=timeout_s,
        limits=RateLimits(
            requests_per_minute=requests_per_minute, tokens_per_minute=tokens_per_minute
        ),
        owner=f"judge {metric}",
    )
    client = LLMClient(
        [config],
        ClientConfig(retry=RetryPolicy(max_attempts=retries + 1), max_concurrency=concurrency),
    )
    judge = LLMJudge(client, kind, max_attempts=max_attempts, concurrency=concurrency)
    ids = [f"case {i + 1}" for i in range(len(predictions))]
    try:
        rows = judge.judge_repeated(ids, predictions, references, contexts, repeats=repeats)
    except LLMError as exc:
        raise JudgeProviderError(metric, provider, model, exc) from exc
    repeat_scores = [[_score(j) for j in row] for row in rows]
    return JudgedScores(
        [_mean_of_valid(row) for row in repeat_scores],
        [_invalid_reply(row) for row in rows],
        sum(j.cost_usd for row in rows for j in row),
        repeat_scores,
    )
