"""Object store on S3 (or anything that speaks its API: MinIO, moto, R2...).

Takes a ready boto3 client so that credentials and the endpoint URL come from one place (in
Dagster, dagster-aws's ``S3Resource``). S3 PUTs are atomic per object, so no temp-key dance is
needed. Transport failures become :class:`StorageError` naming the bucket and key, so that a
failing primary write is loud and says where it was going.

Checksums: every FlowStone object carries checksums of its payload, verified on load
(:mod:`flowstone.storage.codec`). botocore's own "flexible checksums" would add a CRC32 over
the same bytes; :func:`client_config` says where that CRC32 is redundant so that callers who
build the client (the object-store I/O manager does) can skip it. It never removes the only
integrity check of a transfer: responses are covered by the codec's checksum; on plain-HTTP endpoints
requests stay covered by SigV4's signed payload hash (which S3 verifies); on HTTPS the request
CRC32 is kept, because there botocore would otherwise sign the payload with a slower sha256.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, BinaryIO

from flowstone.storage.errors import ObjectNotFoundError, StorageError
from flowstone.storage.object_store import ObjectStore, validate_object_key

_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


def client_config(endpoint_url: str | None, *, signed: bool = True) -> Any:
    """botocore ``Config`` for an S3 client used only through FlowStone's checksummed codec.

    Response CRC32 validation is dropped (the codec's checksum covers every payload byte on
    load). Request CRC32 is dropped only on plain-HTTP endpoints (MinIO, moto, a local
    gateway) with signed requests, where SigV4 already signs the payload's sha256 and the
    server verifies it.
    """
    from botocore.config import Config

    plain_http = bool(endpoint_url) and endpoint_url.lower().startswith("http://")
    return Config(
        response_checksum_validation="when_required",
        request_checksum_calculation=(
            "when_required" if plain_http and signed else "when_supported"
        ),
    )


class _PartsBody(io.RawIOBase):
    """A seekable PutObject body over buffers sent back to back (codec header, then payload).

    Why not ``b"".join(parts)``: that is a fresh allocation and a full copy of the object on
    every put, and for multi-megabyte objects the new pages fault in one by one, which costs
    more than the copy. Why not ``io.BytesIO`` (what botocore wraps a ``bytes`` body in): it
    copies every chunk it hands out, and botocore reads the body twice (SigV4 hashes it, then
    urllib3 sends it). A read inside one buffer returns a read-only ``memoryview`` slice of it
    (bytes-like: ``hashlib``, ``zlib.crc32`` and ``socket.sendall`` take it as is, and it
    compares equal to ``b""`` at the end); only a read that spans two buffers is joined.
    Seekable, so botocore can size the body and rewind it for a retry.
    """

    def __init__(self, parts: Sequence[bytes | memoryview]):
        super().__init__()
        self._views = [memoryview(part).cast("B").toreadonly() for part in parts]
        self._starts = []
        offset = 0
        for view in self._views:
            self._starts.append(offset)
            offset += view.nbytes
        self._size = offset
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def read(self, size: int | None = -1) -> bytes | memoryview:  # type: ignore[override]
        end = self._size if size is None or size < 0 else min(self._size, self._pos + size)
        pieces = []
        for start, view in zip(self._starts, self._views, strict=True):
            lo, hi = max(self._pos, start), min(end, start + view.nbytes)
            if lo < hi:
                pieces.append(view[lo - start : hi - start])
        self._pos = max(self._pos, end)
        if len(pieces) == 1:
            return pieces[0]
        return b"".join(pieces)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _S3Body(io.RawIOBase):
    """A GetObject body whose read errors name the object, like every other store error."""

    def __init__(self, body: Any, fail: Any):
        super().__init__()
        self._body = body
        self._fail = fail

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            return self._body.read(None if size is None or size < 0 else size)
        except Exception as exc:
            raise self._fail(exc) from exc

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class S3ObjectStore(ObjectStore):
    """Objects under ``s3://bucket/prefix/``."""

    def __init__(self, client: Any, bucket: str, prefix: str = ""):
        if not bucket:
            raise StorageError("S3ObjectStore needs a bucket name")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def _full(self, key: str) -> str:
        validate_object_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, action: str, key: str, exc: Exception) -> StorageError:
        endpoint = getattr(getattr(self.client, "meta", None), "endpoint_url", "?")
        return StorageError(
            f"S3 {action} of s3://{self.bucket}/{self._full(key)} failed at endpoint {endpoint}: "
            f"{exc}. Check that the endpoint is up and the credentials can {action}."
        )

    def put(self, key: str, data: bytes) -> str:
        return self.put_parts(key, (data,))

    def put_parts(self, key: str, parts: Sequence[bytes | memoryview]) -> str:
        """One PutObject of the parts back to back, never joined (see :class:`_PartsBody`)."""
        full = self._full(key)
        try:
            self.client.put_object(Bucket=self.bucket, Key=full, Body=_PartsBody(parts))
        except Exception as exc:
            raise self._fail("put", key, exc) from exc
        return self.uri(key)

    def _get_body(self, key: str) -> Any:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING_CODES:
                raise ObjectNotFoundError(key, f"s3://{self.bucket}/{self.prefix}") from None
            raise self._fail("get", key, exc) from exc
        except Exception as exc:
            raise self._fail("get", key, exc) from exc

    def get(self, key: str) -> bytes:
        with self.open(key) as body:
            return body.read()

    def open(self, key: str) -> BinaryIO:
        """The response body as a stream: the codec reads header, then payload, no re-slicing."""
        return _S3Body(self._get_body(key), lambda exc: self._fail("get", key, exc))

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._full(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING_CODES:
                return False
            raise self._fail("head", key, exc) from exc
        except Exception as exc:
            raise self._fail("head", key, exc) from exc

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._full(key))
        except Exception as exc:
            raise self._fail("delete", key, exc) from exc

    def list(self, prefix: str = "") -> list[str]:
        full_prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        except Exception as exc:
            raise self._fail("list", prefix or "<all>", exc) from exc
        return sorted(keys)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"
