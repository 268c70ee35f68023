"""FlowStone's own state with several processes and several hosts, as in the scaled-out mode.

- Approval store on PostgreSQL: processes that start at once on an empty database all get the
  schema (no CREATE TABLE race) and agree on one request.
- LLM response cache: ``FLOWSTONE_LLM_CACHE=s3://...`` makes every process read what another
  wrote (S3 on moto's server).
- Worker-pool pid registry in a folder shared by hosts: a pool reaps only its own host's
  orphans, never deletes another host's files, and drops files of its own earlier boots
  without signalling anything.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.scaleout import stack as st

FORK = multiprocessing.get_context("fork")


def _open_request(url: str, barrier, results) -> None:
    try:
        barrier.wait(timeout=60)
        from flowstone.approvals.store import ApprovalStore

        opened = ApprovalStore(url).open_request(
            "evaluation/report", "qa|echo", "v1", summary={"pid": os.getpid()}
        )
        results.put(("ok", opened.request.id, opened.created))
    except Exception as exc:  # reported to the parent, which fails the test with it
        results.put(("error", f"{type(exc).__name__}: {exc}", False))


@pytest.mark.slow
def test_approval_store_schema_and_requests_from_processes_starting_at_once() -> None:
    with st.fresh_database("fs_approvals_race") as env:
        url = st.pg_url(env)
        barrier, results = FORK.Barrier(6), FORK.Queue()
        procs = [FORK.Process(target=_open_request, args=(url, barrier, results)) for _ in range(6)]
        for proc in procs:
            proc.start()
        outcomes = [results.get(timeout=120) for _ in procs]
        for proc in procs:
            proc.join(timeout=30)
        errors = [o[1] for o in outcomes if o[0] == "error"]
        assert not errors, errors
        assert len({o[1] for o in outcomes}) == 1  # one request, whoever opened it
        assert sum(o[2] for o in outcomes) == 1  # created exactly once

        from flowstone.approvals.store import ApprovalStore

        store = ApprovalStore(url)
        assert [e.event for e in store.audit(outcomes[0][1])] == ["opened"]
        store.engine.dispose()


def _cache_put(key: str, text: str) -> None:
    from flowstone.llm.cache import open_cache
    from flowstone.llm.types import Completion

    completion = Completion(text, "m", 3, 2, 0.0, 0.1, provider="stub")
    open_cache(None).put(key, completion)


def _cache_get(key: str, results) -> None:
    from flowstone.llm.cache import open_cache

    found = open_cache(None).get(key)
    results.put(None if found is None else found.text)


@pytest.mark.slow
def test_llm_cache_on_s3_is_shared_by_processes(monkeypatch) -> None:
    import boto3
    from moto.server import ThreadedMotoServer

    from flowstone.llm.cache import ObjectStoreResponseCache, open_cache

    port = st.free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        env = {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "FLOWSTONE_LLM_CACHE": "s3://fs-llm-cache/responses",
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        boto3.client("s3").create_bucket(Bucket="fs-llm-cache")
        assert isinstance(open_cache(None), ObjectStoreResponseCache)

        key = uuid.uuid4().hex
        writer = FORK.Process(target=_cache_put, args=(key, "cached answer"))
        writer.start()
        writer.join(timeout=60)
        assert writer.exitcode == 0
        results = FORK.Queue()
        reader = FORK.Process(target=_cache_get, args=(key, results))
        reader.start()
        assert results.get(timeout=60) == "cached answer"
        reader.join(timeout=30)
        listed = boto3.client("s3").list_objects_v2(Bucket="fs-llm-cache")["Contents"]
        assert [o["Key"] for o in listed] == [f"responses/{key[:2]}/{key}.json"]
        # An explicit location still wins over the variable.
        assert not isinstance(open_cache(":memory:"), ObjectStoreResponseCache)
    finally:
        server.stop()


def test_pid_registry_shared_by_hosts_touches_only_its_own(tmp_path: Path) -> None:
    import psutil

    from flowstone.workers.registry import WORKER_MARKER, host_id, live_registries, reap_orphans

    # A process that looks like one of our workers (its command line carries the marker).
    worker = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", WORKER_MARKER],
        start_new_session=True,
    )
    try:
        created = psutil.Process(worker.pid).create_time()
        entry = {"pid": worker.pid, "pgid": worker.pid, "create_time": created}
        dead_owner = {"pid": 2**22 + 17, "create_time": 1.0}  # no such pid here
        hostname = socket.gethostname()
        files = {
            "other": {"host": f"{hostname}-elsewhere/some-boot"},
            "rebooted": {"host": f"{hostname}/an-earlier-boot"},
        }
        for name, owner in files.items():
            (tmp_path / f"pool-{name}.json").write_text(
                json.dumps({"owner": {**dead_owner, **owner}, "workers": [entry]})
            )

        assert reap_orphans(tmp_path, grace=1.0) == []
        assert worker.poll() is None  # neither file may signal a process of this host
        assert (tmp_path / "pool-other.json").exists()  # only its host can judge it
        assert not (tmp_path / "pool-rebooted.json").exists()  # that boot's processes are gone
        assert [r["alive"] for r in live_registries(tmp_path)] == [None]

        # The same dead owner on this host: its worker is an orphan and gets reaped.
        (tmp_path / "pool-here.json").write_text(
            json.dumps({"owner": {**dead_owner, "host": host_id()}, "workers": [entry]})
        )
        assert reap_orphans(tmp_path, grace=1.0) == [worker.pid]
        deadline = time.monotonic() + 10
        while worker.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.poll() is not None
        assert sorted(p.name for p in tmp_path.iterdir()) == ["pool-other.json"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, 9)
        worker.wait(timeout=10)
