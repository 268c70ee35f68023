"""Per-case metric functions and the registry that names them.

Each metric is a plain function ``(predictions, references, **options) -> list[float]`` with one
score per case, so the same code runs in an asset, in a worker of the pool, or in a notebook.
Metrics that pay for batching (embeddings) take whole lists. Scores are in [0, 1] except
``embedding_similarity``, a cosine in [-1, 1] unless ``clip_negative`` is set.

Option names, defaults and values are those of the reference library each metric names (HF
evaluate, nltk, sacrebleu, rouge-score, rapidfuzz), so a figure can be checked against it.

A reference is one string or a sequence of strings (several acceptable answers): BLEU counts
n-grams against all of them, the other metrics score against each and keep the best.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flowstone.evaluation import embedding
from flowstone.llm.pricing import BATCH_PRICE_FACTORS  # the kinds with a batch API
from flowstone.text import Normalization, tokenize

if TYPE_CHECKING:
    from flowstone.evaluation.judge_metric import JudgedScores

MetricFn = Callable[..., list[float]]
Reference = str | Sequence[str]


class OptionError(ValueError):
    """A metric option whose value the metric cannot use. It names the option so that the
    settings loader can point at the config key instead of failing a run later."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"option '{option}': {message}")
        self.option = option
        self.reason = message


def _check_lengths(predictions: Sequence[str], references: Sequence[object]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")


def reference_list(reference: Reference) -> list[str]:
    """Every reference of one case, whether the suite gave one string or several."""
    return [reference] if isinstance(reference, str) else list(reference)


def _best_of(
    predictions: Sequence[str],
    references: Sequence[Reference],
    score_pairs: Callable[[list[str], list[str]], Sequence[float]],
) -> list[float]:
    """Score every (prediction, reference) pair in one batch, keep each case's best."""
    _check_lengths(predictions, references)
    groups = [reference_list(r) for r in references]
    flat_preds = [p for p, refs in zip(predictions, groups, strict=True) for _ in refs]
    flat_refs = [r for refs in groups for r in refs]
    flat = list(score_pairs(flat_preds, flat_refs)) if flat_refs else []
    best, start = [], 0
    for refs in groups:
        best.append(max(flat[start : start + len(refs)]))
        start += len(refs)
    return best


# --- exact match (HF evaluate's exact_match) ---------------------------------------------------

EXACT_MATCH_PRESETS = ("squad",)
_ASCII_PUNCTUATION = str.maketrans("", "", string.punctuation)
_DIGITS = str.maketrans("", "", string.digits)
_SQUAD = Normalization()


def _check_exact_match(options: Mapping[str, Any]) -> None:
    preset = options.get("preset")
    if preset is not None and preset not in EXACT_MATCH_PRESETS:
        raise OptionError(
            "preset", f"unknown preset {preset!r}; choose {', '.join(EXACT_MATCH_PRESETS)}"
        )
    regexes = options.get("regexes_to_ignore")
    if regexes is None:
        return
    if isinstance(regexes, str) or not isinstance(regexes, Sequence):
        raise OptionError("regexes_to_ignore", "must be a list of regular expressions")
    for pattern in regexes:
        if not isinstance(pattern, str):
            raise OptionError("regexes_to_ignore", f"{pattern!r} is not a string")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise OptionError(
                "regexes_to_ignore", f"{pattern!r} is not a regular expression ({exc})"
            ) from None


def exact_match(
    predictions: Sequence[str],
    references: Sequence[Reference],
    *,
    regexes_to_ignore: Sequence[str] | None = None,
    ignore_case: bool = False,
    ignore_punctuation: bool = False,
    ignore_numbers: bool = False,
    preset: str | None = None,
) -> list[float]:
    """1.0 where the prediction equals a reference, as HF evaluate's ``exact_match`` decides.

    Its steps in its order: remove each of ``regexes_to_ignore``, lower-case, drop ASCII
    punctuation, drop digits. ``preset: squad`` then applies SQuAD's answer normalisation
    (lower case, no punctuation, no articles, single spaces), what FlowStone used before.
    """
    _check_exact_match({"preset": preset, "regexes_to_ignore": regexes_to_ignore})
    patterns = [re.compile(p) for p in regexes_to_ignore or ()]

    def normalise(text: str) -> str:
        for pattern in patterns:
            text = pattern.sub("", text)
        if ignore_case:
            text = text.lower()
        if ignore_punctuation:
            text = text.translate(_ASCII_PUNCTUATION)
        if ignore_numbers:
            text = text.translate(_DIGITS)
        return _SQUAD.apply(text) if preset == "squad" else text

    def pairs(preds: list[str], refs: list[str]) -> list[float]:
        return [float(normalise(p) == normalise(r)) for p, r in zip(preds, refs, strict=True)]

    return _best_of(predictions, references, pairs)


# --- fuzzy match (rapidfuzz) -------------------------------------------------------------------

FUZZY_SCORERS = (
    "ratio",
    "partial_ratio",
    "token_sort_ratio",
    "token_set_ratio",
    "WRatio",
    "QRatio",
)


def _check_fuzzy(options: Mapping[str, Any]) -> None:
    scorer = options.get("scorer", "token_sort_ratio")
    if scorer not in FUZZY_SCORERS:
        raise OptionError(
            "scorer", f"unknown fuzzy scorer '{scorer}'; choose one of {', '.join(FUZZY_SCORERS)}"
        )


def fuzzy_match(
    predictions: Sequence[str],
    references: Sequence[Reference],
    *,
    scorer: str = "token_sort_ratio",
    normalize: bool = True,
) -> list[float]:
    """rapidfuzz similarity scaled to [0, 1], computed pairwise in C; best reference wins.

    ``normalize`` lower-cases and strips non-alphanumerics first (rapidfuzz's default_process).
    """
    from rapidfuzz import fuzz, process, utils

    _check_fuzzy({"scorer": scorer})

    def pairs(preds: list[str], refs: list[str]) -> list[float]:
        scores = process.cpdist(
            preds,
            refs,
            scorer=getattr(fuzz, scorer),
            processor=utils.default_process if normalize else None,
        )
        return [float(s) / 100.0 for s in scores]

    return _best_of(predictions, references, pairs)


# --- BLEU (nltk, with sacrebleu's tokenizers) --------------------------------------------------

# whitespace: str.split, as nltk's own examples tokenise; regex: words and punctuation marks
# apart (flowstone.text.tokenize); 13a and intl: sacrebleu's (mteval-v13a, mteval-v14 intl).
BLEU_TOKENIZERS = ("whitespace", "regex", "13a", "intl")


def _check_bleu(options: Mapping[str, Any]) -> None:
    """Checked without importing nltk or sacrebleu: the settings load with the code location."""
    _bleu_weights(options.get("max_order", 4))
    _check_smoothing(options.get("smoothing", 1))
    _check_tokenizer(options.get("tokenizer", "regex"))


def _check_smoothing(method: object) -> None:
    if isinstance(method, bool) or not isinstance(method, int) or not 0 <= method <= 7:
        raise OptionError(
            "smoothing", f"BLEU smoothing method must be 0-7 (Chen & Cherry 2014), got {method!r}"
        )


def _check_tokenizer(name: object) -> None:
    if name not in BLEU_TOKENIZERS:
        raise OptionError(
            "tokenizer", f"unknown BLEU tokenizer {name!r}; choose {', '.join(BLEU_TOKENIZERS)}"
        )


@functools.lru_cache(maxsize=8)
def _smoothing(method: int) -> Callable | None:
    from nltk.translate.bleu_score import SmoothingFunction

    _check_smoothing(method)
    if method == 0:
        return None
    return getattr(SmoothingFunction(), f"method{method}")


def _bleu_weights(max_order: int) -> tuple[float, ...]:
    if isinstance(max_order, bool) or not isinstance(max_order, int) or not 1 <= max_order <= 8:
        raise OptionError("max_order", f"BLEU max_order must be between 1 and 8, got {max_order!r}")
    return tuple([1.0 / max_order] * max_order)


@functools.lru_cache(maxsize=8)
def bleu_tokenizer(name: str, lowercase: bool = False) -> Callable[[str], list[str]]:
    """The tokens BLEU counts for ``name`` (one of `BLEU_TOKENIZERS`); text is lower-cased
    first when asked, as sacrebleu does."""
    _check_tokenizer(name)
    if name == "whitespace":
        split: Callable[[str], list[str]] = str.split
    elif name == "regex":
        split = functools.partial(tokenize, lowercase=False)
    else:
        from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
        from sacrebleu.tokenizers.tokenizer_intl import TokenizerV14International

        sacre = Tokenizer13a() if name == "13a" else TokenizerV14International()

        def split(text: str) -> list[str]:
            return sacre(text.rstrip()).split()  # sacrebleu's own preprocessing

    if not lowercase:
        return split
    return lambda text: split(text.lower())


def bleu(
    predictions: Sequence[str],
    references: Sequence[Reference],
    *,
    max_order: int = 4,
    smoothing: int = 1,
    lowercase: bool = True,
    tokenizer: str = "regex",
) -> list[float]:
    """Sentence BLEU (nltk) per case against all of its references."""
    from nltk.translate.bleu_score import sentence_bleu

    _check_lengths(predictions, references)
    weights = _bleu_weights(max_order)
    smooth = _smoothing(smoothing)
    tokens = bleu_tokenizer(tokenizer, lowercase)
    scores = []
    for prediction, reference in zip(predictions, references, strict=True):
        refs = [tokens(r) for r in reference_list(reference)]
        scores.append(
            float(
                sentence_bleu(refs, tokens(prediction), weights=weights, smoothing_function=smooth)
            )
        )
    return scores


def corpus_bleu(
    predictions: Sequence[str],
    references: Sequence[Reference],
    *,
    max_order: int = 4,
    smoothing: int = 0,
    lowercase: bool = True,
    tokenizer: str = "regex",
) -> float:
    """Corpus BLEU (nltk): n-gram counts pooled over every case, as papers report it."""
    from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu

    _check_lengths(predictions, references)
    tokens = bleu_tokenizer(tokenizer, lowercase)
    return float(
        nltk_corpus_bleu(
            [[tokens(r) for r in reference_list(ref)] for ref in references],
            [tokens(p) for p in predictions],
            weights=_bleu_weights(max_order),
            smoothing_function=_smoothing(smoothing),
        )
    )


# --- ROUGE (rouge-score) -----------------------------------------------------------------------

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
ROUGE_MEASURES = {"": "fmeasure", "_precision": "precision", "_recall": "recall"}


@functools.lru_cache(maxsize=16)
def _rouge_scorer(variant: str, use_stemmer: bool, split_summaries: bool):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(
        [variant], use_stemmer=use_stemmer, split_summaries=split_summaries
    )


def _require_punkt() -> None:
    from nltk.tokenize import punkt_model_available

    if not punkt_model_available("english"):
        raise OptionError(
            "split_summaries",
            "needs nltk's punkt_tab sentence model, which is not installed: run "
            "`python -m nltk.downloader punkt_tab` (or point NLTK_DATA at a copy), or put one "
            "sentence a line in outputs and references and leave split_summaries off",
        )


def _rouge_scores(
    variant: str,
    measure: str,
    predictions: Sequence[str],
    references: Sequence[Reference],
    use_stemmer: bool,
    split_summaries: bool = False,
) -> list[float]:
    _check_lengths(predictions, references)
    if split_summaries:
        _require_punkt()
    scorer = _rouge_scorer(variant, use_stemmer, split_summaries)
    # score_multi keeps, per case, the reference with the best F-measure (rouge-score's rule);
    # precision and recall are that reference's too.
    return [
        float(getattr(scorer.score_multi(reference_list(ref), pred)[variant], measure))
        for pred, ref in zip(predictions, references, strict=True)
    ]


def _rouge(variant: str, suffix: str) -> MetricFn:
    measure = ROUGE_MEASURES[suffix]
    if variant == "rougeLsum":

        def rouge_variant(
            predictions: Sequence[str],
            references: Sequence[Reference],
            *,
            use_stemmer: bool = False,
            split_summaries: bool = False,
        ) -> list[float]:
            return _rouge_scores(
                variant, measure, predictions, references, use_stemmer, split_summaries
            )

    else:

        def rouge_variant(  # type: ignore[misc]  # the same metric signature without Lsum's option
            predictions: Sequence[str],
            references: Sequence[Reference],
            *,
            use_stemmer: bool = False,
        ) -> list[float]:
            return _rouge_scores(variant, measure, predictions, references, use_stemmer)

    rouge_variant.__name__ = f"{variant}{suffix}"
    rouge_variant.__doc__ = f"{variant} {measure} (rouge-score); the best reference by F wins."
    return rouge_variant


# --- embeddings --------------------------------------------------------------------------------


def embedding_similarity(
    predictions: Sequence[str],
    references: Sequence[Reference],
    *,
    batch_size: int = 64,
    clip_negative: bool = False,
    model: str = "default",
) -> list[float]:
    """Cosine similarity of sentence embeddings in [-1, 1], the best reference's.

    ``model`` is a model reference (``flowstone.baking.registry``): the packaged fp32
    all-MiniLM-L6-v2 by default, ``baked:NAME`` for the latest bake that passed its gates,
    ``deployed:NAME[@VERSION]`` for a deployment. Not clipped by default: flattening every
    negative cosine to 0 changes rank correlations with gold scores; ``clip_negative``
    restores the old [0, 1] values.
    """

    def pairs(preds: list[str], refs: list[str]) -> list[float]:
        return embedding.cosine_similarities(preds, refs, batch_size=batch_size, model=model)

    sims = _best_of(predictions, references, pairs)
    return [max(0.0, s) for s in sims] if clip_negative else sims


#: Metrics whose ``model`` option is an embedding model reference (``flowstone.baking.registry``).
MODEL_REF_METRICS = frozenset({"embedding_similarity"})


def _check_embedding(options: Mapping[str, Any]) -> None:
    """The model reference must point to something now: a typo or a never-baked model is a
    load error naming the key, not a failed run later."""
    from flowstone.baking.registry import ModelRefError, resolve

    try:
        resolve(options.get("model", "default"))
    except ModelRefError as exc:
        raise OptionError("model", str(exc)) from None


# --- LLM judges --------------------------------------------------------------------------------

#: ``online`` calls the judge as each case is scored; ``batch`` sends the partition's first
#: attempts through the provider's batch API first (half price, within 24 h).
JUDGE_MODES = ("online", "batch")


def _check_judge(options: Mapping[str, Any]) -> None:
    """The judge's numbers, checked when the settings load (``check_option_types`` has checked
    the types of options with a typed default; the rate limits default to None, so their type
    is checked here)."""
    timeout = options.get("timeout_s", 60.0)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise OptionError(
            "timeout_s",
            f"the provider call timeout must be a number of seconds > 0, got {timeout!r}",
        )
    for option, least, what in (
        ("retries", 0, "retries of a failed provider call (after the first try)"),
        ("max_attempts", 1, "attempts at a readable score"),
        ("concurrency", 1, "judgements in flight"),
        ("repeats", 1, "judgements of each case"),
    ):
        value = options.get(option, least)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise OptionError(option, f"{what} must be an integer >= {least}, got {value!r}")
    for option in ("requests_per_minute", "tokens_per_minute"):
        value = options.get(option)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise OptionError(
                option, f"must be a positive integer (leave it out for no limit), got {value!r}"
            )
    _check_judge_mode(options.get("mode", "online"), options.get("provider", "anthropic"))


def _check_judge_mode(mode: object, provider: object) -> None:
    """``mode: batch`` sends the judge's first attempts through its provider's batch API, so
    the provider must have one; refused when the settings load, not when a step submits."""
    if mode not in JUDGE_MODES:
        raise OptionError("mode", f"unknown mode {mode!r}; choose one of {', '.join(JUDGE_MODES)}")
    if mode == "batch" and provider not in BATCH_PRICE_FACTORS:
        raise OptionError(
            "mode",
            f"mode batch sends the judge's requests through its provider's batch API; provider "
            f"'{provider}' has none (batch mode is available on "
            f"{', '.join(sorted(BATCH_PRICE_FACTORS))}); set mode: online",
        )


def _judge(kind: str) -> MetricFn:
    def judge(
        predictions: Sequence[str],
        references: Sequence[Reference],
        *,
        contexts: Sequence[str | None] | None = None,
        provider: str = "anthropic",
        model: str = "claude-haiku-4-5",
        base_url: str | None = None,
        api_key: str | None = None,
        max_attempts: int = 3,
        concurrency: int = 4,
        timeout_s: float = 60.0,
        retries: int = 4,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        repeats: int = 1,
        mode: str = "online",
    ) -> JudgedScores:
        # ``mode`` matters before scoring (pipeline.score submits a batch judge's requests
        # first); once its batch ended the judge runs here as an online one, from the cache
        from flowstone.evaluation.judge_metric import judge_scores  # loaded only to judge

        _check_lengths(predictions, references)
        _check_judge(
            {
                "timeout_s": timeout_s,
                "retries": retries,
                "max_attempts": max_attempts,
                "concurrency": concurrency,
                "repeats": repeats,
                "requests_per_minute": requests_per_minute,
                "tokens_per_minute": tokens_per_minute,
                "mode": mode,
                "provider": provider,
            }
        )
        return judge_scores(
            kind,
            predictions,
            [reference_list(r)[0] for r in references],  # the judge reads the first reference
            contexts,
            provider=provider,
            model=model,
            base_url=base_url,
            api_key=api_key,
            max_attempts=max_attempts,
            concurrency=concurrency,
            timeout_s=float(timeout_s),
            retries=retries,
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
            repeats=repeats,
        )

    judge.__name__ = f"llm_{kind}"
    judge.__doc__ = (
        f"LLM-judge {kind.replace('_', ' ')} (rubric prompt, 0-1, invalid kept as NaN); with "
        "``repeats`` > 1 each case is judged that many times and scores the mean of its valid ones."
    )
    return judge


# --- registry ----------------------------------------------------------------------------------


def check_option_types(
    name: str, options: Mapping[str, Any], defaults: Mapping[str, object]
) -> None:
    """A value must have its default's type (a YAML "true" or "4" in quotes is a mistake)."""
    for option, value in options.items():
        default = defaults.get(option)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        elif isinstance(default, str):
            ok = isinstance(value, str)
        else:
            continue
        if not ok:
            kind = type(default).__name__
            raise OptionError(option, f"{name} takes a {kind} here, got {value!r}")


@dataclass(frozen=True)
class Metric:
    """A registered metric: its function, the options it accepts and how it must be run."""

    name: str
    fn: MetricFn
    description: str
    heavy: bool = False
    judge: bool = False  # may return invalid (NaN) scores; needs the cases' contexts; in-process
    check: Callable[[Mapping[str, Any]], None] | None = None  # raises OptionError

    @property
    def options(self) -> dict[str, object]:
        """Keyword options and their defaults, read from the function signature."""
        return {
            name: param.default
            for name, param in inspect.signature(self.fn).parameters.items()
            if param.kind is inspect.Parameter.KEYWORD_ONLY and name != "contexts"
        }

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Refuse option values the metric cannot use (before any case is scored)."""
        defaults = self.options
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            known = ", ".join(sorted(defaults)) or "none"
            raise OptionError(unknown[0], f"unknown option for {self.name}; known: {known}")
        check_option_types(self.name, options, defaults)
        if self.check is not None:
            self.check(options)


def _rouge_metrics() -> list[Metric]:
    shown = {"fmeasure": "F", "precision": "precision", "recall": "recall"}
    return [
        Metric(
            f"{variant}{suffix}",
            _rouge(variant, suffix),
            f"ROUGE-{variant.removeprefix('rouge')} {shown[measure]}",
        )
        for variant in ROUGE_TYPES
        for suffix, measure in ROUGE_MEASURES.items()
    ]


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("exact_match", exact_match, "Exact match (HF evaluate)", check=_check_exact_match),
        Metric("fuzzy_match", fuzzy_match, "rapidfuzz similarity", check=_check_fuzzy),
        Metric("bleu", bleu, "Sentence BLEU with smoothing", check=_check_bleu),
        *_rouge_metrics(),
        Metric(
            "embedding_similarity",
            embedding_similarity,
            "MiniLM cosine",
            heavy=True,
            check=_check_embedding,
        ),
        Metric(
            "llm_semantic_similarity",
            _judge("semantic_similarity"),
            "LLM judge",
            judge=True,
            check=_check_judge,
        ),
        Metric(
            "llm_faithfulness",
            _judge("faithfulness"),
            "LLM judge vs context",
            judge=True,
            check=_check_judge,
        ),
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
    metric: str, predictions: Sequence[str], references: Sequence[Reference], **options
) -> list[float]:
    """Score every case with one metric by name."""
    return get_metric(metric).fn(predictions, references, **options)
