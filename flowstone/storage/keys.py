"""Partition keys and object keys that cannot escape their prefix.

Partition keys come from users (dynamic partitions are added from file names, S3 prefixes or
the CLI), so they are untrusted input that ends up in file paths, S3 keys and SQL. A key such
as ``../x`` or ``/etc/passwd`` must never address anything outside the asset's folder: we
reject it with an error that says why, instead of silently rewriting it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from urllib.parse import quote

from flowstone.storage.errors import UnsafeKeyError

MAX_PARTITION_KEY_LENGTH = 512
_ASSET_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


def validate_partition_key(key: str, *, what: str = "partition key") -> str:
    """Return ``key`` unchanged if it is safe to embed in a path, S3 key or SQL parameter.

    Rejected: empty keys, control characters (including NUL), absolute paths (``/x``, ``\\x``,
    ``C:``), and ``.``/``..`` path segments. A ``/`` inside a key is allowed (it is
    percent-encoded when it becomes part of an object key), so ``org/model`` is a valid key.
    """
    if not isinstance(key, str):
        raise UnsafeKeyError(f"{what} must be a string, got {type(key).__name__}: {key!r}")
    if key == "":
        raise UnsafeKeyError(f"{what} is empty; partition keys must name something")
    if len(key) > MAX_PARTITION_KEY_LENGTH:
        raise UnsafeKeyError(
            f"{what} {key[:40]!r}... is {len(key)} characters; the limit is "
            f"{MAX_PARTITION_KEY_LENGTH}"
        )
    bad = [c for c in key if ord(c) < 32 or ord(c) == 127]
    if bad:
        raise UnsafeKeyError(
            f"{what} {key!r} contains control character(s) {sorted(set(map(repr, bad)))}; "
            "rename the partition without them"
        )
    if key.startswith(("/", "\\")) or _WINDOWS_DRIVE.match(key):
        raise UnsafeKeyError(
            f"{what} {key!r} is an absolute path; partition keys must be relative names"
        )
    segments = re.split(r"[/\\]", key)
    if any(segment in (".", "..") for segment in segments):
        raise UnsafeKeyError(
            f"{what} {key!r} contains a '.' or '..' path segment that would escape the "
            "asset's prefix; rename the partition"
        )
    return key


def validate_asset_segment(segment: str) -> str:
    """Asset key components become folder names: allow only plain identifier-like names."""
    if not isinstance(segment, str) or not _ASSET_SEGMENT.match(segment) or segment == "..":
        raise UnsafeKeyError(
            f"asset key component {segment!r} is not a plain name (letters, digits, '_', '.', "
            "'-'); rename the asset"
        )
    return segment


def encode_segment(value: str) -> str:
    """Percent-encode a validated key so it is exactly one path segment."""
    return quote(value, safe="=-_.~:@+,")


def object_key_for(
    prefix: str,
    asset_path: Sequence[str],
    partition: str | Mapping[str, str] | None,
    *,
    suffix: str = ".fso",
) -> str:
    """Build the object key of an asset (partition).

    Layout: ``<prefix>/<asset path>/<object><suffix>`` where the object is ``__asset__`` for an
    unpartitioned asset, ``partition=<key>`` for one dimension and ``<dim>=<key>/<dim>=<key>``
    (dimensions sorted) for multi-partitions. The ``=`` can never occur in an asset path
    segment, so a partition object can never collide with a nested asset's object.
    """
    parts = [p for p in prefix.strip("/").split("/") if p]
    for p in parts:
        validate_asset_segment(p)
    parts += [validate_asset_segment(s) for s in asset_path]
    if partition is None:
        leaf = ["__asset__"]
    elif isinstance(partition, str):
        leaf = ["partition=" + encode_segment(validate_partition_key(partition))]
    else:
        leaf = []
        for dim in sorted(partition):
            validate_asset_segment(dim)
            value = validate_partition_key(
                partition[dim], what=f"partition key of dimension {dim!r}"
            )
            leaf.append(f"{dim}=" + encode_segment(value))
    leaf[-1] += suffix
    return "/".join(parts + leaf)
