"""`flowstone demo` end to end in a subprocess, on a small suite so it stays quick; it also bakes
the two demo models (the packaged MiniLM and the classifier it trains)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the whole demo in a subprocess: bakes two models (~90 s)
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(900)
def test_demo_materializes_every_partition_and_reports(tmp_path):
    suites = tmp_path / "suites"
    suites.mkdir()
    cases = [
        {
            "id": f"c{i}",
            "input": f"Sentence {i} opens. Then more.",
            "expected": f"Sentence {i} opens.",
            "tags": ["t"],
        }
        for i in range(5)
    ]
    (suites / "mini.jsonl").write_text("\n".join(json.dumps(c) for c in cases))
    (tmp_path / "eval.yaml").write_text(
        json.dumps({"defaults": {"metrics": {"rouge1": {}, "bleu": {}}}})
    )
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path / "home"),
        "FLOWSTONE_OUTPUTS_DIR": str(tmp_path / "out"),
        "FLOWSTONE_SUITES_DIR": str(suites),
        "FLOWSTONE_EVAL_CONFIG": str(tmp_path / "eval.yaml"),
    }
    flowstone = os.path.join(os.path.dirname(sys.executable), "flowstone")
    out = subprocess.run(
        [flowstone, "demo"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "mini × lead-1" in out.stdout and "Evaluation summary" in out.stdout
    # one run over every partition (a single-run backfill), each partition still on its line
    assert re.search(r"✓ \d+ partitions in one run", out.stdout), out.stdout
    assert all(f"✓ mini × {s}" in out.stdout for s in ("echo", "lead-1", "nearest-sentence"))
    assert (tmp_path / "home" / "dagster.yaml").exists()
    for system in ("echo", "lead-1", "nearest-sentence"):
        assert (tmp_path / "out" / "reports" / "mini" / f"{system}.html").exists()
    # lead-1 reproduces the reference exactly: the summary row must say so
    row = next(line for line in out.stdout.splitlines() if "│ mini" in line and "lead-1" in line)
    assert "1.000" in row
    # then which differences are real: every system pair compared on the suite's cases
    assert "Which differences are significant" in out.stdout
    compared = [line for line in out.stdout.splitlines() if "│ mini" in line and "rouge1" in line]
    assert compared and "not compared" not in compared[-1], out.stdout
    assert list((tmp_path / "out" / "objects").rglob("comparison/partition=mini.fso"))
    # Both demo models baked: validated, baked, measured and packaged.
    bakes = [  # the bake table's rows (a system such as minilm-nearest is no model)
        line
        for line in out.stdout.splitlines()
        if re.search(r"│ (minilm|demo_classifier)\s+│", line)
    ]
    assert len(bakes) == 2 and all(" MB" in line for line in bakes), out.stdout
    assert "spearman_rho = " in out.stdout and "accuracy_retention = " in out.stdout
    assert list((tmp_path / "out" / "objects").rglob("*bake_package*"))
    # Nothing a new user can do nothing about: no torch deprecation or quantizer warning (torch
    # prints the latter from C++, "[W... Quantizer.cpp] Warning: ..."), no leaked semaphore.
    output = out.stdout + out.stderr
    for noise in ("DeprecationWarning", "UserWarning", "deprecated", "Warning:", "leaked"):
        assert noise not in output, output
    # It ends by saying how to open the UI on the instance it used, and the viewer.
    flat = " ".join(out.stdout.split())
    assert f"DAGSTER_HOME={tmp_path / 'home'}" in flat, out.stdout
    assert "dagster dev -w workspace.yaml" in flat and "http://127.0.0.1:3000" in flat
    assert "flowstone serve" in flat and "http://127.0.0.1:8765/" in flat
