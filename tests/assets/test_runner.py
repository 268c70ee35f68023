"""The in-process runner: key ranges for single runs, and per-partition progress from them."""

import warnings

import dagster as dg
import pytest

from assets.runner import execute_partitions, partition_ranges

warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

# the second dimension's order is not alphabetical, as a catalog's systems need not be
GRID = dg.MultiPartitionsDefinition(
    {
        "suite": dg.StaticPartitionsDefinition(["a", "b", "c"]),
        "system": dg.StaticPartitionsDefinition(["z", "x", "y"]),
    }
)
EVERY = [f"{s}|{y}" for s in "abc" for y in "zxy"]
BROKEN = {"key": None}  # the partition whose step fails, if any


def test_every_key_in_any_order_is_one_range_in_the_partitions_order():
    (covered,) = partition_ranges(GRID, sorted(EVERY))
    assert covered == [str(k) for k in GRID.get_partition_keys()]


def test_keys_that_are_no_rectangle_are_cut_into_exact_ranges():
    wanted = [k for k in EVERY if k != "b|x"]
    ranges = partition_ranges(GRID, wanted)
    assert sorted(k for r in ranges for k in r) == sorted(wanted)
    for covered in ranges:  # each is what Dagster's range from its first to last key holds
        span = dg.PartitionKeyRange(covered[0], covered[-1])
        assert [str(k) for k in GRID.get_partition_keys_in_range(span)] == covered
    # rows a and c keep all three systems but are not adjacent; row b splits around x
    assert len(ranges) == 4
    assert partition_ranges(GRID, ["a|x", "a|y", "b|x", "b|y"]) == [["a|x", "a|y", "b|x", "b|y"]]


def test_one_dimension_ranges_follow_the_definition_and_unknown_keys_are_refused():
    days = dg.StaticPartitionsDefinition(["mon", "tue", "wed", "thu"])
    assert partition_ranges(days, ["thu", "mon", "tue"]) == [["mon", "tue"], ["thu"]]
    with pytest.raises(ValueError, match="not partitions of the job: fri"):
        partition_ranges(days, ["mon", "fri"])


@dg.asset(partitions_def=GRID, backfill_policy=dg.BackfillPolicy.single_run())
def first(context: dg.AssetExecutionContext):
    keys = list(context.partition_keys)
    if BROKEN["key"] in keys:
        raise dg.Failure(f"{BROKEN['key']} cannot be made")
    values = {k: k.upper() for k in keys}
    return values if len(keys) > 1 else values[keys[0]]


@dg.asset(partitions_def=GRID, backfill_policy=dg.BackfillPolicy.single_run())
def second(context: dg.AssetExecutionContext, first):
    keys = list(context.partition_keys)
    values = first if len(keys) > 1 else {keys[0]: first}
    out = {k: f"{v}!" for k, v in values.items()}
    return out if len(keys) > 1 else out[keys[0]]


JOB = dg.Definitions(
    assets=[first, second],
    jobs=[dg.define_asset_job("grid_job", selection=[first, second])],
    resources={"io_manager": dg.mem_io_manager},
).resolve_job_def("grid_job")


class Recorder:
    def __init__(self):
        self.done: list[tuple[str, bool]] = []
        self.partitions: list[tuple[str, bool]] = []
        self.steps: list[tuple[str, int, bool]] = []

    def on_done(self, label: str, ok: bool, seconds: float) -> None:
        self.done.append((label, ok))

    def on_partition(self, key: str, ok: bool) -> None:
        self.partitions.append((key, ok))

    def on_step(self, step: str, partitions: int, seconds: float, ok: bool) -> None:
        self.steps.append((step, partitions, ok))


def run(keys, **options):
    seen = Recorder()
    with dg.instance_for_test() as instance:
        results = execute_partitions(
            JOB,
            instance,
            keys,
            single_run=True,
            on_done=seen.on_done,
            on_partition=seen.on_partition,
            on_step=seen.on_step,
            **options,
        )
        runs = instance.get_runs()
    return results, seen, runs


def test_a_single_run_reports_each_step_and_each_partition_as_it_goes():
    results, seen, runs = run(sorted(EVERY))
    assert len(runs) == 1 and all(r.success for r in results.values())
    assert set(results) == set(EVERY)
    assert seen.steps == [("first", 9, True), ("second", 9, True)]
    assert sorted(seen.partitions) == [(k, True) for k in sorted(EVERY)]
    assert seen.done == [("9 partitions in one run", True)]


def test_keys_of_several_ranges_run_once_per_range():
    keys = [k for k in EVERY if k != "b|x"]
    results, seen, runs = run(keys)
    assert len(runs) == 4 and all(r.success for r in results.values())
    # a run of one partition is reported as such, the others partition by partition
    assert sorted(label for label, _ in seen.done) == sorted(
        ["3 partitions in one run", "3 partitions in one run", "b|z", "b|y"]
    )
    assert sorted(seen.partitions) == [(k, True) for k in sorted(keys) if not k.startswith("b|")]


def test_a_failed_single_run_runs_its_partitions_again_alone(monkeypatch):
    monkeypatch.setitem(BROKEN, "key", "b|x")
    results, seen, runs = run(EVERY, retry_alone=True)
    assert len(runs) == 1 + len(EVERY)  # the run over all, then one each
    assert not results["b|x"].success
    assert all(results[k].success for k in EVERY if k != "b|x")
    assert seen.done[0] == ("9 partitions in one run", False)
    assert sorted(seen.done[1:]) == sorted((k, k != "b|x") for k in EVERY)
    assert seen.partitions == []  # none finished in the failed run: their own runs say
    assert ("first", 0, False) in seen.steps


def test_without_retry_a_failed_single_run_fails_each_of_its_partitions(monkeypatch):
    monkeypatch.setitem(BROKEN, "key", "b|x")
    results, seen, runs = run(EVERY)
    assert len(runs) == 1 and not any(r.success for r in results.values())
    assert sorted(seen.partitions) == [(k, False) for k in sorted(EVERY)]
