"""Evaluation -> warehouse -> dbt, end to end on a throwaway DuckDB warehouse."""

import dagster as dg
import duckdb
import pandas as pd
import pytest

from assets.dbt import DBT_JOB
from assets.runner import materialize_analytics
from assets.warehouse import WAREHOUSE_JOB
from flowstone.warehouse.leaderboard import leaderboard

pytestmark = pytest.mark.slow  # dbt builds on a real DuckDB warehouse, 35-80 s each
TEST_CASES = {"qa": 4, "docs": 3}
METRICS = {"qa": ["exact_match", "fuzzy_match"], "docs": ["fuzzy_match", "rouge1"]}


def query(path, sql):
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql).df()
    finally:
        con.close()


def checks(result) -> dict[str, object]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def step_failure_message(result) -> str:
    return "\n".join(
        str(e.event_specific_data.error.message) for e in result.all_events if e.is_step_failure
    )


def test_evaluation_lands_in_warehouse_and_leaderboard(lab_factory):
    lab = lab_factory()
    lab.evaluate()
    results = materialize_analytics(lab.defs, lab.instance, lab.keys)
    assert results[WAREHOUSE_JOB].success
    assert results[DBT_JOB].success, step_failure_message(results[DBT_JOB])
    assert all(c.passed for c in checks(results[DBT_JOB]).values())
    assert len(checks(results[DBT_JOB])) >= 30

    scores = query(lab.warehouse, "select * from evaluation.warehouse_scores")
    expected_rows = sum(TEST_CASES[s] * len(METRICS[s]) for s in TEST_CASES) * 2
    assert len(scores) == expected_rows
    assert set(scores["metric"]) == {"exact_match", "fuzzy_match", "rouge1"}
    assert scores["score"].between(0, 1).all()

    board = leaderboard(lab.warehouse)
    assert len(board) == sum(len(m) for m in METRICS.values()) * 2
    qa_exact = board[(board.suite == "qa") & (board.metric == "exact_match")]
    # tunable answers with the expected text: exact match 1.0, rank 1; echo repeats the input.
    assert qa_exact.iloc[0]["system"] == "tunable"
    assert qa_exact.iloc[0]["latest_mean"] == pytest.approx(1.0)
    assert qa_exact.iloc[0]["rank"] == 1
    assert board["runs"].eq(1).all() and board["delta"].isna().all()
    # every latest mean carries its interval (seeded, so these few cases bracket their mean)
    assert board["latest_ci_level"].eq(0.95).all()
    assert (board["latest_ci_low"] <= board["latest_mean"]).all()
    assert (board["latest_mean"] <= board["latest_ci_high"]).all()
    reports = query(lab.warehouse, "select * from evaluation.warehouse_reports")
    echo_docs = reports[(reports.system == "echo") & (reports.suite == "docs")]
    board_docs = board[(board.system == "echo") & (board.suite == "docs")]
    assert sorted(echo_docs["mean"].round(6)) == sorted(board_docs["latest_mean"].round(6))

    # A second, worse run: history keeps both, the leaderboard shows the delta and the drop
    # lands in the regressions mart.
    lab.tunable.quality = 0.0
    lab.evaluate()
    results = materialize_analytics(lab.defs, lab.instance, lab.keys)
    assert results[DBT_JOB].success, step_failure_message(results[DBT_JOB])
    board = leaderboard(lab.warehouse, suite="qa")
    tunable = board[(board.system == "tunable") & (board.metric == "exact_match")].iloc[0]
    assert tunable["runs"] == 2
    assert tunable["best_mean"] == pytest.approx(1.0)
    assert tunable["latest_mean"] == pytest.approx(0.0)
    assert tunable["delta"] == pytest.approx(-1.0)
    assert bool(tunable["regressed"])
    regressions = query(lab.warehouse, "select * from analytics.regressions")
    assert {("qa", "tunable", "exact_match"), ("docs", "tunable", "rouge1")} <= set(
        zip(regressions.suite, regressions.system, regressions.metric, strict=True)
    )
    assert not (regressions.system == "echo").any()
    trends = query(lab.warehouse, "select * from analytics.score_trends_daily")
    assert (trends[trends.system == "tunable"]["runs"] == 2).all()
    # bake history builds (empty) before the baking line writes anything
    assert query(lab.warehouse, "select count(*) as n from analytics.bake_history").n[0] == 0


def corrupt_warehouse(path) -> None:
    """What a buggy writer could leave behind: a score above 1 and a repeated case id."""
    con = duckdb.connect(str(path))
    try:
        con.execute(
            "update evaluation.warehouse_scores set score = 1.5 "
            "where suite = 'qa' and system = 'echo' and case_id = 'q0'"
        )
        con.execute(
            "insert into evaluation.warehouse_scores select * from evaluation.warehouse_scores "
            "where suite = 'docs' and system = 'echo' and case_id = 'd1'"
        )
    finally:
        con.close()


def test_bad_scores_fail_dbt_checks_with_row_counts(lab_factory):
    lab = lab_factory()
    lab.evaluate()
    results = materialize_analytics(lab.defs, lab.instance, lab.keys)
    assert results[DBT_JOB].success
    corrupt_warehouse(lab.warehouse)

    result = lab.defs.resolve_job_def(DBT_JOB).execute_in_process(
        instance=lab.instance,
        raise_on_error=False,
        partition_key=pd.Timestamp.now("UTC").strftime("%Y-%m-%d"),
    )
    assert not result.success
    found = checks(result)
    in_range = found["within_range_stg_scores_score__1__0"]
    assert not in_range.passed
    # qa has two metrics: q0's exact_match and fuzzy_match rows both became 1.5
    assert in_range.metadata["dagster_dbt/failed_row_count"].value == 2
    unique = found["unique_stg_scores_score_id"]
    assert not unique.passed
    assert unique.metadata["dagster_dbt/failed_row_count"].value == 2  # d1 x 2 metrics
    assert unique.asset_key.to_user_string() == "analytics/stg_scores"
    assert found["not_null_stg_scores_case_id"].passed
    assert "within_range_stg_scores_score" in step_failure_message(result)


def test_dbt_compile_error_fails_with_dbts_message(lab_factory, project_copy):
    (project_copy / "models" / "marts" / "broken.sql").write_text(
        "select {{ var('flowstone_missing_var') }} as x from {{ ref('stg_reports') }}\n"
    )
    lab = lab_factory(project_copy)
    lab.evaluate()
    results = materialize_analytics(lab.defs, lab.instance, lab.keys)
    assert results[WAREHOUSE_JOB].success
    assert not results[DBT_JOB].success
    message = step_failure_message(results[DBT_JOB])
    assert "Compilation Error in model broken" in message
    assert "flowstone_missing_var" in message


def test_dbt_waits_out_a_warehouse_lock_held_by_another_process(lab_factory):
    """A writer outside Dagster (here: this test process) holds the DuckDB file; the dbt step
    sees dbt's lock error, asks for a retry, and succeeds once the file is free."""
    import threading
    import time

    lab = lab_factory()  # dbt builds on an empty warehouse: no evaluation needed here
    holder = duckdb.connect(str(lab.warehouse))

    def release_after_first_retry() -> None:
        """Hold the file until dbt has met the lock (however long dbt takes to start on a
        busy machine), then let go so the retry succeeds."""
        from dagster._core.events import DagsterEventType

        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            records = lab.instance.get_event_records(
                dg.EventRecordsFilter(event_type=DagsterEventType.STEP_UP_FOR_RETRY), limit=1
            )
            if records:
                break
            time.sleep(0.2)
        holder.close()

    timer = threading.Thread(target=release_after_first_retry)
    timer.start()
    try:
        result = lab.defs.resolve_job_def(DBT_JOB).execute_in_process(
            instance=lab.instance,
            raise_on_error=False,
            partition_key=pd.Timestamp.now("UTC").strftime("%Y-%m-%d"),
        )
    finally:
        timer.join()
    assert result.success, step_failure_message(result)
    retried = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert retried, "the first dbt attempt should have met the lock"


LABELLED = [
    {
        "id": f"s{i}",
        "input": f"What colour is item {i}?",
        "expected": f"item {i} is {'red' if i % 2 else 'a dark shade of blue'}",
        "label": float(i % 3),
    }
    for i in range(5)
]
SUITE_METRIC_SETTINGS = {
    "defaults": {
        "metrics": {"exact_match": {}, "fuzzy_match": {}},
        "suite_metrics": {"spearman": {"metric": "fuzzy_match"}, "chrf": {}},
        "thresholds": {"spearman": {"min_mean": 0.5}, "chrf": {"min_mean": 50}},
    }
}


def test_suite_metrics_are_report_rows_the_leaderboard_ranks(lab_factory):
    """chrF (0-100) and spearman ([-1, 1]) land as kind 'suite' rows: dbt's [0, 1] tests
    leave them alone, the leaderboard ranks them, and an undefined value stays NULL."""
    lab = lab_factory(suites={"sts": LABELLED}, settings=SUITE_METRIC_SETTINGS)
    lab.evaluate()  # the thresholds are not blocking: a failed one does not stop the run
    results = materialize_analytics(lab.defs, lab.instance, lab.keys)
    assert results[WAREHOUSE_JOB].success
    assert results[DBT_JOB].success, step_failure_message(results[DBT_JOB])
    found = checks(results[DBT_JOB])
    assert all(c.passed for c in found.values())
    assert "accepted_values_stg_reports_kind__mean__suite" in found

    reports = query(lab.warehouse, "select * from evaluation.warehouse_reports")
    suite_rows = reports[reports.kind == "suite"].set_index(["system", "metric"])
    assert set(suite_rows.index) == {
        (s, m) for s in ("echo", "tunable") for m in ("spearman", "chrf")
    }
    assert set(reports[reports.kind == "mean"].metric) == {"exact_match", "fuzzy_match"}
    # tunable answers every case exactly: chrF 100 passes its floor of 50; its fuzzy scores are
    # all 1.0, so spearman is undefined: NULL (never 0.0) and its threshold failed
    tunable_chrf = suite_rows.loc[("tunable", "chrf")]
    assert tunable_chrf["mean"] == pytest.approx(100.0) and tunable_chrf["threshold_passed"]
    tunable_rho = suite_rows.loc[("tunable", "spearman")]
    assert pd.isna(tunable_rho["mean"]) and not tunable_rho["threshold_passed"]
    assert tunable_rho["threshold"] == 0.5 and pd.isna(tunable_rho["ci_low"])

    board = leaderboard(lab.warehouse).set_index(["metric", "system"])
    assert board.loc[("chrf", "tunable"), "kind"] == "suite"
    assert board.loc[("chrf", "tunable"), "rank"] == 1
    assert board.loc[("chrf", "echo"), "latest_mean"] < 100.0
    assert pd.isna(board.loc[("spearman", "tunable"), "latest_mean"])
    assert board.loc[("spearman", "tunable"), "rank"] == 2  # undefined ranks last
    assert board.loc[("exact_match", "tunable"), "kind"] == "mean"
    trends = query(lab.warehouse, "select * from analytics.score_trends_daily")
    assert set(trends[trends.kind == "suite"].metric) == {"spearman", "chrf"}
