"""Earlier materializations of an object, kept beside it so a person can see what changed.

Why: the object store holds one value per asset partition and a re-materialization replaces
it, so "which cases got worse since the last run?" had no answer. An asset that opts in
(definition metadata ``flowstone/versions_kept: N``) has each materialization also written
as a version named by its time and run id; the newest ``N`` stay, older ones are deleted.

Layout: the versions of ``<path>/<leaf>.fso`` are ``<path>/<leaf>@versions/<time>-<run id>.fso``,
with ``<time>`` as ``YYYYmmddTHHMMSSffffffZ`` so that key order is time order. A version's
name holds no ``=``, so it can never be mistaken for a partition object (whose last segment
is always ``<dimension>=<key>.fso``), and a ``@versions`` folder never equals a ``.fso`` key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from flowstone.storage import codec
from flowstone.storage.errors import StorageError
from flowstone.storage.object_store import ObjectStore
from flowstone.storage.objects import load_object

VERSIONS_KEPT = "flowstone/versions_kept"
SUFFIX = ".fso"
FOLDER_MARK = "@versions"
_STAMP = "%Y%m%dT%H%M%S%fZ"
_NAME = re.compile(r"^(?P<stamp>\d{8}T\d{12}Z)-(?P<run>[A-Za-z0-9_\-]+)\.fso$")


@dataclass(frozen=True, order=True)
class StoredVersion:
    """One kept materialization: when it was written, by which run, under which key."""

    written_at: datetime
    run_id: str
    key: str


def versions_folder(latest_key: str) -> str:
    """The folder (key prefix, with its trailing slash) of ``latest_key``'s versions."""
    if not latest_key.endswith(SUFFIX):
        raise StorageError(
            f"object key {latest_key!r} does not end in {SUFFIX}; it has no versions"
        )
    return latest_key[: -len(SUFFIX)] + FOLDER_MARK + "/"


def version_key(latest_key: str, written_at: datetime, run_id: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", run_id):
        raise StorageError(f"run id {run_id!r} cannot name a version of {latest_key!r}")
    stamp = written_at.astimezone(UTC).strftime(_STAMP)
    return f"{versions_folder(latest_key)}{stamp}-{run_id}{SUFFIX}"


def list_versions(store: ObjectStore, latest_key: str) -> list[StoredVersion]:
    """The kept versions of ``latest_key``, oldest first; names that are not versions are
    skipped (a version is only ever written by :func:`save_version`)."""
    folder = versions_folder(latest_key)
    found = []
    for key in store.list(folder):
        match = _NAME.match(key[len(folder) :])
        if match:
            at = datetime.strptime(match["stamp"], _STAMP).replace(tzinfo=UTC)
            found.append(StoredVersion(at, match["run"], key))
    return sorted(found)


def save_version(
    store: ObjectStore,
    latest_key: str,
    encoded: codec.Encoded,
    *,
    run_id: str,
    keep: int,
    written_at: datetime | None = None,
) -> StoredVersion:
    """Write ``encoded`` (the bytes just stored under ``latest_key``) as a version, then delete
    all but the newest ``keep``. A failure raises: a version that was asked for and not
    written would make the next diff compare against the wrong run."""
    if keep < 1:
        raise StorageError(f"{VERSIONS_KEPT} must be at least 1, got {keep}")
    at = written_at or datetime.now(UTC)
    key = version_key(latest_key, at, run_id)
    try:
        store.put_encoded(key, encoded)
    except Exception as exc:
        raise StorageError(
            f"could not keep version {key} of {latest_key} ({exc}); the latest value was "
            "written, its version was not"
        ) from exc
    versions = list_versions(store, latest_key)
    for old in versions[: max(0, len(versions) - keep)]:
        store.delete(old.key)
    return StoredVersion(at, run_id, key)


def load_version(store: ObjectStore, version: StoredVersion, *, trusted: bool = False) -> object:
    return load_object(store, version.key, trusted=trusted)
