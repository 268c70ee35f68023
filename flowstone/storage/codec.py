"""The hybrid codec: one self-describing, checksummed byte format for every stored object.

Why our own envelope: an object read back months later (or from another tier) must say how it
was written and prove it was not truncated or corrupted, header included. Every blob written
now (format version 2) is

    b"FSO2" | uint32 header length (big endian) | header | payload

and the header is ASCII JSON whose first field is its own checksum::

    {"header_xxh3_128":"<32 hex digits>","format":...,"compression":...,"sha256":...,
     "xxh3_128":...,"size":...,"raw_size":...,"created_at":...,"flowstone_version":...,
     "python_type":...}

``header_xxh3_128`` is the xxh3-128 of the magic (``FSO2``) followed by every header byte
except those 32 digits. It covers the magic, the field names and every value, so any changed
header byte is a :class:`ChecksumError` naming the key, never a value of another type: a
flipped bit in ``python_type`` once turned a stored numpy array into a dict. The length
field is covered indirectly (another length cuts the header elsewhere, and that text fails
the checksum). The header stays JSON text because the S3 store keeps it as object metadata
and tools read it there (``prefix_for_header`` rebuilds the prefix from it).

The header records ``format`` (json, parquet, safetensors, bytes, pickle), ``compression``
(``zstd`` or none), ``size``, ``sha256`` and ``xxh3_128`` of the payload as stored,
``raw_size`` (before compression), ``created_at``, the FlowStone version and the kind of
value (``python_type``). ``decode`` verifies the header, then size and checksum of the
payload, before it parses anything.

Version 1 (``FSO1``, the header JSON without ``header_xxh3_128``) is still read, so objects
stored before version 2 stay loadable; it is never written. Its header has no checksum, so
it is checked field by field instead: an unknown field, format, compression or value kind,
a size that does not match the payload or a ``raw_size`` that does not match what
decompresses is a ``ChecksumError``. That stops every single-bit flip that would change the
value, not every edit: the fields nothing reads (``created_at``, ``flowstone_version``, and
``sha256`` unless ``verify_sha256``) can change unnoticed. Re-materializing rewrites an
object as version 2. An older FlowStone cannot read version 2 (it reports bad magic bytes):
upgrade every host that reads a store before one writes to it.

``decode_stream`` does the same from a readable stream (an S3 response body, a file): it reads
the header first and then exactly ``size`` payload bytes in one read, so a large payload is never
copied out of a bigger buffer on its way back to the caller.

Two payload digests, because they answer two questions. ``sha256`` is the object's identity:
what the I/O manager reports, what manifests and people compare, what ``sha256sum``
reproduces. ``xxh3_128`` is the integrity check every load runs: it catches a flipped bit, a
truncation or a torn object as surely as sha256 does (a 128-bit hash; a default boto3 client
settles for a CRC32), at about 30 GB/s instead of 1.8. A cryptographic hash buys nothing more
here: whoever can rewrite the payload can rewrite the header beside it and its checksum. The
checksums catch corruption (bit rot, truncation, a torn or mixed-up object), not tampering.
``verify_sha256=True`` checks the sha256 as well, for callers who want it; version-1 objects
written before ``xxh3_128`` existed are verified by their sha256.

Formats are chosen JSON first (readable, portable), Parquet for pandas DataFrames,
safetensors for tensors / arrays and dicts of them (dtypes safetensors keeps exactly: bool,
(u)int8-64 and float16-64 in little-endian order), raw bytes for ``bytes`` and
``bytearray``, and pickle only when the caller says the store is trusted: unpickling runs
code, so it is off by default.

Exact values. A value loads back equal to what was stored and of the same type, all the way
down, or it is refused when written; nothing changes type on the way (JSON alone would turn
int keys into strings, tuples and sets into lists, ``np.float32`` into ``float``). The JSON
payload therefore carries a tag, a dict ``{"__fs__": "<kind>", ...}``, wherever plain JSON
would lose something:

- as plain JSON: ``None``, ``bool``, ``int``, finite ``float``, ``str`` (lone surrogates
  included, as ``\\u`` escapes), ``list``, and ``dict`` whose keys are all ``str`` and do
  not include the marker ``"__fs__"``;
- tagged: ``float`` NaN and infinities (standard JSON has none; NaN's sign and payload bits
  are not kept, NaN never equals itself anyway), ``tuple``, ``set``, ``frozenset``
  (members in a stable order, so equal sets give equal bytes), ``dict`` with any other keys
  (``int``, ``bool``, ``None``, ``float``, tuples, ... every kind of this list that is
  hashable) or with the marker key (written as ``{"__fs__": "dict", "items": [[key,
  value], ...]}``, which also keeps its order), ``bytes``, ``bytearray``, ``complex``,
  ``datetime.datetime``/``date``/``time`` (naive, ``datetime.timezone`` or
  ``zoneinfo.ZoneInfo`` zones, and ``fold``), ``timedelta``, ``decimal.Decimal``,
  ``uuid.UUID``, ``pathlib`` paths (their class is kept), numpy scalars of every dtype
  except structured ones (``np.float32`` stays ``np.float32``, ``np.int64`` stays
  ``np.int64``), and numpy arrays of those dtypes or of objects that are themselves
  storable (dtype and byte order kept; numbers as a readable list, datetime64, timedelta64
  and long doubles as their raw bytes);
- refused, with an :class:`UnsupportedValueError` naming the value's path (``value["a"][3]``;
  the I/O manager adds the asset and partition): every other type, including dataclasses and
  pydantic models (they would come back as dicts; store ``dataclasses.asdict(x)`` or
  ``x.model_dump()`` if that is what readers expect), subclasses of the types above
  (``OrderedDict``, ``defaultdict``, named tuples, ``IntEnum`` / ``StrEnum`` members: they
  would come back as the base type), datetimes with other zones (pytz, dateutil), structured
  numpy values, ``np.matrix`` and masked arrays, pandas Series and scalars, and values that
  nest too deeply or contain themselves. With ``trusted`` (``trusted_pickle`` on the I/O
  manager) such a value is pickled whole instead.

Top-level values: a tensor, an array or a dict of them goes to safetensors (a dict keeps its
key order), a ``memoryview`` is stored as the bytes it views and loads as ``bytes`` (the one
type a view can come back as), and a DataFrame goes to Parquet. A frame pyarrow cannot
convert (an object column of ints and strings) is refused or pickled like any other value.
Columns of real dtypes (numbers, bools, strings, datetimes) round-trip exactly; *object*
columns come back as Parquet reads them: a column of lists loads as numpy arrays, ints with
``None`` as floats with NaN. That is not refused because the evaluation assets store list
columns (``tags``) and their readers expect exactly that; checking would also mean reading
every such frame back.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import hashlib
import io
import json
import math
import pathlib
import pickle
import struct
import uuid
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import PurePath
from typing import Any, BinaryIO

import xxhash

from flowstone import __version__
from flowstone.storage.errors import ChecksumError, CodecError, UnsupportedValueError

FORMAT_VERSION = 2  # what encode writes; decode reads every version in _MAGICS
MAGIC = b"FSO2"  # the magic of FORMAT_VERSION
MAGIC_V1 = b"FSO1"
_MAGICS = {MAGIC_V1: 1, MAGIC: 2}
_LEN = struct.Struct(">I")
_PREFIX = len(MAGIC) + _LEN.size
_MAX_HEADER = 1 << 20  # a real header is ~400 bytes; more means a corrupted length field
FORMATS = ("json", "parquet", "safetensors", "bytes", "pickle")
_DIGEST_FIELD = "header_xxh3_128"
_DIGEST_LEAD = b'{"' + _DIGEST_FIELD.encode("ascii") + b'":"'  # where a v2 header begins
_DIGEST_HEX = 32  # hex digits of an xxh3-128
_HEX = frozenset("0123456789abcdef")
# the kinds of value (``python_type``) each format carries, per format version
_KINDS_V1 = {
    "json": {"json"},
    "parquet": {"dataframe"},
    "safetensors": {"torch_tensor", "torch_dict", "numpy_array", "numpy_dict"},
    "bytes": {"bytes"},
    "pickle": {"pickle"},
}
_KINDS = {1: _KINDS_V1, 2: {**_KINDS_V1, "bytes": {"bytes", "bytearray"}}}


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
    xxh3_128: str | None = None  # absent in version-1 objects written before it was added

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = frozenset(f.name for f in dataclasses.fields(Envelope))
_REQUIRED = _FIELDS - {"xxh3_128"}


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
        """The header alone (ASCII JSON, its checksum included), for stores that keep it
        beside the payload."""
        return self.parts[0][_PREFIX:]

    @property
    def payload(self) -> bytes | memoryview:
        return self.parts[1]


def _header_digest(magic: bytes, header: bytes | memoryview) -> str:
    """The checksum of a version-2 header: magic + every header byte but the digest's own."""
    start = len(_DIGEST_LEAD)
    digest = xxhash.xxh3_128()
    digest.update(magic)
    digest.update(header[:start])
    digest.update(header[start + _DIGEST_HEX :])
    return digest.hexdigest()


def encode_header(envelope: Envelope) -> bytes:
    """The version-2 header of ``envelope``: its JSON led by the checksum that covers it.

    Public so that a tool that must rewrite a header (a migration, a test) writes one that
    verifies; whoever can do that could write any value, which the checksum never claimed to
    prevent (see the module docstring).
    """
    body = json.dumps(envelope.as_dict(), separators=(",", ":")).encode("ascii")
    unsigned = _DIGEST_LEAD + b"0" * _DIGEST_HEX + b'",' + body[1:]
    digest = _header_digest(MAGIC, unsigned).encode("ascii")
    return _DIGEST_LEAD + digest + unsigned[len(_DIGEST_LEAD) + _DIGEST_HEX :]


def prefix_for_header(header: bytes) -> bytes:
    """The magic and length in front of ``header``: what a store that kept the header beside
    the payload (S3 object metadata) puts back in front of it, so every reader sees one layout.

    The version is read off the header itself: only a version-2 header begins with its
    checksum field, and if that beginning is damaged the header is read as version 1, where
    the unknown field (or the broken JSON) is a ``ChecksumError`` all the same.
    """
    magic = MAGIC if header.startswith(_DIGEST_LEAD) else MAGIC_V1
    return magic + _LEN.pack(len(header)) + header


# --------------------------------------------------------------------------- legacy JSON
# The JSON of version-1 objects, and of REST bodies (flowstone.storage.rest): plain JSON for
# a foreign API, where int keys becoming strings is what JSON means. Never written to objects.


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
    """JSON with FlowStone's type extensions (REST bodies; lossy as JSON is, see above)."""
    return json.dumps(obj, default=_json_default, ensure_ascii=False, allow_nan=True).encode()


def from_json_bytes(data: bytes) -> Any:
    return json.loads(data, object_hook=_json_revive)


# --------------------------------------------------------------------------- exact JSON
# Version 2's JSON payload: plain JSON where that is exact, a tag where it is not, a refusal
# naming the path where neither is possible (the kinds are listed in the module docstring).

_MARK = "__fs__"
_PATH_TYPES = {
    cls.__name__: cls
    for cls in (
        pathlib.PurePosixPath,
        pathlib.PureWindowsPath,
        pathlib.PosixPath,
        pathlib.WindowsPath,
    )
}


class _Refused(Exception):
    """Raised deep in the walk; each container on the way out adds its step of the path."""

    def __init__(self, type_name: str, reason: str):
        super().__init__(type_name, reason)
        self.type_name = type_name
        self.reason = reason
        self.steps: list[str] = []  # innermost first

    def error(self) -> UnsupportedValueError:
        path = "value" + "".join(reversed(self.steps))
        return UnsupportedValueError(
            f"cannot store {path}: it is a {self.type_name}, {self.reason}. Pickle is "
            "disabled because this store is not trusted: return a value FlowStone stores "
            "exactly (see flowstone.storage.codec), or set trusted_pickle=True on a store "
            "only your own code reads.",
            path=path,
            type_name=self.type_name,
        )


def _short(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 40 else text[:37] + "..."


def _refused(obj: Any) -> _Refused:
    """Why ``obj`` cannot be stored exactly, in words a person can act on."""
    cls = type(obj)
    name = _type_name(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _Refused(
            name,
            "a dataclass, which would load back as a dict (store "
            "dataclasses.asdict(value) if a dict is what readers expect)",
        )
    if hasattr(obj, "model_dump") and callable(obj.model_dump):
        return _Refused(
            name,
            "a pydantic model, which would load back as a dict (store "
            "value.model_dump() if a dict is what readers expect)",
        )
    for base in (bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset):
        if isinstance(obj, base):
            return _Refused(
                name,
                f"a subclass of {base.__name__}, which would load back as "
                f"a plain {base.__name__} (convert it first if that is meant)",
            )
    if cls.__module__.startswith("numpy"):
        return _Refused(
            name,
            "a numpy value the JSON format cannot store exactly (structured "
            "dtypes, matrices and masked arrays are not supported)",
        )
    return _Refused(name, "which the JSON format cannot store exactly")


# The walk visits every value of the payload, so it is written for speed: plain scalars are
# checked inline rather than through _tree, and a container is copied only from its first
# child that changes (a payload of plain JSON is handed to json.dumps as it is). Encoding
# plain records costs about twice json.dumps alone.
_isfinite = math.isfinite


def _tree_items(items: Any) -> list[Any]:
    """``items`` as a JSON array: the list itself when no item changes, else a new one."""
    if type(items) is not list:  # a tuple's or an array's items
        items = list(items)
    out: list[Any] | None = None
    i = -1
    try:
        for i, item in enumerate(items):
            cls = type(item)
            if (
                cls is str
                or cls is int
                or cls is bool
                or item is None
                or (cls is float and _isfinite(item))
            ):
                new = item
            else:
                new = _tree(item)
            if out is not None:
                out.append(new)
            elif new is not item:
                out = items[:i]
                out.append(new)
    except _Refused as refused:
        refused.steps.append(f"[{i}]")
        raise
    return items if out is None else out


def _key_step(key: Any) -> str:
    if type(key) is str:
        return "[" + json.dumps(key, ensure_ascii=False) + "]"
    return f"[{_short(key)}]"


def _tree_dict(obj: dict[Any, Any]) -> Any:
    """A plain JSON object when every key is a string and none is the marker; otherwise a
    ``dict`` tag of ``[key, value]`` pairs, which keeps any key (and the order)."""
    if _MARK in obj:
        return _tree_pairs(obj)
    out: dict[str, Any] | None = None
    key: Any = None
    try:
        for key, value in obj.items():
            if type(key) is not str:
                break
            cls = type(value)
            if (
                cls is str
                or cls is int
                or cls is bool
                or value is None
                or (cls is float and _isfinite(value))
            ):
                new = value
            else:
                new = _tree(value)
            if out is not None:
                out[key] = new
            elif new is not value:
                out = {}
                for done, done_value in obj.items():
                    if done == key:
                        break
                    out[done] = done_value
                out[key] = new
        else:
            return obj if out is None else out
    except _Refused as refused:
        refused.steps.append(_key_step(key))
        raise
    return _tree_pairs(obj)


def _tree_pairs(obj: dict[Any, Any]) -> Any:
    pairs = []
    for key, value in obj.items():
        try:
            key_tree = _tree(key)
        except _Refused as refused:
            refused.steps.append(f"<key {_short(key)}>")
            raise
        try:
            pairs.append([key_tree, _tree(value)])
        except _Refused as refused:
            refused.steps.append(_key_step(key))
            raise
    return {_MARK: "dict", "items": pairs}


def _tree_members(obj: set[Any] | frozenset[Any]) -> list[Any]:
    """Members in the order of their encoded text: equal sets give equal bytes whatever the
    hash seed (``repr`` would not: a frozenset's repr follows its hash order)."""
    members = []
    for member in obj:
        try:
            members.append(_tree(member))
        except _Refused as refused:
            refused.steps.append(f"<member {_short(member)}>")
            raise
    return sorted(members, key=lambda m: json.dumps(m, ensure_ascii=False))


def _tree_float(value: float) -> Any:
    return value if math.isfinite(value) else {_MARK: "float", "v": repr(value)}


def _tree_zone(out: dict[str, Any], value: dt.datetime | dt.time) -> dict[str, Any]:
    """Add what ``isoformat`` leaves out: a zone's name, a fixed zone's own name, ``fold``."""
    zone = value.tzinfo
    if type(zone) is zoneinfo.ZoneInfo and zone.key is not None:
        out["tz"] = zone.key
    elif type(zone) is dt.timezone:
        offset = zone.utcoffset(None)
        if zone.tzname(None) != dt.timezone(offset).tzname(None):
            out["tzname"] = zone.tzname(None)
    elif zone is not None:
        raise _Refused(
            _type_name(value),
            f"with a {_type_name(zone)} time zone; only "
            "datetime.timezone and zoneinfo.ZoneInfo zones load back exactly "
            "(convert with .astimezone(ZoneInfo(name)))",
        )
    if value.fold:
        out["fold"] = 1
    return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


_TAGGERS: dict[type, Callable[[Any], Any]] = {
    bytes: lambda v: {_MARK: "bytes", "v": _b64(v)},
    bytearray: lambda v: {_MARK: "bytearray", "v": _b64(bytes(v))},
    complex: lambda v: {_MARK: "complex", "re": _tree_float(v.real), "im": _tree_float(v.imag)},
    dt.datetime: lambda v: _tree_zone({_MARK: "datetime", "v": v.isoformat()}, v),
    dt.date: lambda v: {_MARK: "date", "v": v.isoformat()},
    dt.time: lambda v: _tree_zone({_MARK: "time", "v": v.isoformat()}, v),
    dt.timedelta: lambda v: {
        _MARK: "timedelta",
        "d": v.days,
        "s": v.seconds,
        "us": v.microseconds,
    },
    decimal.Decimal: lambda v: {_MARK: "decimal", "v": str(v)},
    uuid.UUID: lambda v: {_MARK: "uuid", "v": str(v)},
    **{
        cls: (lambda v: {_MARK: "path", "type": type(v).__name__, "v": str(v)})
        for cls in _PATH_TYPES.values()
    },
}


def _tree_numpy(obj: Any) -> Any:
    """numpy scalars and arrays with their exact dtype (byte order included)."""
    import numpy as np

    if type(obj) is np.ndarray:
        return _tree_ndarray(obj)
    if not isinstance(obj, np.generic):
        raise _refused(obj)
    dtype = obj.dtype
    if _as_list(dtype):
        return {_MARK: "np", "dtype": dtype.str, "v": _tree(obj.item())}
    if dtype.kind in "mMfc":  # datetime64, timedelta64, long doubles: their own bytes
        return {_MARK: "np", "dtype": dtype.str, "b64": _b64(obj.tobytes())}
    raise _refused(obj)


def _as_list(dtype: Any) -> bool:
    """dtypes whose values ``item()``/``tolist()`` turn into Python values without loss."""
    kind, size = dtype.kind, dtype.itemsize
    return kind in "biuSU" or (kind == "f" and size <= 8) or (kind == "c" and size <= 16)


def _tree_ndarray(array: Any) -> Any:
    out = {_MARK: "ndarray", "dtype": array.dtype.str, "shape": list(array.shape)}
    kind = array.dtype.kind
    if _as_list(array.dtype):
        out["data"] = _tree_items(array.ravel().tolist())
    elif kind in "mMfc":
        out["b64"] = _b64(array.tobytes(order="C"))
    elif kind == "O":
        out["items"] = _tree_items(array.ravel())
    else:
        raise _refused(array)
    return out


def _tree(obj: Any) -> Any:
    """``obj`` as plain JSON data, tagged where plain JSON would lose something."""
    cls = type(obj)
    if cls is str or cls is int or cls is bool or obj is None:
        return obj
    if cls is float:
        return _tree_float(obj)
    if cls is list:
        return _tree_items(obj)
    if cls is dict:
        return _tree_dict(obj)
    if cls is tuple:
        return {_MARK: "tuple", "items": _tree_items(obj)}
    if cls is set or cls is frozenset:
        return {_MARK: cls.__name__, "items": _tree_members(obj)}
    tagger = _TAGGERS.get(cls)
    if tagger is not None:
        return tagger(obj)
    if cls.__module__ == "numpy":
        return _tree_numpy(obj)
    raise _refused(obj)


def _exact_json(obj: Any) -> bytes:
    """Encode ``obj`` as version-2 JSON; raise ``_Refused`` for what it cannot carry."""
    try:
        tree = _tree(obj)
    except RecursionError:
        raise _Refused(
            _type_name(obj), "which nests too deeply (or contains itself) to store as JSON"
        ) from None
    text = json.dumps(tree, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: keep it as a \u escape, which JSON allows
        return json.dumps(tree, allow_nan=False, separators=(",", ":")).encode("ascii")


def _revive_np(d: dict[str, Any]) -> Any:
    import numpy as np

    dtype = np.dtype(d["dtype"])
    if "b64" in d:
        return np.frombuffer(base64.b64decode(d["b64"]), dtype=dtype)[0]
    return dtype.type(d["v"])


def _revive_ndarray(d: dict[str, Any]) -> Any:
    import numpy as np

    dtype = np.dtype(d["dtype"])
    if "data" in d:
        return np.asarray(d["data"], dtype=dtype).reshape(d["shape"])
    if "b64" in d:
        return np.frombuffer(base64.b64decode(d["b64"]), dtype=dtype).reshape(d["shape"]).copy()
    array = np.empty(len(d["items"]), dtype=object)
    for i, item in enumerate(d["items"]):
        array[i] = item
    return array.reshape(d["shape"])


def _revive_zone(value: Any, d: dict[str, Any]) -> Any:
    if "tz" in d:
        value = value.replace(tzinfo=zoneinfo.ZoneInfo(d["tz"]))
    elif "tzname" in d:
        value = value.replace(tzinfo=dt.timezone(value.utcoffset(), d["tzname"]))
    return value.replace(fold=1) if d.get("fold") else value


_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_REVIVERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "float": lambda d: _NONFINITE[d["v"]],
    "tuple": lambda d: tuple(d["items"]),
    "set": lambda d: set(d["items"]),
    "frozenset": lambda d: frozenset(d["items"]),
    "dict": lambda d: {key: value for key, value in d["items"]},
    "bytes": lambda d: base64.b64decode(d["v"]),
    "bytearray": lambda d: bytearray(base64.b64decode(d["v"])),
    "complex": lambda d: complex(d["re"], d["im"]),
    "datetime": lambda d: _revive_zone(dt.datetime.fromisoformat(d["v"]), d),
    "date": lambda d: dt.date.fromisoformat(d["v"]),
    "time": lambda d: _revive_zone(dt.time.fromisoformat(d["v"]), d),
    "timedelta": lambda d: dt.timedelta(days=d["d"], seconds=d["s"], microseconds=d["us"]),
    "decimal": lambda d: decimal.Decimal(d["v"]),
    "uuid": lambda d: uuid.UUID(d["v"]),
    "path": lambda d: _PATH_TYPES[d["type"]](d["v"]),
    "np": _revive_np,
    "ndarray": _revive_ndarray,
}


def _revive_exact(d: dict[str, Any]) -> Any:
    """Every dict carrying the marker is a tag: a user's own marker key was escaped on write."""
    tag = d.get(_MARK)
    if tag is None:
        return d
    revive = _REVIVERS.get(tag) if type(tag) is str else None
    if revive is None:
        raise ValueError(f"unknown value tag {tag!r}")
    return revive(d)


def _from_exact_json(payload: bytes) -> Any:
    return json.loads(payload, object_hook=_revive_exact)


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


def _is_safetensors_array(obj: Any) -> bool:
    """A numpy array safetensors gives back exactly: its dtypes, never big-endian (it would
    load back little-endian, another dtype)."""
    return (
        type(obj).__module__ == "numpy"
        and type(obj).__name__ == "ndarray"
        and obj.dtype.kind in "biuf"
        and obj.dtype.itemsize <= 8
        and obj.dtype.byteorder != ">"
    )


def _c_order(array: Any) -> Any:
    """``array`` in C order, its shape kept (``np.ascontiguousarray`` turns a 0-d array into
    a 1-d one, which then loaded back with another shape)."""
    return array if array.flags.c_contiguous else array.copy(order="C")


def _tensor_dict_kind(obj: Any) -> str | None:
    """'torch' or 'numpy' when obj is a non-empty dict[str, tensor|array] (a state dict)."""
    if type(obj) is not dict or not obj or not all(type(k) is str for k in obj):
        return None
    if all(_is_tensor(v) for v in obj.values()):
        return "torch"
    if all(_is_safetensors_array(v) for v in obj.values()):
        return "numpy"
    return None


# --------------------------------------------------------------------------- payloads


def _encode_payload(obj: Any, trusted: bool) -> tuple[str, Any, str]:
    """Return (format, payload, kind) where kind tells decode how to rebuild the object.

    ``payload`` is any immutable bytes-like object: it is hashed and handed to the store
    without an intermediate copy (a Parquet buffer is passed as a view, not ``getvalue()``d).
    A value no format carries exactly is pickled when ``trusted``, else refused.
    """
    try:
        return _exact_payload(obj)
    except _Refused as refused:
        if not trusted:
            raise refused.error() from None
    try:
        return "pickle", pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), "pickle"
    except Exception as exc:  # pickle raises whatever the object's __reduce__ raises
        raise UnsupportedValueError(
            f"cannot store value: it is a {_type_name(obj)}, which no exact format carries "
            f"and pickle cannot pickle ({exc})",
            path="value",
            type_name=_type_name(obj),
        ) from exc


def _exact_payload(obj: Any) -> tuple[str, Any, str]:
    cls = type(obj)
    if cls is bytes:
        return "bytes", obj, "bytes"
    if cls is bytearray:
        # a snapshot: the caller may change its buffer after we hashed it (Encoded keeps parts)
        return "bytes", bytes(obj), "bytearray"
    if cls is memoryview:
        return "bytes", obj.cast("B").tobytes(), "bytes"
    if _is_dataframe(obj):
        buf = io.BytesIO()
        try:
            obj.to_parquet(buf, engine="pyarrow", index=True)
        except (ValueError, TypeError, NotImplementedError) as exc:  # pyarrow's errors too
            raise _Refused(_type_name(obj), f"which Parquet cannot store ({exc})") from exc
        return "parquet", buf.getbuffer(), "dataframe"
    if _is_tensor(obj):
        from safetensors.torch import save

        return "safetensors", save({"tensor": obj.detach().contiguous()}), "torch_tensor"
    if _is_safetensors_array(obj):
        from safetensors.numpy import save as np_save

        return "safetensors", np_save({"array": _c_order(obj)}), "numpy_array"
    kind = _tensor_dict_kind(obj)
    if kind == "torch":
        from safetensors.torch import save

        tensors = {k: v.detach().contiguous() for k, v in obj.items()}
        return "safetensors", save(tensors, metadata=_key_order(obj)), "torch_dict"
    if kind == "numpy":
        from safetensors.numpy import save as np_save

        arrays = {k: _c_order(v) for k, v in obj.items()}
        return "safetensors", np_save(arrays, metadata=_key_order(obj)), "numpy_dict"
    return "json", _exact_json(obj), "json"


_ORDER = "flowstone_key_order"  # safetensors metadata: the dict's keys in their order


def _key_order(obj: dict[str, Any]) -> dict[str, str]:
    """safetensors sorts the tensors it stores; the order is kept beside them so that a
    state dict loads back in the order it was written, as a JSON dict does."""
    return {_ORDER: json.dumps(list(obj))}


def _in_order(loaded: dict[str, Any], payload: bytes) -> dict[str, Any]:
    """``loaded`` in the order recorded by :func:`_key_order` (as loaded for objects written
    before it was recorded). The safetensors header is 8 bytes of length, then JSON."""
    length = int.from_bytes(payload[:8], "little")
    metadata = json.loads(payload[8 : 8 + length]).get("__metadata__") or {}
    order = json.loads(metadata[_ORDER]) if _ORDER in metadata else None
    if order is None or sorted(order) != sorted(loaded):
        return loaded
    return {k: loaded[k] for k in order}


def _decode_payload(
    fmt: str, kind: str, payload: bytes | memoryview, version: int, key: str
) -> Any:
    """Rebuild the object; ``payload`` is copied only where the target type needs ``bytes``."""
    if fmt == "bytes":
        if kind == "bytearray":
            return bytearray(payload)
        return payload if isinstance(payload, bytes) else bytes(payload)
    if fmt == "parquet":
        import pandas as pd
        import pyarrow as pa

        return pd.read_parquet(pa.BufferReader(payload), engine="pyarrow")  # zero-copy
    if not isinstance(payload, bytes):
        payload = bytes(payload)
    if fmt == "json":
        if version == 1:
            return from_json_bytes(payload)
        try:
            return _from_exact_json(payload)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise CodecError(
                f"object '{key}' holds JSON this FlowStone ({__version__}) cannot rebuild "
                f"({exc}); it was written by another version. Re-materialize the asset."
            ) from exc
    if fmt == "safetensors":
        if kind.startswith("torch"):
            from safetensors.torch import load

            tensors = load(payload)
            return tensors["tensor"] if kind == "torch_tensor" else _in_order(tensors, payload)
        from safetensors.numpy import load as np_load

        arrays = np_load(payload)
        return arrays["array"] if kind == "numpy_array" else _in_order(arrays, payload)
    if fmt == "pickle":
        return pickle.loads(payload)  # noqa: S301 - only reached for trusted stores
    raise CodecError(f"object '{key}' has unknown stored format {fmt!r}")


# --------------------------------------------------------------------------- envelope


def encode(obj: Any, *, trusted: bool = False, compression: str | None = None) -> Encoded:
    """Serialise ``obj`` into a checksummed envelope (format version 2).

    ``compression`` is ``None`` or ``"zstd"``. ``trusted`` allows pickle as the last resort;
    without it a value no format carries exactly raises :class:`UnsupportedValueError`.
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
    # no copy of the payload here: stores send prefix and payload back to back (Encoded.parts)
    return Encoded((prefix_for_header(encode_header(envelope)), payload), envelope)


def _corrupted(key: str, what: str) -> ChecksumError:
    return ChecksumError(f"object '{key}' {what}; it is corrupted. Re-materialize the asset.")


def _header_length(prefix: bytes | memoryview, key: str) -> tuple[int, int]:
    """(format version, header length) from the magic and length in front of the header."""
    magic = bytes(prefix[: len(MAGIC)])
    version = _MAGICS.get(magic) if len(prefix) >= _PREFIX else None
    if version is None:
        if len(prefix) >= _PREFIX and magic[:3] == MAGIC[:3]:
            raise ChecksumError(
                f"object '{key}' has the unknown format version mark {magic!r}: it is "
                f"corrupted, or was written by a FlowStone newer than {__version__}. "
                "Re-materialize the asset, or upgrade FlowStone."
            )
        raise ChecksumError(
            f"object '{key}' is not a FlowStone object (bad magic bytes); it was written by "
            "something else or is corrupted. Re-materialize the asset."
        )
    (header_len,) = _LEN.unpack_from(prefix, len(MAGIC))
    if header_len > _MAX_HEADER:
        raise _corrupted(key, f"claims a {header_len}-byte header")
    return version, header_len


def _verify_header_digest(header: bytes, key: str) -> None:
    """Before anything in the header is believed; a damaged checksum field or field name
    fails here too, since every byte but the digits is covered."""
    lead = len(_DIGEST_LEAD)
    expected = header[lead : lead + _DIGEST_HEX].decode("ascii", "replace")
    found = _header_digest(MAGIC, header)
    if found != expected:
        raise ChecksumError(
            f"header checksum mismatch for object '{key}': expected xxh3-128 {expected}, got "
            f"{found}. The stored header is corrupted; re-materialize the asset."
        )


def _is_hex(value: Any, digits: int) -> bool:
    return isinstance(value, str) and len(value) == digits and set(value) <= _HEX


def _problem(fields: dict[str, Any], version: int) -> str | None:
    """What is wrong with a header's fields, or None. Version 1 has no header checksum, so
    this is what stands between a flipped header bit and a value of another type."""
    names = set(fields)
    if version == 2:
        names.discard(_DIGEST_FIELD)
    if names - _FIELDS:
        return f"has unknown header fields {sorted(names - _FIELDS)}"
    if _REQUIRED - names:
        return f"lacks header fields {sorted(_REQUIRED - names)}"
    fmt, kind, compression = fields["format"], fields["python_type"], fields["compression"]
    size, raw_size = fields["size"], fields["raw_size"]
    kinds = _KINDS[version]
    if type(fmt) is not str or type(kind) is not str or kind not in kinds.get(fmt, ()):
        return f"has an unknown format {fmt!r} or value kind {kind!r}"
    if compression not in (None, "zstd"):
        return f"has an unknown compression {compression!r}"
    for name in ("size", "raw_size"):
        if type(fields[name]) is not int or fields[name] < 0:
            return f"has an invalid {name} {fields[name]!r}"
    if compression is None and raw_size != size:
        return f"records {raw_size} raw bytes for {size} uncompressed stored bytes"
    if not _is_hex(fields["sha256"], 64):
        return "has an invalid sha256"
    xxh3 = fields.get("xxh3_128")
    if not (_is_hex(xxh3, 32) or (xxh3 is None and version == 1)):
        return "has an invalid xxh3_128"
    if not isinstance(fields["created_at"], str) or not isinstance(
        fields["flowstone_version"], str
    ):
        return "has an invalid created_at or flowstone_version"
    return None


def _parse_header(header: bytes | memoryview, header_len: int, version: int, key: str) -> Envelope:
    """The envelope of a header, verified: by its checksum (version 2) and field by field."""
    header = bytes(header)
    if len(header) != header_len:
        raise _corrupted(
            key, f"has an unreadable header (cut short at {len(header)} of {header_len} bytes)"
        )
    if version == 2:
        _verify_header_digest(header, key)
    try:
        fields = json.loads(header)
    except ValueError as exc:  # UnicodeDecodeError included
        raise _corrupted(key, f"has an unreadable header ({exc})") from exc
    if not isinstance(fields, dict):
        raise _corrupted(key, "has a header that is not a JSON object")
    problem = _problem(fields, version)
    if problem is not None:
        if version == 1:
            raise _corrupted(key, problem)
        raise CodecError(  # the checksum held: a writer this version does not know
            f"object '{key}' {problem}: written by FlowStone "
            f"{fields.get('flowstone_version')!r}, which this FlowStone ({__version__}) "
            "cannot read. Upgrade FlowStone or re-materialize the asset."
        )
    fields.pop(_DIGEST_FIELD, None)
    return Envelope(**fields)


def read_envelope(data: bytes, key: str = "<object>") -> tuple[Envelope, memoryview]:
    """Parse and verify the header and return it with a view of the payload (whose checksum
    is not checked here)."""
    view = memoryview(data)
    version, header_len = _header_length(view[:_PREFIX], key)
    envelope = _parse_header(view[_PREFIX : _PREFIX + header_len], header_len, version, key)
    return envelope, view[_PREFIX + header_len :]


def _version_of(data: bytes | memoryview) -> int:
    return _MAGICS[bytes(data[: len(MAGIC)])]


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
    version: int,
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

        try:
            payload = zstandard.ZstdDecompressor().decompress(
                payload, max_output_size=envelope.raw_size
            )
        except zstandard.ZstdError as exc:
            raise _corrupted(
                key, f"does not decompress to its {envelope.raw_size} raw bytes ({exc})"
            ) from exc
        if len(payload) != envelope.raw_size:
            raise _corrupted(
                key,
                f"decompresses to {len(payload)} bytes, not the "
                f"{envelope.raw_size} its header records",
            )
    return _decode_payload(envelope.format, envelope.python_type, payload, version, key)


def decode(
    data: bytes, key: str = "<object>", *, trusted: bool = False, verify_sha256: bool = False
) -> Any:
    """Verify header, size and checksum, then rebuild the object. Errors name ``key``."""
    envelope, payload = read_envelope(data, key)
    version = _version_of(data)
    return _verified(envelope, payload, key, trusted, version, verify_sha256=verify_sha256)


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

    The header is verified before any payload byte is read, so a damaged size never makes
    it read the wrong amount. The payload arrives as one ``bytes`` object of exactly ``size``
    bytes, which is what a ``bytes`` value is returned as and what the other formats parse
    without slicing.
    """
    version, header_len = _header_length(_read_exactly(stream, _PREFIX), key)
    envelope = _parse_header(_read_exactly(stream, header_len), header_len, version, key)
    payload = _read_exactly(stream, envelope.size)
    extra = len(payload) == envelope.size and bool(stream.read(1))
    return _verified(envelope, payload, key, trusted, version, extra, verify_sha256)
