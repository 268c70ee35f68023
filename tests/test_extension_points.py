"""The README's promise to a newcomer: a metric is one function plus its ``METRICS`` entry, a bake
pass one function plus its ``PASSES`` entry. Each test registers one the way the README shows,
touching nothing else, and follows it through settings, scoring, the report and the bake."""

import sys
from pathlib import Path

import pandas as pd
import pytest

from flowstone.baking import passes, pipeline
from flowstone.cases import Case
from flowstone.evaluation import aggregate, metrics
from flowstone.evaluation.config import parse_settings
from flowstone.evaluation.scoring import score_suite
from flowstone.evaluation.suites import Suite

sys.path.insert(0, str(Path(__file__).parent / "baking"))  # bake_helpers by name
from bake_helpers import write_tiny_classifier  # noqa: E402


def starts_alike(
    predictions: list[str], references: list[str], *, prefix_chars: int = 3
) -> list[float]:
    """1.0 when the prediction starts with the reference's first ``prefix_chars`` characters."""
    return [
        float(p.lower().startswith(r.lower()[:prefix_chars]))
        for p, r in zip(predictions, references, strict=True)
    ]


def test_a_metric_is_one_function_and_one_registry_entry(monkeypatch):
    monkeypatch.setitem(
        metrics.METRICS, "starts_alike", metrics.Metric("starts_alike", starts_alike, "prefix")
    )
    settings = parse_settings(
        {
            "defaults": {"metrics": {"starts_alike": {"prefix_chars": 4}}},
            "suites": {"s": {"thresholds": {"starts_alike": 0.9}}},
        },
        "evaluation.yaml",
    ).for_suite("s")
    suite = Suite(
        name="s",
        path=Path("s.jsonl"),
        cases=(Case("a", "q1", "Paris"), Case("b", "q2", "Berlin")),
        sha256="",
    )
    predictions = pd.DataFrame({"case_id": ["a", "b"], "output": ["paris, France", "Bonn"]})

    scores = score_suite(suite, predictions, settings)
    report = aggregate.build_report(scores, settings, "sys")

    assert list(scores["starts_alike"]) == [1.0, 0.0]  # the option reached the function
    assert report.means["starts_alike"] == 0.5
    assert settings.thresholds["starts_alike"].min_mean == 0.9

    with pytest.raises(Exception, match="prefix_len"):  # its options are checked like any other
        parse_settings({"defaults": {"metrics": {"starts_alike": {"prefix_len": 4}}}}, "cfg")


def test_a_bake_pass_is_one_function_and_one_registry_entry(monkeypatch, tmp_path):
    def halve_last_layer(artifact, options, out_dir, sample):
        """Scale the last Linear layer's weights (a stand-in for a real transformation)."""
        import torch

        module = passes._torch_input(artifact, "halve_last_layer")
        last = [m for m in module.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            last.weight.mul_(float(options.get("factor", 0.5)))
        return passes._save_module(module, artifact, out_dir)

    monkeypatch.setitem(passes.PASSES, "halve_last_layer", halve_last_layer)
    model = write_tiny_classifier(
        tmp_path / "m", passes="[{name: halve_last_layer, factor: 0.5}, torchscript]"
    )

    record = pipeline.prepare_source("tiny", model, tmp_path / "ws")
    baked = pipeline.run_passes(record)

    assert [p.name for p in baked.passes] == ["halve_last_layer", "torchscript"]
    assert baked.artifact.format == "torchscript"
