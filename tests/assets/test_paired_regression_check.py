"""The ``no_regression`` check with ``regression.require_significance``: inside real runs, a
drop the paired test on the same cases calls real fails it, one it calls noise does not."""

import warnings

import dagster as dg
import pytest
from support.evaluation_lab import Lab

from flowstone.systems.base import Prediction, System
from flowstone.warehouse.project import dbt_project_dir

warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

QA = [{"id": f"q{i:02d}", "input": f"Name item {i}.", "expected": f"item {i}"} for i in range(16)]
SETTINGS = {
    "defaults": {
        "metrics": {"exact_match": {}},
        "regression": {"margin": 0.05, "require_significance": True, "alpha": 0.05},
    }
}


class WrongOn(System):
    """Right on every case but the first ``wrong`` ones (a parameter, so a change re-runs)."""

    name = "wrong-on"

    def __init__(self) -> None:
        self.wrong = 0

    def params(self) -> dict:
        return {"wrong": self.wrong}

    def predict(self, cases, progress=None, *, suite=None):
        return [
            Prediction(c.id, "nothing" if i < self.wrong else c.expected, 0.0)
            for i, c in enumerate(cases)
        ]


@pytest.fixture
def lab(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWSTONE_OUTPUTS_DIR", str(tmp_path / "out"))
    with dg.instance_for_test() as instance:
        system = WrongOn()
        lab = Lab(tmp_path, instance, dbt_project_dir(), {"qa": QA}, SETTINGS, [system])
        lab.system = system  # type: ignore[attr-defined]
        yield lab


def _regression_check(lab: Lab, wrong: int) -> dg.AssetCheckEvaluation:
    lab.system.wrong = wrong  # type: ignore[attr-defined]
    job = lab.defs.resolve_job_def("evaluation_job")
    result = job.execute_in_process(partition_key="qa|wrong-on", instance=lab.instance)
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    return checks["no_regression"]


def test_a_drop_is_a_regression_only_when_the_paired_test_says_it_is_real(lab) -> None:
    job = lab.defs.resolve_job_def("evaluation_job")
    assert job.execute_in_process(partition_key="qa|wrong-on", instance=lab.instance).success
    # 2 of 16 cases now wrong: the mean fell 12.5%, past the 5% margin, but McNemar on
    # 2 discordant cases gives p = 0.5: noise, not a regression
    noisy = _regression_check(lab, 2)
    assert noisy.passed, noisy.description
    change = noisy.metadata["change/exact_match"].value
    assert "-12.5%" in change and "p=0.5 (mcnemar-exact)" in change
    assert "with a paired test p < 0.05" in (noisy.description or "")
    # 10 more cases wrong (12 of 16 against the previous run's 2): p = 2^-9, a regression
    real = _regression_check(lab, 12)
    assert not real.passed
    drop = real.metadata["drop/exact_match"].value
    assert "mcnemar-exact" in drop and "paired -0.625" in drop
    assert "1 metric(s) fell by more than 5% with a paired test" in (real.description or "")
