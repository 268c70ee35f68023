"""Text normalisation and tokenisation shared by the lexical metrics and the baselines.

Kept in one place, below both the evaluation and the systems, so that exact match, BLEU and the
baselines agree on what a "word" is.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.IGNORECASE)
_PUNCT_TABLE = str.maketrans("", "", string.punctuation + "“”‘’–—")
_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_WORD = re.compile(r"\w+", re.UNICODE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'“A-Z0-9])")


@dataclass(frozen=True)
class Normalization:
    """How exact match compares strings (SQuAD-style by default)."""

    lowercase: bool = True
    strip_punctuation: bool = True
    strip_articles: bool = True
    collapse_whitespace: bool = True

    def apply(self, text: str) -> str:
        if self.lowercase:
            text = text.lower()
        if self.strip_punctuation:
            text = text.translate(_PUNCT_TABLE)
        if self.strip_articles:
            text = _ARTICLES.sub(" ", text)
        if self.collapse_whitespace:
            text = " ".join(text.split())
        return text


def tokenize(text: str, lowercase: bool = True) -> list[str]:
    """Words and punctuation marks as separate tokens (BLEU's usual '13a'-like split)."""
    return _TOKEN.findall(text.lower() if lowercase else text)


def words(text: str) -> list[str]:
    """Lower-cased word tokens without punctuation."""
    return _WORD.findall(text.lower())


def sentences(text: str) -> list[str]:
    """Split prose into sentences on terminal punctuation followed by a capital or digit."""
    parts = [part.strip() for part in _SENTENCE_END.split(text.strip())]
    return [part for part in parts if part]


# Function words that carry no topic: overlap on them says nothing about relevance (the
# lexical baselines rank sentences on the other words).
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "did",
        "do",
        "does",
        "for",
        "from",
        "has",
        "have",
        "how",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "their",
        "there",
        "this",
        "to",
        "was",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "whom",
        "whose",
        "why",
        "will",
        "with",
    ]
)


def content_words(text: str) -> list[str]:
    """The words that say what ``text`` is about: the lexical baselines match and count these."""
    return [w for w in words(text) if w not in STOPWORDS]
