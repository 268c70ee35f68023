"""Ten models baked at once under a memory budget, the way a deployment runs them.

Ten models land in the drop folder; one asset backfill of the bake job over the ten ``models``
partitions goes to the queued run coordinator, and ``dagster-daemon`` launches the runs (one
a model). Two Dagster limits keep memory in check: the run queue admits ``POOL_LIMIT`` bake
runs at a time (tag concurrency on ``flowstone/bake``), and the ``baking`` pool admits
``POOL_LIMIT`` bake steps at a time across runs; inside a step the host memory budget
(``flowstone.baking.budget``) holds each model's estimate. A sampler sums the RSS of every
process the benchmark started (daemon, code server, run workers, step processes, profiling
children) every 100 ms and compares the peak with the budget.

Peer, same run: the same ten bakes one after another in one process (``flowstone models
bake``), the floor for memory. Prints wall times and their ratio, peak summed RSS against the
budget, the most bake steps seen running at once, and failed / duplicated bakes (both must be
0). Run: ``.venv/bin/python bench/bench_baking_concurrent.py`` (5-10 minutes on 2 cores).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = int(os.environ.get("FLOWSTONE_BENCH_MODELS", "10"))
POOL_LIMIT = int(os.environ.get("FLOWSTONE_BENCH_POOL_LIMIT", "2"))
BUDGET_MB = float(os.environ.get("FLOWSTONE_BENCH_BUDGET_MB", "4096"))
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


def bake_steps_overlap(home: Path) -> int:
    """Most bake steps (pool 'baking') running at the same moment, from the event log."""
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(home)
    instance = dg.DagsterInstance.get()
    spans = []
    for record in instance.get_run_records():
        starts, ends = {}, {}
        for event in instance.all_logs(record.dagster_run.run_id):
            step = event.step_key or ""
            if not step.startswith(
                (
                    "baking__baked_model",
                    "baking__bake_quality",
                    "baking__bake_profile",
                    "baking__source_model",
                )
            ):
                continue
            if event.dagster_event and event.dagster_event.event_type_value == "STEP_START":
                starts[step] = event.timestamp
            if event.dagster_event and event.dagster_event.event_type_value in (
                "STEP_SUCCESS",
                "STEP_FAILURE",
            ):
                ends[step] = event.timestamp
        spans += [(starts[s], ends[s]) for s in starts if s in ends]
    points = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    current = best = 0
    for _, delta in points:
        current += delta
        best = max(best, current)
    return best


INSTANCE = """telemetry:
  enabled: false
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
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
    (home / "dagster.yaml").write_text(INSTANCE.format(limit=POOL_LIMIT))
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


def wait_runs(env: dict[str, str], backfill_id: str, count: int, timeout: float) -> list:
    import dagster as dg

    instance = dg.DagsterInstance.get()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
        if len(runs) >= count and all(r.is_finished for r in runs):
            return runs
        time.sleep(2)
    raise TimeoutError(f"backfill {backfill_id}: runs not finished after {timeout:.0f} s")


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="flowstone-bench-bake-"))
    (tmp / "drop").mkdir()
    names = make_models(tmp / "drop")
    print(
        f"{MODELS} classifiers, pool 'baking' limit {POOL_LIMIT}, memory budget {BUDGET_MB:.0f} MB, {os.cpu_count()} cores"
    )

    env = setup_home(tmp, "sequential")
    start = time.perf_counter()
    sampler = RssSampler()
    sampler.start()
    sequential = subprocess.run(
        [sys.executable, "-c", BAKE, *names], env=env, cwd=ROOT, capture_output=True, text=True
    )
    sequential_s = time.perf_counter() - start
    sampler.stop.set()
    seq_peak = sampler.peak
    if sequential.returncode:
        print(sequential.stdout[-2000:], sequential.stderr[-4000:])

    env = setup_home(tmp, "concurrent")
    workspace = tmp / "workspace.yaml"
    workspace.write_text(f"load_from:\n  - python_module:\n      module_name: flowstone.definitions\n"
                         f"      working_directory: {ROOT}\n")  # fmt: skip
    bin_dir = Path(sys.executable).parent
    with open(tmp / "daemon.log", "wb") as log:
        daemon = subprocess.Popen([str(bin_dir / "dagster-daemon"), "run", "-w", str(workspace)], env=env,
                                  cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    sampler = RssSampler()
    sampler.start()
    start = time.perf_counter()
    failed: list[str] = []
    try:
        backfill_id = backfill(env, names)
        runs = wait_runs(env, backfill_id, len(names), 1800)
        concurrent_s = time.perf_counter() - start
        failed = [r.tags.get("dagster/partition") for r in runs if r.status.value != "SUCCESS"]
    finally:
        sampler.stop.set()
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(30)
    if failed:
        print((tmp / "daemon.log").read_text()[-3000:])

    import dagster as dg

    overlap = bake_steps_overlap(Path(env["DAGSTER_HOME"]))
    instance = dg.DagsterInstance.get()
    from assets.baking import PACKAGE_KEY

    packaged = {}
    for name in names:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=PACKAGE_KEY, asset_partitions=[name]), limit=10).records  # fmt: skip
        packaged[name] = len(records)
    duplicated = [n for n, c in packaged.items() if c > 1]
    missing = [n for n, c in packaged.items() if c == 0]
    print(
        f"sequential (one process, {MODELS} bakes): {sequential_s:.1f} s, peak RSS {seq_peak / 2**20:.0f} MB"
    )
    print(f"concurrent ({MODELS}-run backfill, queued): {concurrent_s:.1f} s, peak summed RSS {sampler.peak / 2**20:.0f} MB "
          f"(budget {BUDGET_MB:.0f} MB: {'within' if sampler.peak <= BUDGET_MB * 2**20 else 'EXCEEDED'})")  # fmt: skip
    print(f"wall-time ratio concurrent/sequential: {concurrent_s / sequential_s:.2f}x")
    print(f"most bake steps running at once: {overlap} (pool limit {POOL_LIMIT})")
    print(
        f"failed: {len(failed)} {failed or ''}  missing packages: {len(missing)}  duplicated: {len(duplicated)}"
    )
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
