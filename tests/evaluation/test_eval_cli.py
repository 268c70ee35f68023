"""``flowstone eval``: suite files in, figures and an exit code out, no Dagster instance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flowstone.cli import app

QA = [
    {"id": f"q{i}", "input": f"What colour is item {i}?", "expected": f"item {i} is red"}
    for i in range(6)
]
DOCS = [{"id": f"d{i}", "input": f"Story {i} begins. It ends.", "expected": f"Story {i} begins."}
        for i in range(4)]  # fmt: skip
SETTINGS = {
    "defaults": {
        "metrics": {"exact_match": {}, "rouge1": {}},
        "suite_metrics": {"corpus_bleu": {}, "chrf": {}},
    },
    "suites": {"docs": {"thresholds": {"rouge1": {"min_mean": 0.9, "blocking": True}}}},
}


def _write(folder: Path, name: str, rows: list[dict]) -> Path:
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    config = tmp_path / "evaluation.yaml"
    config.write_text(yaml.safe_dump(SETTINGS), encoding="utf-8")
    return {
        "qa": _write(tmp_path, "qa", QA),
        "docs": _write(tmp_path, "docs", DOCS),
        "config": config,
    }


def _eval(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["eval", *args])
    return result.exit_code, result.stdout, result.stderr


def test_json_has_the_documented_shape_for_each_suite(files, tmp_path) -> None:
    code, out, _ = _eval(str(files["qa"]), str(files["docs"]), "--system", "lead-1",
                         "--config", str(files["config"]), "--json",
                         "--reports-dir", str(tmp_path / "reports"))  # fmt: skip
    assert code == 0, out
    documents = json.loads(out)
    assert [d["suite"] for d in documents] == ["qa", "docs"]
    for doc in documents:
        assert set(doc) == {"suite", "system", "cases", "metrics", "suite_metrics", "checks"}
        assert doc["system"] == "lead-1"
        for figures in doc["metrics"].values():
            assert set(figures) == {"mean", "ci95", "valid", "invalid"}
            low, high = figures["ci95"]
            assert low <= figures["mean"] <= high
            assert figures["valid"] == doc["cases"] and figures["invalid"] == 0
    qa, docs = documents
    # suite-level figures over the whole partition, the reference libraries' own values
    from sacrebleu.metrics import CHRF

    outputs = [f"Story {i} begins." for i in range(4)]  # lead-1: each input's first sentence
    references = [c["expected"] for c in DOCS]
    assert set(docs["suite_metrics"]) == {"corpus_bleu", "chrf"}
    assert docs["suite_metrics"]["chrf"] == pytest.approx(
        CHRF().corpus_score(outputs, [references]).score
    )
    assert docs["suite_metrics"]["corpus_bleu"] == pytest.approx(1.0)  # every output exact
    assert qa["cases"] == 6 and docs["cases"] == 4 and qa["checks"] == []
    # lead-1 answers the first sentence: the docs summaries match exactly
    assert docs["metrics"]["exact_match"]["mean"] == 1.0
    assert docs["checks"] == [{"name": "rouge1_above_threshold", "passed": True, "blocking": True}]
    assert (tmp_path / "reports" / "docs" / "lead-1.html").is_file()


def test_a_failed_blocking_check_exits_1_and_names_it(files) -> None:
    code, out, err = _eval(str(files["docs"]), "--system", "echo", "--config", str(files["config"]))
    assert code == 1
    assert "docs × echo" in out and "rouge1_above_threshold (blocking)" in out
    assert "blocked: docs × echo: rouge1_above_threshold" in err.replace("\n", " ")


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('{"id": "x", "input": "a", "expected": "b", "colour": "red"}', r"line 2.*colour"),
        ("{not json", r"line 2"),
    ],
)
def test_a_bad_suite_line_exits_2_naming_file_and_line(files, line, why) -> None:
    with files["qa"].open("a", encoding="utf-8") as handle:
        handle.write(line + "\n")
    # keep the first line only, then the bad one: the error names line 2
    rows = files["qa"].read_text(encoding="utf-8").splitlines()
    files["qa"].write_text(rows[0] + "\n" + rows[-1] + "\n", encoding="utf-8")
    code, out, err = _eval(str(files["qa"]), "--system", "echo", "--config", str(files["config"]))
    assert code == 2 and out == ""
    message = " ".join(err.split())
    assert "qa.jsonl" in message
    import re

    assert re.search(why, message), message


def test_unknown_system_config_key_or_file_exits_2(files, tmp_path) -> None:
    code, _, err = _eval(str(files["qa"]), "--system", "gpt-9", "--config", str(files["config"]))
    assert code == 2 and "no system 'gpt-9'" in err and "echo" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"defaults": {"metrics": {"exact_match": {"colour": 1}}}}))
    code, _, err = _eval(str(files["qa"]), "--system", "echo", "--config", str(bad))
    assert code == 2 and "bad.yaml" in err and "colour" in err
    code, _, err = _eval(str(tmp_path / "notes.txt"), "--system", "echo")
    assert code == 2 and "must end in .jsonl" in err


def test_runs_without_a_dagster_instance(files, tmp_path) -> None:
    """A CI job has no DAGSTER_HOME: the command never needs one."""
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env["DAGSTER_HOME"] = str(tmp_path / "does-not-exist")
    done = subprocess.run(
        [sys.executable, "-m", "flowstone.cli", "eval", str(files["docs"]), "--system", "lead-1",
         "--config", str(files["config"]), "--json"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["metrics"]["rouge1"]["mean"] == 1.0
    assert not (tmp_path / "does-not-exist").exists()


STS_INPUTS = ["the cat sat on the mat", "a dog ran in the park", "rain fell all day long",
              "we ate bread and cheese"]  # fmt: skip


def _sts(tmp_path: Path, expected: list[str]) -> dict[str, Path]:
    """Echo answers with its input; labels rank the cases by how close the expected text is."""
    config = tmp_path / "sts.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "defaults": {
                    "metrics": {"fuzzy_match": {}},
                    "suite_metrics": {"spearman": {"metric": "fuzzy_match"}},
                    "thresholds": {"spearman": {"min_mean": 0.5, "blocking": True}},
                }
            }
        ),
        encoding="utf-8",
    )
    rows = [
        {"id": f"s{i}", "input": text, "expected": e, "label": float(4 - i)}
        for i, (text, e) in enumerate(zip(STS_INPUTS, expected, strict=True))
    ]
    return {"sts": _write(tmp_path, "sts", rows), "config": config}


def test_a_suite_metric_threshold_gates_the_exit_code(tmp_path) -> None:
    ranked = _sts(
        tmp_path,
        ["the cat sat on the mat", "a dog ran in a park", "rain all day", "nothing alike here"],
    )
    code, out, _ = _eval(str(ranked["sts"]), "--system", "echo", "--config",
                         str(ranked["config"]), "--json")  # fmt: skip
    doc = json.loads(out)
    assert code == 0, out
    assert doc["suite_metrics"]["spearman"] == pytest.approx(1.0)
    assert doc["checks"] == [{"name": "spearman_above_threshold", "passed": True, "blocking": True}]

    # every expected text equals its input: constant scores, an undefined correlation, which
    # fails its blocking threshold with the reason (never passes, never reads as 0.0)
    flat = _sts(tmp_path, STS_INPUTS)
    code, out, err = _eval(str(flat["sts"]), "--system", "echo", "--config",
                           str(flat["config"]), "--json")  # fmt: skip
    doc = json.loads(out)
    assert code == 1
    assert doc["suite_metrics"] == {"spearman": None}
    [check] = doc["checks"]
    assert check["name"] == "spearman_above_threshold" and not check["passed"]
    assert "spearman is undefined over this suite" in check["reason"]
    assert "blocked: sts × echo: spearman_above_threshold" in err.replace("\n", " ")


def test_a_judge_in_batch_mode_exits_2_before_anything_is_submitted(files, tmp_path) -> None:
    config = tmp_path / "batch.yaml"
    judge = {"provider": "anthropic", "model": "claude-haiku-4-5", "mode": "batch",
             "base_url": "http://127.0.0.1:9/", "api_key": "env:NOT_NEEDED_HERE"}  # fmt: skip
    config.write_text(
        yaml.safe_dump({"defaults": {"metrics": {"exact_match": {}, "llm_faithfulness": judge}}})
    )
    code, _, err = _eval(str(files["qa"]), "--system", "echo", "--config", str(config))
    assert code == 2
    message = " ".join(err.split())
    assert "judge metric 'llm_faithfulness' of suite 'qa' in mode: batch" in message
    assert "flowstone eval runs online only" in message
