"""A judge's agreement with gold labels: Spearman for gold scores, Cohen's kappa for classes,
checked against scipy and scikit-learn called here; settings, report, metadata, HTML, viewer."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import cohen_kappa_score

from flowstone.errors import ConfigError
from flowstone.evaluation.aggregate import build_report
from flowstone.evaluation.calibration import calibrate, kappa_agreement, spearman_agreement
from flowstone.evaluation.config import CalibrationSetting, parse_settings
from flowstone.evaluation.pipeline import ReportResult
from flowstone.evaluation.report_html import render_report

JUDGE = "llm_semantic_similarity"
BAR = CalibrationSetting(min_agreement=0.5)


def test_spearman_equals_scipy_on_the_valid_pairs():
    rng = np.random.default_rng(3)
    scores = rng.uniform(0, 1, 30).round(2).tolist()
    labels = (np.asarray(scores) * 4 + rng.normal(0, 1.0, 30)).round(1).tolist()
    scores[4] = math.nan  # an invalid judgement: dropped with its label, not scored 0.0
    result = spearman_agreement(JUDGE, scores, labels, BAR)
    kept = [i for i in range(30) if i != 4]
    expected = spearmanr([scores[i] for i in kept], [labels[i] for i in kept]).statistic
    assert result.agreement == pytest.approx(expected, abs=1e-12)
    assert result.cases == 29 and result.method == "spearman"
    assert result.describe() == f"spearman {expected:.2f} (n=29)"


def test_kappa_equals_sklearn_on_pass_fail_verdicts():
    rng = np.random.default_rng(5)
    scores = rng.uniform(0, 1, 40).round(2).tolist()
    labels = ["yes" if (s >= 0.6) != (rng.uniform() < 0.2) else "no" for s in scores]
    scores[0] = math.nan
    result = kappa_agreement(JUDGE, scores, labels, 0.6, BAR)
    judged = [s >= 0.6 for s in scores[1:]]
    gold = [y == "yes" for y in labels[1:]]
    assert result.agreement == pytest.approx(cohen_kappa_score(gold, judged), abs=1e-12)
    assert result.cases == 39 and result.method == "cohen_kappa"


def test_pass_label_names_the_passing_class_among_any_classes():
    labels = ["ok", "broken", "ok", "meh", "ok", "broken"]
    scores = [0.9, 0.1, 0.8, 0.7, 0.2, 0.3]
    result = kappa_agreement(JUDGE, scores, labels, 0.5, CalibrationSetting(0.5, "ok"))
    expected = cohen_kappa_score([y == "ok" for y in labels], [s >= 0.5 for s in scores])
    assert result.agreement == pytest.approx(expected)
    unknown = kappa_agreement(JUDGE, scores, labels, 0.5, BAR)
    assert math.isnan(unknown.agreement) and "calibration.pass_label" in str(unknown.reason)
    assert not unknown.calibrated


@pytest.mark.parametrize(
    ("scores", "labels", "why"),
    [
        ([0.5, math.nan, math.nan], [1.0, 2.0, 3.0], "fewer than two"),
        ([0.7, 0.7, 0.7], [1.0, 2.0, 3.0], "same score"),
        ([0.1, 0.5, 0.9], [2.0, 2.0, 2.0], "every label is the same"),
        ([0.9, 0.8, 0.7], ["pass", "fail", "pass"], "same verdict"),
        ([0.9, 0.1, 0.7], ["fail", "fail", "fail"], "every label is the same"),
    ],
)
def test_undefined_agreement_is_said_never_zero(scores, labels, why):
    result = calibrate(JUDGE, scores, labels, 0.5, BAR)
    assert result is not None and math.isnan(result.agreement) and why in str(result.reason)
    assert not result.calibrated
    assert "undefined" in result.describe() and result.to_dict()["agreement"] is None
    assert str(result.verdict()).startswith("uncalibrated: agreement undefined")


def test_no_calibration_unless_every_case_has_a_label():
    assert calibrate(JUDGE, [0.1, 0.9], [1.0, None], 0.5, BAR) is None
    assert calibrate(JUDGE, [0.1, 0.9], [1.0, math.nan], 0.5, BAR) is None


def test_bar_decides_calibrated():
    low = spearman_agreement(JUDGE, [0.1, 0.2, 0.3, 0.4], [1, 3, 2, 4], BAR)  # rho 0.8
    assert low.calibrated and low.verdict() is None
    strict = spearman_agreement(JUDGE, [0.1, 0.2, 0.3, 0.4], [1, 3, 2, 4], CalibrationSetting(0.9))
    assert not strict.calibrated
    assert strict.verdict() == "uncalibrated: spearman 0.80 is below the bar 0.90"


# --- settings ----------------------------------------------------------------------------------


def test_calibration_settings_parse_and_change_the_fingerprint():
    plain = parse_settings({"defaults": {"metrics": {JUDGE: {}}}}, "cfg").for_suite("s")
    tuned = parse_settings(
        {
            "defaults": {
                "metrics": {JUDGE: {"calibration": {"min_agreement": 0.7, "pass_label": "y"}}}
            }
        },
        "cfg",
    ).for_suite("s")
    assert plain.metrics[JUDGE].calibration_setting == CalibrationSetting(0.5, None)
    assert tuned.metrics[JUDGE].calibration == CalibrationSetting(0.7, "y")
    assert "calibration" not in tuned.metrics[JUDGE].options  # never passed to the judge
    assert plain.fingerprint() != tuned.fingerprint()


@pytest.mark.parametrize(
    ("metric", "block", "key", "message"),
    [
        ("bleu", {"min_agreement": 0.5}, "defaults.metrics.bleu.calibration", "not a judge"),
        (
            JUDGE,
            {"min_agreement": 1.5},
            f"defaults.metrics.{JUDGE}.calibration.min_agreement",
            "[-1, 1]",
        ),
        (
            JUDGE,
            {"min_agreement": "high"},
            f"defaults.metrics.{JUDGE}.calibration.min_agreement",
            "[-1, 1]",
        ),
        (JUDGE, {"bar": 0.5}, f"defaults.metrics.{JUDGE}.calibration.bar", "unknown key"),
        (JUDGE, {"pass_label": 1}, f"defaults.metrics.{JUDGE}.calibration.pass_label", "string"),
        (JUDGE, [0.5], f"defaults.metrics.{JUDGE}.calibration", "mapping"),
    ],
)
def test_bad_calibration_settings_name_the_key(metric, block, key, message):
    with pytest.raises(ConfigError) as caught:
        parse_settings({"defaults": {"metrics": {metric: {"calibration": block}}}}, "cfg")
    assert key in str(caught.value) and message in str(caught.value)


# --- report, metadata, HTML, viewer ------------------------------------------------------------


def settings(bar: float = 0.5):
    return parse_settings(
        {
            "defaults": {
                "metrics": {
                    "rouge1": {},
                    JUDGE: {"pass_score": 0.5, "calibration": {"min_agreement": bar}},
                }
            }
        },
        "cfg",
    ).for_suite("gold")


def scores(labels: list) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "case_id": ["a", "b", "c", "d"],
            "tags": ["", "", "", ""],
            "expected": ["x"] * 4,
            "output": ["x"] * 4,
            "label": labels,
            "rouge1": [0.1, 0.4, 0.6, 0.9],
            JUDGE: [0.2, math.nan, 0.7, 0.9],
        }
    )


def test_report_stores_and_shows_calibration(tmp_path):
    report = build_report(scores([1.0, 5.0, 2.0, 3.0]), settings(), "sys")
    assert list(report.calibration) == [JUDGE]  # rouge1 is no judge
    calibration = report.calibration[JUDGE]
    assert calibration.agreement == pytest.approx(1.0) and calibration.cases == 3
    stored = report.to_dict()["calibration"][JUDGE]
    assert stored["calibrated"] and stored["method"] == "spearman" and stored["cases"] == 3
    html = render_report(report, scores([1.0, 5.0, 2.0, 3.0]), [])
    meta = ReportResult(report, [], tmp_path / "r.html", {}).metadata()
    assert meta[f"calibration/{JUDGE}"] == "spearman 1.00 (n=3)"
    assert f"uncalibrated/{JUDGE}" not in meta
    assert "Judges against the gold labels" in html and "UNCALIBRATED" not in html


def test_uncalibrated_judge_is_flagged_in_metadata_and_html(tmp_path):
    frame = scores(["pass", "pass", "fail", "fail"])  # the judge says the opposite
    report = build_report(frame, settings(), "sys")
    meta = ReportResult(report, [], tmp_path / "r.html", {}).metadata()
    assert meta[f"calibration/{JUDGE}"].startswith("cohen's kappa -")
    assert meta[f"uncalibrated/{JUDGE}"].startswith("uncalibrated: cohen's kappa")
    assert "UNCALIBRATED" in render_report(report, frame, [])


def test_unlabelled_suite_has_no_calibration(tmp_path):
    report = build_report(scores([None] * 4), settings(), "sys")
    assert report.calibration == {} and report.to_dict()["calibration"] == {}
    meta = ReportResult(report, [], tmp_path / "r.html", {}).metadata()
    assert not [k for k in meta if "calibrat" in k]


def test_viewer_partition_page_marks_an_uncalibrated_judge():
    from flowstone.web.links import ViewerLinks
    from flowstone.web.records import PartitionReport
    from flowstone.web.render import environment

    report = build_report(scores(["pass", "pass", "fail", "fail"]), settings(), "sys")
    stored = PartitionReport.from_stored(
        {**report.to_dict(), "previous_means": {}, "regressions": []}
    )
    assert stored.uncalibrated == [JUDGE]
    assert stored.calibration[JUDGE].agreement == pytest.approx(report.calibration[JUDGE].agreement)
    page = (
        environment()
        .get_template("partition.html")
        .render(
            links=ViewerLinks(""),
            request=SimpleNamespace(scope={}),
            comparison=None,
            report=stored,
            system="sys",
            table=SimpleNamespace(metrics=[], cases=[]),
            html_report=False,
        )
    )
    assert 'id="calibration"' in page and "uncalibrated" in page
    assert "Cohen&#39;s kappa" in page or "Cohen's kappa" in page


def test_stored_reports_without_calibration_still_read():
    from flowstone.web.records import PartitionReport

    report = build_report(scores([None] * 4), settings(), "sys").to_dict()
    report.pop("calibration")
    assert PartitionReport.from_stored({**report}).calibration == {}


def test_flowstone_eval_json_carries_calibration_only_when_there_is_one(tmp_path):
    from flowstone.evaluation.offline import outcome_of

    labelled = build_report(scores(["pass", "pass", "fail", "fail"]), settings(), "sys")
    data = outcome_of(ReportResult(labelled, [], tmp_path / "r.html", {})).to_json()
    assert data["calibration"][JUDGE]["method"] == "cohen_kappa"
    assert data["calibration"][JUDGE]["calibrated"] is False
    plain = build_report(scores([None] * 4), settings(), "sys")
    assert (
        "calibration" not in outcome_of(ReportResult(plain, [], tmp_path / "r.html", {})).to_json()
    )
