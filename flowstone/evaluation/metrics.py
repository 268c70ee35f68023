"""Per-case metric functions and the registry that names them.

Each metric is a plain function ``(predictions, references, **options) -> list[float]`` with one
score in [0, 1] per case, so the same code runs in an asset, in a worker of the pool, or in a
notebook. Metrics that pay for batching (embeddings) take whole lists.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flowstone.evaluation import embedding
from flowstone.text import Normalization, tokenize

if TYPE_CHECKING:
    from flowstone.evaluation.judge_metric import JudgedScores

MetricFn = Callable[..., list[float]]


def _check_lengths(predictions: Sequence[str], references: Sequence[object]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")


def exact_match(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    lowercase: bool = True,
    strip_punctuation: bool = True,
    strip_articles: bool = True,
    collapse_whitespace: bool = True,
) -> list[float]:
    """1.0 where the normalised prediction equals the normalised reference."""
    _check_lengths(predictions, references)
    norm = Normalization(lowercase, strip_punctuation, strip_articles, collapse_whitespace)
    return [
        float(norm.apply(p) == norm.apply(r)) for p, r in zip(predictions, references, strict=True)
    ]


FUZZY_SCORERS = (
    "ratio",
    "partial_ratio",
    "token_sort_ratio",
    "token_set_ratio",
    "WRatio",
    "QRatio",
)


def fuzzy_match(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    scorer: str = "token_sort_ratio",
    normalize: bool = True,
) -> list[float]:
    """rapidfuzz similarity scaled to [0, 1], computed pairwise in C.

    ``normalize`` lower-cases and strips non-alphanumerics first (rapidfuzz's default_process).
    """
    from rapidfuzz import fuzz, process, utils

    _check_lengths(predictions, references)
    if scorer not in FUZZY_SCORERS:
        raise ValueError(
            f"unknown fuzzy scorer '{scorer}'; choose one of {', '.join(FUZZY_SCORERS)}"
        )
    if not predictions:
        return []
    scores = process.cpdist(
        list(predictions),
        list(references),
        scorer=getattr(fuzz, scorer),
        processor=utils.default_process if normalize else None,
    )
    return [float(s) / 100.0 for s in scores]


@functools.lru_cache(maxsize=8)
def _smoothing(method: int) -> Callable | None:
    from nltk.translate.bleu_score import SmoothingFunction

    if method == 0:
        return None
    if not 1 <= method <= 7:
        raise ValueError(f"BLEU smoothing method must be 0-7 (Chen & Cherry 2014), got {method}")
    return getattr(SmoothingFunction(), f"method{method}")


def _bleu_weights(max_order: int) -> tuple[float, ...]:
    if not 1 <= max_order <= 8:
        raise ValueError(f"BLEU max_order must be between 1 and 8, got {max_order}")
    return tuple([1.0 / max_order] * max_order)


def _as_reference_list(reference: str | Sequence[str]) -> list[str]:
    return [reference] if isinstance(reference, str) else list(reference)


def bleu(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    *,
    max_order: int = 4,
    smoothing: int = 1,
    lowercase: bool = True,
) -> list[float]:
    """Sentence BLEU (nltk) per case; a reference may be one string or several."""
    from nltk.translate.bleu_score import sentence_bleu

    _check_lengths(predictions, references)
    weights = _bleu_weights(max_order)
    smooth = _smoothing(smoothing)
    scores = []
    for prediction, reference in zip(predictions, references, strict=True):
        refs = [tokenize(r, lowercase) for r in _as_reference_list(reference)]
        hyp = tokenize(prediction, lowercase)
        scores.append(float(sentence_bleu(refs, hyp, weights=weights, smoothing_function=smooth)))
    return scores


def corpus_bleu(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    *,
    max_order: int = 4,
    smoothing: int = 0,
    lowercase: bool = True,
) -> float:
    """Corpus BLEU (nltk): n-gram counts pooled over every case, as papers report it."""
    from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu

    _check_lengths(predictions, references)
    return float(
        nltk_corpus_bleu(
            [[tokenize(r, lowercase) for r in _as_reference_list(ref)] for ref in references],
            [tokenize(p, lowercase) for p in predictions],
            weights=_bleu_weights(max_order),
            smoothing_function=_smoothing(smoothing),
        )
    )


@functools.lru_cache(maxsize=16)
def _rouge_scorer(variant: str, use_stemmer: bool):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([variant], use_stemmer=use_stemmer)


def _rouge(variant: str) -> MetricFn:
    def rouge_variant(
        predictions: Sequence[str], references: Sequence[str], *, use_stemmer: bool = True
    ) -> list[float]:
        _check_lengths(predictions, references)
        scorer = _rouge_scorer(variant, use_stemmer)
        return [
            float(scorer.score(ref, pred)[variant].fmeasure)
            for pred, ref in zip(predictions, references, strict=True)
        ]

    rouge_variant.__name__ = variant
    rouge_variant.__doc__ = (
        f"{variant.upper()} F-measure (rouge-score, Porter stemming on by default)."
    )
    return rouge_variant


def embedding_similarity(
    predictions: Sequence[str], references: Sequence[str], *, batch_size: int = 64
) -> list[float]:
    """Cosine similarity of all-MiniLM-L6-v2 embeddings, clipped to [0, 1]."""
    _check_lengths(predictions, references)
    sims = embedding.cosine_similarities(predictions, references, batch_size=batch_size)
    return [max(0.0, s) for s in sims]


def _judge(kind: str) -> MetricFn:
    def judge(
        predictions: Sequence[str],
        references: Sequence[str],
        *,
        contexts: Sequence[str | None] | None = None,
        provider: str = "anthropic",
        model: str = "claude-haiku-4-5",
        base_url: str | None = None,
        api_key: str | None = None,
        max_attempts: int = 3,
        concurrency: int = 4,
    ) -> JudgedScores:
        from flowstone.evaluation.judge_metric import judge_scores  # loaded only to judge

        _check_lengths(predictions, references)
        return judge_scores(
            kind,
            predictions,
            references,
            contexts,
            provider,
            model,
            base_url,
            api_key,
            max_attempts,
            concurrency,
        )

    judge.__name__ = f"llm_{kind}"
    judge.__doc__ = f"LLM-judge {kind.replace('_', ' ')} (rubric prompt, 0-1, invalid kept as NaN)."
    return judge


@dataclass(frozen=True)
class Metric:
    """A registered metric: its function, the options it accepts and how it must be run."""

    name: str
    fn: MetricFn
    description: str
    heavy: bool = False
    judge: bool = False  # may return invalid (NaN) scores; needs the cases' contexts; in-process

    @property
    def options(self) -> dict[str, object]:
        """Keyword options and their defaults, read from the function signature."""
        return {
            name: param.default
            for name, param in inspect.signature(self.fn).parameters.items()
            if param.kind is inspect.Parameter.KEYWORD_ONLY and name != "contexts"
        }


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("exact_match", exact_match, "Normalised exact match"),
        Metric("fuzzy_match", fuzzy_match, "rapidfuzz similarity"),
        Metric("bleu", bleu, "Sentence BLEU with smoothing"),
        Metric("rouge1", _rouge("rouge1"), "ROUGE-1 F"),
        Metric("rouge2", _rouge("rouge2"), "ROUGE-2 F"),
        Metric("rougeL", _rouge("rougeL"), "ROUGE-L F"),
        Metric("embedding_similarity", embedding_similarity, "MiniLM cosine", heavy=True),
        Metric("llm_semantic_similarity", _judge("semantic_similarity"), "LLM judge", judge=True),
        Metric("llm_faithfulness", _judge("faithfulness"), "LLM judge vs context", judge=True),
    )
}


def get_metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(
            f"unknown metric '{name}'; known metrics: {', '.join(sorted(METRICS))}"
        ) from None


def compute(
    metric: str, predictions: Sequence[str], references: Sequence[str], **options
) -> list[float]:
    """Score every case with one metric by name."""
    return get_metric(metric).fn(predictions, references, **options)
