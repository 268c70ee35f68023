"""Wiring that needs no dbt run: long-format frames, pools, schedules, automation, manifest."""

import math
import os
import time
from datetime import UTC, datetime

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from assets.dbt import DBT_JOB
from assets.pools import WAREHOUSE_POOL, ensure_pool_limits
from assets.warehouse import WAREHOUSE_JOB
from flowstone.warehouse.frames import REPORT_COLUMNS, SCORE_COLUMNS, long_scores, report_rows
from flowstone.warehouse.leaderboard import leaderboard
from flowstone.warehouse.project import manifest_is_stale

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def test_long_scores_keep_invalid_judgements_null_never_zero():
    scores = pd.DataFrame(
        {
            "case_id": ["a", "b"],
            "tags": ["x,y", None],
            "expected": ["e", "e"],
            "output": ["o", "o"],
            "exact_match": [1.0, 0.0],
            "judge": [0.5, np.nan],
        }
    )
    long = long_scores(scores, "qa", "echo", ["exact_match", "judge"], NOW, "run-1")
    assert list(long.columns) == SCORE_COLUMNS
    assert len(long) == 4
    invalid = long[(long.metric == "judge") & (long.case_id == "b")].iloc[0]
    assert pd.isna(invalid["score"]) and not invalid["valid"]
    assert long.loc[long.metric == "exact_match", "score"].tolist() == [1.0, 0.0]
    assert long["tags"].tolist()[:2] == ["x,y", ""]
    assert long["label"].isna().all() and long["metadata"].isna().all()  # none in this suite


def test_long_scores_carry_the_gold_label_and_metadata_as_text():
    scores = pd.DataFrame(
        {
            "case_id": ["a", "b", "c"],
            "label": [0.8, "positive", None],
            "metadata": ['{"source": "sts"}', None, None],
            "bleu": [0.1, 0.2, 0.3],
        }
    )
    long = long_scores(scores, "qa", "echo", ["bleu"], NOW, "r")
    assert long["label"].tolist() == ["0.8", "positive", None]
    assert long["metadata"].tolist() == ['{"source": "sts"}', None, None]


def test_long_scores_refuse_missing_metric_and_repeated_cases():
    scores = pd.DataFrame({"case_id": ["a", "a"], "tags": ["", ""], "bleu": [0.1, 0.2]})
    with pytest.raises(ValueError, match="no column for metric"):
        long_scores(scores.iloc[:1], "qa", "echo", ["rouge1"], NOW, "r")
    with pytest.raises(ValueError, match="repeat case ids"):
        long_scores(scores, "qa", "echo", ["bleu"], NOW, "r")


def test_report_rows_carry_threshold_and_regression():
    metric = dict(mean=0.4, median=0.5, p95=0.9, min=0.0, pass_rate=0.5, pass_score=0.5)
    report = {
        "suite": "qa",
        "system": "echo",
        "metrics": {
            "bleu": {**metric, "metric": "bleu", "cases": 4, "invalid": 0},
            "rouge1": {**metric, "metric": "rouge1", "cases": 4, "invalid": 1},
        },
        "thresholds": {"bleu": {"min_mean": 0.5, "passed": False}},
    }
    rows = report_rows(report, {"bleu": 0.8}, ["bleu"], NOW, "r").set_index("metric")
    assert set(rows.reset_index().columns) == set(REPORT_COLUMNS)
    assert rows.loc["bleu", "regression"] and not rows.loc["rouge1", "regression"]
    assert rows.loc["bleu", "threshold"] == 0.5 and not rows.loc["bleu", "threshold_passed"]
    assert math.isnan(rows.loc["rouge1", "threshold"]) and rows.loc["rouge1", "threshold_passed"]
    assert rows.loc["bleu", "passed_cases"] == 2 and rows.loc["rouge1", "invalid"] == 1


def test_report_rows_carry_intervals_and_a_failed_metric_as_nulls():
    from flowstone.evaluation.aggregate import build_report
    from flowstone.evaluation.config import parse_settings

    settings = parse_settings(
        {
            "defaults": {
                "metrics": {"bleu": {}, "llm_semantic_similarity": {}},
                "thresholds": {"llm_semantic_similarity": 0.5},
            }
        },
        "cfg",
    ).for_suite("qa")
    scores = pd.DataFrame(
        {"case_id": ["a", "b", "c"], "tags": ["", "", ""], "bleu": [0.2, 0.5, 0.9]}
    ).assign(llm_semantic_similarity=np.nan)
    stored = build_report(scores, settings, "echo").to_dict()
    rows = report_rows(stored, {}, [], NOW, "r").set_index("metric")
    bleu, judge = rows.loc["bleu"], rows.loc["llm_semantic_similarity"]
    assert bleu["ci_low"] < bleu["mean"] < bleu["ci_high"] and bleu["ci_level"] == 0.95
    assert (judge["cases"], judge["invalid"], judge["passed_cases"]) == (0, 3, 0)
    assert all(math.isnan(judge[c]) for c in ("mean", "ci_low", "ci_high", "pass_rate"))
    assert not judge["threshold_passed"] and judge["threshold"] == 0.5
    old = {k: v for k, v in stored["metrics"]["bleu"].items() if not k.startswith("ci_")}
    before = report_rows({**stored, "metrics": {"bleu": old}}, {}, [], NOW, "r")
    assert math.isnan(before.loc[0, "ci_low"])  # a report stored before intervals existed


def test_warehouse_pool_gets_one_slot_and_keeps_a_chosen_limit():
    with dg.instance_for_test() as instance:
        ensure_pool_limits(instance)
        assert instance.event_log_storage.get_concurrency_info(WAREHOUSE_POOL).slot_count == 1
        instance.event_log_storage.set_concurrency_slots(WAREHOUSE_POOL, 2)
        ensure_pool_limits(instance)
        assert instance.event_log_storage.get_concurrency_info(WAREHOUSE_POOL).slot_count == 2


def test_writers_share_the_pool_and_automation_is_off(lab_factory):
    lab = lab_factory()
    graph = lab.defs.resolve_asset_graph()
    writers = [k for k in graph.get_all_asset_keys() if k.path[0] in ("analytics",)]
    writers += [dg.AssetKey(["evaluation", "warehouse_scores"])]
    assert len(writers) >= 8
    for key in writers:
        assert graph.get(key).pools == {WAREHOUSE_POOL}, key
        assert graph.get(key).automation_condition is not None, key
    # lineage: FlowStone warehouse assets feed the dbt staging models
    stg = graph.get(dg.AssetKey(["analytics", "stg_scores"]))
    assert dg.AssetKey(["evaluation", "warehouse_scores"]) in stg.parent_keys
    for schedule in lab.defs.schedules:
        assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    sensor = next(s for s in lab.defs.sensors if s.name == "warehouse_automation")
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert lab.defs.resolve_job_def(WAREHOUSE_JOB) and lab.defs.resolve_job_def(DBT_JOB)


def test_nightly_schedule_requests_every_partition(lab_factory):
    lab = lab_factory()
    schedule = next(s for s in lab.defs.schedules if s.name == "nightly_evaluation")
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=NOW,
            repository_def=lab.defs.get_repository_def(),
        )
        requests = list(schedule.evaluate_tick(context).run_requests)
    assert sorted(r.partition_key for r in requests) == sorted(lab.keys)
    assert len({r.run_key for r in requests}) == len(lab.keys) == 4
    daily = lab.defs.get_repository_def().get_schedule_def("daily_dbt_build")
    assert daily.cron_schedule == "0 4 * * *"
    assert daily.default_status == dg.DefaultScheduleStatus.STOPPED


def test_manifest_is_reparsed_after_a_model_edit(project_copy):
    manifest = project_copy / "target" / "manifest.json"
    assert manifest_is_stale(project_copy, manifest)
    manifest.parent.mkdir()
    manifest.write_text("{}")
    assert not manifest_is_stale(project_copy, manifest)
    model = project_copy / "models" / "marts" / "leaderboard.sql"
    later = time.time() + 5
    os.utime(model, (later, later))
    assert manifest_is_stale(project_copy, manifest)


def test_leaderboard_names_what_to_build_first(tmp_path):
    with pytest.raises(FileNotFoundError, match="materialize the warehouse"):
        leaderboard(tmp_path / "none.duckdb")
    import duckdb

    duckdb.connect(str(tmp_path / "empty.duckdb")).close()
    with pytest.raises(LookupError, match="run the dbt build"):
        leaderboard(tmp_path / "empty.duckdb")


def test_report_rows_carry_suite_metrics_as_suite_kind_with_undefined_as_null():
    from flowstone.evaluation.aggregate import build_report
    from flowstone.evaluation.config import parse_settings

    settings = parse_settings(
        {
            "defaults": {
                "metrics": {"bleu": {}},
                "suite_metrics": {"spearman": {"metric": "bleu"}, "chrf": {}},
                "thresholds": {"spearman": {"min_mean": 0.5}, "chrf": 10},
            }
        },
        "cfg",
    ).for_suite("sts")
    scores = pd.DataFrame(
        {
            "case_id": ["a", "b", "c"],
            "tags": ["", "", ""],
            "output": ["one two", "three four", "five six"],
            "expected": ["one two", "three four", "five six"],
            "bleu": [0.5, 0.5, 0.5],  # constant: spearman is undefined
            "label": [1.0, 2.0, 3.0],
        }
    )
    stored = build_report(scores, settings, "echo").to_dict()
    frame = report_rows(stored, {"spearman": 0.9}, ["spearman"], NOW, "r")
    assert list(frame.columns) == REPORT_COLUMNS
    rows = frame.set_index("metric")
    assert rows["kind"].to_dict() == {"bleu": "mean", "spearman": "suite", "chrf": "suite"}
    spearman, chrf = rows.loc["spearman"], rows.loc["chrf"]
    assert math.isnan(spearman["mean"])  # undefined: NULL, never 0.0
    assert not spearman["threshold_passed"] and spearman["threshold"] == 0.5
    assert chrf["mean"] == pytest.approx(100.0) and chrf["threshold_passed"]
    assert not spearman["regression"] and math.isnan(spearman["previous_mean"])
    assert pd.isna(chrf["passed_cases"]) and chrf["cases"] == 3 and math.isnan(chrf["pass_score"])
    assert all(math.isnan(chrf[c]) for c in ("ci_low", "ci_high", "pass_rate", "median"))
    assert rows.loc["bleu", "passed_cases"] == 3
