"""Attack tests for the stored-object format (issue 19, storage integrity).

Two promises: a damaged header is a ``ChecksumError`` naming the key, never a value (a flipped
bit once turned a stored numpy array into a dict), and a value loads back exactly, of the
same type all the way down, or is refused when written, naming where in the value the
problem is. Objects written in format version 1 (before the header had a checksum) still load.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import datetime as dt
import decimal
import enum
import io
import math
import pathlib
import uuid
import zoneinfo
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flowstone.storage import codec
from flowstone.storage.errors import ChecksumError, CodecError, UnsupportedValueError
from io_managers.object_store import ObjectStoreIOManager

KEY = "scores/suite=qa/system=s1.fso"


def _loads(blob: bytes, key: str = KEY) -> list[Any]:
    """Both readers: the whole blob, and the stream reader the stores use."""
    return [codec.decode(blob, key), codec.decode_stream(io.BytesIO(blob), key)]


def _header_end(blob: bytes) -> int:
    return 8 + int.from_bytes(blob[4:8], "big")


ATTACKED = {
    "numpy array (safetensors)": (np.arange(12, dtype=np.float32).reshape(3, 4), None),
    "dict (json)": ({"accuracy": 0.91, "counts": {1: 3, 2: 5}, "tags": ("a", "b")}, None),
    "frame (parquet, zstd)": (pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}), "zstd"),
    "bytes": (b"\x00raw\xff" * 10, None),
}


@pytest.mark.parametrize("name", list(ATTACKED))
def test_every_flipped_header_bit_is_a_checksum_error_naming_the_key(name):
    value, compression = ATTACKED[name]
    blob = codec.encode(value, compression=compression).data
    assert blob[:4] == b"FSO2"
    end = _header_end(blob)
    flips = 0
    for position in range(end):  # magic, length and every byte of the header JSON
        for bit in range(8):
            damaged = bytearray(blob)
            damaged[position] ^= 1 << bit
            for load in (codec.decode, lambda b, k: codec.decode_stream(io.BytesIO(b), k)):
                with pytest.raises(ChecksumError, match=f"'{KEY}'"):
                    load(bytes(damaged), KEY)
            flips += 1
    assert flips == 8 * end > 2000


def test_every_byte_of_the_header_replaced_by_any_value_is_a_checksum_error():
    """Not only single bits: each header byte set to each of its 255 other values, which
    includes turning the version-2 magic into version 1's (``FSO2`` -> ``FSO1``)."""
    blob = codec.encode(np.arange(6, dtype=np.int32)).data
    for position in range(_header_end(blob)):
        for replacement in range(256):
            if replacement == blob[position]:
                continue
            damaged = bytearray(blob)
            damaged[position] = replacement
            with pytest.raises(ChecksumError, match=f"'{KEY}'"):
                codec.decode(bytes(damaged), KEY)


def test_a_header_kept_apart_from_its_payload_is_checked_the_same_way():
    """The S3 store keeps the header as object metadata and rebuilds the prefix from it
    (``prefix_for_header``); a flip in that metadata is caught like one in the blob."""
    encoded = codec.encode({"k": [1, 2, 3]})
    header, payload = encoded.header, bytes(encoded.payload)
    assert codec.prefix_for_header(header) + payload == encoded.data
    for position in range(len(header)):
        for bit in range(7):  # S3 metadata is ASCII; bit 7 would not survive the trip
            damaged = bytearray(header)
            damaged[position] ^= 1 << bit
            blob = codec.prefix_for_header(bytes(damaged)) + payload
            with pytest.raises(ChecksumError, match=f"'{KEY}'"):
                codec.decode(blob, KEY)


def test_a_flipped_bit_in_the_s3_metadata_header_is_a_checksum_error(s3, bucket):
    """The same through a real S3 endpoint: the header travels as object metadata."""
    from flowstone.storage.objects import load_object, save_object
    from flowstone.storage.s3_store import ENVELOPE_METADATA, S3ObjectStore

    store = S3ObjectStore(s3, bucket)
    save_object(store, KEY, np.arange(4, dtype=np.int16))
    stored = s3.get_object(Bucket=bucket, Key=KEY)
    header = stored["Metadata"][ENVELOPE_METADATA]
    kind = header.index("numpy_array")
    damaged = header[:kind] + "numpy_arraz" + header[kind + len("numpy_array") :]
    s3.put_object(Bucket=bucket, Key=KEY, Body=stored["Body"].read(),
                  Metadata={ENVELOPE_METADATA: damaged})  # fmt: skip
    with pytest.raises(ChecksumError, match=f"header checksum mismatch for object '{KEY}'"):
        load_object(store, KEY)


def test_header_checksum_error_says_what_failed():
    blob = bytearray(codec.encode(np.arange(3)).data)
    blob[blob.index(b"numpy_array") + 6] ^= 0x01  # the flip that once returned a dict
    with pytest.raises(ChecksumError) as err:
        codec.decode(bytes(blob), KEY)
    assert str(err.value).startswith(f"header checksum mismatch for object '{KEY}': expected")
    assert "re-materialize the asset" in str(err.value)
    blob = bytearray(codec.encode(np.arange(3)).data)
    blob[3] = ord("3")  # a version this FlowStone does not know
    with pytest.raises(ChecksumError, match="unknown format version mark b'FSO3'"):
        codec.decode(bytes(blob), KEY)


# --------------------------------------------------------------------------- version 1

# Written by FlowStone 0.1.0 before the header had a checksum (format version 1), kept as
# bytes so that this test keeps reading what was really stored, not what today's code writes.
V1_ARRAY = (
    "RlNPMQAAASV7ImZvcm1hdCI6InNhZmV0ZW5zb3JzIiwiY29tcHJlc3Npb24iOm51bGwsInNoYTI1NiI6IjhlZTYwZjhk"
    "MDE4NjFmNTVkODRlNGU2MzI3MzYzODU3YWY1NDg4ZWZmNWNiYWMzZDlhMTZjNTU0NjBkNDU3MGEiLCJzaXplIjo5Niwi"
    "cmF3X3NpemUiOjk2LCJjcmVhdGVkX2F0IjoiMjAyNi0xMi0wN1QwMToxMDowOC43NDQyNTIrMDA6MDAiLCJmbG93c3Rv"
    "bmVfdmVyc2lvbiI6IjAuMS4wIiwicHl0aG9uX3R5cGUiOiJudW1weV9hcnJheSIsInh4aDNfMTI4IjoiYjQxZWQxNDMy"
    "Yjc4MzdmMDQ5OTk2YjQ3MzA2OGUxZTkifUAAAAAAAAAAeyJhcnJheSI6eyJkdHlwZSI6IkkzMiIsInNoYXBlIjpbMiwz"
    "XSwiZGF0YV9vZmZzZXRzIjpbMCwyNF19fSAgIAAAAAABAAAAAgAAAAMAAAAEAAAABQAAAA=="
)
# {"scores": [0.5, 1.0], "n": 3, "when": datetime(2024, 1, 2, 3, 4, 5, UTC), "keys": {1: "one"}}
V1_JSON_ZSTD = (
    "RlNPMQAAARt7ImZvcm1hdCI6Impzb24iLCJjb21wcmVzc2lvbiI6InpzdGQiLCJzaGEyNTYiOiIzMTYwMTAxYTc4MjU3"
    "NzkzZjczMjc1YjFiNjZkYjZkMjQzZDA5NmU0NTE2MzMxN2I2ZjdlNGYwMmFmZTY1OWVjIiwic2l6ZSI6MTExLCJyYXdf"
    "c2l6ZSI6MTE4LCJjcmVhdGVkX2F0IjoiMjAyNi0xMi0wN1QwMToxMDowOC43NDU3MDQrMDA6MDAiLCJmbG93c3RvbmVf"
    "dmVyc2lvbiI6IjAuMS4wIiwicHl0aG9uX3R5cGUiOiJqc29uIiwieHhoM18xMjgiOiIyNTM3MmZhZWU3ZTM5OTM5MGEw"
    "MzNjMDNhYTgyN2RiMiJ9KLUv/SB2NQMAokYWG4BrOnv/6hfECErE1i5gsOaeCNnzCJkljRGgAa05GweZPVLhXvOPP4A5"
    "LkflgXQEHVnSk4tuuOdcJJ58CAYXrdQ6KGWWCId7StGNe4MnqMckFxS9kuEUllkDBAFPh4cBzuUJ"
)
V1_BYTES = (
    "RlNPMQAAARl7ImZvcm1hdCI6ImJ5dGVzIiwiY29tcHJlc3Npb24iOm51bGwsInNoYTI1NiI6IjZmZjFmYjY3YTQ4MDNk"
    "NWQ2ZWViMDgxYTVkYzY0ODkzMWZkMzBlZmQxNjM1NGM5OTQ2YmExNWM1MzE4NTAwYjMiLCJzaXplIjoxMCwicmF3X3Np"
    "emUiOjEwLCJjcmVhdGVkX2F0IjoiMjAyNi0xMi0wN1QwMToxMDowOC43NDU4NTcrMDA6MDAiLCJmbG93c3RvbmVfdmVy"
    "c2lvbiI6IjAuMS4wIiwicHl0aG9uX3R5cGUiOiJieXRlcyIsInh4aDNfMTI4IjoiNTgxNTI0ZGE4MDBkMDYyYTZiZGJj"
    "ZmNhNDU5ZjZmMzcifQB2MSBieXRlc/8="
)
V1_VALUES = {
    "array": (V1_ARRAY, np.arange(6, dtype=np.int32).reshape(2, 3)),
    # version 1's JSON semantics are kept for its objects: the int key was stored as "1"
    "json": (
        V1_JSON_ZSTD,
        {
            "scores": [0.5, 1.0],
            "n": 3,
            "when": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
            "keys": {"1": "one"},
        },
    ),  # fmt: skip
    "bytes": (V1_BYTES, b"\x00v1 bytes\xff"),
}


@pytest.mark.parametrize("name", list(V1_VALUES))
def test_version_1_objects_still_load(name):
    blob, expected = base64.b64decode(V1_VALUES[name][0]), V1_VALUES[name][1]
    assert blob[:4] == codec.MAGIC_V1
    for back in _loads(blob):
        assert _same(back, expected), (back, expected)
    envelope, _ = codec.read_envelope(blob)
    assert envelope.flowstone_version == "0.1.0" and envelope.xxh3_128 is not None


@pytest.mark.parametrize("name", list(V1_VALUES))
def test_no_flipped_header_bit_changes_what_a_version_1_object_loads_as(name):
    """A version-1 header has no checksum; its fields are checked one by one instead, so a
    flip either fails loudly or hits a field nothing reads (created_at, the version, the
    sha256 when only xxh3 is verified). It never yields another value, and never a dict
    for an array."""
    blob, expected = base64.b64decode(V1_VALUES[name][0]), V1_VALUES[name][1]
    outcomes: collections.Counter[str] = collections.Counter()
    for position in range(_header_end(blob)):
        for bit in range(8):
            damaged = bytearray(blob)
            damaged[position] ^= 1 << bit
            try:
                back = codec.decode(bytes(damaged), KEY)
            except ChecksumError as exc:
                assert f"'{KEY}'" in str(exc)
                outcomes["refused"] += 1
                continue
            assert _same(back, expected), (position, bit, back)
            outcomes["same value"] += 1
    assert outcomes["refused"] > outcomes["same value"] > 0


def test_a_version_2_header_behind_a_version_1_magic_is_refused():
    blob = bytearray(codec.encode({"a": 1}).data)
    blob[:4] = codec.MAGIC_V1
    with pytest.raises(ChecksumError, match=r"unknown header fields \['header_xxh3_128'\]"):
        codec.decode(bytes(blob), KEY)


# --------------------------------------------------------------------------- exact values


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same type all the way down (NaN equal to NaN, -0.0 not to 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, complex):
        return _same(a.real, b.real) and _same(a.imag, b.imag)
    if isinstance(a, decimal.Decimal):
        return str(a) == str(b)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            _same(ka, kb) and _same(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    if isinstance(a, set | frozenset):
        return len(a) == len(b) and all(any(_same(x, y) for y in b) for x in a)
    if isinstance(a, dt.datetime | dt.time):
        return (a == b and a.fold == b.fold and a.tzinfo == b.tzinfo
                and a.utcoffset() == b.utcoffset() and a.tzname() == b.tzname())  # fmt: skip
    if isinstance(a, np.ndarray):
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        if a.dtype.kind == "O":
            return all(_same(x, y) for x, y in zip(a.ravel(), b.ravel(), strict=True))
        if a.dtype.kind in "fc":
            return bool(np.array_equal(a, b, equal_nan=True))
        return a.tobytes() == b.tobytes()
    if isinstance(a, np.generic):
        if a.dtype != b.dtype:
            return False
        if a.dtype.kind in "fc" and np.isnan(a) and np.isnan(b):
            return True
        return a.tobytes() == b.tobytes() if a.dtype.kind in "mM" else bool(a == b)
    if isinstance(a, pd.DataFrame):
        try:
            pd.testing.assert_frame_equal(a, b, check_exact=True)
        except AssertionError:
            return False
        return True
    return bool(a == b)


NUMPY_DTYPES = [np.dtype(d) for d in (
    "?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "g", "c8", "c16", "G",
    "M8[ns]", "M8[D]", "m8[ms]", "U3", "S3", ">i4", ">f8",
)]  # fmt: skip


def _numpy_scalars() -> st.SearchStrategy[Any]:
    return st.one_of(*(hnp.from_dtype(d).map(d.type) for d in NUMPY_DTYPES if d.isnative))


def _numpy_arrays() -> st.SearchStrategy[Any]:
    shapes = hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3)
    typed = st.sampled_from(NUMPY_DTYPES).flatmap(lambda d: hnp.arrays(d, shapes))
    objects = hnp.arrays(
        object, shapes, elements=st.one_of(st.integers(), st.text(max_size=3), st.none())
    )
    return st.one_of(typed, objects)


_SURROGATES_TOO = st.characters(exclude_categories=())
TEXT = st.one_of(st.text(_SURROGATES_TOO, max_size=6), st.just("__fs__"))
ZONES = st.one_of(
    st.none(),
    st.timezones(),  # zoneinfo.ZoneInfo
    st.just(dt.UTC),
    st.integers(-23 * 60, 23 * 60).map(lambda m: dt.timezone(dt.timedelta(minutes=m))),
    st.just(dt.timezone(dt.timedelta(hours=2), "Lab time")),
)
FIXED_ZONES = st.one_of(st.none(), st.just(dt.UTC), st.just(dt.timezone(-dt.timedelta(hours=5))))
PATHS = st.sampled_from([pathlib.PurePosixPath("a/b.txt"), pathlib.PureWindowsPath("C:/x/y"),
                         pathlib.Path("runs/1")])  # fmt: skip

HASHABLE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    TEXT,
    st.binary(max_size=6),
    st.complex_numbers(),
    st.datetimes(timezones=ZONES, allow_imaginary=False),
    st.dates(),
    st.times(timezones=FIXED_ZONES),
    st.timedeltas(),
    st.decimals(allow_nan=False),  # a signalling NaN cannot be hashed
    st.uuids(),
    PATHS,
    _numpy_scalars(),
)
KEYS = st.one_of(
    HASHABLE,
    st.tuples(HASHABLE, HASHABLE),
    st.frozensets(HASHABLE, max_size=3),
)
LEAVES = st.one_of(HASHABLE, st.binary(max_size=6).map(bytearray), st.decimals(), _numpy_arrays())
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(KEYS, inner, max_size=4),
        st.dictionaries(TEXT, inner, max_size=4),  # the marker key among plain keys
        st.sets(KEYS, max_size=4),
        st.frozensets(KEYS, max_size=4),
    ),
    max_leaves=12,
)
STATE_DICTS = st.dictionaries(st.text(max_size=4), _numpy_arrays(), min_size=1, max_size=3)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.one_of(VALUES, _numpy_arrays(), STATE_DICTS), zstd=st.booleans())
def test_every_supported_value_round_trips_exactly(value, zstd):
    blob = codec.encode(value, compression="zstd" if zstd else None).data
    for back in _loads(blob):
        assert _same(back, value), (value, back)


FRAME_COLUMNS = st.fixed_dictionaries({
    "i": st.lists(st.integers(-(2**63), 2**63 - 1), min_size=3, max_size=3),
    "f": st.lists(st.floats(), min_size=3, max_size=3),
    "b": st.lists(st.booleans(), min_size=3, max_size=3),
    "s": st.lists(st.text(max_size=4), min_size=3, max_size=3),
    "t": st.lists(st.datetimes(min_value=dt.datetime(1700, 1, 1),
                               max_value=dt.datetime(2200, 1, 1)), min_size=3, max_size=3),
})  # fmt: skip


@settings(max_examples=50, deadline=None)
@given(columns=FRAME_COLUMNS)
def test_frames_of_plain_columns_round_trip_exactly(columns):
    frame = pd.DataFrame(columns)
    frame["t"] = frame["t"].astype("datetime64[ns]")
    for back in _loads(codec.encode(frame).data):
        assert _same(back, frame)
        assert list(back.dtypes) == list(frame.dtypes)


def test_the_values_the_issue_found_changed_now_round_trip():
    value = {
        3: "int key", True: "bool key", None: "None key", 2.5: "float key", (1, 2): "tuple key",
        "tuple": (1, 2), "set": {3, 4}, "frozenset": frozenset({"a"}),
        "np.float32": np.float32(0.1), "np.int64": np.int64(7), "np.bool_": np.bool_(True),
        "user": {"__fs__": "bytes", "v": "AAE="}, "user date": {"__fs__": "date", "v": "2024-01-01"},
        "nan": math.nan, "inf": -math.inf, "big": 2**100, "-0.0": -0.0,
    }  # fmt: skip
    for back in _loads(codec.encode(value).data):
        assert _same(back, value)
        assert back["user"] == {"__fs__": "bytes", "v": "AAE="}  # a dict, not bytes


# --------------------------------------------------------------------------- refusals


class Opaque:
    def __repr__(self) -> str:
        return "Opaque()"


@dataclasses.dataclass
class Point:
    x: int


class Level(enum.IntEnum):
    LOW = 1


class OddZone(dt.tzinfo):
    def utcoffset(self, _: dt.datetime | None) -> dt.timedelta:
        return dt.timedelta(hours=1)


def _looping() -> list[Any]:
    loop: list[Any] = [1]
    loop.append(loop)
    return loop


REFUSED = [
    ({"a": [1, 2, 3, Opaque()]}, r'value\["a"\]\[3\]', "tests.storage.test_codec_integrity.Opaque"),
    ({"p": Point(1)}, r'value\["p"\]', "a dataclass, which would load back as a dict"),
    ([{"x": collections.OrderedDict(a=1)}], r"value\[0\]\[\"x\"\]", "a subclass of dict"),
    ({1: {"level": Level.LOW}}, r'value\[1\]\["level"\]', "a subclass of int"),
    ({Opaque(): 1}, r"value<key Opaque\(\)>", "Opaque"),
    ({"s": {(1, Opaque())}}, r'value\["s"\]<member \(1, Opaque\(\)\)>\[1\]', "Opaque"),
    ((1, dt.datetime(2024, 1, 1, tzinfo=OddZone())), r"value\[1\]", "time zone"),
    ({"rec": np.zeros(2, dtype=[("a", "i4")])}, r'value\["rec"\]', "structured"),
    ({"series": pd.Series([1, 2])}, r'value\["series"\]', "pandas.Series"),
    (_looping(), r"value", "nests too deeply"),
    (pd.DataFrame({"mixed": [1, "x"]}), r"value", "Parquet cannot store"),
]


@pytest.mark.parametrize(("value", "path", "why"), REFUSED)
def test_values_no_format_carries_exactly_are_refused_naming_their_path(value, path, why):
    with pytest.raises(UnsupportedValueError, match=f"^cannot store {path}: .*{why}") as err:
        codec.encode(value)
    assert "trusted_pickle=True" in str(err.value)
    assert err.value.path == path.replace("\\", "")
    assert codec.encode(value, trusted=True).envelope.format == "pickle"  # trusted: pickled


PARTS = dg.StaticPartitionsDefinition(["qa", "x/y"])


@dg.asset(partitions_def=PARTS)
def lossy_scores() -> dict[str, Any]:
    return {"cases": [{"id": 1}, {"id": 2, "extra": Opaque()}]}


def test_the_io_manager_names_asset_partition_and_path(tmp_path):
    manager = ObjectStoreIOManager(base_path=str(tmp_path))
    with pytest.raises(Exception) as err:
        dg.materialize([lossy_scores], resources={"io_manager": manager}, partition_key="x/y")
    cause: BaseException | None = err.value
    while cause is not None and not isinstance(cause, UnsupportedValueError):
        cause = cause.__cause__
    assert isinstance(cause, UnsupportedValueError) and isinstance(cause, CodecError)
    assert str(cause).startswith(
        'asset lossy_scores, partition x/y: cannot store value["cases"][1]["extra"]: it is a '
        "tests.storage.test_codec_integrity.Opaque"
    )
    assert cause.path == 'value["cases"][1]["extra"]'
    assert not list(tmp_path.rglob("*.fso"))  # nothing half-written


@dg.asset(partitions_def=PARTS, backfill_policy=dg.BackfillPolicy.single_run())
def batch_scores() -> dict[str, Any]:
    return {"qa": {"n": 1}, "x/y": {"n": {2, Opaque()}}}


def test_a_refused_value_in_a_batch_leaves_every_partition_of_the_run_unwritten(tmp_path):
    """Values are all encoded before any is written: the good partition of a failing
    single-run backfill keeps its earlier value instead of being overwritten."""
    manager = ObjectStoreIOManager(base_path=str(tmp_path))
    tags = {"dagster/asset_partition_range_start": "qa",
            "dagster/asset_partition_range_end": "x/y"}  # fmt: skip
    with pytest.raises(Exception) as err:
        dg.materialize([batch_scores], resources={"io_manager": manager}, tags=tags)
    assert 'asset batch_scores, partition x/y: cannot store value["n"]<member Opaque()>' in (
        _chain(err.value)
    )
    assert not list(tmp_path.rglob("*.fso"))


def _chain(exc: BaseException | None) -> str:
    messages = []
    while exc is not None:
        messages.append(str(exc))
        exc = exc.__cause__
    return "\n".join(messages)


def test_a_zone_from_zoneinfo_survives_with_its_name_and_fold():
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    value = [dt.datetime(2024, 10, 27, 2, 30, tzinfo=paris, fold=1), uuid.UUID(int=5)]
    back = codec.decode(codec.encode(value).data)
    assert _same(back, value) and back[0].tzinfo is paris and back[0].fold == 1
