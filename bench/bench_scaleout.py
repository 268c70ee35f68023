"""Scale-out load: 200 evaluation partitions backfilled through the queued run coordinator on
PostgreSQL, with the daemon and two Celery workers, against the single-machine default on the
same partitions, in one process run.

  single machine   the embedded default: SQLite instance, one in-process run over the 200
                   partitions (the single-run backfill `flowstone demo --single-run` does)
  scale-out        deploy/dagster.yaml on a fresh PostgreSQL database, `dagster-daemon run`,
                   two Celery workers (concurrency 1 each) on Redis, FLOWSTONE_EXECUTOR=celery,
                   an asset backfill of the 200 partitions cut into runs of --per-run partitions
                   (FLOWSTONE_PARTITIONS_PER_RUN), at most 3 runs at once (deploy/dagster.yaml)

Same suites (50 suites x 6 cases cut from the repo's), same systems (the three baselines and
the offline `local-llm` prompt-template system), same metrics (exact/fuzzy match, ROUGE-L: the
embedding model is left out so that what is timed is orchestration, not torch).

Printed: wall time of each side, the ratio scale-out / single machine, and per side the
partitions that failed (no report materialization, or a failed run) and the partitions
materialized more than once (must both be zero). The scale-out time is counted from the
backfill's submission to the last run's end ("runs done") and to the daemon closing the
backfill ("closed", up to one 30 s backfill-daemon tick later); start-up of the daemon and the
workers is shown apart. Bounded: the scale-out side is abandoned after --budget seconds.

Run: .venv/bin/python bench/bench_scaleout.py [--per-run 10] [--budget 720]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
warnings.filterwarnings("ignore")

from tests.scaleout import stack as st  # noqa: E402

SUITES, CASES, SYSTEMS = 50, 6, ("echo", "lead-1", "nearest-sentence", "local-llm")
ASSETS = ("suite", "predictions", "scores", "report")
LOCAL_LLM = {
    "name": "local-llm",
    "description": "The offline LLM path on the local provider",
    "params": {"max_tokens": 128, "temperature": 0.0},
    "providers": [{"kind": "local", "model": "local-baseline"}],
}


def count_outcomes(instance, partitions: list[str], run_filter=None) -> dict[str, int]:
    """Failed and duplicated partitions, from the instance's own records."""
    import dagster as dg

    per_asset = {}
    for name in ASSETS:
        key = dg.AssetKey(["evaluation", name])
        records = instance.fetch_materializations(key, limit=10_000).records
        per_asset[name] = Counter(r.partition_key for r in records)
    report = per_asset["report"]
    failed = {p for p in partitions if report.get(p, 0) == 0}
    if run_filter is not None:
        for run in instance.get_runs(run_filter):
            if run.status != dg.DagsterRunStatus.SUCCESS:
                start = run.tags.get("dagster/asset_partition_range_start")
                failed.add(run.tags.get("dagster/partition") or f"run {run.run_id} from {start}")
    duplicated = {p for counts in per_asset.values() for p, n in counts.items() if n > 1}
    return {"failed": len(failed), "duplicated": len(duplicated)}


def single_machine(root: Path, catalog_env: dict[str, str]) -> tuple[float, dict[str, int]]:
    import dagster as dg

    from assets.runner import execute_partitions
    from flowstone.definitions import build_definitions

    home = root / "sqlite_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    os.environ.update(catalog_env, DAGSTER_HOME=str(home), FLOWSTONE_OUTPUTS_DIR=str(root / "out1"))
    os.environ.pop("FLOWSTONE_EXECUTOR", None)
    defs = build_definitions()
    job = defs.resolve_job_def("evaluation_job")
    keys = job.partitions_def.get_partition_keys()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        start = time.perf_counter()
        outcomes = execute_partitions(job, instance, keys, single_run=True)
        elapsed = time.perf_counter() - start
        print(f"  (single run finished in {elapsed:.1f} s)", flush=True)
        assert len(outcomes) == len(keys)
        return elapsed, count_outcomes(instance, keys)


def scale_out(root: Path, catalog_env: dict[str, str], per_run: int, budget: float) -> dict:
    import dagster as dg
    from dagster._core.execution.backfill import BulkActionStatus

    from assets.pools import ensure_pool_limits
    from flowstone.definitions import build_definitions

    out: dict = {}
    with contextlib.ExitStack() as cleanup:
        pg = cleanup.enter_context(st.fresh_database("fs_bench_scaleout"))
        broker = cleanup.enter_context(st.redis_url())
        celery_yaml = st.celery_config_copy(root)
        env = {
            **catalog_env,
            **pg,
            "DAGSTER_HOME": str(st.dagster_home(root)),
            "FLOWSTONE_OUTPUTS_DIR": str(root / "out2"),
            "FLOWSTONE_EXECUTOR": "celery",
            "FLOWSTONE_PARTITIONS_PER_RUN": str(per_run),
            "FLOWSTONE_CELERY_CONFIG": str(celery_yaml),
            "FLOWSTONE_CELERY_BROKER": broker,
            "FLOWSTONE_CELERY_BACKEND": broker,
            "FLOWSTONE_APPROVALS_DB_URL": st.pg_url(pg),
        }
        os.environ.update(env)
        child_env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "PATH": f"{st.BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
        cleanup.callback(instance.dispose)
        ensure_pool_limits(instance)
        defs = build_definitions()  # FLOWSTONE_EXECUTOR=celery
        graph = defs.resolve_asset_graph()
        keys = [dg.AssetKey(["evaluation", name]) for name in ASSETS]
        partitions = graph.get(keys[0]).partitions_def.get_partition_keys()

        stack = st.LocalStack(root, child_env)
        leftovers: list[int] = []
        cleanup.callback(lambda: leftovers.extend(stack.close()))
        start = time.perf_counter()
        stack.start_daemon(st.workspace_file(root))
        stack.start_worker("w1", celery_yaml)
        stack.start_worker("w2", celery_yaml)
        st.wait_for(
            lambda: st.worker_ready(stack, "w1") and st.worker_ready(stack, "w2"), 180, "workers"
        )
        out["startup_s"] = time.perf_counter() - start

        submitted = time.perf_counter()
        backfill_id = st.submit_backfill(instance, graph, keys, partitions, "bench_scaleout")
        runs_filter = dg.RunsFilter(tags={"dagster/backfill": backfill_id})
        deadline = submitted + budget

        def reports_done() -> bool:
            records = instance.fetch_materializations(
                dg.AssetKey(["evaluation", "report"]), limit=10_000
            ).records
            runs = instance.get_runs(runs_filter)
            return len({r.partition_key for r in records}) >= len(partitions) and all(
                r.is_finished for r in runs
            )

        def closed() -> bool:
            return instance.get_backfill(backfill_id).status != BulkActionStatus.REQUESTED

        out["status"] = "timed out"
        with contextlib.suppress(TimeoutError):
            st.wait_for(
                lambda: reports_done() or closed(), deadline - time.perf_counter(), "runs", 2
            )
            out["runs_done_s"] = time.perf_counter() - submitted
            st.wait_for(closed, max(1.0, deadline - time.perf_counter()), "backfill", 1)
            out["closed_s"] = time.perf_counter() - submitted
            out["status"] = instance.get_backfill(backfill_id).status.value
        runs = instance.get_runs(runs_filter)
        out["runs"] = Counter(r.status.value for r in runs)
        out["steps_by_worker"] = steps_by_worker(instance, runs)
        out.update(count_outcomes(instance, partitions, runs_filter))
        out["partitions"] = len(partitions)
    out["leftover_processes"] = leftovers
    return out


def steps_by_worker(instance, runs) -> Counter:
    from dagster._core.events import DagsterEventType

    seen: Counter = Counter()
    for run in runs:
        for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.ENGINE_EVENT):
            worker = (entry.dagster_event.engine_event_data.metadata or {}).get("Celery worker")
            if worker is not None:
                seen[worker.value.split("@")[0]] += 1
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-run", type=int, default=10, help="partitions per backfill run")
    parser.add_argument("--budget", type=float, default=720, help="seconds for the scale-out side")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="flowstone-bench-scaleout-"))
    catalog_env = st.write_catalog(root, SUITES, CASES, llm_systems=[LOCAL_LLM])
    os.environ.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    partitions = SUITES * len(SYSTEMS)
    print(f"{partitions} partitions ({SUITES} suites x {len(SYSTEMS)} systems, {CASES} cases each)")

    single_s, single = single_machine(root, catalog_env)
    print(
        f"single machine (SQLite, one in-process run): {single_s:7.1f} s   "
        f"failed {single['failed']}  duplicated {single['duplicated']}"
    )
    scaled = scale_out(root, catalog_env, args.per_run, args.budget)
    runs = ", ".join(f"{n} {s}" for s, n in sorted(scaled["runs"].items()))
    print(
        f"scale-out (PostgreSQL, queue, 2 Celery workers, {args.per_run} partitions a run): "
        f"start-up {scaled['startup_s']:.1f} s, backfill {scaled['status']}"
    )
    print(f"  runs: {runs}; steps per worker: {dict(scaled['steps_by_worker'])}")
    if "runs_done_s" in scaled:
        print(
            f"  runs done {scaled['runs_done_s']:7.1f} s   closed {scaled.get('closed_s', float('nan')):7.1f} s"
            f"   failed {scaled['failed']}  duplicated {scaled['duplicated']}"
        )
        print(
            f"ratio scale-out / single machine: {scaled['runs_done_s'] / single_s:.2f}x (runs done), "
            f"{scaled.get('closed_s', float('nan')) / single_s:.2f}x (backfill closed)"
        )
    else:
        print(f"  abandoned after {args.budget:.0f} s: failed {scaled['failed']} (so far)")
    if scaled["leftover_processes"]:
        print(f"WARNING: processes left running: {scaled['leftover_processes']}")
    ok = (
        single["failed"] == single["duplicated"] == 0
        and scaled["failed"] == scaled["duplicated"] == 0
        and scaled.get("status") == "COMPLETED_SUCCESS"
    )
    print("zero failed and zero duplicated partitions: " + ("yes" if ok else "NO"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
