"""The worker process: ``python -m flowstone.workers.worker --config '<json>'``.

It loads one bridge, reports ready, then serves one request at a time from stdin and answers on
the original stdout. Before anything else it moves fd 1 onto stderr, so a handler's ``print`` (or
a C library writing to fd 1) lands in the log instead of corrupting the frame stream.

Frames come in on a private copy of stdin too, and fd 0 becomes /dev/null: a subprocess a handler
starts inherits fd 0, and must neither read request bytes nor keep the request pipe open after the
worker died (the pool tells an undelivered request by that pipe, see ``WorkerProcess``).

It never outlives its parent: the parent-death signal (``prctl(PR_SET_PDEATHSIG)``) kills it when
the parent thread that spawned it dies, and an end of file on stdin makes it exit cleanly. Nothing
a handler starts outlives the worker either: a guard process in the worker's group kills the
group once the worker is gone (:mod:`flowstone.workers.groups`). An ``RLIMIT_AS`` cap makes a
runaway allocation fail in this process alone; it then exits with :data:`EXIT_OUT_OF_MEMORY` so
the parent can say "out of memory" rather than "crashed".
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from typing import Any

from flowstone.workers.bridge import Bridge, RequestContext, load_bridge_class
from flowstone.workers.errors import MalformedFrameError, ProtocolError, error_to_wire
from flowstone.workers.groups import start_group_guard
from flowstone.workers.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    FrameReader,
    StreamClosed,
    encode_frame,
    get_codec,
    write_all,
)

EXIT_STARTUP_FAILED = 70
EXIT_OUT_OF_MEMORY = 71
EXIT_PROTOCOL = 72
EXIT_PARENT_GONE = 73

PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent (thread) dies."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def apply_memory_limit(megabytes: int | None) -> None:
    """Cap this process's address space so that a runaway handler gets MemoryError, alone."""
    if not megabytes:
        return
    import resource

    limit = int(megabytes) * 1024 * 1024
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


class WorkerLoop:
    """Serve requests for one bridge instance until stdin closes."""

    def __init__(
        self, bridge: Bridge, bridge_name: str, out_fd: int, codec_name: str, max_frame_bytes: int
    ):
        self.bridge = bridge
        self.bridge_name = bridge_name
        self.out_fd = out_fd
        self.codec = get_codec(codec_name)
        self.max_frame_bytes = max_frame_bytes
        self.specs = type(bridge).commands()

    def send(self, message: dict[str, Any]) -> None:
        write_all(self.out_fd, encode_frame(message, self.codec, self.max_frame_bytes))

    def send_result(self, request_id: Any, result: Any) -> None:
        try:
            frame = encode_frame(
                {"id": request_id, "success": True, "result": result},
                self.codec,
                self.max_frame_bytes,
            )
        except (TypeError, ValueError, ProtocolError) as exc:
            self.send_error(request_id, exc, "the handler's result cannot be sent")
            return
        write_all(self.out_fd, frame)

    def send_error(self, request_id: Any, exc: BaseException, prefix: str = "") -> None:
        wire = error_to_wire(exc)
        if wire["type"] == "RemoteError":
            wire["traceback"] = "".join(traceback.format_exception(exc))
        if prefix:
            wire["message"] = f"{prefix}: {wire['message']}"
        self.send({"id": request_id, "success": False, "error": wire})

    def serve(self, reader: FrameReader) -> int:
        while True:
            try:
                message = reader.read()
            except StreamClosed:
                return 0
            except MalformedFrameError as exc:
                self.send_error(None, exc)  # one bad frame; the next one starts cleanly
                continue
            except ProtocolError as exc:
                # The byte stream cannot be re-synchronised: answer, then leave.
                self.send_error(None, exc)
                return EXIT_PROTOCOL
            self.handle(message)

    def handle(self, message: Any) -> None:
        if not isinstance(message, dict) or not isinstance(message.get("command"), str):
            self.send_error(
                message.get("id") if isinstance(message, dict) else None,
                ProtocolError("a request must be an object with a string 'command'"),
            )
            return
        request_id = message.get("id")
        name = message["command"]
        prefix, sep, bare = name.rpartition(":")
        spec = (
            self.specs.get(bare if sep else name)
            if (not sep or prefix == self.bridge_name)
            else None
        )
        if spec is None:
            from flowstone.workers.errors import UnknownCommandError

            known = ", ".join(sorted(self.specs))
            self.send_error(
                request_id,
                UnknownCommandError(
                    f"bridge '{self.bridge_name}' has no command '{name}' (commands: {known})"
                ),
            )
            return
        args = message.get("args")
        self.bridge.context = RequestContext(
            request_id, name, message.get("timeout_ms"), time.monotonic()
        )
        handler = getattr(self.bridge, spec.attribute)
        try:
            if args is None:
                outcome = handler()
            elif isinstance(args, dict):
                outcome = handler(**args)
            elif isinstance(args, list):
                outcome = handler(*args)
            else:
                outcome = handler(args)
            if spec.streaming:
                count = 0
                for chunk in outcome:
                    self.send({"id": request_id, "chunk": chunk})
                    count += 1
                outcome = {"chunks": count}
        except MemoryError:
            os._exit(EXIT_OUT_OF_MEMORY)
        except Exception as exc:  # a handler's error goes back typed; the worker stays up
            self.send_error(request_id, exc)
            return
        finally:
            self.bridge._served += 1
            self.bridge.context = None
        self.send_result(request_id, outcome)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flowstone.workers.worker")
    parser.add_argument("--config", required=True, help="JSON: target, name, options, codec, ...")
    config = json.loads(parser.parse_args(argv).config)

    # Frames go to a private copy of stdout; fd 1 and sys.stdout now point at stderr. Requests
    # come from a private copy of stdin; fd 0 is /dev/null for whatever a handler starts.
    # (os.dup makes non-inheritable copies: no subprocess gets the frame pipes.)
    out_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    in_fd = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop

    set_parent_death_signal()
    parent_pid = config.get("parent_pid")
    if parent_pid is not None and os.getppid() != parent_pid:
        return EXIT_PARENT_GONE  # the parent died before the death signal was armed
    # Forked now, while this process has one thread and no model loaded. The descriptor stays
    # open until this process ends: its closing is what tells the guard to kill the group.
    start_group_guard(parent_pid)
    apply_memory_limit(config.get("memory_limit_mb"))

    codec = get_codec(config.get("codec", "json"))
    max_frame = int(config.get("max_frame_bytes") or DEFAULT_MAX_FRAME_BYTES)
    name = config.get("name", "bridge")

    def announce(message: dict[str, Any]) -> None:
        write_all(out_fd, encode_frame(message, codec, max_frame))

    try:
        cls = load_bridge_class(config["target"])
        bridge = cls(**(config.get("options") or {}))
        bridge.setup()
    except MemoryError:
        os._exit(EXIT_OUT_OF_MEMORY)
    except BaseException as exc:
        wire = error_to_wire(exc)
        wire["traceback"] = "".join(traceback.format_exception(exc))
        wire["message"] = f"bridge '{name}' failed to start: {wire['message']}"
        announce({"ready": False, "pid": os.getpid(), "error": wire})
        return EXIT_STARTUP_FAILED

    loop = WorkerLoop(bridge, name, out_fd, codec.name, max_frame)
    announce({"ready": True, "pid": os.getpid(), "bridge": name})
    return loop.serve(FrameReader(in_fd, codec, max_frame))


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: torch and friends can be slow to unload
