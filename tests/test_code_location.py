"""The code location as Dagster and a user's shell see it: fast to load, valid, and loud about
bad input at load time."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each test loads the code location in a new interpreter, ~6 s
REPO_ROOT = Path(__file__).resolve().parent.parent

BIN = os.path.dirname(sys.executable)


def run(args, env_extra=None, timeout=120):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


HEAVY = ("torch", "sentence_transformers", "transformers", "onnxruntime", "pandas", "matplotlib")


def test_loads_without_heavy_libraries():
    """Load time itself is measured by bench/bench_code_location.py (a timed test would fail on
    a busy machine); what keeps it fast is that no model library is imported at load."""
    code = (
        "import sys; import flowstone.definitions as d; d.defs.resolve_asset_graph(); "
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules) or 'none')"
    )
    out = run([sys.executable, "-c", code])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["none"]


def test_dagster_validates_the_workspace():
    out = run([os.path.join(BIN, "dagster"), "definitions", "validate", "-w", "workspace.yaml"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Validation successful for code location flowstone" in out.stdout + out.stderr


def test_every_suite_and_system_is_a_partition():
    from flowstone.definitions import defs

    keys = defs.resolve_job_def("evaluation_job").partitions_def.get_partition_keys()
    assert "qa|nearest-sentence" in keys and "summarisation|lead-1" in keys
    # 4 suites x (8 baselines + local-llm); keyless LLM systems are skipped
    assert len(keys) == 36 and "intent|minilm-zero-shot" in keys
    groups = {
        defs.resolve_assets_def(k).group_names_by_key[k]
        for k in defs.resolve_asset_graph().get_all_asset_keys()
    }
    assert {"evaluation", "promotion", "warehouse", "analytics"} <= groups


@pytest.mark.parametrize(
    ("env_key", "content", "expected"),
    [
        (
            "FLOWSTONE_SUITES_DIR",
            '{"id": "a", "input": "x", "expected": "y"}\n{"id": "b", "input": "x"}\n',
            ["bad.jsonl", "line 2", "'expected'"],
        ),
        (
            "FLOWSTONE_SUITES_DIR",
            '{"id": "a", "input": "x", "expected": "y"}\n{"id": "a", "input": "x", "expected": "y"}\n',
            ["line 2", "duplicate id 'a'"],
        ),
        (
            "FLOWSTONE_EVAL_CONFIG",
            json.dumps({"defaults": {"metrics": {"bleu": {}}, "thresholds": {"bleu": 1.5}}}),
            ["defaults.thresholds.bleu.min_mean", "[0, 1]"],
        ),
        (
            "FLOWSTONE_EVAL_CONFIG",
            json.dumps({"defaults": {"metrics": {"meteor": {}}}}),
            ["defaults.metrics.meteor", "unknown metric"],
        ),
    ],
)
def test_bad_input_stops_the_code_location_with_its_place(tmp_path, env_key, content, expected):
    if env_key == "FLOWSTONE_SUITES_DIR":
        (tmp_path / "bad.jsonl").write_text(content)
        extra = {env_key: str(tmp_path), "FLOWSTONE_EVAL_CONFIG": str(tmp_path / "eval.yaml")}
        (tmp_path / "eval.yaml").write_text(json.dumps({"defaults": {"metrics": {"bleu": {}}}}))
    else:
        (tmp_path / "eval.yaml").write_text(content)
        extra = {env_key: str(tmp_path / "eval.yaml")}
    out = run(
        [os.path.join(BIN, "dagster"), "definitions", "validate", "-w", "workspace.yaml"], extra
    )
    assert out.returncode != 0
    text = out.stdout + out.stderr
    for fragment in expected:
        assert fragment in text, text[-2000:]
