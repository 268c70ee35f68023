"""Files that appear whole or not at all.

A reader (a browser tab on a report, another process reading the pool registry, a deploy
reading ``current.json``) must never see half a file, and a crash must not leave one behind.
Every writer of such a file goes through here: write a temporary file beside the target, then
``os.replace`` it over the target, which is atomic within one filesystem.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

TEMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_path(path: Path, fsync: bool = False, *, prefix: str = TEMP_PREFIX) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; once the block returns, the file written there
    replaces ``path``. If the block raises, the temporary file goes and ``path`` is untouched.
    ``fsync`` flushes the file (and the folder entry) to disk before and after the rename.
    ``prefix`` starts the temporary file's name: a folder whose reader skips (and cleans up)
    its own marker, like the local object store, passes that marker."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{prefix}{path.name}.{uuid.uuid4().hex[:12]}")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)


def write_bytes(
    path: Path, data: bytes | memoryview, fsync: bool = False, *, prefix: str = TEMP_PREFIX
) -> Path:
    """``path`` holds ``data`` afterwards, or what it held before if this fails.

    With ``fsync`` the handle that wrote the data flushes it, so the file is not opened twice.
    """
    with atomic_path(path, prefix=prefix) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        if fsync:
            handle.flush()
            os.fsync(handle.fileno())
    if fsync:
        fsync_dir(path.parent)
    return path


def write_text(path: Path, text: str, fsync: bool = False, *, prefix: str = TEMP_PREFIX) -> Path:
    """``path`` holds ``text`` (UTF-8) afterwards, or what it held before if this fails."""
    return write_bytes(path, text.encode("utf-8"), fsync=fsync, prefix=prefix)


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
