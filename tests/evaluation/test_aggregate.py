"""Summary statistics, tag breakdowns, thresholds and regression math."""

import numpy as np
import pandas as pd
import pytest

from flowstone.evaluation.aggregate import build_report, summarize_metric
from flowstone.evaluation.config import parse_settings
from flowstone.evaluation.regression import find_regressions

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
    found = find_regressions(
        {"bleu": 0.45, "rouge1": 0.3, "new": 0.1}, {"bleu": 0.5, "rouge1": 0.31}, 0.05
    )
    assert [r.metric for r in found] == ["bleu"]
    assert found[0].relative_drop == pytest.approx(0.1)
    assert find_regressions({"bleu": 0.0}, {"bleu": 0.0}, 0.05) == []
    with pytest.raises(ValueError):
        find_regressions({}, {}, 1.5)
