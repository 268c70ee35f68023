"""The one object-store interface every backend implements.

Assets should not care whether their bytes live in a local folder, S3 or a tiered set of both,
so every backend offers the same six operations over plain ``bytes``. Serialisation and
checksums live in :mod:`flowstone.storage.codec`, above this layer.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, BinaryIO

from flowstone.storage.keys import validate_partition_key

if TYPE_CHECKING:
    from flowstone.storage.codec import Encoded


def validate_object_key(key: str) -> str:
    """Object keys are relative, slash-separated names without ``..`` or control characters."""
    return validate_partition_key(key, what="object key")


class ObjectStore(ABC):
    """put/get/exists/delete/list/uri over bytes. ``get`` raises ObjectNotFoundError on a miss."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> str:
        """Store ``data`` atomically under ``key`` (a reader sees old or new, never torn); return the URI."""

    def put_parts(self, key: str, parts: Sequence[bytes | memoryview]) -> str:
        """Store the concatenation of ``parts`` (a codec header, then the payload) like ``put``.

        Backends that can send the parts back to back override this so that a large payload is
        never copied into a joined blob first; the default joins and calls ``put``.
        """
        return self.put(key, b"".join(parts))

    def put_encoded(self, key: str, encoded: Encoded) -> tuple[str, int]:
        """Store a codec-encoded object; returns its URI and the bytes the store now holds.

        The default stores the header and the payload back to back (``put_parts``). A store
        with per-object metadata may keep the header there instead (S3 does), as long as
        ``get`` and ``open`` hand back the same bytes.
        """
        return self.put_parts(key, encoded.parts), encoded.size

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Return the bytes under ``key``."""

    def open(self, key: str) -> BinaryIO:
        """A readable stream of the object, for decoding without holding a second copy.

        Backends that can stream (S3 bodies, files) override this; the default wraps ``get``.
        The caller closes the stream. A missing key raises ObjectNotFoundError here, not on read.
        """
        return io.BytesIO(self.get(key))

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; deleting a missing key is not an error."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys starting with ``prefix``, sorted."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """Where a person (or another tool) finds the object: file:// or s3:// URI."""
