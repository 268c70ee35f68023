"""Evaluation settings: bad values are refused with the file and the key."""

import pytest

from flowstone.errors import ConfigError
from flowstone.evaluation.config import load_settings, parse_settings

BASE = {"defaults": {"metrics": {"bleu": {}, "rouge1": {}}}}


def test_shipped_settings_load(repo_root):
    suites = ["qa", "summarisation", "paraphrase", "intent"]
    settings = load_settings(repo_root / "evaluation.yaml", suites)
    assert "embedding_similarity" in settings.thresholded_metrics
    intent = settings.for_suite("intent")
    assert list(intent.metrics) == ["exact_match"] and not intent.thresholds
    assert {s.name for s in intent.suite_metrics.values()} == {"accuracy", "f1"}
    assert settings.for_suite("summarisation").thresholds["rougeL"].blocking is True


def test_suite_inherits_defaults_and_overrides():
    settings = parse_settings(
        {**BASE, "suites": {"qa": {"thresholds": {"bleu": 0.2}, "regression_margin": 0.1}}}, "cfg"
    )
    qa = settings.for_suite("qa")
    assert list(qa.metrics) == ["bleu", "rouge1"]
    assert qa.thresholds["bleu"].min_mean == 0.2 and qa.regression_margin == 0.1
    assert settings.for_suite("other").regression_margin == 0.05
    assert qa.fingerprint() != settings.for_suite("other").fingerprint()


@pytest.mark.parametrize(
    ("raw", "key", "message"),
    [
        ({"defaults": {"metrics": {"meteor": {}}}}, "defaults.metrics.meteor", "unknown metric"),
        (
            {**BASE, "suites": {"qa": {"thresholds": {"bleu": 1.5}}}},
            "suites.qa.thresholds.bleu.min_mean",
            r"\[0, 1\]",
        ),
        (
            {**BASE, "suites": {"qa": {"thresholds": {"bleu": {"min_mean": -0.1}}}}},
            "suites.qa.thresholds.bleu.min_mean",
            r"\[0, 1\]",
        ),
        (
            {"defaults": {"metrics": {"bleu": {"pass_score": 2}}}},
            "defaults.metrics.bleu.pass_score",
            r"\[0, 1\]",
        ),
        (
            {"defaults": {"metrics": {"bleu": {"order": 3}}}},
            "defaults.metrics.bleu.order",
            "unknown option",
        ),
        (
            {**BASE, "suites": {"qa": {"thresholds": {"exact_match": 0.5}}}},
            "suites.qa.thresholds.exact_match",
            "does not compute",
        ),
        (
            {**BASE, "suites": {"qa": {"regression_margin": "big"}}},
            "suites.qa.regression_margin",
            "number",
        ),
        ({**BASE, "suites": {"nosuch": {}}}, "suites.nosuch", "no suite file"),
        ({"defaults": {}}, "defaults.metrics", "missing"),
    ],
)
def test_bad_settings_name_the_key(raw, key, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_settings(raw, "evaluation.yaml", known_suites=["qa"])
    assert err.value.key == key
    assert "evaluation.yaml" in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)


def test_statistics_block_defaults_and_per_suite_override():
    raw = {
        **BASE,
        "defaults": {**BASE["defaults"], "statistics": {"resamples": 2000, "seed": 7}},
        "suites": {"qa": {"statistics": {"confidence_level": 0.9}}},
    }
    settings = parse_settings(raw, "evaluation.yaml", known_suites=["qa", "docs"])
    qa, docs = settings.for_suite("qa").statistics, settings.for_suite("docs").statistics
    assert (qa.confidence_level, qa.resamples, qa.seed, qa.method) == (0.9, 2000, 7, "percentile")
    assert (docs.confidence_level, docs.resamples) == (0.95, 2000)
    unset = parse_settings(BASE, "evaluation.yaml").for_suite("qa").statistics
    assert (unset.confidence_level, unset.resamples, unset.seed) == (0.95, 1000, 0)
    assert settings.for_suite("qa").fingerprint() != settings.for_suite("docs").fingerprint()


@pytest.mark.parametrize(
    ("statistics", "key", "message"),
    [
        ({"confidence_level": 1.0}, "confidence_level", "strictly between 0 and 1"),
        ({"confidence_level": 0}, "confidence_level", "strictly between 0 and 1"),
        ({"confidence_level": 95}, "confidence_level", "0.95 for a 95% interval"),
        ({"resamples": 99}, "resamples", "at least 100"),
        ({"resamples": 1000.5}, "resamples", "integer"),
        ({"seed": -1}, "seed", "non-negative"),
        ({"method": "basic"}, "method", "percentile, bca"),
        ({"level": 0.9}, "level", "unknown key"),
    ],
)
def test_bad_statistics_settings_name_the_key(statistics, key, message):
    raw = {**BASE, "suites": {"qa": {"statistics": statistics}}}
    with pytest.raises(ConfigError, match=message) as err:
        parse_settings(raw, "evaluation.yaml", known_suites=["qa"])
    assert err.value.key == f"suites.qa.statistics.{key}"
