"""The HTML report written next to the outputs: a chart per metric, the tag breakdown and
the worst cases, in one self-contained file a person can open or attach to a ticket."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import pandas as pd

from flowstone import atomic
from flowstone.evaluation.aggregate import Report
from flowstone.evaluation.regression import Regression


def _figure_png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def metric_charts(scores: pd.DataFrame, report: Report) -> str:
    """One PNG (base64) with a histogram a metric: mean, its confidence interval, pass score
    and threshold marked (a failed metric's panel says so instead).

    A single figure with one panel a metric renders in one pass, several times faster than a
    figure per metric.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = list(report.metrics)
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.5 * rows), squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names, strict=False):
        summary = report.metrics[name]
        ax.hist(
            scores[name].dropna(),
            bins=[i / 20 for i in range(21)],
            color="#4c72b0",
            edgecolor="white",
        )
        interval = summary.interval
        if interval is None:
            ax.text(
                0.5,
                0.5,
                f"failed: 0 valid of {summary.invalid}",
                transform=ax.transAxes,
                ha="center",
                color="#b00020",
                fontsize=9,
            )
            ax.set_yticks([])
        else:
            ax.axvspan(
                interval.low,
                interval.high,
                color="#222",
                alpha=0.12,
                label=f"{interval.level:.0%} CI {interval.bounds()}",
            )
            ax.axvline(summary.mean, color="#222", linewidth=1.5, label=f"mean {summary.mean:.3f}")
        ax.axvline(
            summary.pass_score,
            color="#dd8452",
            linestyle="--",
            label=f"pass {summary.pass_score:.2f}",
        )
        if name in report.thresholds:
            floor = report.thresholds[name].min_mean
            ax.axvline(
                floor, color="#c44e52", linestyle=":", linewidth=2, label=f"threshold {floor:.2f}"
            )
        ax.set_xlim(0, 1)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("score per case", fontsize=8)
        ax.set_ylabel("cases", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    try:
        return _figure_png(fig)
    finally:
        plt.close(fig)


# What a cell with no value shows (a metric without a threshold, an invalid judgement), never NaN.
MISSING = "—"


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(
        index=False,
        float_format=lambda v: f"{v:.3f}",
        na_rep=MISSING,
        border=0,
        classes="grid",
        escape=True,
    )


def suite_metrics_frame(report: Report) -> pd.DataFrame:
    """The suite-level figures with their threshold verdicts: a failed check on an undefined
    correlation must say why here too, or "thresholds failed" above would be unexplained."""
    verdicts = report.thresholds
    rows = []
    for name, value in report.suite_metrics.items():
        verdict = verdicts.get(name)
        if verdict is None:
            outcome = "no threshold"
        elif verdict.reason:
            outcome = f"FAIL: {verdict.reason}"
        else:
            outcome = "pass" if verdict.passed else "FAIL"
        rows.append(
            {
                "suite metric": name,
                "value": "undefined" if math.isnan(value) else f"{value:.3f}",
                "threshold": f"{verdict.min_mean:.3f}" if verdict else MISSING,
                "verdict": outcome,
            }
        )
    return pd.DataFrame(rows)


def calibration_frame(report: Report) -> pd.DataFrame:
    """Each judge's agreement with the gold labels and whether it clears its bar."""
    rows = [
        {
            "judge metric": name,
            "agreement": c.describe(3),
            "bar": f"{c.min_agreement:.3f}",
            "verdict": "calibrated" if c.calibrated else "UNCALIBRATED",
        }
        for name, c in report.calibration.items()
    ]
    return pd.DataFrame(rows)


def repeats_html(report: Report, scores: pd.DataFrame) -> str:
    """The system's repeats (spread, and each flipped case with its score on every repeat)
    and the judges' agreement with themselves; empty without repeats."""
    parts = []
    if report.repeats:
        rows = [
            {
                "metric": name,
                "repeats": r.repeats,
                "spread (mean sd)": r.spread,
                "flipped cases": len(r.flipped),
            }
            for name, r in report.repeats.items()
        ]
        parts.append(
            f"<h2>Repeats: {report.repeat_count} answers a case</h2>"
            "<p>A case's score is its mean over the repeats. A flipped case passes on some "
            "repeats and fails on others: one run's verdict on it is luck.</p>"
            + _table(pd.DataFrame(rows))
        )
        flips = [
            {
                "case_id": case,
                "metric": name,
                "score per repeat": ", ".join(
                    MISSING if v != v else f"{v:.3f}"
                    for v in scores.loc[scores["case_id"] == case, f"{name}_repeats"].iloc[0]
                ),
            }
            for name, r in report.repeats.items()
            for case in r.flipped
        ]
        if flips:
            parts.append(f"<h3>Flipped cases</h3>{_table(pd.DataFrame(flips))}")
    if report.judge_agreement:
        rows = [
            {
                "judge metric": name,
                "agreement": a.agreement,
                "spread (mean sd)": a.spread,
                "cases": a.cases,
            }
            for name, a in report.judge_agreement.items()
        ]
        parts.append(
            "<h2>Judges against themselves</h2><p>Agreement: the share of answers every "
            "repeat of the judge passes, or every repeat fails.</p>" + _table(pd.DataFrame(rows))
        )
    return "".join(parts)


def render_report(
    report: Report,
    scores: pd.DataFrame,
    regressions: list[Regression],
    run_url: str | None = None,
) -> str:
    chart = metric_charts(scores, report)
    summary = report.summary_frame()
    verdicts = report.thresholds
    summary["threshold"] = [
        f"{verdicts[m].min_mean:.3f}" if m in verdicts else MISSING for m in summary["metric"]
    ]
    summary["verdict"] = [
        ("pass" if verdicts[m].passed else "FAIL") if m in verdicts else "no threshold"
        for m in summary["metric"]
    ]
    failed = "".join(
        f"<p class='bad'>{html.escape(name)} failed: {html.escape(str(s.failure))}</p>"
        for name, s in report.failed.items()
    )
    first = next(iter(report.means), next(iter(report.metrics)))  # a failed metric has no order
    worst = scores.sort_values(first).head(5)[["case_id", "expected", "output", *report.metrics]]
    title = f"{html.escape(report.suite)} × {html.escape(report.system)}"
    regression_html = (
        "<p class='bad'>Regression against the previous run: "
        + ", ".join(
            f"{html.escape(r.metric)} {r.previous:.3f} → {r.current:.3f} (−{r.relative_drop:.1%})"
            for r in regressions
        )
        + "</p>"
        if regressions
        else "<p>No regression against the previous run.</p>"
    )
    suite_html = (
        f"<h2>Over the whole suite</h2>{_table(suite_metrics_frame(report))}"
        if report.suite_metrics
        else ""
    )
    uncalibrated = "".join(
        f"<p class='bad'>{html.escape(name)} {html.escape(str(c.verdict(3)))}</p>"
        for name, c in report.uncalibrated.items()
    )
    calibration_html = (
        f"<h2>Judges against the gold labels</h2>{uncalibrated}{_table(calibration_frame(report))}"
        if report.calibration
        else ""
    )
    images = f"<figure><img alt='score distributions' src='data:image/png;base64,{chart}'></figure>"
    link = f"<p><a href='{html.escape(run_url)}'>Dagster run</a></p>" if run_url else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>FlowStone report: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 1100px; }}
table.grid {{ border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }}
table.grid th, table.grid td {{ padding: 0.25rem 0.6rem; border-bottom: 1px solid #ddd; text-align: left; }}
figure {{ display: inline-block; margin: 0.3rem; }}
.bad {{ color: #b00020; font-weight: 600; }}
</style></head><body>
<h1>{title}</h1>
<p>{report.cases} cases · thresholds {"passed" if report.passed else "<span class='bad'>failed</span>"}</p>
{regression_html}{link}
<h2>Metrics</h2>{failed}{_table(summary)}
{suite_html}
{calibration_html}
{repeats_html(report, scores)}
<h2>Distributions</h2>{images}
<h2>By tag</h2>{_table(report.tags)}
<h2>Lowest-scoring cases ({html.escape(first)})</h2>{_table(worst)}
</body></html>
"""


def write_report(path: Path, content: str) -> Path:
    """Write atomically, so an open browser tab never reads half a file."""
    return atomic.write_text(path, content)
