"""A scaled-out FlowStone on loopback: PostgreSQL, Redis, the Dagster daemon and Celery workers.

Shared by the end-to-end test and ``bench/bench_scaleout.py``. Every process is started in its
own session (process group) and :meth:`LocalStack.close` kills each group and any descendant
that left it, whether the caller succeeded or not.

PostgreSQL: the server on 127.0.0.1:$FLOWSTONE_TEST_PG_PORT (default 5432) when it answers,
with a fresh database per stack; otherwise a throwaway cluster (tests/support/postgres.py,
shared with the storage and approval tests). Redis: the server on
127.0.0.1:$FLOWSTONE_TEST_REDIS_PORT (default 6379) when it answers, on a database number
nobody uses (claimed with a marker key, flushed afterwards); otherwise our own
``redis-server`` on a free port (apt-get installs it when missing and we are root).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CLAIM_KEY = "flowstone:scaleout-test:claim"

# bench/bench_scaleout.py imports this module outside pytest, where tests/conftest.py has not
# put tests/ on sys.path for the shared helpers in tests/support.
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

from support.apt import apt_install  # noqa: E402
from support.net import free_port, reachable  # noqa: E402
from support.postgres import running_or_own_server  # noqa: E402

# --------------------------------------------------------------------------- PostgreSQL


@contextlib.contextmanager
def fresh_database(prefix: str = "fs_scaleout") -> Iterator[dict[str, str]]:
    """A new, empty database; yields the DAGSTER_PG_* variables deploy/dagster.yaml reads."""
    with (
        running_or_own_server(
            prefix="fs-scaleout-pg-", settings={"max_connections": "200"}, check_stop=False
        ) as server,
        server.database(prefix) as name,
    ):
        yield {
            "DAGSTER_PG_HOST": server.host,
            "DAGSTER_PG_PORT": str(server.port),
            "DAGSTER_PG_USERNAME": server.user,
            "DAGSTER_PG_PASSWORD": "",
            "DAGSTER_PG_DB": name,
        }


def pg_url(env: dict[str, str]) -> str:
    """SQLAlchemy URL of the database in ``env`` (for FlowStone's own stores)."""
    return (
        f"postgresql+psycopg://{env['DAGSTER_PG_USERNAME']}@{env['DAGSTER_PG_HOST']}:"
        f"{env['DAGSTER_PG_PORT']}/{env['DAGSTER_PG_DB']}"
    )


# --------------------------------------------------------------------------- Redis


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    """``redis://127.0.0.1:<port>/<db>`` on a database this stack alone uses."""
    import redis

    shared_port = int(os.environ.get("FLOWSTONE_TEST_REDIS_PORT", "6379"))
    if reachable("127.0.0.1", shared_port):
        token = uuid.uuid4().hex
        for db in range(15, 0, -1):
            client = redis.Redis(host="127.0.0.1", port=shared_port, db=db)
            if client.dbsize() == 0 and client.set(CLAIM_KEY, token, nx=True, ex=3600):
                try:
                    yield f"redis://127.0.0.1:{shared_port}/{db}"
                finally:
                    if client.get(CLAIM_KEY) == token.encode():
                        client.flushdb()
                    client.close()
                return
            client.close()
        raise RuntimeError(f"every database of the Redis server on {shared_port} is in use")
    server = shutil.which("redis-server")
    if server is None:
        apt_install("redis-server")
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not reachable("127.0.0.1", port):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        kill_tree(proc)


# --------------------------------------------------------------------------- processes


def kill_tree(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal the process group of ``proc`` and every descendant (even one that left it)."""
    import psutil

    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
    for child in descendants:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            child.send_signal(sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    psutil.wait_procs(descendants, timeout=10)


@dataclass
class LocalStack:
    """Processes of one scaled-out deployment, all sharing ``env``; logs under ``root``."""

    root: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    started: list[int] = field(default_factory=list)

    def start(self, name: str, *argv: str) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            list(argv),
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.procs[name] = proc
        self.started.append(proc.pid)
        return proc

    def start_daemon(self, workspace: Path) -> subprocess.Popen:
        return self.start("daemon", str(BIN / "dagster-daemon"), "run", "-w", str(workspace))

    def start_worker(
        self,
        name: str,
        celery_config: Path,
        concurrency: int = 1,
        preload: str = "flowstone.definitions",
    ) -> subprocess.Popen:
        """``dagster-celery worker start``: one Celery worker named ``name@<host>``."""
        return self.start(
            name,
            str(BIN / "dagster-celery"),
            "worker",
            "start",
            "-A",
            "dagster_celery.app",
            "-y",
            str(celery_config),
            "-n",
            name,
            "-i",
            preload,  # load the code location once, before the pool forks
            "--",
            f"--concurrency={concurrency}",
            "--pool=prefork",
            "--without-gossip",
            "--without-mingle",
        )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            kill_tree(proc, sig)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> list[int]:
        """Kill everything still running; returns the pids of started processes (or their
        descendants seen at kill time) that are still alive afterwards, which should be none."""
        import psutil

        seen = set(self.started)
        for proc in self.procs.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                seen.update(p.pid for p in psutil.Process(proc.pid).children(recursive=True))
        for name in list(self.procs):
            self.kill(name)
        alive = []
        for pid in sorted(seen):
            with contextlib.suppress(psutil.NoSuchProcess):
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
        return alive


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def worker_ready(stack: LocalStack, name: str) -> bool:
    return "ready." in stack.log(name)


# --------------------------------------------------------------------------- catalog


CHEAP_METRICS = """\
defaults:
  regression_margin: 0.05
  pass_score: 0.5
  metrics:
    exact_match: {pass_score: 1.0}
    fuzzy_match: {scorer: token_sort_ratio}
    rougeL: {use_stemmer: true}
  thresholds:
    fuzzy_match: {min_mean: 0.0}
"""


def write_catalog(
    root: Path,
    suites: int,
    cases_per_suite: int,
    llm_systems: list[dict] | None = None,
    metrics_yaml: str = CHEAP_METRICS,
    systems_defaults: dict | None = None,
) -> dict[str, str]:
    """Suites cut from the repo's suites, a systems file and metric settings under ``root``;
    returns the FLOWSTONE_* variables that point the code location at them.

    ``llm_systems``: entries for systems.yaml (prompt-template systems; the local provider and
    OpenAI-compatible servers on loopback need no key from outside).
    """
    source_cases = []
    for name in ("qa", "summarisation", "paraphrase"):
        source_cases += (REPO / "suites" / f"{name}.jsonl").read_text().splitlines()
    suites_dir = root / "suites"
    suites_dir.mkdir(parents=True, exist_ok=True)
    for index in range(suites):
        start = (index * cases_per_suite) % len(source_cases)
        lines = [source_cases[(start + i) % len(source_cases)] for i in range(cases_per_suite)]
        (suites_dir / f"suite{index:02d}.jsonl").write_text("\n".join(lines) + "\n")
    (root / "evaluation.yaml").write_text(metrics_yaml)
    import yaml

    systems = [
        {**entry, "template": str(REPO / "prompts" / "generic.j2")} for entry in llm_systems or []
    ]
    (root / "systems.yaml").write_text(
        yaml.safe_dump({"defaults": systems_defaults or {}, "systems": systems})
    )
    return {
        "FLOWSTONE_SUITES_DIR": str(suites_dir),
        "FLOWSTONE_EVAL_CONFIG": str(root / "evaluation.yaml"),
        "FLOWSTONE_SYSTEMS_CONFIG": str(root / "systems.yaml"),
    }


def celery_config_copy(root: Path, **transport: float) -> Path:
    """deploy/celery.yaml with some broker transport options changed (e.g. a short visibility
    timeout so that a killed worker's step comes back within a test's time)."""
    import yaml

    document = yaml.safe_load((REPO / "deploy" / "celery.yaml").read_text())
    options = document["execution"]["config"]["config_source"]["broker_transport_options"]
    options.update(transport)
    path = root / "celery.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def workspace_file(root: Path, module: str = "flowstone.definitions") -> Path:
    """A workspace that loads ``module`` from the checkout (daemon, run and Celery workers)."""
    path = root / "workspace.yaml"
    path.write_text(
        "load_from:\n  - python_module:\n"
        f"      module_name: {module}\n      location_name: flowstone\n"
        f"      working_directory: {REPO}\n"
    )
    return path


def dagster_home(root: Path, config: Path | None = None) -> Path:
    """A DAGSTER_HOME holding deploy/dagster.yaml (or ``config``) unchanged."""
    home = root / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config or REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    return home


def submit_backfill(instance, graph, keys, partitions, title: str, tags: dict | None = None) -> str:
    """One asset backfill of ``keys`` over ``partitions``; the daemon's backfill loop runs it."""
    import time as _time

    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id

    backfill_id = make_new_backfill_id()
    instance.add_backfill(
        PartitionBackfill.from_asset_partitions(
            backfill_id=backfill_id,
            asset_graph=graph,
            partition_names=partitions,
            asset_selection=keys,
            backfill_timestamp=_time.time(),
            tags=tags or {},
            dynamic_partitions_store=instance,
            all_partitions=False,
            title=title,
            description=None,
            run_config=None,
        )
    )
    return backfill_id
