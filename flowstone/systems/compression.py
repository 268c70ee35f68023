"""SumBasic: an extractive summary by word frequency, under a length budget.

Why next to lead-N: lead-N bets on position (news puts the gist first); SumBasic (Nenkova and
Vanderwende, 2005) bets on frequency. It takes the sentence whose content words are the most
frequent in the document, then squares the probability of each word it took, so the next pick
covers something else. Where the two bets pick different sentences, the summarisation suite
says which pays.

Own code rather than sumy's SumBasicSummarizer: sumy counts sentences, not words, its tokenizer
needs NLTK's punkt data downloaded at run time, and it pins setuptools below the version this
project's environment has. The algorithm is twenty lines.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from flowstone.cases import Case
from flowstone.systems.base import Prediction, Progress, System, answer_each
from flowstone.text import STOPWORDS, content_words, sentences, words


def sumbasic_order(document: Sequence[str]) -> list[int]:
    """Indices of ``document``'s sentences in the order SumBasic picks them.

    A sentence weighs the mean probability of its content words; after each pick the words of
    the picked sentence have their probability squared. Ties go to the earlier sentence; a
    sentence without content words weighs 0.
    """
    tokens = [content_words(sentence) for sentence in document]
    counts = Counter(word for sentence in tokens for word in sentence)
    total = sum(counts.values()) or 1
    probability = {word: count / total for word, count in counts.items()}
    order: list[int] = []
    left = list(range(len(document)))
    while left:

        def weight(index: int) -> float:
            own = tokens[index]
            return sum(probability[w] for w in own) / len(own) if own else 0.0

        best = max(left, key=lambda index: (weight(index), -index))
        order.append(best)
        left.remove(best)
        for word in set(tokens[best]):
            probability[word] **= 2
    return order


def sumbasic_summary(text: str, ratio: float) -> str:
    """The sentences SumBasic ranks highest, in document order, within ``ratio`` of the
    text's words.

    The first pick is always kept whole, so a summary is never empty nor cut mid-sentence
    (a one-sentence text comes back as it is); each later pick is kept only when it still
    fits, and a pick that does not fit lets a shorter one after it in.
    """
    document = sentences(text) or [text]
    budget = ratio * len(words(text))
    kept: list[int] = []
    used = 0
    for index in sumbasic_order(document):
        length = len(words(document[index]))
        if kept and used + length > budget:
            continue
        kept.append(index)
        used += length
    return " ".join(document[index] for index in sorted(kept))


class SumBasicSummariser(System):
    """Summarises the input (or the context, when a case has one) with SumBasic, keeping at
    most ``ratio`` of its words (the reference summaries of the shipped suite keep about 30%)."""

    text_only = True

    description = "SumBasic word-frequency extract within a length budget"

    def __init__(self, ratio: float = 0.3):
        if not 0 < ratio <= 1:
            raise ValueError(f"SumBasic needs a length ratio in (0, 1], got {ratio}")
        self.ratio = ratio
        self.name = f"sumbasic-{round(ratio * 100)}"

    def params(self) -> dict:
        return {"version": 1, "ratio": self.ratio, "stopwords": len(STOPWORDS)}

    def predict(
        self, cases: Sequence[Case], progress: Progress | None = None, *, suite: str | None = None
    ) -> list[Prediction]:
        return answer_each(
            cases, lambda case: sumbasic_summary(case.context or case.input, self.ratio), progress
        )
