"""Suite-level metrics against the reference libraries called in the same test (nltk,
sacrebleu, scipy.stats, scikit-learn), their settings, and the label checks at load."""

import json
import math

import pandas as pd
import pytest

from flowstone.errors import ConfigError
from flowstone.evaluation import suite_metrics
from flowstone.evaluation.config import check_suite_labels, parse_settings
from flowstone.evaluation.scoring import score_suite
from flowstone.evaluation.suite_metrics import SUITE_METRICS, compute_suite_metrics
from flowstone.evaluation.suites import load_suite

PREDS = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog!",
    "It rained all day in Paris, so we stayed in.",
]
REFS = [
    ["The cat is sitting on the mat.", "A cat sat on a mat."],
    ["The quick brown fox jumped over the lazy dog."],
    ["We stayed inside because it rained all day in Paris.", "Rain kept us in all day."],
]


def test_corpus_bleu_is_nltks():
    from nltk.translate.bleu_score import corpus_bleu

    ours = suite_metrics.SUITE_METRICS["corpus_bleu"].fn(PREDS, REFS, tokenizer="whitespace")
    theirs = corpus_bleu(
        [[r.lower().split() for r in refs] for refs in REFS], [p.lower().split() for p in PREDS]
    )
    assert ours == pytest.approx(theirs, abs=1e-12)


def test_sacrebleu_is_sacrebleus_corpus_bleu_with_a_variable_number_of_references():
    import sacrebleu

    streams = [[refs[0] for refs in REFS], [refs[1] if len(refs) > 1 else None for refs in REFS]]
    assert suite_metrics.sacrebleu(PREDS, REFS) == pytest.approx(
        sacrebleu.corpus_bleu(PREDS, streams).score
    )
    assert suite_metrics.sacrebleu(PREDS, REFS, tokenize="intl", lowercase=True) == pytest.approx(
        sacrebleu.corpus_bleu(PREDS, streams, tokenize="intl", lowercase=True).score
    )
    single = [refs[0] for refs in REFS]
    assert suite_metrics.sacrebleu(PREDS, single) == pytest.approx(
        sacrebleu.corpus_bleu(PREDS, [single]).score
    )


def test_chrf_is_sacrebleus_corpus_chrf():
    import sacrebleu

    streams = [[refs[0] for refs in REFS], [refs[1] if len(refs) > 1 else None for refs in REFS]]
    assert suite_metrics.chrf(PREDS, REFS) == pytest.approx(
        sacrebleu.corpus_chrf(PREDS, streams).score
    )
    assert suite_metrics.chrf(PREDS, REFS, word_order=2) == pytest.approx(
        sacrebleu.corpus_chrf(PREDS, streams, word_order=2).score  # chrF++
    )


SCORES = [0.91, 0.35, 0.62, 0.12, 0.77, 0.58, float("nan"), 0.40]
GOLD = [4.8, 1.2, 3.1, 0.4, 4.1, 3.6, 2.0, 1.0]


@pytest.mark.parametrize(
    ("name", "reference"),
    [("spearman", "spearmanr"), ("pearson", "pearsonr"), ("kendall", "kendalltau")],
)
def test_correlations_are_scipys_over_the_valid_scores(name, reference):
    from scipy import stats

    valid = [i for i, s in enumerate(SCORES) if not math.isnan(s)]  # an invalid judgement
    theirs = getattr(stats, reference)([SCORES[i] for i in valid], [GOLD[i] for i in valid])
    assert SUITE_METRICS[name].fn(SCORES, GOLD) == pytest.approx(theirs.statistic)


def test_kendall_tau_c_and_undefined_correlations():
    from scipy import stats

    x, y = [1, 2, 2, 3, 5], [1.0, 3.0, 2.0, 2.0, 4.0]
    assert suite_metrics.kendall(x, y, variant="c") == pytest.approx(
        stats.kendalltau(x, y, variant="c").statistic
    )
    assert math.isnan(suite_metrics.spearman([0.5, 0.5, 0.5], [1.0, 2.0, 3.0]))  # constant
    assert math.isnan(suite_metrics.pearson([0.5], [1.0]))


def test_accuracy_and_f1_are_sklearns():
    from sklearn.metrics import accuracy_score, f1_score

    gold = ["pos", "neg", "neu", "pos", "neg", "pos"]
    outputs = ["pos\n", "neg", "pos", "pos", " neu", "other"]
    stripped = [o.strip() for o in outputs]
    assert suite_metrics.accuracy(outputs, gold) == pytest.approx(accuracy_score(gold, stripped))
    assert suite_metrics.accuracy(outputs, gold, strip=False) == pytest.approx(
        accuracy_score(gold, outputs)
    )
    for average in ("macro", "micro", "weighted"):
        assert suite_metrics.f1(outputs, gold, average=average) == pytest.approx(
            f1_score(gold, stripped, average=average, zero_division=0.0)
        )
    yes_no, said = ["yes", "no", "yes", "yes", "no"], ["yes", "yes", "no", "yes", "no"]
    assert suite_metrics.f1(said, yes_no, average="binary", pos_label="yes") == pytest.approx(
        f1_score(yes_no, said, average="binary", pos_label="yes")
    )


# --- settings ------------------------------------------------------------------------------

BASE = {"defaults": {"metrics": {"bleu": {}, "embedding_similarity": {}}}}


def settings_with(suite_metrics_raw, suite="sts"):
    return parse_settings(
        {**BASE, "suites": {suite: {"suite_metrics": suite_metrics_raw}}}, "evaluation.yaml"
    )


def test_suite_metric_settings_parse_and_inherit():
    settings = parse_settings(
        {
            "defaults": {
                "metrics": {"bleu": {}, "embedding_similarity": {}},
                "suite_metrics": {
                    "sacrebleu": {"tokenize": "intl"},
                    "spearman": {"metric": "embedding_similarity"},
                },
            },
            "suites": {"other": {"metrics": {"bleu": {}}}},
        },
        "evaluation.yaml",
    )
    default = settings.for_suite("anything")
    assert default.suite_metrics["sacrebleu"].options == {"tokenize": "intl"}
    assert default.suite_metrics["spearman"].metric == "embedding_similarity"
    assert default.suite_metrics["spearman"].key == "defaults.suite_metrics.spearman"
    # a suite without embedding_similarity does not inherit its correlation
    assert list(settings.for_suite("other").suite_metrics) == ["sacrebleu"]
    assert default.fingerprint() != settings.for_suite("other").fingerprint()


@pytest.mark.parametrize(
    ("raw", "key", "message"),
    [
        ({"meteor": {}}, "suites.sts.suite_metrics.meteor", "unknown suite metric"),
        ({"spearman": {}}, "suites.sts.suite_metrics.spearman.metric", "missing"),
        (
            {"spearman": {"metric": "rouge1"}},
            "suites.sts.suite_metrics.spearman.metric",
            "'rouge1' is not a metric this suite computes",
        ),
        (
            {"kendall": {"metric": "bleu", "variant": "a"}},
            "suites.sts.suite_metrics.kendall.variant",
            "unknown value 'a'",
        ),
        (
            {"accuracy": {"metric": "bleu"}},
            "suites.sts.suite_metrics.accuracy.metric",
            "no per-case",
        ),
        ({"f1": {"average": "binary"}}, "suites.sts.suite_metrics.f1.pos_label", "pos_label"),
        ({"sacrebleu": {"tokenize": "spm"}}, "suites.sts.suite_metrics.sacrebleu.tokenize", "13a"),
        (
            {"corpus_bleu": {"tokenizer": "moses"}},
            "suites.sts.suite_metrics.corpus_bleu.tokenizer",
            "moses",
        ),
        ({"chrf": {"beta": "2"}}, "suites.sts.suite_metrics.chrf.beta", "int"),
    ],
)
def test_bad_suite_metric_settings_name_the_key(raw, key, message):
    with pytest.raises(ConfigError, match=message) as err:
        settings_with(raw)
    assert err.value.key == key
    assert "evaluation.yaml" in str(err.value)


def test_unknown_bleu_tokenizer_is_refused_at_load_with_its_key():
    with pytest.raises(ConfigError, match="unknown BLEU tokenizer 'moses'") as err:
        parse_settings({"defaults": {"metrics": {"bleu": {"tokenizer": "moses"}}}}, "cfg.yaml")
    assert err.value.key == "defaults.metrics.bleu.tokenizer"


def write_suite(tmp_path, records, name="sts"):
    path = tmp_path / f"{name}.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return load_suite(path, name)


@pytest.mark.parametrize(
    ("labels", "suite_metric", "message"),
    [
        ([None, None], {"spearman": {"metric": "bleu"}}, "no case has a label"),
        (["pos", "neg"], {"pearson": {"metric": "bleu"}}, "carry string labels"),
        ([1.0, 2.0], {"accuracy": {}}, "carry numeric labels"),
        (
            [1.0, None],
            {"kendall": {"metric": "bleu"}},
            "1 case\\(s\\) have no label, the first 'b'",
        ),
    ],
)
def test_label_metrics_on_suites_without_those_labels_fail_at_load(
    tmp_path, labels, suite_metric, message
):
    suite = write_suite(
        tmp_path,
        [
            {
                "id": case_id,
                "input": "q",
                "expected": "a",
                **({"label": y} if y is not None else {}),
            }
            for case_id, y in zip("ab", labels, strict=True)
        ],
    )
    settings = settings_with(suite_metric)
    with pytest.raises(ConfigError, match=message) as err:
        check_suite_labels(settings, {"sts": suite})
    assert err.value.key == f"suites.sts.suite_metrics.{next(iter(suite_metric))}"
    assert str(suite.path) in str(err.value)


def test_catalog_refuses_a_correlation_on_a_suite_without_labels(tmp_path):
    from flowstone.evaluation.catalog import load_catalog

    write_suite(tmp_path, [{"id": "a", "input": "q", "expected": "a"}], name="plain")
    config = tmp_path / "evaluation.yaml"
    config.write_text(
        "defaults:\n  metrics: {bleu: {}}\n  suite_metrics: {spearman: {metric: bleu}}\n"
    )
    with pytest.raises(ConfigError, match="plain.jsonl no case has a label") as err:
        load_catalog(tmp_path, config)
    assert err.value.key == "defaults.suite_metrics.spearman"


# --- from the scores frame -----------------------------------------------------------------


def test_compute_suite_metrics_from_the_scores_frame(tmp_path):
    import sacrebleu
    from scipy import stats
    from sklearn.metrics import accuracy_score

    records = [
        {"id": f"c{i}", "input": p, "expected": refs if len(refs) > 1 else refs[0], "label": y}
        for i, (p, refs, y) in enumerate(zip(PREDS, REFS, [4.5, 3.0, 1.0], strict=True))
    ]
    records[0]["metadata"] = {"source": "handmade", "difficulty": 2}
    suite = write_suite(tmp_path, records)
    evaluation = parse_settings(
        {
            "defaults": {
                "metrics": {"bleu": {}, "fuzzy_match": {}},
                "suite_metrics": {
                    "sacrebleu": {},
                    "chrf": {},
                    "corpus_bleu": {},
                    "spearman": {"metric": "fuzzy_match"},
                    "pearson": {"metric": "bleu"},
                },
            }
        },
        "cfg",
    )
    check_suite_labels(evaluation, {"sts": suite})  # every case has a numeric label
    settings = evaluation.for_suite("sts")
    outputs = [PREDS[1], PREDS[0], "something else entirely"]
    predictions = pd.DataFrame({"case_id": [c.id for c in suite.cases], "output": outputs})
    scores = score_suite(suite, predictions, settings)

    assert list(scores["label"]) == [4.5, 3.0, 1.0]
    assert json.loads(scores["metadata"][0]) == {"source": "handmade", "difficulty": 2}
    assert pd.isna(scores["metadata"][1])  # no metadata: a missing value
    assert [list(r) for r in scores["references"]] == REFS

    # as the report will read it: after the object store's Parquet round trip
    stored = tmp_path / "scores.parquet"
    scores.to_parquet(stored)
    values = compute_suite_metrics(settings, pd.read_parquet(stored))

    streams = [[r[0] for r in REFS], [r[1] if len(r) > 1 else None for r in REFS]]
    assert values["sacrebleu"] == pytest.approx(sacrebleu.corpus_bleu(outputs, streams).score)
    assert values["chrf"] == pytest.approx(sacrebleu.corpus_chrf(outputs, streams).score)
    assert values["spearman"] == pytest.approx(
        stats.spearmanr(scores["fuzzy_match"], [4.5, 3.0, 1.0]).statistic
    )
    assert values["pearson"] == pytest.approx(
        stats.pearsonr(scores["bleu"], [4.5, 3.0, 1.0]).statistic
    )
    assert 0.0 <= values["corpus_bleu"] <= 1.0

    classes = write_suite(
        tmp_path,
        [{"id": f"k{i}", "input": "q", "expected": "a", "label": y} for i, y in enumerate("xyx")],
        name="classes",
    )
    class_settings = parse_settings(
        {"defaults": {"metrics": {"exact_match": {}}, "suite_metrics": {"accuracy": {}}}}, "cfg"
    ).for_suite("classes")
    frame = score_suite(
        classes,
        pd.DataFrame({"case_id": ["k0", "k1", "k2"], "output": ["x", "x", "x\n"]}),
        class_settings,
    )
    assert compute_suite_metrics(class_settings, frame) == {
        "accuracy": pytest.approx(accuracy_score(list("xyx"), list("xxx")))
    }


def test_compute_suite_metrics_refuses_missing_labels():
    settings = settings_with({"spearman": {"metric": "bleu"}}).for_suite("sts")
    frame = pd.DataFrame(
        {"case_id": ["a", "b"], "output": ["x", "y"], "bleu": [0.1, 0.2], "label": [1.0, None]}
    )
    with pytest.raises(ValueError, match="case 'b' has none"):
        compute_suite_metrics(settings, frame)


# --- thresholds on suite metrics -----------------------------------------------------------


def thresholds_with(thresholds, suite_metrics_raw=None):
    raw = suite_metrics_raw or {
        "spearman": {"metric": "bleu"},
        "chrf": {},
        "accuracy": {},
    }
    return parse_settings(
        {**BASE, "suites": {"sts": {"suite_metrics": raw, "thresholds": thresholds}}}, "cfg"
    )


def test_thresholds_on_suite_metrics_take_floors_on_each_metrics_scale():
    settings = thresholds_with(
        {
            "spearman": {"min_mean": -0.2, "blocking": True},
            "chrf": 40,
            "accuracy": {"min_mean": 0.75},
            "bleu": 0.1,
        }
    )
    sts = settings.for_suite("sts")
    assert sts.thresholds["spearman"].min_mean == -0.2 and sts.thresholds["spearman"].blocking
    assert sts.thresholds["chrf"].min_mean == 40.0
    assert settings.thresholded_metrics == ["accuracy", "bleu", "chrf", "spearman"]
    assert {name: SUITE_METRICS[name].scale for name in ("spearman", "chrf", "accuracy")} == {
        "spearman": (-1.0, 1.0),
        "chrf": (0.0, 100.0),
        "accuracy": (0.0, 1.0),
    }


@pytest.mark.parametrize(
    ("thresholds", "key", "message"),
    [
        ({"spearman": 1.5}, "suites.sts.thresholds.spearman.min_mean", r"\[-1, 1\]"),
        ({"chrf": 140}, "suites.sts.thresholds.chrf.min_mean", r"\[0, 100\]"),
        ({"accuracy": 40}, "suites.sts.thresholds.accuracy.min_mean", r"\[0, 1\]"),
        ({"bleu": -0.5}, "suites.sts.thresholds.bleu.min_mean", r"\[0, 1\]"),
        ({"kendall": 0.3}, "suites.sts.thresholds.kendall", "does not compute"),
        ({"spearman": {"min_mean": "high"}}, "suites.sts.thresholds.spearman.min_mean", "number"),
    ],
)
def test_bad_suite_metric_thresholds_name_the_key(thresholds, key, message):
    with pytest.raises(ConfigError, match=message) as err:
        thresholds_with(thresholds)
    assert err.value.key == key


def test_suite_metric_thresholds_are_inherited_only_where_the_metric_is_computed():
    settings = parse_settings(
        {
            "defaults": {
                "metrics": {"bleu": {}, "embedding_similarity": {}},
                "suite_metrics": {"pearson": {"metric": "embedding_similarity"}},
                "thresholds": {"pearson": {"min_mean": 0.4, "blocking": True}},
            },
            "suites": {
                "sts": {},
                "mt": {"metrics": {"bleu": {}}},  # no embedding_similarity: no pearson
            },
        },
        "cfg",
    )
    assert settings.for_suite("sts").thresholds["pearson"].min_mean == 0.4
    assert settings.for_suite("mt").thresholds == {}


def test_settings_module_loads_no_metric_library():
    """The code location parses the thresholds at load: the scales live in the registry, and
    reading them must not import scipy, scikit-learn or sacrebleu."""
    import subprocess
    import sys

    code = (
        "import sys; import flowstone.evaluation.config as c; "
        "c.parse_settings({'defaults': {'metrics': {'bleu': {}}, "
        "'suite_metrics': {'spearman': {'metric': 'bleu'}, 'chrf': {}}, "
        "'thresholds': {'spearman': -0.5, 'chrf': 30}}}, 'cfg'); "
        "print(sorted(m for m in ('scipy', 'sklearn', 'sacrebleu') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def sts_scores(bleu, labels):
    return pd.DataFrame(
        {
            "case_id": [f"c{i}" for i in range(len(bleu))],
            "tags": [""] * len(bleu),
            "output": ["x"] * len(bleu),
            "bleu": bleu,
            "label": labels,
        }
    )


def test_report_verdicts_use_the_suite_metric_value_and_fail_when_undefined():
    from scipy import stats

    from flowstone.evaluation.aggregate import build_report

    settings = parse_settings(
        {
            "defaults": {
                "metrics": {"bleu": {}},
                "suite_metrics": {"spearman": {"metric": "bleu"}, "kendall": {"metric": "bleu"}},
                "thresholds": {
                    "spearman": {"min_mean": 0.5, "blocking": True},
                    "kendall": {"min_mean": -1.0},
                },
            }
        },
        "cfg",
    ).for_suite("sts")
    labels = [1.0, 2.0, 3.0, 4.0]
    ranked = build_report(sts_scores([0.1, 0.3, 0.2, 0.9], labels), settings, "echo")
    rho = stats.spearmanr([0.1, 0.3, 0.2, 0.9], labels).statistic
    verdict = ranked.thresholds["spearman"]
    assert verdict.mean == pytest.approx(rho) and verdict.passed and verdict.reason is None
    assert ranked.passed

    reversed_ = build_report(sts_scores([0.9, 0.3, 0.2, 0.1], labels), settings, "echo")
    assert not reversed_.thresholds["spearman"].passed
    assert reversed_.thresholds["spearman"].reason is None  # a value, below the floor

    # constant scores: the correlation is undefined, and fails even the lowest floor
    flat = build_report(sts_scores([0.5] * 4, labels), settings, "echo")
    for name in ("spearman", "kendall"):
        verdict = flat.thresholds[name]
        assert not verdict.passed and math.isnan(verdict.mean)
        assert "every score (or every label) the same" in verdict.reason
    stored = flat.to_dict()
    assert stored["thresholds"]["kendall"]["mean"] is None
    assert stored["suite_metrics"] == {"spearman": None, "kendall": None}
