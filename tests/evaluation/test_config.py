"""Evaluation settings: bad values are refused with the file and the key."""

import pytest

from flowstone.errors import ConfigError
from flowstone.evaluation.config import load_settings, parse_settings

BASE = {"defaults": {"metrics": {"bleu": {}, "rouge1": {}}}}


def test_shipped_settings_load(repo_root):
    settings = load_settings(repo_root / "evaluation.yaml", ["qa", "summarisation", "paraphrase"])
    assert "embedding_similarity" in settings.thresholded_metrics
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
