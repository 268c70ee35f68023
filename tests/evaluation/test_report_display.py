"""What a person reads: the HTML report never prints NaN (a metric without a threshold shows
"—" and "no threshold"), and metadata shows means to 3 decimals while the stored report keeps
them at full precision."""

import re

import pandas as pd
import pytest

from flowstone.evaluation.aggregate import build_report
from flowstone.evaluation.config import parse_settings
from flowstone.evaluation.pipeline import ReportResult
from flowstone.evaluation.report_html import render_report

# bleu has a threshold, rouge1 none.
SETTINGS = parse_settings(
    {"defaults": {"metrics": {"bleu": {}, "rouge1": {}}, "thresholds": {"bleu": 0.1}}},
    "cfg",
).for_suite("s")


def scores() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "case_id": ["a", "b", "c"],
            "tags": ["x", "x", "y"],
            "expected": ["one", "two", "three"],
            "output": ["one", "too", "tree"],
            "bleu": [1.0, 0.123456, 0.2],
            "rouge1": [1.0, 0.0, 1 / 3],
        }
    )


def test_unset_threshold_is_a_dash_not_nan(tmp_path):
    report = build_report(scores(), SETTINGS, "sys")
    assert "rouge1" not in report.thresholds
    page = re.sub(r"data:image/png;base64,[^']*", "", render_report(report, scores(), []))
    assert "nan" not in page.lower()
    rouge_row = next(row for row in page.split("<tr>") if "<td>rouge1</td>" in row)
    assert "<td>—</td>" in rouge_row and "<td>no threshold</td>" in rouge_row
    bleu_row = next(row for row in page.split("<tr>") if "<td>bleu</td>" in row)
    assert "<td>0.100</td>" in bleu_row and "<td>pass</td>" in bleu_row


def test_metadata_means_rounded_stored_means_exact(tmp_path):
    report = build_report(scores(), SETTINGS, "sys")
    result = ReportResult(report, [], tmp_path / "r.html", {"rouge1": 0.4444444})
    metadata = result.metadata()
    assert metadata["mean/rouge1"] == 0.444 and metadata["mean/bleu"] == 0.441
    stored = result.to_value()
    assert stored["metrics"]["rouge1"]["mean"] == pytest.approx(4 / 9, abs=1e-12)
    assert stored["metrics"]["bleu"]["mean"] == pytest.approx(1.323456 / 3, abs=1e-12)
    assert stored["previous_means"] == {"rouge1": 0.4444444}


def test_intervals_show_beside_means_in_metadata_and_html(tmp_path):
    report = build_report(scores(), SETTINGS, "sys")
    metadata = ReportResult(report, [], tmp_path / "r.html", {}).metadata()
    bleu = report.metrics["bleu"]
    assert metadata["ci/bleu"] == f"{bleu.ci_low:.3f}–{bleu.ci_high:.3f} (95% CI)"
    assert list(metadata).index("ci/bleu") == list(metadata).index("mean/bleu") + 1
    page = render_report(report, scores(), [])
    bleu_row = next(row for row in page.split("<tr>") if "<td>bleu</td>" in row)
    assert f"<td>{bleu.ci_low:.3f}–{bleu.ci_high:.3f}</td>" in bleu_row
    assert "<th>95% CI</th>" in page


def test_a_failed_judge_reads_as_failed_never_nan(tmp_path):
    settings = parse_settings(
        {"defaults": {"metrics": {"bleu": {}, "llm_faithfulness": {}}}}, "cfg"
    ).for_suite("s")
    table = scores().assign(llm_faithfulness=float("nan"))
    report = build_report(table, settings, "sys")
    metadata = ReportResult(report, [], tmp_path / "r.html", {}).metadata()
    assert "mean/llm_faithfulness" not in metadata and "ci/llm_faithfulness" not in metadata
    assert metadata["failed/llm_faithfulness"].startswith("0 valid of 3 judgements")
    assert metadata["invalid/llm_faithfulness"] == 3 and metadata["mean/bleu"] == 0.441
    markdown = metadata["summary"].to_markdown(index=False, floatfmt=".3f")
    assert "nan" not in markdown.lower() and "failed: 0 valid of 3" in markdown
    page = re.sub(r"data:image/png;base64,[^']*", "", render_report(report, table, []))
    assert "nan" not in page.lower()
    assert "llm_faithfulness failed: 0 valid of 3 judgements" in page
