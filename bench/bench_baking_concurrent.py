"""Ten models baked through the run queue under a memory budget, the way a deployment runs them.

Ten models land in the drop folder; one asset backfill of the bake job over the ten ``models``
partitions goes to the queued run coordinator, and ``dagster-daemon`` launches what it asks
for: on one host the bake assets take ``BackfillPolicy.single_run()``, so that is one run that
bakes model after model (``assets/model_batch.py``). Three limits keep memory in check and are
checked here: the run queue admits ``POOL_LIMIT`` bake runs at a time (tag concurrency on
``flowstone/bake``), the ``baking`` pool admits ``POOL_LIMIT`` bake steps at a time across
runs, and inside a step the host memory budget (``flowstone.baking.budget``) holds each
model's estimate. A sampler sums the RSS of every process the benchmark started (daemon, code
server, run workers, profiling children) every 100 ms and compares the peak with the budget.

Peer, same run: the same ten bakes one after another in one process (``flowstone models
bake``). Target (issue 15): queue / peer <= 1.2 with the budget held, at most ``POOL_LIMIT``
bake steps at once and 0 failed / missing / duplicated bakes. ``--per-model`` also measures
ten one-model backfills, a run per model as the drop sensor launches them, to show what a run
costs; ``--repeat N`` interleaves N rounds and prints median and range. Each round prints
where the time went, from the runs' event logs: the backfill daemon's pick-up, the queue, the
run worker's start (process, code location), and the steps.

Run: ``.venv/bin/python bench/bench_baking_concurrent.py [--repeat 2] [--per-model]``
(5-10 minutes a round on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = int(os.environ.get("FLOWSTONE_BENCH_MODELS", "10"))
POOL_LIMIT = int(os.environ.get("FLOWSTONE_BENCH_POOL_LIMIT", "2"))
BUDGET_MB = float(os.environ.get("FLOWSTONE_BENCH_BUDGET_MB", "4096"))
TARGET = 1.2
# The queue's dequeue interval, as the shipped dagster.yaml sets it (Dagster's default is 5).
DEQUEUE_SECONDS = int(os.environ.get("FLOWSTONE_BENCH_DEQUEUE_SECONDS", "1"))
CONFIG = """task: classifier
architecture: flowstone.baking.demo_models:DemoClassifier
architecture_kwargs: {{features: 64, hidden: {hidden}, classes: 4}}
input_shape: [64]
validation: {name}.validation.npz
passes: [quantize_dynamic, torchscript]
quality: {{metric: accuracy_retention, threshold: 0.9}}
batch_sizes: [32]
memory_estimate_mb: {estimate}
"""
BAKE_STEPS = ("baking__source_model", "baking__baked_model", "baking__bake_quality",
              "baking__bake_profile")  # fmt: skip


def make_models(folder: Path) -> list[str]:
    """Ten classifiers of different widths; labels are the float model's own predictions."""
    import numpy as np
    import torch

    from flowstone.baking.demo_models import DemoClassifier

    names = []
    for i in range(MODELS):
        name, hidden = f"clf{i:02d}", 128 + 64 * i
        torch.manual_seed(i)
        model = DemoClassifier(features=64, hidden=hidden, classes=4).eval()
        x = torch.randn(512, 64, generator=torch.Generator().manual_seed(100 + i))
        with torch.no_grad():
            y = model(x).argmax(1)
        torch.save(model.state_dict(), str(folder / f"{name}.pt"))
        np.savez(folder / f"{name}.validation.npz", x=x.numpy(), y=y.numpy())
        (folder / f"{name}.bake.yaml").write_text(
            CONFIG.format(hidden=hidden, name=name, estimate=900)
        )
        names.append(name)
    return names


class RssSampler(threading.Thread):
    """Peak of the summed RSS of this process's descendants."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self.stop.is_set():
            total = 0
            for proc in me.children(recursive=True):
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)
            time.sleep(0.1)


def instance_at(home: Path):
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(home)
    return dg.DagsterInstance.get()


def run_events(instance, run_id: str) -> dict[tuple[str, str | None], float]:
    """First timestamp of each (event type, step) of a run."""
    first: dict[tuple[str, str | None], float] = {}
    for event in instance.all_logs(run_id):
        if event.dagster_event:
            first.setdefault(
                (event.dagster_event.event_type_value, event.step_key), event.timestamp
            )
    return first


def bake_steps_overlap(instance) -> int:
    """Most bake steps (pool 'baking') running at the same moment, from the event log."""
    spans = []
    for record in instance.get_run_records():
        first = run_events(instance, record.dagster_run.run_id)
        for (kind, step), started in first.items():
            if kind != "STEP_START" or not (step or "").startswith(BAKE_STEPS):
                continue
            ended = first.get(("STEP_SUCCESS", step)) or first.get(("STEP_FAILURE", step))
            if ended:
                spans.append((started, ended))
    points = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    current = best = 0
    for _, delta in points:
        current += delta
        best = max(best, current)
    return best


def where_time_went(instance, began: float) -> dict[str, float]:
    """Seconds per phase, summed over the runs (``began``: wall clock when the clock started).

    ``to first run``: the clock's start to the first run's creation (daemon start and the
    backfill daemon's pick-up; for the peer, the process start and code location load).
    ``queued``: a run's creation to its launch. ``run worker``: launch to RUN_START (a fresh
    process loading the code location). ``steps``: step time by asset, summed."""
    records = sorted(instance.get_run_records(), key=lambda r: r.create_timestamp.timestamp())
    phases: Counter[str] = Counter()
    if not records:
        return {}
    phases["to first run"] = records[0].create_timestamp.timestamp() - began
    for record in records:
        first = run_events(instance, record.dagster_run.run_id)
        created = record.create_timestamp.timestamp()
        starting = first.get(("PIPELINE_STARTING", None))
        started = first.get(("PIPELINE_START", None))
        if starting is not None:
            phases["queued"] += starting - created
        if started is not None:
            phases["run worker"] += started - (starting if starting is not None else created)
        for (kind, step), at in first.items():
            if kind == "STEP_START" and step:
                ended = first.get(("STEP_SUCCESS", step)) or first.get(("STEP_FAILURE", step))
                if ended:
                    phases[f"step {step.removeprefix('baking__')}"] += ended - at
    return {k: round(v, 1) for k, v in phases.items()}


INSTANCE = """telemetry:
  enabled: false
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: {dequeue}
concurrency:
  runs:
    max_concurrent_runs: 10
    tag_concurrency_limits:
      - key: flowstone/bake
        limit: {limit}
  pools:
    default_limit: 4
"""


def setup_home(tmp: Path, label: str) -> dict[str, str]:
    home = tmp / label / "home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(INSTANCE.format(limit=POOL_LIMIT, dequeue=DEQUEUE_SECONDS))
    env = {**os.environ, "DAGSTER_HOME": str(home), "FLOWSTONE_OUTPUTS_DIR": str(tmp / label / "out"),
           "FLOWSTONE_MODELS_DIR": str(tmp / "drop"), "FLOWSTONE_BAKE_MEMORY_BUDGET_MB": str(BUDGET_MB),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}  # fmt: skip
    prep = ("import dagster as dg; from assets.baking import MODELS; from assets.pools import ensure_pool_limits;"
            "i = dg.DagsterInstance.get(); ensure_pool_limits(i);"
            f"i.event_log_storage.set_concurrency_slots('baking', {POOL_LIMIT});"
            f"i.add_dynamic_partitions(MODELS.name, {[f'clf{n:02d}' for n in range(MODELS)]!r})")  # fmt: skip
    subprocess.run([sys.executable, "-c", prep], env=env, cwd=ROOT, check=True)
    return env


BAKE = ("import sys, dagster as dg; from assets.runner import bake_models; from flowstone.cli import exit_now;"
        "from flowstone.definitions import defs;"
        "out = bake_models(defs, dg.DagsterInstance.get(), sys.argv[1:]);"
        "exit_now(0 if all(r.success for r in out.values()) else 1)")  # fmt: skip


def backfill(env: dict[str, str], names: list[str]) -> str:
    """One asset backfill of the bake job's assets over ``names``; the daemon runs it."""
    import dagster as dg
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id

    from assets.baking import BAKE_JOB
    from flowstone.definitions import defs

    os.environ.update(env)
    instance = dg.DagsterInstance.get()
    graph = defs.resolve_asset_graph()
    keys = list(BAKE_JOB.selection.resolve(graph))
    backfill_id = make_new_backfill_id()
    instance.add_backfill(
        PartitionBackfill.from_asset_partitions(
            backfill_id=backfill_id,
            asset_graph=graph,
            partition_names=names,
            asset_selection=keys,
            backfill_timestamp=time.time(),
            tags={"flowstone/bake": "1"},
            dynamic_partitions_store=instance,
            all_partitions=False,
            title="bench_baking_concurrent",
            description=None,
            run_config=None,
        )  # fmt: skip
    )
    return backfill_id


def wait_runs(backfill_ids: list[str], names: list[str], timeout: float) -> list:
    """The backfills' runs once every model is covered by a finished run."""
    import dagster as dg

    from assets.runner import PARTITION_RANGE_END_TAG, PARTITION_RANGE_START_TAG

    instance = dg.DagsterInstance.get()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [run for backfill_id in backfill_ids
                for run in instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))]  # fmt: skip
        covered = set()
        for run in runs:
            if "dagster/partition" in run.tags:
                covered.add(run.tags["dagster/partition"])
            elif PARTITION_RANGE_START_TAG in run.tags:
                first = names.index(run.tags[PARTITION_RANGE_START_TAG])
                last = names.index(run.tags[PARTITION_RANGE_END_TAG])
                covered.update(names[first : last + 1])
        if covered >= set(names) and all(r.is_finished for r in runs):
            return runs
        time.sleep(1)
    raise TimeoutError(f"backfills {backfill_ids}: runs not finished after {timeout:.0f} s")


def sequential(tmp: Path, label: str, names: list[str]) -> dict:
    """The peer: ``flowstone models bake`` of every model in one process."""
    env = setup_home(tmp, label)
    sampler = RssSampler()
    sampler.start()
    began = time.time()
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", BAKE, *names], env=env, cwd=ROOT, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    sampler.stop.set()
    if done.returncode:
        print(done.stdout[-2000:], done.stderr[-4000:])
    return {"seconds": seconds, "peak": sampler.peak, "env": env, "began": began,
            "failed": ["(process)"] if done.returncode else []}  # fmt: skip


def through_queue(tmp: Path, label: str, names: list[str], per_model: bool) -> dict:
    """The daemon's way: one backfill of the ten (or ``per_model``: one backfill a model, so a
    run a model as the drop sensor launches them)."""
    env = setup_home(tmp, label)
    workspace = tmp / label / "workspace.yaml"
    workspace.write_text(f"load_from:\n  - python_module:\n      module_name: flowstone.definitions\n"
                         f"      working_directory: {ROOT}\n")  # fmt: skip
    bin_dir = Path(sys.executable).parent
    log_path = tmp / label / "daemon.log"
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen([str(bin_dir / "dagster-daemon"), "run", "-w", str(workspace)], env=env,
                                  cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    sampler = RssSampler()
    sampler.start()
    began = time.time()
    start = time.perf_counter()
    failed: list[str] = []
    try:
        ids = [backfill(env, [n]) for n in names] if per_model else [backfill(env, names)]
        runs = wait_runs(ids, names, 1800)
        seconds = time.perf_counter() - start
        failed = [
            r.tags.get("dagster/partition", r.run_id) for r in runs if r.status.value != "SUCCESS"
        ]
    finally:
        sampler.stop.set()
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(30)
    if failed:
        print(log_path.read_text()[-3000:])
    return {"seconds": seconds, "peak": sampler.peak, "env": env, "began": began,
            "failed": failed, "runs": len(runs)}  # fmt: skip


def audit(outcome: dict, names: list[str]) -> dict:
    """Overlap, missing and duplicated packages, and where the time went, from the instance."""
    import dagster as dg

    from assets.baking import PACKAGE_KEY

    instance = instance_at(Path(outcome["env"]["DAGSTER_HOME"]))
    packaged = {}
    for name in names:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=PACKAGE_KEY, asset_partitions=[name]), limit=10).records  # fmt: skip
        packaged[name] = len(records)
    outcome["missing"] = [n for n, c in packaged.items() if c == 0]
    outcome["duplicated"] = [n for n, c in packaged.items() if c > 1]
    outcome["overlap"] = bake_steps_overlap(instance)
    outcome["phases"] = where_time_went(instance, outcome["began"])
    outcome["runs"] = len(instance.get_run_records())
    return outcome


def report(label: str, outcome: dict) -> None:
    within = outcome["peak"] <= BUDGET_MB * 2**20
    print(f"  {label}: {outcome['seconds']:.1f} s, {outcome['runs']} run(s), peak summed RSS "
          f"{outcome['peak'] / 2**20:.0f} MB (budget {BUDGET_MB:.0f} MB: {'within' if within else 'EXCEEDED'}), "
          f"bake steps at once {outcome['overlap']} (limit {POOL_LIMIT}), failed / missing / duplicated "
          f"{len(outcome['failed'])} / {len(outcome['missing'])} / {len(outcome['duplicated'])}")  # fmt: skip
    print(f"    where the time went (s, summed over runs): {outcome['phases']}")


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} (range {min(values):.2f}-{max(values):.2f}, n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1, help="interleaved rounds (default 1)")
    parser.add_argument("--per-model", action="store_true",
                        help="also ten one-model backfills: a run a model, as the drop sensor launches")  # fmt: skip
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="flowstone-bench-bake-"))
    (tmp / "drop").mkdir()
    names = make_models(tmp / "drop")
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")  # fmt: skip
    print(f"{MODELS} classifiers, pool 'baking' limit {POOL_LIMIT}, run queue limit {POOL_LIMIT} on "
          f"'flowstone/bake' (dequeue every {DEQUEUE_SECONDS} s), memory budget {BUDGET_MB:.0f} MB; {os.cpu_count()} cores ({cpu}), "
          f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    ratios: dict[str, list[float]] = {"queue": [], "per-model": []}
    ok = True
    for round_ in range(1, args.repeat + 1):
        peer = audit(sequential(tmp, f"sequential{round_}", names), names)
        queue = audit(through_queue(tmp, f"queue{round_}", names, per_model=False), names)
        print(f"round {round_} (load {os.getloadavg()[0]:.2f}):")
        report("one process, sequential (peer)", peer)
        report("backfill through the queue", queue)
        ratios["queue"].append(queue["seconds"] / peer["seconds"])
        print(f"  ratio queue / peer: {ratios['queue'][-1]:.2f}x (target <= {TARGET})")
        ok &= (queue["peak"] <= BUDGET_MB * 2**20 and queue["overlap"] <= POOL_LIMIT
               and not (queue["failed"] or queue["missing"] or queue["duplicated"]))  # fmt: skip
        if args.per_model:
            single = audit(through_queue(tmp, f"permodel{round_}", names, per_model=True), names)
            report("a run per model through the queue", single)
            ratios["per-model"].append(single["seconds"] / peer["seconds"])
            print(f"  ratio run-per-model / peer: {ratios['per-model'][-1]:.2f}x")
    print(f"queue / peer: {spread(ratios['queue'])}; target <= {TARGET}: "
          f"{'met' if statistics.median(ratios['queue']) <= TARGET else 'NOT met'}; "
          f"budget, pool and bakes: {'held' if ok else 'BROKEN'}")  # fmt: skip
    if ratios["per-model"]:
        print(f"run per model / peer: {spread(ratios['per-model'])}")
    print(f"load at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
