"""Summary statistics, tag breakdowns, thresholds and regression math."""

import numpy as np
import pandas as pd
import pytest

from flowstone.evaluation.aggregate import build_report, summarize_metric
from flowstone.evaluation.config import RegressionSettings, parse_settings
from flowstone.evaluation.regression import assess

SETTINGS = parse_settings(
    {
        "defaults": {
            "metrics": {"bleu": {"pass_score": 0.5}, "rouge1": {"pass_score": 0.25}},
            "thresholds": {"bleu": {"min_mean": 0.5, "blocking": True}, "rouge1": 0.1},
        }
    },
    "cfg",
).for_suite("s")


def scores() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "case_id": ["a", "b", "c", "d"],
            "tags": ["x,easy", "x", "y", ""],
            "bleu": [0.0, 0.4, 0.6, 1.0],
            "rouge1": [0.2, 0.3, 0.4, 0.5],
        }
    )


def test_summary_statistics():
    s = summarize_metric("bleu", scores()["bleu"], 0.5)
    assert (s.mean, s.median, s.min, s.cases) == (0.5, 0.5, 0.0, 4)
    assert s.p95 == pytest.approx(np.percentile([0, 0.4, 0.6, 1.0], 95))
    assert s.pass_rate == 0.5


def test_missing_scores_are_refused_not_zeroed():
    with pytest.raises(ValueError, match="missing scores"):
        summarize_metric("bleu", pd.Series([0.5, np.nan]), 0.5)


def test_report_thresholds_and_tags():
    report = build_report(scores(), SETTINGS, "sys")
    assert report.thresholds["bleu"].passed and report.thresholds["bleu"].blocking
    assert report.thresholds["rouge1"].passed
    tags = report.tags.set_index("tag")
    assert tags.loc["x", "cases"] == 2 and tags.loc["x", "bleu"] == pytest.approx(0.2)
    assert set(tags.index) == {"x", "easy", "y"}
    assert report.to_dict()["metrics"]["rouge1"]["pass_rate"] == 0.75


def test_failing_threshold():
    low = scores().assign(bleu=[0.1, 0.1, 0.1, 0.1])
    report = build_report(low, SETTINGS, "sys")
    assert not report.thresholds["bleu"].passed and not report.passed


def test_regressions_use_relative_margin():
    margin = RegressionSettings(margin=0.05)
    found, _ = assess(
        {"bleu": 0.45, "rouge1": 0.3, "new": 0.1}, {"bleu": 0.5, "rouge1": 0.31}, margin
    )
    assert [r.metric for r in found] == ["bleu"]
    assert found[0].relative_drop == pytest.approx(0.1)
    assert assess({"bleu": 0.0}, {"bleu": 0.0}, margin)[0] == []
    with pytest.raises(ValueError):
        RegressionSettings(margin=1.5)


def test_every_mean_carries_its_bootstrap_interval():
    from flowstone.evaluation.config import StatisticsSettings
    from flowstone.evaluation.statistics import bootstrap_ci

    values = pd.Series([0.1, np.nan, 0.4, 0.9, 0.6, 0.3])  # a judge's NaN is not resampled
    s = summarize_metric("judge", values, 0.5, True, StatisticsSettings(0.9, 500, 3))
    expected = bootstrap_ci(values.dropna(), level=0.9, resamples=500, seed=3)
    assert (s.ci_low, s.ci_high, s.ci_level) == (expected.low, expected.high, 0.9)
    assert s.ci_low < s.mean < s.ci_high and (s.cases, s.invalid) == (5, 1)
    stored = build_report(scores(), SETTINGS, "sys").to_dict()["metrics"]["bleu"]
    assert stored["ci_low"] < stored["mean"] < stored["ci_high"] and stored["ci_level"] == 0.95


JUDGED = parse_settings(
    {
        "defaults": {
            "metrics": {"llm_semantic_similarity": {}, "bleu": {}},
            "thresholds": {"llm_semantic_similarity": {"min_mean": 0.5, "blocking": True}},
        }
    },
    "cfg",
).for_suite("s")


def test_a_judge_with_no_valid_judgement_fails_alone():
    table = scores().assign(llm_semantic_similarity=np.nan)
    report = build_report(table, JUDGED, "sys")
    judged = report.metrics["llm_semantic_similarity"]
    assert judged.failed and (judged.cases, judged.invalid) == (0, 4)
    assert "0 valid of 4 judgements" in judged.failure
    assert "'llm_semantic_similarity_invalid_reply' column" in judged.failure
    verdict = report.thresholds["llm_semantic_similarity"]
    assert not verdict.passed and verdict.blocking and verdict.reason == judged.failure
    assert not report.passed
    assert report.means == {"bleu": 0.5}  # the other metric still reports
    stored = report.to_dict()
    assert stored["metrics"]["llm_semantic_similarity"]["mean"] is None
    assert stored["metrics"]["llm_semantic_similarity"]["ci_low"] is None
    assert stored["thresholds"]["llm_semantic_similarity"]["mean"] is None
    row = report.summary_frame().set_index("metric").loc["llm_semantic_similarity"]
    assert row["95% CI"] == "failed: 0 valid of 4" and np.isnan(row["mean"])


def test_missing_scores_of_a_metric_that_is_no_judge_still_raise():
    with pytest.raises(ValueError, match="missing scores"):
        build_report(scores().assign(bleu=np.nan, llm_semantic_similarity=0.5), JUDGED, "sys")
