"""Save and load Python objects in any ObjectStore through the checksummed codec.

This is the layer the object-store I/O manager (and any plain-Python caller) uses: it ties the
codec's envelope to a key, and returns what was written so that callers can report the URI,
size, format and checksum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flowstone.storage import codec
from flowstone.storage.object_store import ObjectStore


@dataclass(frozen=True)
class StoredObject:
    """Where an object went and what it was written as."""

    key: str
    uri: str
    envelope: codec.Envelope
    stored_bytes: int


def save_object(
    store: ObjectStore,
    key: str,
    obj: Any,
    *,
    trusted: bool = False,
    compression: str | None = None,
) -> StoredObject:
    return save_encoded(store, key, codec.encode(obj, trusted=trusted, compression=compression))


# A write the store refused in passing (a reset connection, a timeout: flowstone.transient) is
# written again here, a few times with a short backoff, before the step hears of it: a step
# that writes many partitions would otherwise start over for each refusal, and run out of
# its retries when a few of its writes meet one (bench/bench_bake_soak.py saw it). A put of the
# same key is idempotent in every store (an atomic rename, an S3 PUT).
WRITE_ATTEMPTS = 4


def save_encoded(store: ObjectStore, key: str, encoded: codec.Encoded) -> StoredObject:
    """Store bytes already encoded, for a caller that writes them under more than one key."""
    from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

    from flowstone.transient import is_transient

    for attempt in Retrying(retry=retry_if_exception(is_transient), reraise=True,
                            stop=stop_after_attempt(WRITE_ATTEMPTS),
                            wait=wait_exponential(multiplier=0.2, max=2.0)):  # fmt: skip
        with attempt:
            uri, stored_bytes = store.put_encoded(key, encoded)  # never joins header and payload
    return StoredObject(key=key, uri=uri, envelope=encoded.envelope, stored_bytes=stored_bytes)


def load_object(
    store: ObjectStore, key: str, *, trusted: bool = False, verify_sha256: bool = False
) -> Any:
    """Fetch and decode ``key``; a corrupted object raises ChecksumError naming the key.

    Streams from the store (header first, then the payload in one read) so that a large
    payload is not copied out of the whole blob; the checksum is still verified before
    decoding (xxh3-128, plus sha256 with ``verify_sha256``; see :mod:`codec`).
    """
    with store.open(key) as stream:
        return codec.decode_stream(stream, key, trusted=trusted, verify_sha256=verify_sha256)
