"""Length-prefixed frames: the one wire format of workers (pipes) and the pool server (socket).

A frame is a 4-byte big-endian body length followed by the body, JSON by default or msgpack.
A length above ``max_frame_bytes``, a body that does not decode, or an end of stream inside a
frame raises :class:`ProtocolError` at once: a reader never waits for bytes that will not come.

Messages:

- request  ``{"id", "command", "args", "timeout_ms"}`` (+ ``session_id``/``stream`` on the socket)
- response ``{"id", "success": true, "result"}`` or ``{"id", "success": false, "error"}``
- stream chunk ``{"id", "chunk"}``, any number of them before the final response
- ready (worker to parent, once) ``{"ready": true, "pid", "bridge"}``
"""

from __future__ import annotations

import json
import os
import select
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flowstone.workers.errors import MalformedFrameError, ProtocolError

HEADER_BYTES = 4
DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
_READ_CHUNK = 64 * 1024  # below glibc's mmap threshold: no mmap/munmap per read


class StreamClosed(Exception):
    """The peer closed its end between frames (a clean end of stream)."""


class FrameTimeout(Exception):
    """No complete frame arrived before the deadline."""


def _json_default(value: Any) -> Any:
    # numpy scalars/arrays and torch tensors all have tolist(); bridges return them often.
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(
        f"{type(value).__name__} is not JSON serialisable; return lists, dicts, str or numbers"
    )


@dataclass(frozen=True)
class Codec:
    name: str
    dumps: Callable[[Any], bytes]
    loads: Callable[[bytes], Any]


_JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_json_default)  # built once


def _json_dumps(obj: Any) -> bytes:
    return _JSON_ENCODER.encode(obj).encode()


def _msgpack_codec() -> Codec:
    import msgpack

    return Codec(
        "msgpack",
        lambda obj: msgpack.packb(obj, default=_json_default, use_bin_type=True),
        lambda data: msgpack.unpackb(data, raw=False, strict_map_key=False),
    )


JSON = Codec("json", _json_dumps, json.loads)


def get_codec(name: str) -> Codec:
    if name == "json":
        return JSON
    if name == "msgpack":
        return _msgpack_codec()
    raise ValueError(f"unknown frame codec '{name}'; use 'json' or 'msgpack'")


def encode_frame(
    message: Any, codec: Codec = JSON, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> bytes:
    """Header + body; raises ProtocolError for a message larger than the frame limit."""
    body = codec.dumps(message)
    if len(body) > max_frame_bytes:
        raise ProtocolError(
            f"message of {len(body)} bytes exceeds the {max_frame_bytes}-byte frame limit; "
            "send smaller batches or raise max_frame_bytes"
        )
    return len(body).to_bytes(HEADER_BYTES, "big") + body


def write_all(fd: int, data: bytes, deadline: float | None = None) -> None:
    """Write every byte to fd; on a non-blocking fd, wait for room until the deadline."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            _wait(fd, select.POLLOUT, deadline)
            continue
        view = view[written:]


def _wait(fd: int, events: int, deadline: float | None) -> None:
    poller = select.poll()
    poller.register(fd, events | select.POLLHUP | select.POLLERR)
    if deadline is None:
        poller.poll()
        return
    remaining = deadline - time.monotonic()
    if remaining <= 0 or not poller.poll(remaining * 1000.0):
        raise FrameTimeout()


class FrameReader:
    """Reads whole frames from a file descriptor (pipe or socket), with an optional deadline.

    Works on blocking fds (the worker: no deadline needed) and non-blocking fds (the parent and the
    server, which must never wait past a call's timeout).
    """

    def __init__(
        self,
        fd: int,
        codec: Codec = JSON,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        spin_s: float = 0.0,
    ):
        self.fd = fd
        self.spin_s = spin_s
        self.codec = codec
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()

    def read(self, deadline: float | None = None) -> Any:
        buffer = self._buffer
        spin_until: float | None = None
        while True:
            if len(buffer) >= HEADER_BYTES:
                size = int.from_bytes(buffer[:HEADER_BYTES], "big")
                if size > self.max_frame_bytes:
                    raise ProtocolError(
                        f"frame header announces {size} bytes, above the {self.max_frame_bytes}-byte "
                        "limit (oversize message, or bytes that are not FlowStone frames)"
                    )
                end = HEADER_BYTES + size
                if len(buffer) >= end:
                    body = bytes(buffer[HEADER_BYTES:end])
                    del buffer[:end]
                    try:
                        return self.codec.loads(body)
                    except Exception as exc:
                        preview = body[:40]
                        raise MalformedFrameError(
                            f"frame body is not valid {self.codec.name} ({exc}); first bytes: {preview!r}"
                        ) from None
            try:
                chunk = os.read(self.fd, _READ_CHUNK)
            except BlockingIOError:
                if spin_until is None:
                    spin_until = time.perf_counter() + self.spin_s
                if time.perf_counter() < spin_until:
                    continue  # a fast reply is usually microseconds away: stay on the CPU
                _wait(self.fd, select.POLLIN, deadline)
                continue
            except (ConnectionResetError, BrokenPipeError) as exc:
                raise StreamClosed(str(exc)) from None
            if not chunk:
                if buffer:
                    raise ProtocolError(
                        f"stream ended inside a frame ({len(buffer)} bytes of an incomplete frame)"
                    )
                raise StreamClosed("end of stream")
            buffer += chunk
