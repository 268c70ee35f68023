"""Partition-key validation and the checksummed codec."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import hashlib
import io
import json

import numpy as np
import pandas as pd
import pydantic
import pytest
import xxhash

from flowstone.storage import codec
from flowstone.storage.errors import (
    ChecksumError,
    CodecError,
    UnsafeKeyError,
    UnsupportedValueError,
)
from flowstone.storage.keys import object_key_for, validate_partition_key

ATTACKS = ["../x", "/etc/passwd", "a\x00b", "a/../../b", "..", "C:\\windows", "\\\\server\\share",
           "ok\nnewline", ""]  # fmt: skip


@pytest.mark.parametrize("key", ATTACKS)
def test_unsafe_partition_keys_are_rejected_with_a_reason(key):
    with pytest.raises(UnsafeKeyError) as err:
        object_key_for("flowstone", ["scores"], key)
    assert "partition key" in str(err.value)


def test_sql_injection_text_is_a_plain_key_that_stays_under_the_prefix():
    key = object_key_for("flowstone", ["scores"], "x'; DROP TABLE t;--")
    assert key.startswith("flowstone/scores/partition=")
    assert "/" not in key.removeprefix("flowstone/scores/")


def test_layout_for_single_multi_and_unpartitioned_assets():
    assert object_key_for("p", ["a", "b"], None) == "p/a/b/__asset__.fso"
    assert object_key_for("p", ["a"], "2024-01-01") == "p/a/partition=2024-01-01.fso"
    assert object_key_for("p", ["a"], "org/model") == "p/a/partition=org%2Fmodel.fso"
    multi = object_key_for("p", ["a"], {"system": "s1", "suite": "qa"})
    assert multi == "p/a/suite=qa/system=s1.fso"
    assert validate_partition_key("org/model-v1.2") == "org/model-v1.2"


@dataclasses.dataclass
class Point:
    x: int
    y: float


class Model(pydantic.BaseModel):
    name: str
    score: float


def test_json_round_trip_of_common_python_types():
    obj = {
        "arr": np.arange(6, dtype=np.int32).reshape(2, 3),
        "np_scalar": np.float64(1.5),
        "when": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "day": dt.date(2024, 1, 2),
        "money": decimal.Decimal("1.10"),
        "blob": b"\x00\x01",
        "nested": [1, "two", None],
    }
    enc = codec.encode(obj)
    assert enc.envelope.format == "json"
    back = codec.decode(enc.data, "k")
    assert back["arr"].dtype == np.int32 and back["arr"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert back["when"] == obj["when"] and back["day"] == obj["day"]
    assert back["money"] == decimal.Decimal("1.10") and back["blob"] == b"\x00\x01"
    assert back["np_scalar"] == 1.5 and type(back["np_scalar"]) is np.float64
    assert back["nested"] == [1, "two", None]
    # records would load back as dicts, so they are refused; their fields store as asked
    for record in (Point(1, 2.0), Model(name="a", score=0.5)):
        with pytest.raises(UnsupportedValueError, match="would load back as a dict"):
            codec.encode(record)
    assert codec.decode(codec.encode(dataclasses.asdict(Point(1, 2.0))).data) == {"x": 1, "y": 2.0}


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_dataframe_goes_to_parquet_and_back(compression):
    df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", None, "z"], "c": [0.5, np.nan, 1.0]})
    enc = codec.encode(df, compression=compression)
    assert enc.envelope.format == "parquet"
    assert enc.envelope.compression == compression
    pd.testing.assert_frame_equal(codec.decode(enc.data, "k"), df)


def test_tensors_and_arrays_use_safetensors():
    import torch

    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3)}
    enc = codec.encode(state)
    assert enc.envelope.format == "safetensors"
    back = codec.decode(enc.data)
    assert torch.equal(back["w"], state["w"]) and torch.equal(back["b"], state["b"])
    t = torch.ones(4, dtype=torch.int64)
    assert torch.equal(codec.decode(codec.encode(t).data), t)
    arr = np.linspace(0, 1, 10)
    enc = codec.encode(arr)
    assert enc.envelope.format == "safetensors"
    np.testing.assert_array_equal(codec.decode(enc.data), arr)


class Opaque:
    """A class the JSON format knows nothing about (only pickle can store it)."""

    def __init__(self) -> None:
        self.v = 7

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.v == self.v


def test_pickle_only_when_trusted():
    obj = {"o": Opaque()}
    with pytest.raises(CodecError, match="Pickle is disabled"):
        codec.encode(obj)
    enc = codec.encode(obj, trusted=True)
    assert enc.envelope.format == "pickle"
    with pytest.raises(CodecError, match="not trusted"):
        codec.decode(enc.data, "models/x")
    assert codec.decode(enc.data, trusted=True) == obj


def test_envelope_records_provenance():
    env = codec.encode({"a": 1}).envelope
    assert len(env.sha256) == 64 and env.size > 0 and env.flowstone_version
    assert dt.datetime.fromisoformat(env.created_at).tzinfo is not None


def test_corruption_truncation_and_foreign_bytes_are_checksum_errors_naming_the_key():
    data = bytearray(codec.encode({"values": list(range(100))}).data)
    data[-5] ^= 0xFF
    with pytest.raises(ChecksumError, match="checksum mismatch for object 'scores/p1'"):
        codec.decode(bytes(data), "scores/p1")
    good = codec.encode({"a": 1}).data
    with pytest.raises(ChecksumError, match="truncated.*|'k' is truncated"):
        codec.decode(good[:-2], "k")
    with pytest.raises(ChecksumError, match="not a FlowStone object"):
        codec.decode(b"PK\x03\x04 zip file", "k")


def _with_header(blob: bytes, **changes) -> bytes:
    """The same payload under a rewritten header that verifies (None drops a field: a
    version-1 header, the only kind that may lack one)."""
    envelope, payload = codec.read_envelope(blob)
    fields = {**envelope.as_dict(), **changes}
    if any(v is None for v in changes.values()):
        fields = {k: v for k, v in fields.items() if k not in changes or v is not None}
        header = json.dumps(fields).encode()
    else:
        header = codec.encode_header(codec.Envelope(**fields))
    return codec.prefix_for_header(header) + bytes(payload)


def test_every_load_checks_xxh3_and_sha256_on_request():
    value = {"values": list(range(100))}
    blob = codec.encode(value).data
    envelope = codec.read_envelope(blob)[0]
    payload = bytes(codec.read_envelope(blob)[1])
    assert envelope.sha256 == hashlib.sha256(payload).hexdigest()
    assert envelope.xxh3_128 == xxhash.xxh3_128_hexdigest(payload)
    flipped = bytearray(blob)
    flipped[-3] ^= 0x10
    with pytest.raises(ChecksumError, match="'k': expected xxh3-128"):
        codec.decode(bytes(flipped), "k")
    with pytest.raises(ChecksumError, match="'k': expected sha256"):
        codec.decode(bytes(flipped), "k", verify_sha256=True)
    # a header whose sha256 is wrong while its xxh3 is right: only verify_sha256 looks at it
    wrong_sha = _with_header(blob, sha256="0" * 64)
    assert codec.decode(wrong_sha, "k") == value
    for load in (codec.decode, lambda b, k, **kw: codec.decode_stream(io.BytesIO(b), k, **kw)):
        with pytest.raises(
            ChecksumError, match="checksum mismatch for object 'k': expected sha256"
        ):
            load(wrong_sha, "k", verify_sha256=True)
    # objects written before xxh3_128 existed are verified by their sha256
    legacy = _with_header(blob, xxh3_128=None)
    assert codec.read_envelope(legacy)[0].xxh3_128 is None
    assert codec.decode(legacy, "k") == value
    legacy_flipped = bytearray(legacy)
    legacy_flipped[-3] ^= 0x10
    with pytest.raises(ChecksumError, match="'old/k': expected sha256"):
        codec.decode(bytes(legacy_flipped), "old/k")


class _Trickle(io.RawIOBase):
    """A stream that hands out at most 3 bytes per read, like a slow socket."""

    def __init__(self, data: bytes):
        self._data, self._pos = data, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self._data[self._pos : self._pos + min(3, len(buffer))]
        buffer[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)


def test_stream_decode_matches_blob_decode_and_verifies_the_checksum():
    df = pd.DataFrame({"a": np.arange(5), "s": list("vwxyz")})
    for value in (b"\x00raw bytes" * 100, {"k": [1, 2]}, df):
        blob = codec.encode(value, compression="zstd" if value is df else None).data
        for stream in (io.BytesIO(blob), _Trickle(blob)):
            back = codec.decode_stream(stream, "k")
            if value is df:
                pd.testing.assert_frame_equal(back, df)
            else:
                assert back == value and type(back) is type(value)
    good = codec.encode({"a": 1}).data
    cut = codec.read_envelope(good)[0].size - 2
    with pytest.raises(ChecksumError, match=f"'k' is truncated or padded.*found {cut}\\."):
        codec.decode_stream(io.BytesIO(good[:-2]), "k")
    with pytest.raises(ChecksumError, match="'k' is truncated or padded.*found more than"):
        codec.decode_stream(io.BytesIO(good + b"x"), "k")
    flipped = bytearray(good)
    flipped[-1] ^= 0x01
    with pytest.raises(ChecksumError, match="checksum mismatch for object 'k'"):
        codec.decode_stream(io.BytesIO(bytes(flipped)), "k")
    with pytest.raises(ChecksumError, match="claims a .*-byte header"):
        codec.decode_stream(io.BytesIO(codec.MAGIC + b"\xff\xff\xff\xff{}"), "k")
    with pytest.raises(ChecksumError, match="unreadable header"):
        codec.decode_stream(io.BytesIO(good[:12]), "k")


def test_encoded_parts_are_the_blob_and_a_snapshot_of_mutable_input():
    value = bytearray(b"payload-" * 1000)
    enc = codec.encode(value)
    prefix, payload = enc.parts
    assert prefix.startswith(codec.MAGIC) and bytes(payload) == bytes(value)
    assert enc.size == len(enc.data) == len(prefix) + len(value)
    value[:8] = b"CHANGED!"  # the caller reuses its buffer after the write
    assert bytes(enc.parts[1]).startswith(b"payload-")
    assert codec.decode(enc.data, "k") == b"payload-" * 1000
    big = b"\x01" * 100_000
    assert codec.encode(big).parts[1] is big  # immutable bytes go out without a copy
