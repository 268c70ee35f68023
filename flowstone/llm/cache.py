"""A durable response cache, so re-materializing a partition makes no provider calls.

The key is a hash of the endpoint (kind, base URL, model, credential hash: see
``ProviderConfig.endpoint``), messages and sampling parameters: anything that can change the
reply. Two servers with one model name never answer for each other. The default store is a SQLite file in the Dagster instance folder
(``$DAGSTER_HOME`` or ``<repo>/.dagster_home``) in WAL mode, which several step processes on
one host can share. Deployments spread over hosts use the object-store cache instead
(``FLOWSTONE_LLM_CACHE=s3://bucket/prefix``, or ``cache_path`` in systems.yaml), behind the same
two methods.
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from flowstone.llm.types import Completion, Message, Params
from flowstone.paths import instance_dir

CACHE_FILE_NAME = "llm_cache.sqlite"
#: Where the cache lives when neither systems.yaml (``cache_path``) nor the LLM resource says:
#: ``s3://bucket/prefix`` or ``file:///shared/folder`` for a deployment on several hosts.
CACHE_LOCATION_ENV = "FLOWSTONE_LLM_CACHE"


def cache_key(
    endpoint: str, model: str, messages: Sequence[Message], params: Params, repeat: int = 0
) -> str:
    """``repeat`` > 0 asks the same request again on purpose (an evaluation's repeats): each
    repeat has its own entry, so a rerun costs nothing and a repeat is never the first answer
    served again. Repeat 0 keys exactly as before repeats existed, so old entries still hit."""
    payload: dict[str, object] = {
        "provider": endpoint,
        "model": model,
        "messages": [m.to_dict() for m in messages],
        "params": params.to_dict(),
    }
    if repeat:
        payload["repeat"] = repeat
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache(abc.ABC):
    @abc.abstractmethod
    def get(self, key: str) -> Completion | None: ...

    @abc.abstractmethod
    def put(self, key: str, completion: Completion) -> None: ...


def default_cache_path() -> Path:
    return instance_dir() / CACHE_FILE_NAME


class SQLiteResponseCache(ResponseCache):
    """Completions by key in one SQLite table; safe for threads and for processes on one host."""

    def __init__(self, path: str | Path | None = None):
        from flowstone.storage.sql import SQLITE_BUSY_TIMEOUT_S, enable_write_ahead_log

        self.path = Path(path) if path else default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # pysqlite's timeout is SQLite's busy timeout
        self._conn = sqlite3.connect(
            self.path, timeout=SQLITE_BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None
        )
        enable_write_ahead_log(self._conn)
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS llm_responses ("
            " key TEXT PRIMARY KEY, provider TEXT NOT NULL, model TEXT NOT NULL,"
            " completion TEXT NOT NULL, created_at REAL NOT NULL)"
        )

    def get(self, key: str) -> Completion | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT completion FROM llm_responses WHERE key = ?", (key,)
            ).fetchone()
        if row is None:
            return None
        return Completion(**json.loads(row[0]))

    def put(self, key: str, completion: Completion) -> None:
        record = json.dumps(asdict(completion))
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO llm_responses (key, provider, model, completion, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (key, completion.provider, completion.model, record, time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM llm_responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class ObjectStoreResponseCache(ResponseCache):
    """Responses as small JSON objects in an object store (a shared folder or S3), so that every
    host of a scaled-out deployment reads the same cache; SQLite stays the one-host default."""

    def __init__(self, store, prefix: str = "llm-cache"):
        self.store = store
        self.prefix = prefix.strip("/")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key[:2]}/{key}.json"

    def get(self, key: str) -> Completion | None:
        from flowstone.storage.errors import ObjectNotFoundError

        try:
            data = self.store.get(self._key(key))
        except ObjectNotFoundError:
            return None
        return Completion(**json.loads(data))

    def put(self, key: str, completion: Completion) -> None:
        self.store.put(self._key(key), json.dumps(asdict(completion)).encode())


def open_cache(location: str | None) -> ResponseCache:
    """The cache at ``location``: ``s3://bucket/prefix`` (boto3 reads AWS_ENDPOINT_URL and the
    usual credentials), ``file:///folder`` (an object store in a shared folder), or a SQLite file
    path; None means ``$FLOWSTONE_LLM_CACHE``, else SQLite under the instance folder.

    SQLite is for one host: its WAL mode must not be used over a network filesystem, so a
    DAGSTER_HOME shared by several hosts needs ``FLOWSTONE_LLM_CACHE`` pointing at S3.
    """
    location = location or os.environ.get(CACHE_LOCATION_ENV) or None
    if not location or not location.startswith(("s3://", "file://")):
        return SQLiteResponseCache(location)
    from flowstone.storage.location import parse_object_store_url

    where = parse_object_store_url(location, "LLM cache location")
    if where.is_s3:
        import boto3

        from flowstone.storage.s3_store import S3ObjectStore

        store = S3ObjectStore(boto3.client("s3"), where.bucket or "")
        return ObjectStoreResponseCache(store, where.prefix or "llm-cache")
    from flowstone.storage.local_store import LocalObjectStore

    return ObjectStoreResponseCache(LocalObjectStore(where.local_folder))
