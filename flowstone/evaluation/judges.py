"""LLM-judge metrics: semantic similarity and faithfulness, scored 0-1 by a model with a rubric.

The rubric (a Jinja file in ``prompts/``) asks the judge to end its reply with
``SCORE: <0..1>``; a JSON ``{"score": x}`` is accepted too. A reply that cannot be parsed is
asked again (the judge sees its own reply and is told what was wrong), and after
``max_attempts`` the case is recorded as *invalid* with the raw reply: never as 0.0, because a
judge that failed to answer says nothing about the prediction.

A case can be judged several times (*repeats*), because one sample of a judge at any
temperature is one draw of a noisy instrument. Repeat ``r`` is sent with ``repeat=r`` to the
client, which keeps it in its own cache entry: a rerun costs no calls, and repeat 1 is a new
answer, never repeat 0's served again.

A judge is evaluation logic that happens to call a model, so it lives here and uses
``flowstone.llm`` (a leaf) for the client, the message types and the template rendering.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
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
    """One case's judgement (one of its repeats); ``score`` is None exactly when ``valid`` is
    False."""

    case_id: str
    metric: str
    score: float | None
    valid: bool
    raw_reply: str
    attempts: int
    error: str | None = None
    cost_usd: float = 0.0
    repeat: int = 0

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

    def first_messages(
        self, prediction: str, reference: str, context: str | None = None
    ) -> list[Message]:
        """The conversation of a case's first attempt, exactly as :meth:`judge_one` sends it.

        Why public: a judge in ``mode: batch`` sends these ahead through a provider batch API,
        under the cache key the first attempt looks up, so that attempt is a cache hit."""
        prompt = self.template.render(
            prediction=prediction, reference=reference, context=context or ""
        )
        return [Message("user", prompt)]

    def needs_call(self, context: str | None) -> bool:
        """Whether judging a case calls the model at all (faithfulness without a context is
        recorded invalid without one)."""
        return not (self.metric == "faithfulness" and not context)

    def judge_one(
        self,
        case_id: str,
        prediction: str,
        reference: str,
        context: str | None = None,
        repeat: int = 0,
    ) -> Judgement:
        """Judge one case once. ``repeat`` > 0 is a deliberate new sample of the same case: every
        call of its conversation (the follow-ups after an unparseable reply too) carries it, so
        the cache keeps each repeat's answers apart from the others'."""
        if repeat < 0:
            raise ValueError(f"repeat must be >= 0, got {repeat}")
        if not self.needs_call(context):
            return Judgement(
                case_id,
                self.metric,
                None,
                False,
                "",
                0,
                "the case has no context to judge faithfulness against",
                repeat=repeat,
            )
        messages = self.first_messages(prediction, reference, context)
        reply, cost, error = "", 0.0, None
        for attempt in range(1, self.max_attempts + 1):
            completion = self.client.complete(
                messages, params=self.params, use_cache=self.use_cache, repeat=repeat
            )
            reply, cost = completion.text, cost + completion.cost_usd
            try:
                return Judgement(
                    case_id,
                    self.metric,
                    parse_score(reply),
                    True,
                    reply,
                    attempt,
                    cost_usd=cost,
                    repeat=repeat,
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
            repeat,
        )

    def judge(
        self,
        case_ids: Sequence[str],
        predictions: Sequence[str],
        references: Sequence[str],
        contexts: Sequence[str | None] | None = None,
    ) -> list[Judgement]:
        """One judgement per case, in order, judged in parallel up to ``concurrency``."""
        rows = self.judge_repeated(case_ids, predictions, references, contexts, repeats=1)
        return [row[0] for row in rows]

    def judge_repeated(
        self,
        case_ids: Sequence[str],
        predictions: Sequence[str],
        references: Sequence[str],
        contexts: Sequence[str | None] | None = None,
        *,
        repeats: int = 1,
    ) -> list[list[Judgement]]:
        """Per case, ``repeats`` judgements in repeat order (repeat ``r`` at index ``r``).

        Every (case, repeat) is one task of the same pool, so repeats run in parallel with the
        other cases up to ``concurrency``. The first provider failure (an ``LLMError`` that
        escaped the client's retries) cancels the tasks not started and is raised: a provider
        that is down would fail them too, each after its own retries and timeouts.
        """
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        contexts = list(contexts) if contexts is not None else [None] * len(case_ids)
        if not len(case_ids) == len(predictions) == len(references) == len(contexts):
            raise ValueError(
                "case_ids, predictions, references and contexts must have the same length"
            )
        tasks = [
            (case_ids[i], predictions[i], references[i], contexts[i], r)
            for i in range(len(case_ids))
            for r in range(repeats)
        ]
        judgements = self._run(tasks)
        return [judgements[i * repeats : (i + 1) * repeats] for i in range(len(case_ids))]

    def _run(self, tasks: list[tuple[str, str, str, str | None, int]]) -> list[Judgement]:
        """``judge_one`` over ``tasks`` in order, up to ``concurrency`` at once; stops at the
        first exception and raises it."""
        if not tasks:
            return []
        pool = ThreadPoolExecutor(
            max_workers=max(1, min(self.concurrency, len(tasks))), thread_name_prefix="judge"
        )
        try:
            futures: list[Future[Judgement]] = [pool.submit(self.judge_one, *t) for t in tasks]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for future in futures:  # the first failure in case order, for a stable error
                if future in done and future.exception() is not None:
                    future.result()  # raises it; `finally` cancels what has not started
            return [future.result() for future in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


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
