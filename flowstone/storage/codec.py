"""The hybrid codec: one self-describing, checksummed byte format for every stored object.

Why our own envelope: an object read back months later (or from another tier) must say how it
was written and prove it was not truncated or corrupted. Every blob is

    b"FSO1" | uint32 header length (big endian) | header JSON | payload

where the header records ``format`` (json, parquet, safetensors, bytes, pickle),
``compression`` (``zstd`` or none), ``size``, ``sha256`` and ``xxh3_128`` of the payload as
stored, ``created_at``, the FlowStone version and the Python type. ``decode`` verifies size and
checksum before it parses anything, and raises :class:`ChecksumError` naming the key on
mismatch.

``decode_stream`` does the same from a readable stream (an S3 response body, a file): it reads
the header first and then exactly ``size`` payload bytes in one read, so a large payload is never
copied out of a bigger buffer on its way back to the caller.

Two digests, because they answer two questions. ``sha256`` is the object's identity: what the
I/O manager reports, what manifests and people compare, what ``sha256sum`` reproduces.
``xxh3_128`` is the integrity check every load runs: it catches a flipped bit, a truncation or a
torn object as surely as sha256 does (a 128-bit hash; a default boto3 client settles for a
CRC32), at about 30 GB/s instead of 1.8. A cryptographic hash buys nothing more here: whoever
can rewrite the payload can rewrite the header beside it. ``verify_sha256=True`` checks the
sha256 as well, for callers who want it; objects written before ``xxh3_128`` existed are
verified by their sha256.

Formats are chosen JSON first (readable, portable), Parquet for pandas DataFrames,
safetensors for tensors / arrays and dicts of them, raw bytes for ``bytes``, and pickle only
when the caller says the store is trusted: unpickling runs code, so it is off by default.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import hashlib
import io
import json
import pickle
import struct
import uuid
from dataclasses import dataclass
from functools import cached_property
from pathlib import PurePath
from typing import Any, BinaryIO

import xxhash

from flowstone import __version__
from flowstone.storage.errors import ChecksumError, CodecError

MAGIC = b"FSO1"
_LEN = struct.Struct(">I")
_PREFIX = len(MAGIC) + _LEN.size
_MAX_HEADER = 1 << 20  # a real header is ~300 bytes; more means a corrupted length field
FORMATS = ("json", "parquet", "safetensors", "bytes", "pickle")


@dataclass(frozen=True)
class Envelope:
    """What a stored object says about itself (the decoded header)."""

    format: str
    compression: str | None
    sha256: str
    size: int
    raw_size: int
    created_at: str
    flowstone_version: str
    python_type: str
    xxh3_128: str | None = None  # absent in objects written before it was added

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Encoded:
    """Bytes ready to store, plus the envelope written into them.

    ``parts`` is ``(prefix, payload)``: the magic, length and header (a few hundred bytes),
    then the payload buffer exactly as hashed (for a ``bytes`` value, the caller's own object).
    A store that can send the two back to back (S3, see ``ObjectStore.put_parts``) never builds
    the joined blob: for a large object that join is a fresh allocation plus a full copy, which
    costs more than the copy itself once the new pages fault in. ``data`` joins on first use.
    """

    parts: tuple[bytes, bytes | memoryview]
    envelope: Envelope

    @property
    def size(self) -> int:
        """Stored bytes (prefix + payload), without joining."""
        return len(self.parts[0]) + self.envelope.size

    @cached_property
    def data(self) -> bytes:
        """The whole stored blob as one ``bytes`` (joined once, then kept)."""
        return b"".join(self.parts)

    @property
    def header(self) -> bytes:
        """The header JSON alone (ASCII), for stores that keep it beside the payload."""
        return self.parts[0][_PREFIX:]

    @property
    def payload(self) -> bytes | memoryview:
        return self.parts[1]


def prefix_for_header(header: bytes) -> bytes:
    """The magic and length in front of ``header``: what a store that kept the header beside
    the payload (S3 object metadata) puts back in front of it, so every reader sees one layout."""
    return MAGIC + _LEN.pack(len(header)) + header


# --------------------------------------------------------------------------- JSON


def _json_default(obj: Any) -> Any:
    """Encode the types FlowStone assets commonly return; tag the ones we revive on load."""
    import numpy as np  # numpy is a hard dependency of pandas; cheap once loaded

    if isinstance(obj, np.ndarray):
        return {"__fs__": "ndarray", "dtype": str(obj.dtype), "shape": list(obj.shape),
                "data": obj.ravel().tolist()}  # fmt: skip
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dt.datetime):
        return {"__fs__": "datetime", "v": obj.isoformat()}
    if isinstance(obj, dt.date):
        return {"__fs__": "date", "v": obj.isoformat()}
    if isinstance(obj, dt.time):
        return {"__fs__": "time", "v": obj.isoformat()}
    if isinstance(obj, dt.timedelta):
        return {"__fs__": "timedelta", "v": obj.total_seconds()}
    if isinstance(obj, decimal.Decimal):
        return {"__fs__": "decimal", "v": str(obj)}
    if isinstance(obj, uuid.UUID):
        return {"__fs__": "uuid", "v": str(obj)}
    if isinstance(obj, bytes | bytearray):
        return {"__fs__": "bytes", "v": base64.b64encode(bytes(obj)).decode("ascii")}
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=repr)
    if isinstance(obj, PurePath):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "model_dump") and callable(obj.model_dump):  # pydantic v2 models
        return obj.model_dump(mode="json")
    raise TypeError(f"{type(obj).__module__}.{type(obj).__qualname__} is not JSON serialisable")


def _json_revive(d: dict[str, Any]) -> Any:
    tag = d.get("__fs__")
    if tag is None:
        return d
    if tag == "ndarray":
        import numpy as np

        return np.asarray(d["data"], dtype=d["dtype"]).reshape(d["shape"])
    if tag == "datetime":
        return dt.datetime.fromisoformat(d["v"])
    if tag == "date":
        return dt.date.fromisoformat(d["v"])
    if tag == "time":
        return dt.time.fromisoformat(d["v"])
    if tag == "timedelta":
        return dt.timedelta(seconds=d["v"])
    if tag == "decimal":
        return decimal.Decimal(d["v"])
    if tag == "uuid":
        return uuid.UUID(d["v"])
    if tag == "bytes":
        return base64.b64decode(d["v"])
    return d


def to_json_bytes(obj: Any) -> bytes:
    """JSON with FlowStone's type extensions (also used for REST bodies)."""
    return json.dumps(obj, default=_json_default, ensure_ascii=False, allow_nan=True).encode()


def from_json_bytes(data: bytes) -> Any:
    return json.loads(data, object_hook=_json_revive)


# --------------------------------------------------------------------------- detection


def _type_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _is_dataframe(obj: Any) -> bool:
    return type(obj).__module__.startswith("pandas") and type(obj).__name__ == "DataFrame"


def _is_tensor(obj: Any) -> bool:
    # Checked by module name so that torch is never imported just to inspect an object.
    return type(obj).__module__.startswith("torch") and type(obj).__name__ in (
        "Tensor",
        "Parameter",
    )


def _is_ndarray(obj: Any) -> bool:
    return type(obj).__module__ == "numpy" and type(obj).__name__ == "ndarray"


def _tensor_dict_kind(obj: Any) -> str | None:
    """'torch' or 'numpy' when obj is a non-empty dict[str, tensor|array] (a state dict)."""
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) for k in obj):
        return None
    if all(_is_tensor(v) for v in obj.values()):
        return "torch"
    if all(_is_ndarray(v) for v in obj.values()):
        return "numpy"
    return None


# --------------------------------------------------------------------------- payloads


def _encode_payload(obj: Any, trusted: bool) -> tuple[str, Any, str]:
    """Return (format, payload, kind) where kind tells decode how to rebuild the object.

    ``payload`` is any immutable bytes-like object: it is hashed and handed to the store
    without an intermediate copy (a Parquet buffer is passed as a view, not ``getvalue()``d).
    """
    if isinstance(obj, bytes):
        return "bytes", obj, "bytes"
    if isinstance(obj, bytearray | memoryview):
        # a snapshot: the caller may change its buffer after we hashed it (Encoded keeps parts)
        return "bytes", memoryview(obj).cast("B").tobytes(), "bytes"
    if _is_dataframe(obj):
        buf = io.BytesIO()
        obj.to_parquet(buf, engine="pyarrow", index=True)
        return "parquet", buf.getbuffer(), "dataframe"
    if _is_tensor(obj):
        from safetensors.torch import save

        return "safetensors", save({"tensor": obj.detach().contiguous()}), "torch_tensor"
    if _is_ndarray(obj) and obj.dtype.kind in "biuf":
        import numpy as np
        from safetensors.numpy import save as np_save

        return "safetensors", np_save({"array": np.ascontiguousarray(obj)}), "numpy_array"
    kind = _tensor_dict_kind(obj)
    if kind == "torch":
        from safetensors.torch import save

        return (
            "safetensors",
            save({k: v.detach().contiguous() for k, v in obj.items()}),
            "torch_dict",
        )
    if kind == "numpy" and all(v.dtype.kind in "biuf" for v in obj.values()):
        import numpy as np
        from safetensors.numpy import save as np_save

        return (
            "safetensors",
            np_save({k: np.ascontiguousarray(v) for k, v in obj.items()}),
            "numpy_dict",
        )
    try:
        return "json", to_json_bytes(obj), "json"
    except (TypeError, ValueError) as json_error:
        if not trusted:
            raise CodecError(
                f"cannot store {_type_name(obj)}: it is not JSON, a DataFrame, a tensor or "
                f"bytes ({json_error}), and pickle is disabled because this store is not "
                "trusted. Return a supported type, or set trusted_pickle=True on a store only "
                "your own code reads."
            ) from json_error
        return "pickle", pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), "pickle"


def _decode_payload(fmt: str, kind: str, payload: bytes | memoryview) -> Any:
    """Rebuild the object; ``payload`` is copied only where the target type needs ``bytes``."""
    if fmt == "bytes":
        return payload if isinstance(payload, bytes) else bytes(payload)
    if fmt == "parquet":
        import pandas as pd
        import pyarrow as pa

        return pd.read_parquet(pa.BufferReader(payload), engine="pyarrow")  # zero-copy
    if not isinstance(payload, bytes):
        payload = bytes(payload)
    if fmt == "json":
        return from_json_bytes(payload)
    if fmt == "safetensors":
        if kind.startswith("torch"):
            from safetensors.torch import load

            tensors = load(payload)
            return tensors["tensor"] if kind == "torch_tensor" else tensors
        from safetensors.numpy import load as np_load

        arrays = np_load(payload)
        return arrays["array"] if kind == "numpy_array" else arrays
    if fmt == "pickle":
        return pickle.loads(payload)  # noqa: S301 - only reached for trusted stores
    raise CodecError(f"unknown stored format {fmt!r}")


# --------------------------------------------------------------------------- envelope


def encode(obj: Any, *, trusted: bool = False, compression: str | None = None) -> Encoded:
    """Serialise ``obj`` into a checksummed envelope.

    ``compression`` is ``None`` or ``"zstd"``. ``trusted`` allows pickle as the last resort.
    """
    fmt, payload, kind = _encode_payload(obj, trusted)
    raw_size = memoryview(payload).nbytes
    if compression == "zstd":
        import zstandard

        payload = zstandard.ZstdCompressor(level=3).compress(payload)
    elif compression not in (None, "none"):
        raise CodecError(f"unknown compression {compression!r}; use 'zstd' or none")
    envelope = Envelope(
        format=fmt,
        compression="zstd" if compression == "zstd" else None,
        sha256=hashlib.sha256(payload).hexdigest(),
        xxh3_128=xxhash.xxh3_128_hexdigest(payload),
        size=memoryview(payload).nbytes,
        raw_size=raw_size,
        created_at=dt.datetime.now(dt.UTC).isoformat(),
        flowstone_version=__version__,
        python_type=kind,
    )
    header = json.dumps(envelope.as_dict(), separators=(",", ":")).encode("ascii")
    # no copy of the payload here: stores send prefix and payload back to back (Encoded.parts)
    return Encoded((prefix_for_header(header), payload), envelope)


def _not_ours(key: str) -> ChecksumError:
    return ChecksumError(
        f"object '{key}' is not a FlowStone object (bad magic bytes); it was written by "
        "something else or is corrupted. Re-materialize the asset."
    )


def _header_length(prefix: bytes | memoryview, key: str) -> int:
    if len(prefix) < _PREFIX or bytes(prefix[: len(MAGIC)]) != MAGIC:
        raise _not_ours(key)
    (header_len,) = _LEN.unpack_from(prefix, len(MAGIC))
    if header_len > _MAX_HEADER:
        raise ChecksumError(
            f"object '{key}' claims a {header_len}-byte header; it is corrupted. "
            "Re-materialize the asset."
        )
    return header_len


def _parse_header(header: bytes | memoryview, header_len: int, key: str) -> Envelope:
    try:
        if len(header) != header_len:
            raise ValueError(f"header cut short at {len(header)} of {header_len} bytes")
        return Envelope(**json.loads(bytes(header)))
    except (ValueError, TypeError) as exc:
        raise ChecksumError(
            f"object '{key}' has an unreadable header ({exc}); it is corrupted. "
            "Re-materialize the asset."
        ) from exc


def read_envelope(data: bytes, key: str = "<object>") -> tuple[Envelope, memoryview]:
    """Parse the header and return it with a view of the payload (no checksum check)."""
    view = memoryview(data)
    header_len = _header_length(view[:_PREFIX], key)
    envelope = _parse_header(view[_PREFIX : _PREFIX + header_len], header_len, key)
    return envelope, view[_PREFIX + header_len :]


def _check_digest(envelope: Envelope, payload: bytes | memoryview, key: str, sha256: bool) -> None:
    """xxh3-128 when the object has one (see the module docstring), sha256 when asked or not."""
    if envelope.xxh3_128 is not None and not sha256:
        name, expected, found = "xxh3-128", envelope.xxh3_128, xxhash.xxh3_128_hexdigest(payload)
    else:
        name, expected, found = "sha256", envelope.sha256, hashlib.sha256(payload).hexdigest()
    if found != expected:
        raise ChecksumError(
            f"checksum mismatch for object '{key}': expected {name} {expected}, got {found}. "
            "The stored bytes are corrupted; re-materialize the asset."
        )


def _verified(
    envelope: Envelope,
    payload: bytes | memoryview,
    key: str,
    trusted: bool,
    extra: bool = False,
    verify_sha256: bool = False,
) -> Any:
    """Check size and checksum of ``payload`` against the envelope, then rebuild the object.

    ``extra`` is True when a stream had bytes left after the payload.
    """
    if len(payload) != envelope.size or extra:
        found = f"more than {envelope.size}" if extra else str(len(payload))
        raise ChecksumError(
            f"object '{key}' is truncated or padded: header says {envelope.size} payload bytes, "
            f"found {found}. Re-materialize the asset."
        )
    _check_digest(envelope, payload, key, verify_sha256)
    if envelope.format == "pickle" and not trusted:
        raise CodecError(
            f"object '{key}' is a pickle, and this store is not trusted to unpickle (unpickling "
            "runs code). Set trusted_pickle=True only if you wrote the object yourself."
        )
    if envelope.compression == "zstd":
        import zstandard

        payload = zstandard.ZstdDecompressor().decompress(
            payload, max_output_size=envelope.raw_size
        )
    return _decode_payload(envelope.format, envelope.python_type, payload)


def decode(
    data: bytes, key: str = "<object>", *, trusted: bool = False, verify_sha256: bool = False
) -> Any:
    """Verify size and checksum, then rebuild the object. Errors name ``key``."""
    envelope, payload = read_envelope(data, key)
    return _verified(envelope, payload, key, trusted, verify_sha256=verify_sha256)


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    """``n`` bytes, fewer only at end of stream; one read (no copy) unless the stream is short."""
    data = stream.read(n)
    if len(data) >= n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n and (more := stream.read(n - got)):
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def decode_stream(
    stream: BinaryIO, key: str = "<object>", *, trusted: bool = False, verify_sha256: bool = False
) -> Any:
    """Like :func:`decode`, reading from ``stream`` (which the caller closes).

    The payload arrives as one ``bytes`` object of exactly ``size`` bytes, which is what a
    ``bytes`` value is returned as and what the other formats parse without slicing.
    """
    header_len = _header_length(_read_exactly(stream, _PREFIX), key)
    envelope = _parse_header(_read_exactly(stream, header_len), header_len, key)
    payload = _read_exactly(stream, envelope.size)
    extra = len(payload) == envelope.size and bool(stream.read(1))
    return _verified(envelope, payload, key, trusted, extra, verify_sha256)
