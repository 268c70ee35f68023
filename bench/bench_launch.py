"""Launching evaluation partitions the ways users do, against one fresh process doing the same
work in process (the limit a launcher can approach).

(a) a fresh Python process loads the code location and materializes ``qa|lead-1`` in process;
(b) ``dagster asset materialize`` of the same partition;
(c) a launch through the webserver's GraphQL API, the way the UI launches a run (``dagster
    dev``: webserver, daemon, queued run coordinator), first with no pool server running,
    then a second time with the pool warm;
(d) a 12-partition backfill launched through GraphQL (one run: single-run backfill policy),
    until its run has finished (the data is there; the daemon's 30 s loop picks the backfill
    up and later marks it completed, which Dagster 1.13 does not let us tune), against (e) one
    fresh process running the same 12 partitions in process as one run;
(f) (b) with ``FLOWSTONE_EXECUTOR=multiprocess``: a process per step, forked from a forkserver
    that preloaded the code location, the executor option the default (in-process) is chosen
    against.

Targets (issue 15): b/a <= 1.3, c-first/a <= 1.3, c-second/a <= 0.5, d/e <= 1.3.
(a) and (e) score in their own process (``FLOWSTONE_POOL=off``), the way a user without
FlowStone's pool would; (b), (c) and (d) run the shipped defaults. The sides are interleaved
round by round on one instance; each figure is the median with the range over rounds.

Run: ``.venv/bin/python bench/bench_launch.py [--rounds 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from support.net import free_port  # noqa: E402

PARTITION = "qa|lead-1"
EVAL_ASSETS = ["suite", "predictions", "scores", "report"]
SELECT = ",".join(f"evaluation/{name}" for name in EVAL_ASSETS)
VENV_BIN = Path(sys.executable).parent

IN_PROCESS = """
import sys, dagster as dg
from assets.runner import PARTITION_RANGE_END_TAG, PARTITION_RANGE_START_TAG
from flowstone.definitions import defs
job = defs.resolve_job_def("evaluation_job")
keys = sys.argv[1].split(",")
target = ({"partition_key": keys[0]} if len(keys) == 1 else
          {"tags": {PARTITION_RANGE_START_TAG: keys[0], PARTITION_RANGE_END_TAG: keys[-1]}})
ok = job.execute_in_process(instance=dg.DagsterInstance.get(), raise_on_error=False, **target).success
sys.exit(0 if ok else 1)
"""

LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""
BACKFILL_STATUS = """
query($id: String!, $tags: [ExecutionTag!]) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status }
    ... on PythonError { message }
  }
  runsOrError(filter: {tags: $tags}) { ... on Runs { results { status } } }
}"""
TERMINAL_RUNS = {"SUCCESS", "FAILURE", "CANCELED"}


class Bench:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {
            **os.environ,
            "DAGSTER_HOME": str(home / "dagster_home"),
            "FLOWSTONE_OUTPUTS_DIR": str(home / "outputs"),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        (home / "dagster_home").mkdir(parents=True)
        shutil.copy(ROOT / "dagster.yaml", home / "dagster_home" / "dagster.yaml")
        self.server: subprocess.Popen | None = None
        self.url = ""

    # -- the sides ------------------------------------------------------------------------
    def fresh_process(self, keys: list[str]) -> float:
        env = {**self.env, "FLOWSTONE_POOL": "off"}
        return _timed([sys.executable, "-c", IN_PROCESS, ",".join(keys)], env)

    def asset_materialize(self, executor: str = "default") -> float:
        command = [str(VENV_BIN / "dagster"), "asset", "materialize", "-m",
                   "flowstone.definitions", "--select", SELECT, "--partition", PARTITION]  # fmt: skip
        return _timed(command, {**self.env, "FLOWSTONE_EXECUTOR": executor})

    def graphql_launch(self) -> float:
        from dagster_graphql import DagsterGraphQLClient

        client = DagsterGraphQLClient("127.0.0.1", port_number=self.port)
        start = time.perf_counter()
        run_id = client.submit_job_execution(
            "evaluation_job", tags={"dagster/partition": PARTITION}
        )
        status = _wait(lambda: client.get_run_status(run_id).value, {"SUCCESS", "FAILURE"})
        if status != "SUCCESS":
            raise RuntimeError(f"run {run_id} ended {status}")
        return time.perf_counter() - start

    def graphql_backfill(self, keys: list[str]) -> float:
        params = {
            "partitionNames": keys,
            "assetSelection": [{"path": ["evaluation", name]} for name in EVAL_ASSETS],
            "fromFailure": False,
        }
        start = time.perf_counter()
        launched = self._graphql(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
        if launched["__typename"] != "LaunchBackfillSuccess":
            raise RuntimeError(f"backfill not launched: {launched}")
        backfill_id = launched["backfillId"]
        tags = [{"key": "dagster/backfill", "value": backfill_id}]

        def runs_done() -> bool:
            found = self._graphql(BACKFILL_STATUS, {"id": backfill_id, "tags": tags})
            if found["partitionBackfillOrError"]["status"] in ("FAILED", "CANCELED"):
                raise RuntimeError(f"backfill {backfill_id}: {found}")
            runs = found["runsOrError"]["results"]
            if runs and any(r["status"] == "FAILURE" for r in runs):
                raise RuntimeError(f"backfill {backfill_id}: a run failed")
            return bool(runs) and all(r["status"] in TERMINAL_RUNS for r in runs)

        # The data is there when the backfill's run has finished; the daemon marks the
        # backfill itself completed on its next pass (every 30 s, not configurable in 1.13).
        _wait(runs_done, {True})
        return time.perf_counter() - start

    # -- the dev server -------------------------------------------------------------------
    def start_server(self) -> None:
        self.port = free_port()
        log = (self.home / "dagster-dev.log").open("ab")
        self.server = subprocess.Popen(
            [
                str(VENV_BIN / "dagster"),
                "dev",
                "-w",
                "workspace.yaml",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
            ],  # fmt: skip
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}/graphql"
        _wait(self._server_ready, {True}, timeout_s=180)

    def stop_server(self) -> None:
        if self.server is not None:
            os.killpg(self.server.pid, signal.SIGINT)
            try:
                self.server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, signal.SIGKILL)
            self.server = None

    def stop_pool(self) -> None:
        """Stop the shared pool server the runs started, so the next launch is a cold one."""
        subprocess.run([str(VENV_BIN / "flowstone"), "pool", "stop"], env=self.env,
                       cwd=ROOT, capture_output=True)  # fmt: skip

    def _server_ready(self) -> bool:
        try:
            return "flowstone" in json.dumps(self._graphql("{ workspaceOrError { __typename "
                                                           "... on Workspace { locationEntries "
                                                           "{ name loadStatus } } } }"))  # fmt: skip
        except httpx.HTTPError:
            return False

    def _graphql(self, query: str, variables: dict | None = None) -> dict:
        response = httpx.post(self.url, json={"query": query, "variables": variables or {}},
                              timeout=60)  # fmt: skip
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise RuntimeError(body["errors"])
        return body["data"]


def _timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return elapsed


def _wait(probe: Callable[[], object], done: set, timeout_s: float = 900) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value in done:
            return value
        time.sleep(0.25)
    raise TimeoutError(f"still {value!r} after {timeout_s:.0f} s")


def _summary(label: str, values: list[float], limit: list[float] | None = None) -> str:
    median = statistics.median(values)
    text = f"{label:<48} {median:7.2f} s  (range {min(values):.2f}-{max(values):.2f})"
    if limit:
        ratios = [v / lim for v, lim in zip(values, limit, strict=True)]
        text += f"  ratio {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="flowstone-bench-launch-"))
    bench = Bench(home)
    times: dict[str, list[float]] = {k: [] for k in ["a", "b", "f", "c1", "c2", "d", "e"]}
    try:
        from flowstone.definitions import defs

        keys = defs.resolve_job_def("evaluation_job").partitions_def.get_partition_keys()
        print(f"{len(keys)} partitions; instance {home}; load average {os.getloadavg()[0]:.1f}")
        bench.fresh_process([PARTITION])  # warm the OS file cache and the instance schema
        bench.start_server()
        for round_no in range(args.rounds):
            bench.stop_pool()
            times["c1"].append(bench.graphql_launch())
            times["c2"].append(bench.graphql_launch())
            times["a"].append(bench.fresh_process([PARTITION]))
            times["b"].append(bench.asset_materialize())
            times["f"].append(bench.asset_materialize("multiprocess"))
            times["e"].append(bench.fresh_process(keys))
            times["d"].append(bench.graphql_backfill(keys))
            print(f"round {round_no + 1}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in
                                                      times.items()), flush=True)  # fmt: skip
    finally:
        bench.stop_server()
        bench.stop_pool()
    a, e = times["a"], times["e"]
    print(_summary("(a) fresh process, one partition in process", a))
    print(_summary("(b) dagster asset materialize", times["b"], a) + "  target <= 1.3")
    print(_summary("(f) the same, multiprocess executor (forkserver)", times["f"], a))
    print(_summary("(c) GraphQL launch, first (pool cold)", times["c1"], a) + "  target <= 1.3")
    print(_summary("(c) GraphQL launch, second (pool warm)", times["c2"], a) + "  target <= 0.5")
    print(_summary(f"(e) fresh process, {len(keys)} partitions one run", e))
    print(_summary(f"(d) GraphQL backfill of {len(keys)} partitions", times["d"], e)
          + "  target <= 1.3")  # fmt: skip
    print(f"load average at the end {os.getloadavg()[0]:.1f}; work folder {home}")


if __name__ == "__main__":
    main()
