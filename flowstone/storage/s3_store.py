"""Object store on S3 (or anything that speaks its API: MinIO, moto, R2...).

Takes a ready boto3 client so that credentials and the endpoint URL come from one place (in
Dagster, dagster-aws's ``S3Resource``). S3 PUTs are atomic per object, so no temp-key dance is
needed. Transport failures become :class:`StorageError` naming the bucket and key, so that a
failing primary write is loud and says where it was going.

Layout of a FlowStone object in S3: the body is the payload alone (a Parquet partition is a
Parquet file that DuckDB, Spark or Athena read as is) and the codec's header travels as object
metadata (``x-amz-meta-flowstone-envelope``). ``open`` and ``get`` put the header back in
front, so readers see the same bytes as from any other store; objects written with the header
inside the body (older FlowStone, or uploaded by hand) read as they are.

Checksums: the put sends the payload's sha256, which the codec computed anyway, as S3's own
``x-amz-checksum-sha256``: a signed header against which S3 verifies the body, and the
checksum S3 keeps and reports for the object. That is why the codec client does not also
SigV4-sign the payload (a second sha256 over the same bytes) or add botocore's CRC32 (a third
pass): the one sha256 covers the upload end to end, over HTTP as over HTTPS. Plain
``put``/``put_parts`` of bytes that carry no checksum of their own ask for a CRC32, so no
upload is unchecked. Reads are verified by the codec (:mod:`flowstone.storage.codec`).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from flowstone.storage.errors import ObjectNotFoundError, StorageError
from flowstone.storage.object_store import ObjectStore, validate_object_key

if TYPE_CHECKING:
    from flowstone.storage.codec import Encoded

_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
ENVELOPE_METADATA = "flowstone-envelope"  # x-amz-meta-flowstone-envelope: the codec header


def client_config() -> Any:
    """botocore ``Config`` for an S3 client used through :class:`S3ObjectStore`.

    Every put names its own checksum (the codec's sha256, or a CRC32 for plain bytes), so
    botocore adds none of its own and does not SigV4-sign the payload; responses are
    verified by the codec, so botocore's CRC32 validation on reads is dropped too.
    """
    from botocore.config import Config

    return Config(
        response_checksum_validation="when_required",
        request_checksum_calculation="when_required",
        s3={"payload_signing_enabled": False},
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

    def read(self, size: int | None = -1) -> bytes | memoryview:
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
    """A GetObject body whose read errors name the object, like every other store error.

    ``prefix`` (the codec's magic, length and header, rebuilt from the object's metadata) is
    served first, then the body itself, so readers see one layout whatever the store keeps.
    """

    def __init__(self, body: Any, fail: Any, prefix: bytes = b""):
        super().__init__()
        self._body = body
        self._fail = fail
        self._prefix = prefix

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self._prefix:
            if size is None or size < 0:
                head, self._prefix = self._prefix, b""
                return head + self._read_body(-1)
            head, self._prefix = self._prefix[:size], self._prefix[size:]
            return head
        return self._read_body(size)

    def _read_body(self, size: int | None) -> bytes:
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
        """One PutObject of the parts back to back, never joined (see :class:`_PartsBody`),
        with a CRC32 that S3 checks (these bytes carry no checksum of their own)."""
        self._put(key, _PartsBody(parts), ChecksumAlgorithm="CRC32")
        return self.uri(key)

    def put_encoded(self, key: str, encoded: Encoded) -> tuple[str, int]:
        """The payload as the body, the codec header as metadata, its sha256 as S3's checksum."""
        digest = bytes.fromhex(encoded.envelope.sha256)
        self._put(
            key,
            _PartsBody((encoded.payload,)),
            Metadata={ENVELOPE_METADATA: encoded.header.decode("ascii")},
            ChecksumSHA256=base64.b64encode(digest).decode("ascii"),
        )
        return self.uri(key), encoded.envelope.size

    def _put(self, key: str, body: _PartsBody, **extra: Any) -> None:
        full = self._full(key)
        try:
            self.client.put_object(Bucket=self.bucket, Key=full, Body=body, **extra)
        except Exception as exc:
            raise self._fail("put", key, exc) from exc

    def _get_response(self, key: str) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._full(key))
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
        """The object as a stream, header first: the codec reads header, then payload, without
        re-slicing. A header kept as metadata is put back in front of the body."""
        from flowstone.storage.codec import prefix_for_header

        response = self._get_response(key)
        header = (response.get("Metadata") or {}).get(ENVELOPE_METADATA)
        prefix = prefix_for_header(header.encode("ascii")) if header else b""
        body = _S3Body(response["Body"], lambda exc: self._fail("get", key, exc), prefix)
        return cast(BinaryIO, body)  # a binary stream; typeshed's BinaryIO is nominal

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
