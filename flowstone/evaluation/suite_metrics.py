"""Suite-level metrics: one figure for a whole partition rather than a mean of per-case scores.

Why they are separate from `metrics.METRICS`: corpus BLEU and chrF pool n-gram counts over every
case (a mean of sentence scores is a different number), and a correlation or an accuracy only
exists over many cases and their gold labels. Each function is pure; `compute_suite_metrics`
feeds them from a scores frame (``output``, ``references``/``expected``, ``label`` and the
per-case metric columns) with the settings `config` parsed under ``suite_metrics``.

Values are the reference library's own: sacrebleu's BLEU and chrF on its 0-100 scale, nltk's
corpus BLEU in [0, 1], correlations in [-1, 1] (NaN when undefined: fewer than two scored cases
or a constant side), accuracy and F1 in [0, 1].
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

from flowstone.evaluation import metrics
from flowstone.evaluation.metrics import OptionError, Reference, reference_list

if TYPE_CHECKING:
    import pandas as pd

# What a suite metric reads besides the outputs: the references, a numeric gold label (and the
# per-case metric named by its `metric` option), or a class label.
Needs = Literal["references", "number", "class"]

# sacrebleu's tokenizers that need nothing downloaded or installed besides sacrebleu.
SACREBLEU_TOKENIZERS = ("13a", "intl", "zh", "char", "none")
SACREBLEU_SMOOTHING = ("exp", "floor", "add-k", "none")
F1_AVERAGES = ("macro", "micro", "weighted", "binary")
KENDALL_VARIANTS = ("b", "c")


@dataclass(frozen=True)
class SuiteMetricSetting:
    """One suite-level metric as configured for a suite.

    ``metric`` is the per-case metric a correlation compares with the label; ``key`` is where
    the setting came from (``suites.qa.suite_metrics.spearman``), for errors about it.
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    metric: str | None = None
    key: str = field(default="", compare=False)


class SuiteMetricSettings(Protocol):
    """What `compute_suite_metrics` reads of a suite's settings (`config.SuiteSettings`)."""

    @property
    def suite(self) -> str: ...

    @property
    def suite_metrics(self) -> Mapping[str, SuiteMetricSetting]: ...


# --- corpus metrics ----------------------------------------------------------------------------


def _reference_streams(references: Sequence[Reference]) -> list[Sequence[str]]:
    """sacrebleu's layout: one stream per reference position, None where a case has fewer
    (its code and docs take None there; its type hints say str only)."""
    groups = [reference_list(r) for r in references]
    width = max((len(g) for g in groups), default=1)
    return [
        cast(Sequence[str], [g[i] if i < len(g) else None for g in groups]) for i in range(width)
    ]


def _choice(option: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise OptionError(option, f"unknown value {value!r}; choose {', '.join(allowed)}")


def _check_sacrebleu(options: Mapping[str, Any]) -> None:
    _choice("tokenize", options.get("tokenize", "13a"), SACREBLEU_TOKENIZERS)
    _choice("smooth_method", options.get("smooth_method", "exp"), SACREBLEU_SMOOTHING)
    order = options.get("max_ngram_order", 4)
    if not 1 <= order <= 8:
        raise OptionError("max_ngram_order", f"must be between 1 and 8, got {order}")


def sacrebleu(
    predictions: Sequence[str],
    references: Sequence[Reference],
    *,
    tokenize: str = "13a",
    lowercase: bool = False,
    smooth_method: str = "exp",
    smooth_value: float | None = None,
    max_ngram_order: int = 4,
    effective_order: bool = False,
) -> float:
    """sacrebleu's corpus BLEU (0-100), the figure MT papers quote with its signature."""
    from sacrebleu.metrics import BLEU

    _check_sacrebleu({"tokenize": tokenize, "smooth_method": smooth_method})
    scorer = BLEU(
        lowercase=lowercase,
        tokenize=tokenize,
        smooth_method=smooth_method,
        smooth_value=smooth_value,
        max_ngram_order=max_ngram_order,
        effective_order=effective_order,
    )
    return float(scorer.corpus_score(list(predictions), _reference_streams(references)).score)


def chrf(
    predictions: Sequence[str],
    references: Sequence[Reference],
    *,
    char_order: int = 6,
    word_order: int = 0,
    beta: int = 2,
    lowercase: bool = False,
    whitespace: bool = False,
    eps_smoothing: bool = False,
) -> float:
    """sacrebleu's corpus chrF (0-100; ``word_order: 2`` gives chrF++)."""
    from sacrebleu.metrics import CHRF

    scorer = CHRF(
        char_order=char_order,
        word_order=word_order,
        beta=beta,
        lowercase=lowercase,
        whitespace=whitespace,
        eps_smoothing=eps_smoothing,
    )
    return float(scorer.corpus_score(list(predictions), _reference_streams(references)).score)


# --- correlations with a numeric gold label ----------------------------------------------------


def _paired(scores: Sequence[float], labels: Sequence[float]) -> tuple[list[float], list[float]]:
    """Pairs whose score is valid (an LLM judge leaves NaN for an unreadable reply)."""
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")
    kept = [(float(s), float(y)) for s, y in zip(scores, labels, strict=True) if not math.isnan(s)]
    return [s for s, _ in kept], [y for _, y in kept]


def _correlation(test: Callable[..., Any], scores, labels, **options: Any) -> float:
    x, y = _paired(scores, labels)
    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan  # undefined; scipy would say the same with a warning
    return float(test(x, y, **options).statistic)


def spearman(scores: Sequence[float], labels: Sequence[float]) -> float:
    """Spearman's rank correlation (scipy.stats.spearmanr) of a metric with the gold scores."""
    from scipy import stats

    return _correlation(stats.spearmanr, scores, labels)


def pearson(scores: Sequence[float], labels: Sequence[float]) -> float:
    """Pearson's r (scipy.stats.pearsonr) of a metric with the gold scores."""
    from scipy import stats

    return _correlation(stats.pearsonr, scores, labels)


def _check_kendall(options: Mapping[str, Any]) -> None:
    _choice("variant", options.get("variant", "b"), KENDALL_VARIANTS)


def kendall(scores: Sequence[float], labels: Sequence[float], *, variant: str = "b") -> float:
    """Kendall's tau (scipy.stats.kendalltau, tau-b by default) with the gold scores."""
    from scipy import stats

    _check_kendall({"variant": variant})
    return _correlation(stats.kendalltau, scores, labels, variant=variant)


# --- agreement with a class label (scikit-learn) -----------------------------------------------


def _classes(predictions: Sequence[str], labels: Sequence[str], strip: bool):
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
    if not strip:
        return list(labels), list(predictions)
    return [y.strip() for y in labels], [p.strip() for p in predictions]


def accuracy(predictions: Sequence[str], labels: Sequence[str], *, strip: bool = True) -> float:
    """Share of outputs equal to the class label (sklearn.metrics.accuracy_score).

    ``strip`` drops surrounding whitespace first: a model's answer often ends in a newline.
    """
    from sklearn.metrics import accuracy_score

    y_true, y_pred = _classes(predictions, labels, strip)
    return float(accuracy_score(y_true, y_pred))


def _check_f1(options: Mapping[str, Any]) -> None:
    average = options.get("average", "macro")
    _choice("average", average, F1_AVERAGES)
    if average == "binary" and options.get("pos_label") is None:
        raise OptionError("pos_label", "average: binary needs pos_label, the positive class")


def f1(
    predictions: Sequence[str],
    labels: Sequence[str],
    *,
    average: str = "macro",
    pos_label: str | None = None,
    strip: bool = True,
) -> float:
    """F1 of outputs against class labels (sklearn.metrics.f1_score; 0 where undefined).

    Macro by default, not sklearn's binary: classes here are strings, and binary needs
    ``pos_label``. As in sklearn, every class seen in labels or outputs counts.
    """
    from sklearn.metrics import f1_score

    _check_f1({"average": average, "pos_label": pos_label})
    y_true, y_pred = _classes(predictions, labels, strip)
    extra = {"pos_label": pos_label} if average == "binary" else {}
    return float(f1_score(y_true, y_pred, average=average, zero_division=0.0, **extra))


# --- registry ----------------------------------------------------------------------------------

UNIT = (0.0, 1.0)
CORRELATION = (-1.0, 1.0)
PERCENT = (0.0, 100.0)
CORRELATION_UNDEFINED = (
    "undefined over this suite: fewer than two cases with a score, or every score (or every "
    "label) the same"
)


@dataclass(frozen=True)
class SuiteMetric:
    """A registered suite-level metric: its function, what it reads and its options."""

    name: str
    fn: Callable[..., float]
    description: str
    needs: Needs
    check: Callable[[Mapping[str, Any]], None] | None = None  # raises OptionError
    # The range the value lives in, which a threshold's floor must fall within: a floor of 30
    # means something for chrF (0-100) and nothing for an accuracy.
    scale: tuple[float, float] = UNIT
    undefined: str = ""  # when the value is NaN, said in a failed threshold check

    @property
    def options(self) -> dict[str, object]:
        """Keyword options and their defaults, read from the function signature."""
        return {
            name: param.default
            for name, param in inspect.signature(self.fn).parameters.items()
            if param.kind is inspect.Parameter.KEYWORD_ONLY
        }

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Refuse unknown options and values the function cannot use."""
        defaults = self.options
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            known = ", ".join(sorted(defaults)) or "none"
            hint = " (and metric)" if self.needs == "number" else ""
            raise OptionError(unknown[0], f"unknown option for {self.name}; known: {known}{hint}")
        metrics.check_option_types(self.name, options, defaults)
        if self.check is not None:
            self.check(options)

    def undefined_reason(self) -> str:
        """Why a threshold on this metric failed without a value to compare."""
        return f"{self.name} is {self.undefined or 'undefined over this suite'}"


SUITE_METRICS: dict[str, SuiteMetric] = {
    m.name: m
    for m in (
        SuiteMetric(
            "corpus_bleu",
            metrics.corpus_bleu,
            "Corpus BLEU (nltk)",
            "references",
            check=metrics.METRICS["bleu"].check,
        ),
        SuiteMetric(
            "sacrebleu",
            sacrebleu,
            "Corpus BLEU (sacrebleu, 0-100)",
            "references",
            _check_sacrebleu,
            scale=PERCENT,
        ),
        SuiteMetric("chrf", chrf, "Corpus chrF (sacrebleu, 0-100)", "references", scale=PERCENT),
        SuiteMetric(
            "spearman",
            spearman,
            "Spearman rho with the gold score",
            "number",
            scale=CORRELATION,
            undefined=CORRELATION_UNDEFINED,
        ),
        SuiteMetric(
            "pearson",
            pearson,
            "Pearson r with the gold score",
            "number",
            scale=CORRELATION,
            undefined=CORRELATION_UNDEFINED,
        ),
        SuiteMetric(
            "kendall",
            kendall,
            "Kendall tau with the gold score",
            "number",
            _check_kendall,
            scale=CORRELATION,
            undefined=CORRELATION_UNDEFINED,
        ),
        SuiteMetric("accuracy", accuracy, "Accuracy against the class label", "class"),
        SuiteMetric("f1", f1, "F1 against the class label", "class", _check_f1),
    )
}


# --- from a scores frame -----------------------------------------------------------------------


def _frame_references(scores: pd.DataFrame) -> list[Reference]:
    if "references" not in scores.columns:  # scores stored before several references existed
        return [str(e) for e in scores["expected"]]
    return [[str(r) for r in refs] for refs in scores["references"]]


def _frame_labels(
    scores: pd.DataFrame, suite: str, setting: SuiteMetricSetting, needs: Needs
) -> list[Any]:
    where = f"suite metric '{setting.name}' ({setting.key or 'suite_metrics'}) on suite '{suite}'"
    if "label" not in scores.columns:
        raise ValueError(f"{where} needs labels, and the scores have no label column")
    labels = list(scores["label"])
    for case_id, label in zip(scores["case_id"], labels, strict=True):
        missing = label is None or (isinstance(label, float) and math.isnan(label))
        if missing:
            raise ValueError(f"{where} needs a label on every case; case '{case_id}' has none")
        if (needs == "class") != isinstance(label, str):
            wanted = "a class (a string)" if needs == "class" else "a number"
            raise ValueError(f"{where} needs {wanted} as label; case '{case_id}' has {label!r}")
    return labels


def compute_suite_metrics(settings: SuiteMetricSettings, scores: pd.DataFrame) -> dict[str, float]:
    """Every suite-level metric of ``settings`` over one partition's scores frame."""
    results: dict[str, float] = {}
    for name, setting in settings.suite_metrics.items():
        spec = SUITE_METRICS[setting.name]
        outputs = [str(o) for o in scores["output"]]
        if spec.needs == "references":
            value = spec.fn(outputs, _frame_references(scores), **setting.options)
        elif spec.needs == "number":
            if setting.metric not in scores.columns:
                raise ValueError(
                    f"suite metric '{name}' ({setting.key}) correlates '{setting.metric}', "
                    f"which the scores of suite '{settings.suite}' do not have"
                )
            labels = _frame_labels(scores, settings.suite, setting, "number")
            per_case = scores[setting.metric].to_numpy(dtype=float)
            value = spec.fn(per_case, [float(y) for y in labels], **setting.options)
        else:
            labels = _frame_labels(scores, settings.suite, setting, "class")
            value = spec.fn(outputs, labels, **setting.options)
        results[name] = float(value)
    return results
