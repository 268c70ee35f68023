"""Local, S3 (moto server on loopback) and tiered object stores, including their faults."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from flowstone.storage import codec
from flowstone.storage.errors import (
    ChecksumError,
    ObjectNotFoundError,
    StorageError,
    UnsafeKeyError,
)
from flowstone.storage.local_store import TEMP_MARKER, LocalObjectStore
from flowstone.storage.objects import load_object, save_object
from flowstone.storage.s3_store import S3ObjectStore
from flowstone.storage.tiered_store import BoundedCacheStore, TieredObjectStore


def _exercise(store):
    uri = store.put("a/b/one.fso", b"1")
    store.put("a/two.fso", b"22")
    store.put("c/three.fso", b"333")
    assert store.get("a/b/one.fso") == b"1"
    assert store.exists("a/two.fso") and not store.exists("a/none.fso")
    assert store.list("a/") == ["a/b/one.fso", "a/two.fso"]
    assert uri == store.uri("a/b/one.fso")
    store.delete("a/two.fso")
    store.delete("a/two.fso")  # idempotent
    assert store.list() == ["a/b/one.fso", "c/three.fso"]
    with pytest.raises(ObjectNotFoundError, match="a/two.fso"):
        store.get("a/two.fso")
    with pytest.raises(UnsafeKeyError):
        store.put("../escape", b"x")


def test_local_store_contract(tmp_path):
    store = LocalObjectStore(tmp_path / "objs")
    _exercise(store)
    assert store.uri("c/three.fso").startswith("file://")


def test_s3_store_contract(s3, bucket):
    store = S3ObjectStore(s3, bucket, prefix="team")
    _exercise(store)
    assert store.uri("c/three.fso") == f"s3://{bucket}/team/c/three.fso"


def test_corrupted_s3_object_names_the_key(s3, bucket):
    client = s3
    store = S3ObjectStore(client, bucket)
    save_object(store, "scores/partition=p1.fso", {"values": list(range(50))})
    stored = client.get_object(Bucket=bucket, Key="scores/partition=p1.fso")
    raw = bytearray(stored["Body"].read())
    raw[-3] ^= 0x01  # one flipped bit in the payload; the header (metadata) is kept
    client.put_object(Bucket=bucket, Key="scores/partition=p1.fso", Body=bytes(raw),
                      Metadata=stored["Metadata"])  # fmt: skip
    with pytest.raises(
        ChecksumError, match="checksum mismatch for object 'scores/partition=p1.fso'"
    ):
        load_object(store, "scores/partition=p1.fso")
    client.put_object(Bucket=bucket, Key="scores/partition=p1.fso", Body=bytes(raw))  # no header
    with pytest.raises(ChecksumError, match="'scores/partition=p1.fso' is not a FlowStone object"):
        load_object(store, "scores/partition=p1.fso")


def _dead_s3(endpoint, max_attempts=1):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="x",
        aws_secret_access_key="x", region_name="us-east-1",
        config=Config(retries={"max_attempts": max_attempts}, connect_timeout=1),
    )  # fmt: skip


def test_s3_endpoint_down_fails_loudly(dead_endpoint):
    store = S3ObjectStore(_dead_s3(dead_endpoint), "bucket")
    with pytest.raises(StorageError, match="S3 put of s3://bucket/k.fso failed at endpoint"):
        store.put("k.fso", b"data")


def test_tiered_reads_fall_back_to_cache_then_archive_when_primary_is_down(tmp_path, dead_endpoint):
    cache = BoundedCacheStore(tmp_path / "cache", max_bytes=10_000, ttl_seconds=60)
    archive = LocalObjectStore(tmp_path / "archive")
    cache.put("hot.fso", b"from-cache")
    archive.put("cold.fso", b"from-archive")
    primary = S3ObjectStore(_dead_s3(dead_endpoint), "b")
    tiered = TieredObjectStore(primary, cache=cache, archive=archive)
    assert tiered.get("hot.fso") == b"from-cache"
    assert tiered.get("cold.fso") == b"from-archive"
    assert cache.get("cold.fso") == b"from-archive"  # warmed
    with pytest.raises(StorageError, match="primary failed"):
        tiered.get("nowhere.fso")
    with pytest.raises(StorageError, match="S3 put"):
        tiered.put("new.fso", b"x")  # a failing primary fails the write
    assert not archive.exists("new.fso") and not cache.exists("new.fso")


@pytest.mark.parametrize(
    ("strategy", "in_cache", "in_archive"),
    [
        ("primary_only", False, False),
        ("primary_with_cache", True, False),
        ("replicate_all", True, True),
    ],  # fmt: skip
)
def test_write_strategies(tmp_path, s3, bucket, strategy, in_cache, in_archive):
    primary = S3ObjectStore(s3, bucket)
    cache = BoundedCacheStore(tmp_path / "cache", max_bytes=10_000, ttl_seconds=60)
    archive = LocalObjectStore(tmp_path / "archive")
    tiered = TieredObjectStore(primary, cache=cache, archive=archive, write_strategy=strategy)
    assert tiered.put("k.fso", b"v") == f"s3://{bucket}/k.fso"
    assert primary.get("k.fso") == b"v"
    assert cache.exists("k.fso") is in_cache
    assert archive.exists("k.fso") is in_archive
    primary.delete("k.fso")
    if in_cache:
        assert tiered.get("k.fso") == b"v"


def test_tiered_codec_objects_are_stored_by_each_tier_in_its_own_layout(tmp_path, s3, bucket):
    """S3 tiers keep the header as metadata, the local cache keeps one blob; a read from any
    tier gives the same verified value."""
    archive_bucket = f"{bucket}-archive"
    s3.create_bucket(Bucket=archive_bucket)
    primary, archive = S3ObjectStore(s3, bucket), S3ObjectStore(s3, archive_bucket)
    cache = BoundedCacheStore(tmp_path / "cache", max_bytes=1 << 20, ttl_seconds=60)
    tiered = TieredObjectStore(
        primary, cache=cache, archive=archive, write_strategy="replicate_all"
    )
    value = {"scores": [0.25, 0.5]}
    stored = save_object(tiered, "r/partition=p.fso", value)
    for name in (bucket, archive_bucket):
        response = s3.get_object(Bucket=name, Key="r/partition=p.fso")
        assert "flowstone-envelope" in response["Metadata"]
        assert hashlib.sha256(response["Body"].read()).hexdigest() == stored.envelope.sha256
    assert codec.read_envelope(cache.get("r/partition=p.fso"))[0] == stored.envelope
    assert load_object(tiered, "r/partition=p.fso") == value  # from the cache
    cache.delete("r/partition=p.fso")
    primary.delete("r/partition=p.fso")
    assert load_object(tiered, "r/partition=p.fso") == value  # from the archive bucket
    assert codec.read_envelope(cache.get("r/partition=p.fso"))[0] == stored.envelope  # warmed


def test_failing_secondary_never_fails_an_accepted_write(tmp_path, s3, bucket):
    blocker = tmp_path / "archive-is-a-file"
    blocker.write_text("not a folder")
    primary = S3ObjectStore(s3, bucket)
    tiered = TieredObjectStore(
        primary, archive=LocalObjectStore(blocker), write_strategy="replicate_all"
    )
    tiered.put("k.fso", b"v")
    assert primary.get("k.fso") == b"v"
    assert [f.tier for f in tiered.secondary_failures] == ["archive"]


def test_cache_is_bounded_by_size_and_ttl(tmp_path):
    cache = BoundedCacheStore(tmp_path, max_bytes=250, ttl_seconds=60)
    for i in range(4):
        cache.put(f"k{i}", bytes(100))
        old = time.time() - 100 + i
        os.utime(cache.path_for(f"k{i}"), (old, time.time()))
    cache.put("k4", bytes(100))
    assert sum(cache.exists(f"k{i}") for i in range(5)) == 2  # 250-byte bound
    assert cache.exists("k4")
    cache.put("huge", bytes(1000))
    assert not cache.exists("huge")
    os.utime(cache.path_for("k4"), (time.time(), time.time() - 120))
    with pytest.raises(ObjectNotFoundError, match="expired"):
        cache.get("k4")


WRITER = textwrap.dedent(
    """
    import sys
    from flowstone.storage.local_store import LocalObjectStore
    from flowstone.storage.objects import save_object
    store = LocalObjectStore(sys.argv[1])
    i = 0
    while True:
        i += 1
        save_object(store, "big/partition=p.fso", {"version": i, "pad": "x" * (8_000_000 + i)})
        print(i, flush=True)
    """
)


@pytest.mark.slow  # kills real writers of 8 MB objects three times
def test_killed_writer_never_leaves_a_torn_object(tmp_path):
    store = LocalObjectStore(tmp_path)
    save_object(store, "big/partition=p.fso", {"version": 0, "pad": ""})
    for delay in (0.05, 0.25, 0.6):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)],
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        time.sleep(0.8 + delay)  # interpreter start, then somewhere inside a write loop
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        value = load_object(store, "big/partition=p.fso")  # verifies the checksum
        assert value["pad"] == ("x" * (8_000_000 + value["version"]) if value["version"] else "")
        assert store.list("big/") == ["big/partition=p.fso"]
    leftovers = list(tmp_path.rglob(f"{TEMP_MARKER}*"))
    assert store.remove_stale_temp_files(older_than_seconds=0) == len(leftovers)
    assert codec.read_envelope(store.get("big/partition=p.fso"))[0].format == "json"


def _record_puts(client) -> list[dict]:
    """The headers of every PutObject request the client sends (botocore's own event)."""
    sent: list[dict] = []
    client.meta.events.register(
        "before-send.s3.PutObject",
        lambda request, **_: sent.append({k.lower(): v for k, v in request.headers.items()}),
    )
    return sent


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def test_codec_client_sends_one_sha256_and_no_redundant_checksums(moto_endpoint, bucket):
    """A codec put carries the payload's sha256 as S3's signed checksum header, and nothing
    else hashes the payload: no SigV4 payload hash, no CRC32. Plain bytes get a CRC32."""
    from dagster_aws.s3 import S3Resource

    from io_managers.object_store import s3_client_for_codec

    resource = S3Resource(endpoint_url=moto_endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1",
                          max_attempts=3)  # fmt: skip
    client = s3_client_for_codec(resource)
    assert client.meta.config.request_checksum_calculation == "when_required"
    assert client.meta.config.response_checksum_validation == "when_required"
    # the resource's own settings are kept (same retries as S3Resource.get_client())
    assert client.meta.config.retries == resource.get_client().meta.config.retries
    sent = _record_puts(client)
    store = S3ObjectStore(client, bucket)
    payload = bytes(range(256)) * 4096
    stored = save_object(store, "big.fso", payload)
    headers = sent[-1]
    digest = base64.b64decode(_text(headers["x-amz-checksum-sha256"]))
    assert digest.hex() == stored.envelope.sha256 == hashlib.sha256(payload).hexdigest()
    assert _text(headers["x-amz-content-sha256"]) == "UNSIGNED-PAYLOAD"
    assert "x-amz-checksum-sha256" in _text(headers["authorization"])  # a signed header
    assert not any(k.startswith("x-amz-checksum-crc") for k in headers)
    with store.open("big.fso") as stream:
        assert stream.read(4) == codec.MAGIC  # the header is put back in front on reads
    assert load_object(store, "big.fso") == payload
    store.put("plain.bin", b"not a codec object")
    assert "x-amz-checksum-crc32" in sent[-1] and "x-amz-checksum-sha256" not in sent[-1]
    assert store.get("plain.bin") == b"not a codec object"
    with pytest.raises(ObjectNotFoundError, match="missing.fso"):
        store.open("missing.fso")


def test_s3_object_is_the_payload_with_the_header_as_metadata(s3, bucket):
    """Several MiB: the body is the payload alone, sent from the caller's buffer (no joined
    blob); get and open hand back header + payload like every other store."""
    from flowstone.storage.s3_store import ENVELOPE_METADATA, _PartsBody

    store = S3ObjectStore(s3, bucket, prefix="team")
    payload = os.urandom(3 * 1024 * 1024 + 17)
    stored = save_object(store, "big/partition=p.fso", payload)
    response = s3.get_object(Bucket=bucket, Key="team/big/partition=p.fso")
    assert response["Body"].read() == payload and stored.stored_bytes == len(payload)
    header = json.loads(response["Metadata"][ENVELOPE_METADATA])
    assert header["sha256"] == stored.envelope.sha256 and header["size"] == len(payload)
    blob = store.get("big/partition=p.fso")
    assert blob.endswith(payload) and codec.read_envelope(blob)[0] == stored.envelope
    assert load_object(store, "big/partition=p.fso") == payload
    # an object with the header inside the body (older FlowStone, a hand upload) reads too
    s3.put_object(Bucket=bucket, Key="team/old.fso", Body=codec.encode(payload).data)
    assert load_object(store, "old.fso") == payload

    body = _PartsBody((b"head", memoryview(b"0123456789")))
    assert bytes(body.read(6)) == b"head01"  # a read across the parts is joined
    assert isinstance(body.read(3), memoryview)  # inside one part: a view, not a copy
    body.seek(0, os.SEEK_END)
    assert body.tell() == 14 and body.read(5) == b""
    body.seek(2)  # botocore rewinds the body before a retry
    assert bytes(body.read()) == b"ad0123456789"
    with pytest.raises(ValueError, match="negative seek"):
        body.seek(-1)


def test_s3_put_over_https_sends_the_same_single_sha256():
    """Over TLS too a codec put sends the codec's sha256 as S3's checksum header and nothing
    else; a plain put streams its CRC32 as an aws-chunked trailer that reads the parts body
    chunk by chunk: moto's server with a self-signed certificate, its own process on
    loopback."""
    import socket
    import warnings

    from dagster_aws.s3 import S3Resource

    from io_managers.object_store import s3_client_for_codec

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port), "--ssl"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "moto --ssl died"
                time.sleep(0.1)
        resource = S3Resource(endpoint_url=f"https://127.0.0.1:{port}", verify=False,
                              aws_access_key_id="testing", aws_secret_access_key="testing",
                              region_name="us-east-1")  # fmt: skip
        client = s3_client_for_codec(resource)
        sent = _record_puts(client)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the self-signed certificate
            client.create_bucket(Bucket="tls")
            store = S3ObjectStore(client, "tls")
            payload = os.urandom(2 * 1024 * 1024 + 5)
            stored = save_object(store, "big.fso", payload)
            assert load_object(store, "big.fso") == payload
            codec_put = sent[-1]
            store.put_parts("plain.bin", (b"head", payload))
            assert store.get("plain.bin") == b"head" + payload
        digest = base64.b64decode(_text(codec_put["x-amz-checksum-sha256"]))
        assert digest.hex() == stored.envelope.sha256
        assert _text(codec_put["x-amz-content-sha256"]) == "UNSIGNED-PAYLOAD"
        assert _text(sent[-1]["x-amz-trailer"]) == "x-amz-checksum-crc32"
        assert _text(sent[-1]["x-amz-content-sha256"]) == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    finally:
        server.terminate()
        server.wait(timeout=10)
