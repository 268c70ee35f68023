"""A system's repeats through scoring and the report: every answer scored, a case's score its
mean over the repeats, the spread and the cases whose verdict flips; and the bad inputs."""

import json

import numpy as np
import pandas as pd
import pytest

from flowstone.errors import ConfigError
from flowstone.evaluation.aggregate import build_report
from flowstone.evaluation.config import parse_settings
from flowstone.evaluation.report_html import render_report
from flowstone.evaluation.scoring import ScoringError, score_suite
from flowstone.evaluation.suites import load_suite
from flowstone.systems.config import load_llm_systems

CASES = [
    {"id": "a", "input": "capital of France?", "expected": "Paris"},
    {"id": "b", "input": "capital of Spain?", "expected": "Madrid"},
    {"id": "c", "input": "capital of Italy?", "expected": "Rome"},
]
# repeat by repeat: a is always right, c always wrong, b right on two repeats of three
ANSWERS = [
    ["Paris", "Madrid", "Milan"],
    ["Paris", "Seville", "Milan"],
    ["Paris", "Madrid", "Naples"],
]


@pytest.fixture
def suite(tmp_path):
    path = tmp_path / "capitals.jsonl"
    path.write_text("\n".join(json.dumps(c) for c in CASES))
    return load_suite(path, "capitals")


def settings():
    return parse_settings(
        {"defaults": {"metrics": {"exact_match": {}, "fuzzy_match": {"pass_score": 0.8}}}}, "cfg"
    ).for_suite("capitals")


def predictions(answers=ANSWERS) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"case_id": case["id"], "output": text, "repeat": repeat}
            for repeat, texts in enumerate(answers)
            for case, text in zip(CASES, texts, strict=True)
        ]
    )


def test_every_repeat_is_scored_and_a_case_scores_its_mean(suite, tmp_path):
    scores = score_suite(suite, predictions(), settings())
    assert list(scores["exact_match"]) == pytest.approx([1.0, 2 / 3, 0.0])
    assert [list(r) for r in scores["exact_match_repeats"]] == [
        [1.0, 1.0, 1.0],
        [1.0, 0.0, 1.0],
        [0.0, 0.0, 0.0],
    ]
    assert [list(o) for o in scores["outputs"]] == [list(t) for t in zip(*ANSWERS, strict=True)]
    assert list(scores["output"]) == ANSWERS[0]  # the first repeat's answer, as before repeats

    # as the report reads it: after the object store's Parquet round trip
    scores.to_parquet(tmp_path / "scores.parquet")
    stored = pd.read_parquet(tmp_path / "scores.parquet")
    report = build_report(stored, settings(), "sampler")
    assert report.cases == 3 and report.repeat_count == 3
    exact = report.repeats["exact_match"]
    assert exact.flipped == ("b",)
    assert exact.spread == pytest.approx(np.mean([0.0, np.std([1, 0, 1]), 0.0]))
    assert report.metrics["exact_match"].mean == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert report.to_dict()["repeats"]["exact_match"]["flipped"] == ["b"]

    page = render_report(report, stored, [])
    assert "Repeats: 3 answers a case" in page and "Flipped cases" in page
    assert "1.000, 0.000, 1.000" in page  # b's exact match on each repeat


def test_one_answer_a_case_keeps_the_table_as_it_was(suite):
    scores = score_suite(suite, predictions(ANSWERS[:1]), settings())
    assert "outputs" not in scores.columns and "exact_match_repeats" not in scores.columns
    assert build_report(scores, settings(), "once").repeats == {}
    # predictions stored before repeats existed have no repeat column
    old = predictions(ANSWERS[:1]).drop(columns="repeat")
    assert list(score_suite(suite, old, settings())["exact_match"]) == [1.0, 1.0, 0.0]


def test_a_missing_or_doubled_answer_in_a_repeat_is_refused(suite):
    frame = predictions()
    with pytest.raises(ScoringError, match=r"no output for 1 case\(s\) in repeat 2, first: 'b'"):
        score_suite(suite, frame.drop(index=4), settings())
    doubled = pd.concat([frame, frame.iloc[[0]]])
    with pytest.raises(ScoringError, match=r"answer case 'a' twice in repeat 1"):
        score_suite(suite, doubled, settings())
    gap = frame[frame["repeat"] != 1]
    with pytest.raises(ScoringError, match=r"repeats \[0, 2\]"):
        score_suite(suite, gap, settings())


@pytest.mark.parametrize("value", [0, -2, 1.5, "3", True])
def test_repeats_below_one_or_not_a_count_are_refused_at_load(tmp_path, value):
    path = tmp_path / "systems.yaml"
    template = tmp_path / "t.j2"
    template.write_text("{{ input }}")
    path.write_text(
        f"""
systems:
  - name: sampler
    template: {template}
    repeats: {json.dumps(value)}
    providers: [{{kind: openai, model: gpt-4o-mini, api_key: "env:NOPE"}}]
"""
    )
    with pytest.raises(ConfigError, match=r"systems\[0\]\.repeats.*at least 1") as error:
        load_llm_systems(path)
    assert str(path) in str(error.value)


def test_the_viewer_reads_the_repeats_of_a_stored_report(suite):
    from flowstone.web.records import PartitionReport

    report = build_report(score_suite(suite, predictions(), settings()), settings(), "sampler")
    stored = {**report.to_dict(), "previous_means": {}, "regressions": []}
    read = PartitionReport.from_stored(json.loads(json.dumps(stored)))
    assert read.repeat_count == 3
    assert read.repeats["exact_match"].flipped == ("b",)
    assert read.repeats["exact_match"].spread == pytest.approx(report.repeats["exact_match"].spread)
    # a report stored before repeats has none, and one answer a case
    assert PartitionReport.from_stored({"suite": "s", "system": "x"}).repeat_count == 1
