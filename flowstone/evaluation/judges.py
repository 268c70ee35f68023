"""LLM-judge metrics: semantic similarity and faithfulness, scored 0-1 by a model with a rubric.

The rubric (a Jinja file in ``prompts/``) asks the judge to end its reply with
``SCORE: <0..1>``; a JSON ``{"score": x}`` is accepted too. A reply that cannot be parsed is
asked again (the judge sees its own reply and is told what was wrong), and after
``max_attempts`` the case is recorded as *invalid* with the raw reply: never as 0.0, because a
judge that failed to answer says nothing about the prediction.

A judge is evaluation logic that happens to call a model, so it lives here and uses
``flowstone.llm`` (a leaf) for the client, the message types and the template rendering.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from flowstone.llm.templates import PromptTemplate, prompts_dir
from flowstone.llm.types import Message, Params

METRICS = ("semantic_similarity", "faithfulness")
_SCORE_LINE = re.compile(r"score\s*[:=]\s*\**\s*([-+]?\d*\.?\d+)", re.IGNORECASE)
_JSON_OBJECT = re.compile(r"\{[^{}]*\}")
RETRY_INSTRUCTION = (
    "Your reply could not be read as a score. Reply again with one final line of the form "
    "'SCORE: <number between 0 and 1>'."
)


@dataclass(frozen=True)
class Judgement:
    """One case's judgement; ``score`` is None exactly when ``valid`` is False."""

    case_id: str
    metric: str
    score: float | None
    valid: bool
    raw_reply: str
    attempts: int
    error: str | None = None
    cost_usd: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def parse_score(reply: str) -> float:
    """The 0-1 score in a judge's reply; ValueError saying why when there is none."""
    candidates: list[float] = []
    for blob in _JSON_OBJECT.findall(reply):
        try:
            value = json.loads(blob).get("score")
        except (json.JSONDecodeError, AttributeError):
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            candidates.append(float(value))
    candidates += [float(m) for m in _SCORE_LINE.findall(reply)]
    if not candidates:
        raise ValueError("no 'SCORE: <0-1>' line or JSON score in the reply")
    score = candidates[-1]
    if math.isnan(score) or not 0.0 <= score <= 1.0:
        raise ValueError(f"score {score} is outside [0, 1]")
    return score


class LLMJudge:
    """Scores predictions with one rubric through an ``LLMClient``."""

    def __init__(
        self,
        client,
        metric: str,
        *,
        template_path: str | Path | None = None,
        params: Params | None = None,
        max_attempts: int = 3,
        concurrency: int = 4,
        use_cache: bool = True,
    ):
        if metric not in METRICS:
            raise ValueError(f"unknown judge metric '{metric}'; choose one of {', '.join(METRICS)}")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.client = client
        self.metric = metric
        self.template = PromptTemplate(template_path or prompts_dir() / f"judge_{metric}.j2")
        self.params = params or Params(max_tokens=256, temperature=0.0)
        self.max_attempts = max_attempts
        self.concurrency = concurrency
        self.use_cache = use_cache

    def judge_one(
        self, case_id: str, prediction: str, reference: str, context: str | None = None
    ) -> Judgement:
        if self.metric == "faithfulness" and not context:
            return Judgement(
                case_id,
                self.metric,
                None,
                False,
                "",
                0,
                "the case has no context to judge faithfulness against",
            )
        prompt = self.template.render(
            prediction=prediction, reference=reference, context=context or ""
        )
        messages = [Message("user", prompt)]
        reply, cost, error = "", 0.0, None
        for attempt in range(1, self.max_attempts + 1):
            completion = self.client.complete(
                messages, params=self.params, use_cache=self.use_cache
            )
            reply, cost = completion.text, cost + completion.cost_usd
            try:
                return Judgement(
                    case_id, self.metric, parse_score(reply), True, reply, attempt, cost_usd=cost
                )
            except ValueError as exc:
                error = str(exc)
            # The follow-up is a new conversation, so its cache entry differs from the first.
            messages = [
                *messages,
                Message("assistant", reply or "(empty)"),
                Message("user", RETRY_INSTRUCTION),
            ]
        return Judgement(
            case_id,
            self.metric,
            None,
            False,
            reply,
            self.max_attempts,
            f"unparseable judge reply: {error}",
            cost,
        )

    def judge(
        self,
        case_ids: Sequence[str],
        predictions: Sequence[str],
        references: Sequence[str],
        contexts: Sequence[str | None] | None = None,
    ) -> list[Judgement]:
        """One judgement per case, in order, judged in parallel up to ``concurrency``."""
        contexts = list(contexts) if contexts is not None else [None] * len(case_ids)
        if not len(case_ids) == len(predictions) == len(references) == len(contexts):
            raise ValueError(
                "case_ids, predictions, references and contexts must have the same length"
            )
        with ThreadPoolExecutor(
            max_workers=max(1, min(self.concurrency, len(case_ids) or 1))
        ) as pool:
            return list(pool.map(self.judge_one, case_ids, predictions, references, contexts))


def scores_with_invalid_as_nan(judgements: Sequence[Judgement]) -> list[float]:
    """Metric-shaped scores for a table: invalid judgements become NaN (missing), not 0.0."""
    return [j.score if j.valid and j.score is not None else math.nan for j in judgements]


def summarise(judgements: Sequence[Judgement]) -> dict:
    """Mean over valid judgements and the count of invalid ones, for report metadata."""
    valid = [j.score for j in judgements if j.valid and j.score is not None]
    return {
        "mean": sum(valid) / len(valid) if valid else None,
        "valid": len(valid),
        "invalid": len(judgements) - len(valid),
        "cost_usd": round(sum(j.cost_usd for j in judgements), 6),
    }
