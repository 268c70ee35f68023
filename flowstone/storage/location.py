"""Where asset values live, read from one environment variable.

Why one variable: the code location's I/O manager, the scale-out deployment and
``flowstone doctor`` must agree on the store, or the doctor probes a folder while the runs
write to a bucket. ``FLOWSTONE_OBJECT_STORE_URL`` is ``s3://bucket/prefix`` (endpoint and
credentials from boto3's usual ``AWS_*`` variables), ``file:///folder`` or a folder path;
unset, it is the local folder ``<outputs>/objects``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from flowstone import paths
from flowstone.errors import ConfigError

OBJECT_STORE_ENV = "FLOWSTONE_OBJECT_STORE_URL"
DEFAULT_PREFIX = "flowstone"
_EXPECTED = "must be s3://bucket[/prefix], a file:// URL or a folder"


@dataclass(frozen=True)
class ObjectStoreLocation:
    """A parsed store location: a bucket and key prefix, or a local folder."""

    url: str
    source: str  # what chose it: the variable's name, "--object-store" or "default"
    bucket: str | None = None
    prefix: str = ""
    folder: Path | None = None

    @property
    def is_s3(self) -> bool:
        return self.bucket is not None

    @property
    def local_folder(self) -> Path:
        """The folder of a local store; asking an S3 location for one is the caller's bug."""
        if self.folder is None:
            raise ValueError(f"{self.url} ({self.source}) is an S3 location, not a local folder")
        return self.folder


def parse_object_store_url(url: str, source: str) -> ObjectStoreLocation:
    """``s3://bucket[/prefix]``, ``file:///folder`` or a folder path; errors name ``source``."""
    text = url.strip()
    if text.startswith("s3://"):
        bucket, _, prefix = text[len("s3://") :].partition("/")
        if not bucket:
            raise ConfigError(source, url, _EXPECTED)
        return ObjectStoreLocation(text, source, bucket=bucket, prefix=prefix.strip("/"))
    if "://" in text and not text.startswith("file://"):
        raise ConfigError(source, url, _EXPECTED)
    folder = text[len("file://") :] if text.startswith("file://") else text
    if not folder:
        raise ConfigError(source, url, "names no folder")
    return ObjectStoreLocation(text, source, folder=Path(folder).expanduser().resolve())


def object_store_location(override: str | None = None) -> ObjectStoreLocation:
    """The store named by ``override`` (a CLI flag), else ``$FLOWSTONE_OBJECT_STORE_URL``,
    else the default folder ``<outputs>/objects``."""
    if override:
        return parse_object_store_url(override, "--object-store")
    if os.environ.get(OBJECT_STORE_ENV, "").strip():
        return parse_object_store_url(
            os.environ[OBJECT_STORE_ENV], f"environment variable {OBJECT_STORE_ENV}"
        )
    folder = paths.outputs_dir() / "objects"
    return ObjectStoreLocation(str(folder), "default", folder=folder)
