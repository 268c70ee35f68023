"""The doctor's set of checks and the runner that runs them side by side.

Why a registry: the core's checks are known here, but the Dagster instance check needs
Dagster and so lives in the wiring (``assets/instance_check.py``); the command that composes
FlowStone (``flowstone/cli.py``) adds it with :func:`register_check`. Run without that (``python
-m flowstone.ops.doctor``), the doctor checks everything but the instance.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from flowstone.ops.checks.bridges import check_bridges
from flowstone.ops.checks.credentials import check_credentials
from flowstone.ops.checks.dbt import check_dbt_manifest
from flowstone.ops.checks.llm_state import check_llm_state
from flowstone.ops.checks.object_store import check_object_store
from flowstone.ops.checks.pool import check_pool_server
from flowstone.ops.checks.result import FAIL, CheckResult, first_line
from flowstone.ops.checks.warehouse import check_warehouse

Check = Callable[[], CheckResult]

CHECKS: dict[str, Check] = {
    "warehouse": check_warehouse,
    "object_store": check_object_store,
    "credentials": check_credentials,
    "llm_state": check_llm_state,
    "bridges": check_bridges,
    "pool_server": check_pool_server,
    "dbt": check_dbt_manifest,
}


def register_check(key: str, check: Check, *, before: str | None = None) -> None:
    """Add ``check`` under ``key`` (``--only key``), reported just before the check ``before``
    (default: last). Registering a key again replaces its check."""
    if before is not None and before not in CHECKS:
        raise ValueError(f"unknown check {before!r} to register {key!r} before")
    CHECKS.pop(key, None)
    entries = list(CHECKS.items())
    at = len(entries) if before is None else [k for k, _ in entries].index(before)
    entries.insert(at, (key, check))
    CHECKS.clear()
    CHECKS.update(entries)


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
    funcs: dict[str, Check] = {n: CHECKS[n] for n in names}
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


def _run_one(key: str, func: Check, results: dict[str, CheckResult]) -> None:
    started = time.perf_counter()
    try:
        result = func()
    except Exception as exc:
        result = CheckResult(
            key.replace("_", " "),
            FAIL,
            f"the check itself failed: {type(exc).__name__}: {first_line(exc)}",
            "this is a bug in the check or an environment it did not expect; the message "
            "names the cause",
        )
    results[key] = replace(result, seconds=round(time.perf_counter() - started, 3))
