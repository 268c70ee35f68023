"""Health checks behind ``flowstone doctor``: each looks at one thing FlowStone depends on.

Why: a failed run is a slow and noisy way to learn that PostgreSQL is down, a key is not set
or the dbt manifest is stale. Each check here takes a few hundred milliseconds, changes
nothing a user cares about (the object store probe writes and deletes one small object), and
returns ok, warn or fail with the sentence that fixes it. Secrets are never read into the
report: the credentials check names variables, never values.

Dagster is imported only by the instance check, boto3 only when the object store is S3.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from flowstone import paths
from flowstone.storage.location import OBJECT_STORE_ENV, ObjectStoreLocation, object_store_location

OK, WARN, FAIL = "ok", "warn", "fail"
POOL_SOCKET_ENV = "FLOWSTONE_POOL_SOCKET"
PROBE_PREFIX = "_flowstone_doctor"


@dataclass(frozen=True)
class CheckResult:
    """One line of the doctor's report."""

    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- Dagster instance ----------------------------------------------------------------------------


def check_instance() -> CheckResult:
    """DAGSTER_HOME exists, its dagster.yaml parses and is valid, and its storage answers."""
    name = "dagster instance"
    home = paths.instance_dir()
    unset = not os.environ.get("DAGSTER_HOME")
    where = f"DAGSTER_HOME {home}" + (" (unset; FlowStone's default)" if unset else "")
    if not home.is_dir():
        return CheckResult(
            name,
            FAIL,
            f"{where} does not exist",
            f"create it: mkdir -p {home} && cp {paths.project_root() / 'dagster.yaml'} {home}/ "
            "(`flowstone demo` does this for the embedded default)",
        )
    config = home / "dagster.yaml"
    if config.exists():
        import yaml

        try:
            document = yaml.safe_load(config.read_text(encoding="utf-8"))
        except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
            return CheckResult(
                name, FAIL, f"{config} does not parse: {exc}", f"correct the YAML in {config}"
            )
        if document is not None and not isinstance(document, dict):
            return CheckResult(
                name, FAIL, f"{config} is not a mapping", f"make {config} a YAML mapping"
            )
        for host, port in _postgres_addresses(document or {}):
            # Dagster retries a refused connection for seconds; a socket answers at once
            try:
                socket.create_connection((host, port), timeout=3).close()
            except OSError as exc:
                return CheckResult(
                    name,
                    FAIL,
                    f"{where}: storage unreachable: PostgreSQL at {host}:{port} from "
                    f"{config.name}: {exc.strerror or exc}",
                    f"start PostgreSQL at {host}:{port}, or fix the storage section of {config}",
                )
    import dagster as dg

    try:
        instance = dg.DagsterInstance.from_config(str(home))
    except dg.DagsterInvalidConfigError as exc:
        return CheckResult(
            name,
            FAIL,
            f"{where}: Dagster rejects {config.name}: {_first_line(exc)}",
            f"correct {config} (see https://docs.dagster.io/deployment/oss/dagster-yaml)",
        )
    except Exception as exc:
        return CheckResult(
            name,
            FAIL,
            f"{where}: storage unreachable: {_first_line(exc)}",
            f"start the database named in the storage section of {config}, or fix its address",
        )
    try:
        storage = type(instance.run_storage).__name__
        runs = instance.get_runs_count()
        instance.get_asset_keys(limit=1)
    except Exception as exc:
        return CheckResult(
            name,
            FAIL,
            f"{where}: storage unreachable: {_first_line(exc)}",
            f"start the database named in the storage section of {config}, or fix its address",
        )
    finally:
        instance.dispose()
    if unset:
        return CheckResult(
            name,
            WARN,
            f"{where}: {storage}, {runs} runs",
            f"export DAGSTER_HOME={home}: `dagster dev` without it uses a temporary instance "
            "and would not see these runs",
        )
    if not config.exists():
        return CheckResult(
            name,
            WARN,
            f"{where}: no dagster.yaml, Dagster's defaults ({storage}, {runs} runs)",
            f"cp {paths.project_root() / 'dagster.yaml'} {home}/ for FlowStone's run limits",
        )
    return CheckResult(name, OK, f"{where}: {storage}, {runs} runs")


def _postgres_addresses(document: dict) -> list[tuple[str, int]]:
    """(host, port) of every PostgreSQL storage in a dagster.yaml (``storage: postgres`` or the
    per-storage form), with ``{env: NAME}`` values resolved; URLs are parsed for theirs."""
    from urllib.parse import urlsplit

    def value(raw: Any) -> Any:
        if isinstance(raw, dict) and "env" in raw:
            return os.environ.get(str(raw["env"]))
        return raw

    configs = []
    storage = document.get("storage")
    if isinstance(storage, dict) and isinstance(storage.get("postgres"), dict):
        configs.append(storage["postgres"])
    for key in ("run_storage", "event_log_storage", "schedule_storage"):
        section = document.get(key)
        if isinstance(section, dict) and "postgres" in str(section.get("module", "")):
            configs.append(section.get("config") or {})
    found = []
    for config in configs:
        url, db = value(config.get("postgres_url")), config.get("postgres_db")
        if isinstance(url, str) and url:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port or 5432
        elif isinstance(db, dict):
            host, port = value(db.get("hostname")), value(db.get("port")) or 5432
        else:
            continue
        if host and (str(host), int(port)) not in found and not str(host).startswith("/"):
            found.append((str(host), int(port)))
    return found


# -- warehouse -----------------------------------------------------------------------------------


def check_warehouse(path: Path | None = None) -> CheckResult:
    """The DuckDB warehouse opens read-only and lists its tables."""
    name = "warehouse"
    path = path or paths.warehouse_path()
    rebuild = "materialize the warehouse and analytics assets (or run `flowstone demo`)"
    if not path.exists():
        return CheckResult(name, WARN, f"{path} not built yet", rebuild)
    import duckdb

    try:
        with duckdb.connect(str(path), read_only=True) as conn:
            tables = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_catalog = "
                "current_database()"
            ).fetchone()[0]
    except Exception as exc:
        message = _first_line(exc)
        if "lock" in message.lower():
            return CheckResult(
                name,
                WARN,
                f"{path} is held by another process: {message}",
                "wait for the writer (a dbt build or a warehouse load) to finish, then re-run",
            )
        return CheckResult(
            name,
            FAIL,
            f"{path} cannot be opened as DuckDB: {message}",
            f"move the file aside (mv {path} {path}.broken) and {rebuild}",
        )
    return CheckResult(name, OK, f"{path}: {tables} tables and views")


# -- object store --------------------------------------------------------------------------------


def _s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def _open_store(location: ObjectStoreLocation) -> tuple[Any, str]:
    """The store at ``location`` (S3 endpoint and credentials from the usual AWS_* variables)
    and a name for the report."""
    if location.is_s3:
        import boto3
        from botocore.config import Config

        from flowstone.storage.s3_store import S3ObjectStore

        client = boto3.client(
            "s3",
            endpoint_url=_s3_endpoint(),
            config=Config(connect_timeout=3, read_timeout=5, retries={"max_attempts": 1}),
        )
        endpoint = client.meta.endpoint_url
        store = S3ObjectStore(client, location.bucket or "", location.prefix)
        return store, f"{location.url} at {endpoint}"
    from flowstone.storage.local_store import LocalObjectStore

    return LocalObjectStore(location.folder), f"local folder {location.folder}"


def check_object_store(location: str | None = None) -> CheckResult:
    """Put, read back and delete one probe object in the configured store."""
    name = "object store"
    try:
        where = object_store_location(location)
        store, label = _open_store(where)
    except Exception as exc:
        return CheckResult(
            name,
            FAIL,
            f"cannot build the store for {location or os.environ.get(OBJECT_STORE_ENV)}: "
            f"{_first_line(exc)}",
            f"set {OBJECT_STORE_ENV} to s3://bucket/prefix or a folder path",
        )
    key = f"{PROBE_PREFIX}/probe-{uuid.uuid4().hex}"
    payload = f"flowstone doctor {time.time()}".encode()
    with _local_tidy(store):
        return _probe(name, store, label, where, key, payload)


def _probe(
    name: str, store: Any, label: str, where: ObjectStoreLocation, key: str, payload: bytes
) -> CheckResult:
    step = "put"
    try:
        store.put(key, payload)
        step = "get"
        same = store.get(key) == payload
        step = "delete"
        store.delete(key)
    except Exception as exc:
        if step == "get":  # the probe object exists: do not leave it behind
            with contextlib.suppress(Exception):  # the failure is already being reported
                store.delete(key)
        return CheckResult(
            name, FAIL, f"{label}: {step} failed: {_first_line(exc)}", _store_fix(where, exc)
        )
    if not same:
        return CheckResult(
            name,
            FAIL,
            f"{label}: the probe object read back differs from what was written",
            "check the store's consistency settings or any proxy in front of it",
        )
    return CheckResult(name, OK, f"{label} ({where.source}): put, get and delete work")


@contextlib.contextmanager
def _local_tidy(store: Any) -> Iterator[None]:
    """Remove the folders a local probe created (the probe folder, and the store's root if
    it did not exist yet), so that the doctor leaves no trace."""
    root = getattr(store, "root", None)
    if not isinstance(root, Path):
        yield
        return
    absent = [p for p in (root, *root.parents) if not p.exists()]
    try:
        yield
    finally:
        for folder in (root / PROBE_PREFIX, *absent):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: never removes anything else


def _store_fix(where: ObjectStoreLocation, exc: BaseException) -> str:
    if not where.is_s3:
        return f"make the folder writable by this user, or point {OBJECT_STORE_ENV} elsewhere"
    text = " ".join(str(e) for e in _chain(exc))
    endpoint = _s3_endpoint() or "AWS's default endpoint"
    if "Could not connect" in text or "Connect timeout" in text or "Connection refused" in text:
        return f"start the S3 service at {endpoint} or correct AWS_ENDPOINT_URL"
    if "NoSuchBucket" in text:
        return f"create the bucket: aws s3 mb s3://{where.bucket} (with the same endpoint)"
    if any(code in text for code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNot")):
        return "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or a profile) allowed to write"
    return f"check that {endpoint} is up and the credentials can put, get and delete objects"


# -- credentials ---------------------------------------------------------------------------------


def check_credentials(systems_path: Path | None = None) -> CheckResult:
    """Every non-local provider in systems.yaml has its key reference set; values unread."""
    from flowstone.errors import ConfigError
    from flowstone.llm.secrets import SecretRef
    from flowstone.llm.systems import load_llm_systems, systems_config_path

    name = "provider credentials"
    source = Path(systems_path) if systems_path else systems_config_path()
    if not source.exists():
        return CheckResult(name, OK, f"no {source}: only the local baselines run")
    try:
        systems = load_llm_systems(source)
    except ConfigError as exc:
        return CheckResult(name, FAIL, str(exc), f"correct {source}")
    present: dict[str, list[str]] = {}
    missing: dict[str, list[str]] = {}
    unchecked: dict[str, list[str]] = {}
    unavailable = []
    for system in systems:
        usable = False
        for provider in system.spec.providers:
            if provider.kind == "local":
                usable = True
                continue
            ref = provider.key_ref
            if ref is None:
                continue
            try:
                secret = SecretRef.parse(ref)
            except ValueError as exc:
                return CheckResult(
                    name,
                    FAIL,
                    f"system {system.name} in {source}: {exc}",
                    "write api_key as env:NAME, vault:<mount>/<path>#<field> or "
                    "aws:<secret-id>#<field>",
                )
            where = secret.describe()
            if secret.backend != "env":
                needs = ("VAULT_ADDR", "VAULT_TOKEN") if secret.backend == "vault" else ()
                lacking = [v for v in needs if not os.environ.get(v)]
                target = missing if lacking else unchecked
                label = ", ".join(lacking) if lacking else where
                target.setdefault(label, []).append(system.name)
                usable = usable or not lacking
            elif os.environ.get(secret.location):
                present.setdefault(where, []).append(system.name)
                usable = True
            else:
                missing.setdefault(where, []).append(system.name)
        if not usable:
            unavailable.append(system.name)
    parts = [f"{len(systems)} LLM systems in {source.name}"]
    if present:
        parts.append("set: " + ", ".join(sorted(present)))
    if unchecked:
        parts.append("resolved at the first call: " + ", ".join(sorted(unchecked)))
    if not missing:
        return CheckResult(name, OK, "; ".join(parts))
    parts.append(
        "missing: "
        + ", ".join(
            f"{var} (for {', '.join(sorted(set(who)))})" for var, who in sorted(missing.items())
        )
    )
    if unavailable:
        parts.append("skipped until set: " + ", ".join(unavailable))
    return CheckResult(
        name,
        WARN,
        "; ".join(parts),
        "export " + " ".join(f"{var}=..." for var in sorted(missing)) + " (or remove the systems)",
    )


# -- worker pool ---------------------------------------------------------------------------------


def check_bridges() -> CheckResult:
    """Every registered bridge imports and exposes its commands (in this process, as the pool
    validates them before starting workers)."""
    from flowstone.workers.bridge import registered_bridges, validate_bridge

    name = "pool bridges"
    good, bad = [], []
    for bridge in sorted(registered_bridges()):
        try:
            info = validate_bridge(bridge)
        except Exception as exc:
            bad.append(f"{bridge}: {_first_line(exc)}")
            continue
        good.append(f"{bridge} ({len(info.commands)} commands)")
    if bad:
        return CheckResult(
            name,
            FAIL,
            "; ".join(bad) + (f"; fine: {', '.join(good)}" if good else ""),
            "install what the bridge imports, or fix the module the error names",
        )
    return CheckResult(name, OK, ", ".join(good))


def check_pool_server(socket_path: str | None = None) -> CheckResult:
    """When $FLOWSTONE_POOL_SOCKET is set, the shared pool server answers a ping."""
    name = "pool server"
    socket_path = socket_path or os.environ.get(POOL_SOCKET_ENV)
    if not socket_path:
        return CheckResult(name, OK, f"{POOL_SOCKET_ENV} not set: each run starts its own pool")
    from flowstone.workers.server import PoolClient

    try:
        with PoolClient(socket_path, connect_timeout_s=1.0) as client:
            client.ping()
            stats = client.stats()
    except Exception as exc:
        return CheckResult(
            name,
            FAIL,
            f"{socket_path}: {_first_line(exc)}",
            f"start it: flowstone pool serve --socket {socket_path} (or unset {POOL_SOCKET_ENV})",
        )
    server = stats.get("server", {})
    return CheckResult(
        name,
        OK,
        f"{socket_path}: '{stats.get('bridge')}' pool, {stats.get('workers_alive')}/"
        f"{stats.get('size')} workers, queue {stats.get('queue_depth')}, server pid "
        f"{server.get('pid')}",
    )


# -- dbt -----------------------------------------------------------------------------------------


def check_dbt_manifest(project_dir: Path | None = None) -> CheckResult:
    """target/manifest.json exists, parses and is newer than every file dbt parses."""
    from flowstone.warehouse.project import dbt_executable, dbt_project_dir, newest_source_mtime

    name = "dbt manifest"
    project_dir = project_dir or dbt_project_dir()
    if not (project_dir / "dbt_project.yml").exists():
        return CheckResult(
            name,
            FAIL,
            f"no dbt project at {project_dir}",
            "set FLOWSTONE_DBT_PROJECT_DIR to the folder holding dbt_project.yml",
        )
    manifest = project_dir / "target" / "manifest.json"
    try:
        dbt = dbt_executable()
    except FileNotFoundError as exc:
        dbt = None
        no_dbt = str(exc)
    parse = f"cd {project_dir} && {dbt or 'dbt'} parse"
    if not manifest.exists():
        if dbt is None:
            return CheckResult(
                name, FAIL, f"{manifest} missing and dbt cannot build it: {no_dbt}", no_dbt
            )
        return CheckResult(
            name,
            WARN,
            f"{manifest} missing: the code location runs `dbt parse` each time it loads until "
            "one exists (a slower start, and a failed load if the project does not parse)",
            parse,
        )
    try:
        document = json.loads(manifest.read_text(encoding="utf-8"))
        version = document["metadata"]["dbt_version"]
        nodes = len(document.get("nodes", {}))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return CheckResult(
            name,
            FAIL,
            f"{manifest} is unreadable ({type(exc).__name__}: {_first_line(exc)}); dagster-dbt "
            "cannot build the analytics assets from it",
            f"rm {manifest} && {parse}",
        )
    built = manifest.stat().st_mtime
    newest = newest_source_mtime(project_dir)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(built))
    if built < newest:
        return CheckResult(
            name,
            WARN,
            f"{manifest} (dbt {version}, {when}) is older than the project's files: the code "
            "location re-parses when it loads",
            parse,
        )
    return CheckResult(name, OK, f"{manifest}: dbt {version}, {nodes} nodes, built {when}")


# -- running them --------------------------------------------------------------------------------


CHECKS: dict[str, Callable[[], CheckResult]] = {
    "instance": check_instance,
    "warehouse": check_warehouse,
    "object_store": check_object_store,
    "credentials": check_credentials,
    "bridges": check_bridges,
    "pool_server": check_pool_server,
    "dbt": check_dbt_manifest,
}


def run_checks(
    names: Sequence[str] | None = None,
    *,
    object_store: str | None = None,
    timeout_s: float = 60.0,
) -> list[CheckResult]:
    """Run the named checks (default: all) side by side; report them in ``CHECKS`` order.

    A check that raises is a failed check carrying the exception; one that has not answered
    within ``timeout_s`` is failed as hung (its thread is left behind, as a daemon).
    """
    names = list(names or CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}")
    funcs: dict[str, Callable[[], CheckResult]] = {n: CHECKS[n] for n in names}
    if "object_store" in funcs:
        funcs["object_store"] = lambda: check_object_store(object_store)
    results: dict[str, CheckResult] = {}
    threads = []
    for key, func in funcs.items():
        thread = threading.Thread(
            target=_run_one, args=(key, func, results), name=f"doctor-{key}", daemon=True
        )
        thread.start()
        threads.append((key, thread))
    deadline = time.monotonic() + timeout_s
    for key, thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        if key not in results:
            results[key] = CheckResult(
                key.replace("_", " "),
                FAIL,
                f"did not answer within {timeout_s:g}s (a service that accepts connections "
                "but never replies?)",
                "check the service this line names; re-run with --only to isolate it",
                timeout_s,
            )
    return [results[key] for key in names]


def _run_one(key: str, func: Callable[[], CheckResult], results: dict[str, CheckResult]) -> None:
    started = time.perf_counter()
    try:
        result = func()
    except Exception as exc:
        result = CheckResult(
            key.replace("_", " "),
            FAIL,
            f"the check itself failed: {type(exc).__name__}: {_first_line(exc)}",
            "this is a bug in the check or an environment it did not expect; the message "
            "names the cause",
        )
    results[key] = replace(result, seconds=round(time.perf_counter() - started, 3))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]


def _chain(exc: BaseException | None) -> list[BaseException]:
    seen = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen
