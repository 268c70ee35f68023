"""LLM-judge scores in the shape of a metric, so `evaluation.yaml` can name a judge like any
other metric. The client is built from the metric's options and uses the durable response
cache, so re-scoring a partition costs no calls."""

from __future__ import annotations

from collections.abc import Sequence

from flowstone.llm.config import ClientConfig, ProviderConfig
from flowstone.llm.judge import LLMJudge, scores_with_invalid_as_nan


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
):
    from flowstone.evaluation.metrics import JudgedScores
    from flowstone.llm.client import LLMClient

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
