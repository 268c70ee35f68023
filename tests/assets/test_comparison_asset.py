"""``evaluation/comparison`` on the product's code location: every pair of systems per suite."""

import warnings

import dagster as dg
import pytest
from support.evaluation_lab import Lab

from flowstone.warehouse.project import dbt_project_dir

warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

QA = [
    {"id": f"q{i}", "input": f"What colour is item {i}? It is asked twice.",
     "expected": f"What colour is item {i}?"}
    for i in range(12)
]  # fmt: skip
SETTINGS = {"defaults": {"metrics": {"exact_match": {}, "rouge1": {}}}}


@pytest.fixture
def lab(tmp_path, monkeypatch):
    from flowstone.systems.baselines import EchoSystem, LeadSummariser

    monkeypatch.setenv("FLOWSTONE_OUTPUTS_DIR", str(tmp_path / "out"))
    with dg.instance_for_test() as instance:
        yield Lab(tmp_path, instance, dbt_project_dir(), {"qa": QA}, SETTINGS,
                  [EchoSystem(), LeadSummariser(1)])  # fmt: skip


def _evaluate(lab: Lab, systems: list[str]) -> None:
    from assets.runner import execute_partitions

    keys = [k for k in lab.keys if k.split("|")[1] in systems]
    job = lab.defs.resolve_job_def("evaluation_job")
    assert all(r.success for r in execute_partitions(job, lab.instance, keys, True).values())


def test_comparison_ranks_the_systems_that_ran_and_names_the_rest(lab) -> None:
    from flowstone.evaluation.comparison import compare_systems

    _evaluate(lab, ["echo", "lead-1"])  # tunable not yet
    result = lab.compare(["qa"])["qa"]
    assert result.success
    (event,) = result.get_asset_materialization_events()
    meta = event.materialization.metadata
    assert meta["not materialized"].value == "tunable"
    # lead-1 answers the first sentence, which is the expected answer: it beats echo on both
    assert meta["leaders/exact_match"].value == "lead-1"
    assert meta["leaders/rouge1"].value == "lead-1"
    assert "| exact_match | lead-1 vs echo | +1.000 |" in meta["pairs"].value

    stored = lab.defs.load_asset_value(["evaluation", "comparison"], partition_key="qa",
                                       instance=lab.instance)  # fmt: skip
    scores = {
        s: lab.defs.load_asset_value(
            ["evaluation", "scores"], partition_key=f"qa|{s}", instance=lab.instance
        )  # fmt: skip
        for s in ("echo", "lead-1")
    }
    again = compare_systems("qa", scores, ["exact_match", "rouge1"]).to_dict()
    assert stored["metrics"] == again["metrics"]  # the stored figures are the library's own
    assert stored["not_materialized"] == ["tunable"]
    (pair,) = stored["metrics"]["exact_match"]["pairs"]
    assert pair["test"] == "mcnemar-exact" and pair["verdict"] == "better"
    assert pair["p_adjusted"] < 0.05 and pair["cases"] == 12


def test_one_system_is_not_a_comparison(lab) -> None:
    _evaluate(lab, ["echo"])
    result = lab.compare(["qa"])["qa"]
    assert not result.success
    failure = result.failure_data_for_node("evaluation__comparison")
    assert failure is not None
    message = failure.error.message if failure.error else ""
    assert "1 system(s) have scores on qa (echo)" in message and "lead-1" in message


DOCS = [
    {"id": f"d{i}", "input": f"Story {i} begins. It goes on.", "expected": f"Story {i} begins."}
    for i in range(6)
]  # fmt: skip


@pytest.fixture
def two_suites(tmp_path, monkeypatch):
    from flowstone.systems.baselines import EchoSystem, LeadSummariser

    monkeypatch.setenv("FLOWSTONE_OUTPUTS_DIR", str(tmp_path / "out"))
    with dg.instance_for_test() as instance:
        yield Lab(tmp_path, instance, dbt_project_dir(), {"qa": QA, "docs": DOCS}, SETTINGS,
                  [EchoSystem(), LeadSummariser(1)])  # fmt: skip


def test_one_run_compares_every_suite_as_runs_of_their_own_would(two_suites) -> None:
    """compare_suites makes one run of all suites: each suite's stored figures and metadata
    are those a run of that suite alone stores."""
    from assets.comparison import COMPARISON_KEY
    from assets.runner import compare_suites, latest_metadata

    lab = two_suites
    _evaluate(lab, ["echo", "lead-1"])
    together = compare_suites(lab.defs, lab.instance, ["docs", "qa"])
    assert len(lab.instance.get_runs(filters=dg.RunsFilter(job_name="comparison_job"))) == 1
    shown = ("systems", "not materialized", "significant differences", "pairs", "viewer")

    def figures(suite: str) -> dict:
        meta = latest_metadata(lab.instance, COMPARISON_KEY, suite)
        return {k: v.value for k, v in meta.items() if k in shown or k.startswith("leaders/")}

    first = {suite: figures(suite) for suite in ("docs", "qa")}
    assert first["docs"]["not materialized"] == "tunable"
    assert first["docs"]["leaders/exact_match"] == "lead-1"

    alone = lab.compare(["docs", "qa"])  # a run each, as the UI launches one partition
    assert all(result.success for result in alone.values())
    for suite in ("docs", "qa"):
        again = lab.defs.load_asset_value(COMPARISON_KEY, partition_key=suite,
                                          instance=lab.instance)  # fmt: skip
        assert together[suite] == again
        assert figures(suite) == first[suite]


def test_a_suite_with_one_system_fails_alone(two_suites) -> None:
    """The run over both suites fails on docs (one system); each suite then runs alone, so qa
    is still compared and only docs is reported as not compared."""
    from assets.runner import compare_suites, execute_partitions

    lab = two_suites
    keys = [k for k in lab.keys if k.startswith("qa|") and "tunable" not in k] + ["docs|echo"]
    job = lab.defs.resolve_job_def("evaluation_job")
    assert all(r.success for r in execute_partitions(job, lab.instance, keys, True).values())
    compared = compare_suites(lab.defs, lab.instance, ["docs", "qa"])
    assert compared["docs"] is None
    assert compared["qa"] is not None and compared["qa"]["not_materialized"] == ["tunable"]
    runs = lab.instance.get_runs(filters=dg.RunsFilter(job_name="comparison_job"))
    assert len(runs) == 3  # both suites together (failed), then each alone
