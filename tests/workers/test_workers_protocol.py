"""Framing: round trips, oversize, garbage and truncated frames never hang (pipes and a real worker)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from flowstone.workers.errors import ProtocolError
from flowstone.workers.protocol import (
    JSON,
    FrameReader,
    FrameTimeout,
    StreamClosed,
    encode_frame,
    get_codec,
    write_all,
)


def _pipe():
    r, w = os.pipe()
    os.set_blocking(r, False)
    return r, w


@pytest.mark.parametrize("codec_name", ["json", "msgpack"])
def test_frames_round_trip_in_order(codec_name):
    codec = get_codec(codec_name)
    r, w = _pipe()
    messages = [
        {"id": i, "args": {"text": "é" * i, "values": [1.5, None, True]}} for i in range(50)
    ]
    write_all(w, b"".join(encode_frame(m, codec) for m in messages))
    reader = FrameReader(r, codec)
    got = [reader.read(time.monotonic() + 2) for _ in messages]
    assert got == messages
    os.close(w)
    with pytest.raises(StreamClosed):
        reader.read(time.monotonic() + 2)
    os.close(r)


def test_numpy_like_values_are_sent_as_lists():
    class FakeArray:
        def tolist(self):
            return [[1, 2], [3, 4]]

    frame = encode_frame({"result": FakeArray(), "tags": {"a"}})
    assert json.loads(frame[4:]) == {"result": [[1, 2], [3, 4]], "tags": ["a"]}


def test_oversize_header_is_a_protocol_error_at_once():
    r, w = _pipe()
    os.write(w, (10_000_000).to_bytes(4, "big") + b"{}")
    reader = FrameReader(r, JSON, max_frame_bytes=1024)
    # The body never comes: a reader that waited for it would end in FrameTimeout after 60 s.
    with pytest.raises(ProtocolError, match="above the 1024-byte limit"):
        reader.read(time.monotonic() + 60)


def test_garbage_body_is_a_protocol_error():
    r, w = _pipe()
    body = b"\x00\xffnot json"
    os.write(w, len(body).to_bytes(4, "big") + body)
    with pytest.raises(ProtocolError, match="not valid json"):
        FrameReader(r).read(time.monotonic() + 2)


def test_stream_ending_inside_a_frame_is_a_protocol_error():
    r, w = _pipe()
    os.write(w, (100).to_bytes(4, "big") + b'{"id"')
    os.close(w)
    with pytest.raises(ProtocolError, match="inside a frame"):
        FrameReader(r).read(time.monotonic() + 2)


def test_silent_peer_times_out_instead_of_hanging():
    r, _w = _pipe()
    deadline = time.monotonic() + 0.2
    with pytest.raises(FrameTimeout):
        FrameReader(r).read(deadline)
    # Not before its deadline, and long before a hang (generous: a busy machine is slow).
    assert deadline <= time.monotonic() < deadline + 10


def test_encoding_a_message_over_the_limit_is_refused():
    with pytest.raises(ProtocolError, match="exceeds the 100-byte frame limit"):
        encode_frame({"text": "x" * 200}, max_frame_bytes=100)


def _start_worker():
    config = {
        "target": "flowstone.workers.bridges.echo:EchoBridge",
        "name": "echo",
        "max_frame_bytes": 4096,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "flowstone.workers.worker", "--config", json.dumps(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )


def _read(proc, reader_cache={}):  # noqa: B006 - one reader per process keeps its buffer
    reader = reader_cache.setdefault(proc.pid, FrameReader(proc.stdout.fileno()))
    return reader.read(time.monotonic() + 10)


def test_real_worker_answers_a_bad_request_and_keeps_serving():
    proc = _start_worker()
    try:
        assert _read(proc)["ready"] is True
        body = b"[1, 2"  # valid frame, invalid JSON
        proc.stdin.write(len(body).to_bytes(4, "big") + body)
        proc.stdin.flush()
        reply = _read(proc)
        assert reply["success"] is False and reply["error"]["type"] == "MalformedFrameError"
        assert proc.poll() is None  # a frame boundary was intact: the worker carries on
        proc.stdin.write(encode_frame({"id": 7, "command": "echo:echo", "args": {"value": "ok"}}))
        proc.stdin.flush()
        assert _read(proc) == {"id": 7, "success": True, "result": "ok"}
    finally:
        proc.kill()
        proc.wait()


def test_real_worker_rejects_oversize_frame_and_exits():
    from flowstone.workers.worker import EXIT_PROTOCOL

    proc = _start_worker()
    try:
        assert _read(proc)["ready"] is True
        proc.stdin.write((1 << 30).to_bytes(4, "big") + b"garbage")
        proc.stdin.flush()
        reply = _read(proc)
        assert reply["error"]["type"] == "ProtocolError"
        assert "4096-byte limit" in reply["error"]["message"]
        assert proc.wait(timeout=5) == EXIT_PROTOCOL
    finally:
        proc.kill()
        proc.wait()
