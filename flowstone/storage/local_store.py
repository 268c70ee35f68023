"""Object store on the local filesystem, with atomic writes.

A write goes through :mod:`flowstone.atomic`: a temporary file in the same folder, flushed and
fsynced, then ``os.replace``d over the target. Rename within one filesystem is atomic, so a
reader (or a process killed half way) sees the old object or the new one, never a torn one.
Temporary files are named with ``TEMP_MARKER`` first; those left by a killed writer are
invisible to ``list``/``get`` and removed by ``remove_stale_temp_files``.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import BinaryIO

from flowstone.atomic import write_bytes
from flowstone.faults import failpoint
from flowstone.storage.errors import ObjectNotFoundError, UnsafeKeyError
from flowstone.storage.object_store import ObjectStore, validate_object_key

# The store's own marker, not atomic.TEMP_PREFIX: a key may be any relative name, and the store
# hides (and cleans up) exactly the names it has always treated as its temporary files.
TEMP_MARKER = ".fstmp-"


class LocalObjectStore(ObjectStore):
    """Objects as files under ``root``; keys map to relative paths."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True):
        self.root = Path(root).expanduser().resolve()
        self.fsync = fsync

    def path_for(self, key: str) -> Path:
        validate_object_key(key)
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):  # defence in depth against symlink tricks
            raise UnsafeKeyError(f"object key {key!r} resolves outside the store root {self.root}")
        return path

    def put(self, key: str, data: bytes) -> str:
        failpoint("store:put", key=key)  # a soak benchmark's refused write (flowstone.faults)
        write_bytes(self.path_for(key), data, fsync=self.fsync, prefix=TEMP_MARKER)
        return self.uri(key)

    def get(self, key: str) -> bytes:
        try:
            return self.path_for(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(key, str(self.root)) from None

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self.path_for(key), "rb")  # noqa: SIM115 - the caller closes it
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(key, str(self.root)) from None

    def exists(self, key: str) -> bool:
        return self.path_for(key).is_file()

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_for(key).unlink()

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.exists():
            return []
        keys = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(TEMP_MARKER):
                    continue
                rel = Path(dirpath, name).relative_to(self.root).as_posix()
                if rel.startswith(prefix):
                    keys.append(rel)
        return sorted(keys)

    def uri(self, key: str) -> str:
        return self.path_for(key).as_uri()

    def remove_stale_temp_files(self, older_than_seconds: float = 3600.0) -> int:
        """Delete temp files a killed writer left behind; return how many were removed."""
        if not self.root.exists():
            return 0
        cutoff = time.time() - older_than_seconds
        removed = 0
        for tmp in self.root.rglob(f"{TEMP_MARKER}*"):
            with contextlib.suppress(FileNotFoundError):
                if tmp.stat().st_mtime <= cutoff:
                    tmp.unlink()
                    removed += 1
        return removed
