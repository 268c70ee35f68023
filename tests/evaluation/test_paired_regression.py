"""The regression check with ``require_significance``: a drop past the margin that the paired
test on the same cases says is real, and only then."""

import numpy as np
import pytest

from flowstone.evaluation.config import RegressionSettings
from flowstone.evaluation.regression import assess
from flowstone.evaluation.statistics import compare_paired


def _cases(values) -> dict[str, dict[str, float | None]]:
    return {"m": {f"c{i}": (None if v is None else float(v)) for i, v in enumerate(values)}}


def _means(cases) -> dict[str, float]:
    values = [v for v in cases["m"].values() if v is not None]
    return {"m": float(np.mean(values))}


def test_a_real_drop_regresses_with_its_test_figures() -> None:
    rng = np.random.default_rng(3)
    before = rng.uniform(0.5, 0.9, 40)
    after = before - 0.2 + rng.normal(0, 0.02, 40)
    previous, current = _cases(before), _cases(after)
    settings = RegressionSettings(margin=0.05, require_significance=True, alpha=0.05)
    found, compared = assess(_means(current), _means(previous), settings, current, previous)
    (regression,) = found
    assert regression.paired is not None and regression.paired.p_value < 0.05
    alone = compare_paired(before, after, metric="m", a="previous", b="current")
    assert regression.paired.p_value == alone.p_value
    assert regression.paired.difference == pytest.approx(after.mean() - before.mean())
    figures = regression.metadata()
    assert set(figures) >= {"relative_drop", "difference", "ci", "p_value", "test"}
    assert compared["m"] is regression


def test_a_noisy_drop_past_the_margin_is_not_a_regression_when_significance_is_required() -> None:
    # 6 cases: one case falling from 1 to 0 is a 20% drop of the mean, but p is far from 0.05
    previous, current = _cases([1, 1, 1, 1, 1, 0]), _cases([1, 1, 1, 1, 0, 0])
    strict = RegressionSettings(margin=0.05, require_significance=True)
    found, compared = assess(_means(current), _means(previous), strict, current, previous)
    assert found == [] and compared["m"].paired is not None
    assert compared["m"].paired.p_value > 0.05 and compared["m"].relative_drop > 0.05
    # without the requirement the margin alone decides, as before
    loose = RegressionSettings(margin=0.05)
    assert [r.metric for r in assess(_means(current), _means(previous), loose)[0]] == ["m"]


def test_cases_invalid_in_either_run_are_left_out_of_the_pairing() -> None:
    previous = _cases([0.9, 0.8, None, 0.7])
    current = _cases([0.1, None, 0.5, 0.1])
    settings = RegressionSettings(margin=0.0, require_significance=True)
    _, compared = assess({"m": 0.2}, {"m": 0.8}, settings, current, previous)
    paired = compared["m"].paired
    assert paired is not None and paired.cases == 2  # c0 and c3 only


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="alpha"):
        RegressionSettings(alpha=1.5)
    with pytest.raises(ValueError, match="margin"):
        RegressionSettings(margin=-0.1)


def test_the_regression_block_is_read_and_checked(tmp_path) -> None:
    from flowstone.errors import ConfigError
    from flowstone.evaluation.config import load_settings

    def settings(text: str):
        path = tmp_path / "evaluation.yaml"
        path.write_text(text, encoding="utf-8")
        return load_settings(path)

    base = "defaults:\n  metrics: {rouge1: {}}\n"
    parsed = settings(
        base + "  regression: {margin: 0.1, require_significance: true}\n"
        "suites:\n  qa: {regression: {alpha: 0.01}}\n"
    )
    qa = parsed.for_suite("qa").regression
    assert (qa.margin, qa.require_significance, qa.alpha) == (0.1, True, 0.01)
    assert settings(base + "  regression_margin: 0.2\n").default.regression.margin == 0.2
    for bad, key in [
        ("  regression: {alpha: 1.5}\n", "defaults.regression.alpha"),
        ("  regression: {require_significance: 'yes'}\n", "require_significance"),
        ("  regression: {margins: 0.1}\n", "defaults.regression.margins"),
        ("  regression: {margin: 0.1}\n  regression_margin: 0.1\n", "regression_margin"),
    ]:
        with pytest.raises(ConfigError, match=key):
            settings(base + bad)
