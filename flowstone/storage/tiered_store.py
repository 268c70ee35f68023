"""A tiered object store: primary (usually S3), a bounded local cache, and an archive.

Why: reads of recent artifacts should not pay a network round trip, and when the primary is
unreachable a run should still be able to read what it needs from the cache or the archive.
Writes are only as durable as the primary: a write the primary rejects fails loudly, while a
failing secondary (cache or archive) is logged and recorded but never fails a write the primary
accepted.

Reads go cache -> primary -> archive, and a hit in a lower tier warms the cache.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Literal

from flowstone.storage.errors import ObjectNotFoundError, StorageError
from flowstone.storage.local_store import TEMP_MARKER, LocalObjectStore
from flowstone.storage.object_store import ObjectStore

if TYPE_CHECKING:
    from flowstone.storage.codec import Encoded

log = logging.getLogger(__name__)

WriteStrategy = Literal["primary_only", "primary_with_cache", "replicate_all"]
WRITE_STRATEGIES: tuple[str, ...] = ("primary_only", "primary_with_cache", "replicate_all")


class BoundedCacheStore(LocalObjectStore):
    """A local store that forgets: entries expire after ``ttl_seconds`` and the least recently
    used ones are evicted once the folder exceeds ``max_bytes``."""

    def __init__(self, root: str | os.PathLike[str], *, max_bytes: int, ttl_seconds: float):
        # A cache can be rebuilt from the primary, so it skips fsync for speed.
        super().__init__(root, fsync=False)
        self.max_bytes = max_bytes
        self.ttl_seconds = ttl_seconds

    def put(self, key: str, data: bytes) -> str:
        if len(data) > self.max_bytes:
            self.delete(key)  # never leave an older version behind
            return self.uri(key)
        uri = super().put(key, data)
        self.evict()
        return uri

    def get(self, key: str) -> bytes:
        path = self.path_for(key)
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            raise ObjectNotFoundError(key, f"cache {self.root}") from None
        if age > self.ttl_seconds:
            self.delete(key)
            raise ObjectNotFoundError(key, f"cache {self.root} (expired)")
        data = super().get(key)
        now = time.time()
        with contextlib.suppress(FileNotFoundError):
            os.utime(path, (now, path.stat().st_mtime))  # atime marks recent use (LRU)
        return data

    def open(self, key: str) -> BinaryIO:
        # through get(): a read must honour the TTL and mark the entry as recently used
        return ObjectStore.open(self, key)

    def evict(self) -> int:
        """Drop expired entries, then least recently used ones until under ``max_bytes``."""
        entries = []
        now = time.time()
        removed = 0
        if not self.root.exists():
            return 0
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(TEMP_MARKER):
                    continue
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                if now - st.st_mtime > self.ttl_seconds:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                        removed += 1
                    continue
                entries.append((max(st.st_atime, st.st_mtime), st.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed += 1
            total -= size
        return removed


@dataclass
class SecondaryFailure:
    """A cache or archive write that failed after the primary accepted the object."""

    tier: str
    key: str
    error: str


class TieredObjectStore(ObjectStore):
    """Primary + optional cache + optional archive behind one ObjectStore interface."""

    def __init__(
        self,
        primary: ObjectStore,
        *,
        cache: ObjectStore | None = None,
        archive: ObjectStore | None = None,
        write_strategy: WriteStrategy = "primary_with_cache",
    ):
        if write_strategy not in WRITE_STRATEGIES:
            raise StorageError(
                f"unknown write_strategy {write_strategy!r}; use one of {', '.join(WRITE_STRATEGIES)}"
            )
        self.primary = primary
        self.cache = cache
        self.archive = archive
        self.write_strategy = write_strategy
        self.secondary_failures: list[SecondaryFailure] = []

    def _secondary(
        self, tier: str, store: ObjectStore | None, action: str, key: str, *args
    ) -> None:
        if store is None:
            return
        try:
            getattr(store, action)(key, *args)
        except Exception as exc:  # recorded and logged; the primary holds the truth
            failure = SecondaryFailure(tier, key, f"{type(exc).__name__}: {exc}")
            self.secondary_failures.append(failure)
            log.warning("tiered store: %s %s of '%s' failed: %s", tier, action, key, failure.error)

    def put(self, key: str, data: bytes) -> str:
        uri = self.primary.put(key, data)  # a failing primary fails the write
        self._after_primary_write(key, "put", data)
        return uri

    def put_encoded(self, key: str, encoded: Encoded) -> tuple[str, int]:
        """Each tier stores the object its own way (S3 keeps the header as metadata)."""
        written = self.primary.put_encoded(key, encoded)  # a failing primary fails the write
        self._after_primary_write(key, "put_encoded", encoded)
        return written

    def _after_primary_write(self, key: str, action: str, value: object) -> None:
        if self.write_strategy == "primary_only":
            self._secondary("cache", self.cache, "delete", key)  # do not serve a stale copy
        else:
            self._secondary("cache", self.cache, action, key, value)
        if self.write_strategy == "replicate_all":
            self._secondary("archive", self.archive, action, key, value)

    def get(self, key: str) -> bytes:
        if self.cache is not None:
            try:
                return self.cache.get(key)
            except ObjectNotFoundError:
                pass
            except Exception as exc:
                log.warning("tiered store: cache read of '%s' failed: %s", key, exc)
        primary_error: Exception | None = None
        try:
            data = self.primary.get(key)
        except ObjectNotFoundError:
            data = None
        except StorageError as exc:
            primary_error = exc
            data = None
            log.warning("tiered store: primary read of '%s' failed, trying archive: %s", key, exc)
        if data is None and self.archive is not None:
            try:
                data = self.archive.get(key)
            except ObjectNotFoundError:
                data = None
        if data is None:
            if primary_error is not None:
                raise StorageError(
                    f"'{key}' is not in the cache or the archive, and the primary failed: "
                    f"{primary_error}"
                ) from primary_error
            raise ObjectNotFoundError(key, "any tier (cache, primary, archive)")
        self._secondary("cache", self.cache, "put", key, data)  # warm the cache
        return data

    def exists(self, key: str) -> bool:
        stores = [self.primary, self.archive]
        return any(s is not None and s.exists(key) for s in stores)

    def delete(self, key: str) -> None:
        self.primary.delete(key)
        for tier, store in (("cache", self.cache), ("archive", self.archive)):
            self._secondary(tier, store, "delete", key)

    def list(self, prefix: str = "") -> list[str]:
        keys = set(self.primary.list(prefix))
        if self.archive is not None:
            keys.update(self.archive.list(prefix))
        return sorted(keys)

    def uri(self, key: str) -> str:
        return self.primary.uri(key)
