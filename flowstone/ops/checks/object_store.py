"""Doctor check: the object store that holds every asset value, probed with one object.

Why: reading a store's configuration says nothing about whether it accepts writes; a put, a
get and a delete of one probe object do, and the error of the step that failed names the fix
(endpoint down, bucket missing, credentials refused). Nothing is left behind. boto3 is
imported only when the store is S3.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flowstone.ops.checks.result import FAIL, OK, CheckResult, exception_chain, first_line
from flowstone.storage.location import OBJECT_STORE_ENV, ObjectStoreLocation, object_store_location

PROBE_PREFIX = "_flowstone_doctor"


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

    folder = location.local_folder
    return LocalObjectStore(folder), f"local folder {folder}"


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
            f"{first_line(exc)}",
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
            name, FAIL, f"{label}: {step} failed: {first_line(exc)}", _store_fix(where, exc)
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
    text = " ".join(str(e) for e in exception_chain(exc))
    endpoint = _s3_endpoint() or "AWS's default endpoint"
    if "Could not connect" in text or "Connect timeout" in text or "Connection refused" in text:
        return f"start the S3 service at {endpoint} or correct AWS_ENDPOINT_URL"
    if "NoSuchBucket" in text:
        return f"create the bucket: aws s3 mb s3://{where.bucket} (with the same endpoint)"
    if any(code in text for code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNot")):
        return "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or a profile) allowed to write"
    return f"check that {endpoint} is up and the credentials can put, get and delete objects"
