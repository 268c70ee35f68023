"""LLM-judge scores in the shape of a metric, so `evaluation.yaml` can name a judge like any
other metric. The client is built from the metric's options and uses the durable response
cache, so re-scoring a partition costs no calls.

The metric registry (:mod:`flowstone.evaluation.metrics`) imports this module when a judge
metric runs; this module never imports the registry, so ``JudgedScores`` lives here.
"""

from __future__ import annotations

from collections.abc import Sequence

from flowstone.evaluation.judges import LLMJudge, scores_with_invalid_as_nan
from flowstone.llm.config import ClientConfig, ProviderConfig


class JudgedScores(list):
    """Scores from an LLM judge: NaN where a judgement was invalid (never 0.0), with the raw
    reply of each invalid one and what the judging cost."""

    def __init__(self, scores: list[float], replies: list[str | None], cost_usd: float = 0.0):
        super().__init__(scores)
        self.replies = replies
        self.cost_usd = cost_usd

    @property
    def invalid(self) -> int:
        return sum(1 for s in self if s != s)  # NaN is the only value unequal to itself


def judge_scores(
    kind: str,
    predictions: Sequence[str],
    references: Sequence[str],
    contexts: Sequence[str | None] | None,
    provider: str,
    model: str,
    base_url: str | None,
    api_key: str | None,
    max_attempts: int,
    concurrency: int,
) -> JudgedScores:
    """One score per case from a judge built on ``provider``/``model`` (invalid ones NaN)."""
    from flowstone.llm.client import LLMClient  # the SDK-backed client: loaded only to judge

    config = ProviderConfig(
        name=provider,
        kind=provider,
        model=model,
        base_url=base_url,
        api_key_ref=api_key,
        owner=f"judge llm_{kind}",
    )
    client = LLMClient([config], ClientConfig(max_concurrency=concurrency))
    judge = LLMJudge(client, kind, max_attempts=max_attempts, concurrency=concurrency)
    ids = [f"case {i + 1}" for i in range(len(predictions))]
    judgements = judge.judge(ids, predictions, references, contexts)
    return JudgedScores(
        scores_with_invalid_as_nan(judgements),
        [None if j.valid else (j.raw_reply or j.error or "") for j in judgements],
        sum(j.cost_usd for j in judgements),
    )
