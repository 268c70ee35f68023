"""One worker process as the parent sees it: spawn, call, kill, and say how it died.

Each worker gets its own process group (``start_new_session``) so that killing it also kills
anything its handlers started, and so that a terminal's Ctrl-C reaches the parent only (the
parent then stops the workers in order). However a worker ends (stopped, killed, crashed), the
parent SIGKILLs its whole group before it reaps it (see :mod:`flowstone.workers.groups` for why
that order makes the signal safe). The parent's pipe ends are non-blocking, so a call can never
wait past its deadline, even on a worker that stopped reading.
"""

from __future__ import annotations

import array
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowstone.workers import worker as worker_main
from flowstone.workers.groups import kill_group
from flowstone.workers.protocol import Codec, FrameReader, encode_frame, write_all

_ids = itertools.count(1)
# How long a caller busy-waits for a reply before sleeping in poll(). Sleeping costs a wake-up
# (tens of microseconds on an idle core); a no-op call answers in about twenty.
REPLY_SPIN_S = float(os.environ.get("FLOWSTONE_POOL_SPIN_US", "100")) / 1e6
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# waitid(WNOWAIT) tells that a child exited without reaping it: its pid (and group id) stay
# reserved until the parent has killed the rest of the group.
_CAN_PEEK_EXIT = hasattr(os, "waitid") and hasattr(os, "WNOWAIT")

_CRASH_SIGNALS = {
    signal.SIGSEGV: "segmentation fault",
    signal.SIGBUS: "bus error",
    signal.SIGILL: "illegal instruction",
    signal.SIGFPE: "floating-point exception",
    signal.SIGABRT: "aborted",
}


@dataclass(frozen=True)
class ExitInfo:
    """How a worker process ended, in words a person can act on."""

    kind: str  # "signal" | "segfault" | "out_of_memory" | "exit_code" | "startup_failed" | "protocol" | "running"
    returncode: int | None
    signal_name: str | None
    description: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "returncode": self.returncode,
            "signal": self.signal_name,
            "description": self.description,
        }


def classify_exit(returncode: int | None, memory_limit_mb: int | None = None) -> ExitInfo:
    """Turn a return code into a kind and a sentence (signal name, segfault, OOM, exit code)."""
    if returncode is None:
        return ExitInfo("running", None, None, "still running")
    if returncode < 0:
        sig = signal.Signals(-returncode)
        if sig in _CRASH_SIGNALS:
            return ExitInfo(
                "segfault",
                returncode,
                sig.name,
                f"crashed with {sig.name} ({_CRASH_SIGNALS[sig]}), usually a bug in native code",
            )
        if sig == signal.SIGKILL:
            return ExitInfo(
                "signal",
                returncode,
                sig.name,
                "killed by SIGKILL (sent by hand, by a supervisor, or by the kernel OOM killer)",
            )
        return ExitInfo("signal", returncode, sig.name, f"terminated by {sig.name}")
    if returncode == worker_main.EXIT_OUT_OF_MEMORY:
        cap = f" (memory cap {memory_limit_mb} MB)" if memory_limit_mb else ""
        return ExitInfo("out_of_memory", returncode, None, f"ran out of memory{cap}")
    if returncode == worker_main.EXIT_STARTUP_FAILED:
        return ExitInfo("startup_failed", returncode, None, "its bridge failed to start")
    if returncode == worker_main.EXIT_PROTOCOL:
        return ExitInfo(
            "protocol", returncode, None, "received bytes that are not FlowStone frames"
        )
    if returncode == worker_main.EXIT_PARENT_GONE:
        return ExitInfo("exit_code", returncode, None, "found its parent gone at start-up")
    return ExitInfo("exit_code", returncode, None, f"exited with code {returncode}")


class WorkerProcess:
    """A started worker: its pipes, its counters and its lifecycle state."""

    def __init__(self, proc: subprocess.Popen, codec: Codec, max_frame_bytes: int):
        self.id = next(_ids)
        self.proc = proc
        self.pid = proc.pid
        self.codec = codec
        self.max_frame_bytes = max_frame_bytes
        assert proc.stdin is not None and proc.stdout is not None
        self.stdin_fd = proc.stdin.fileno()
        self.stdout_fd = proc.stdout.fileno()
        os.set_blocking(self.stdin_fd, False)
        os.set_blocking(self.stdout_fd, False)
        self.reader = FrameReader(self.stdout_fd, codec, max_frame_bytes, spin_s=REPLY_SPIN_S)
        self.spawned_at = time.monotonic()
        self.ready_at: float | None = None
        self.state = "starting"  # starting | idle | busy | retiring | dead
        self.requests = 0
        self.failures = 0
        self.last_used = self.spawned_at
        self.recycle_reason: str | None = None
        self.overflow = False  # started past the pool's size for a burst; never replaced
        # The request being sent: its frame length, and whether writing it hit a closed pipe.
        self._request_bytes = 0
        self._write_broken = False
        self._statm_fd: int | None = None
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError):
                self._statm_fd = os.open(f"/proc/{self.pid}/statm", os.O_RDONLY | os.O_CLOEXEC)

    @classmethod
    def spawn(
        cls,
        *,
        target: str,
        name: str,
        options: dict[str, Any],
        codec: Codec,
        max_frame_bytes: int,
        memory_limit_mb: int | None,
        env: dict[str, str] | None = None,
        pythonpath: list[str] | None = None,
        stderr: Any = None,
    ) -> WorkerProcess:
        config = {
            "target": target,
            "name": name,
            "options": options,
            "codec": codec.name,
            "max_frame_bytes": max_frame_bytes,
            "memory_limit_mb": memory_limit_mb,
            "parent_pid": os.getpid(),
        }
        child_env = dict(os.environ)
        child_env.update(env or {})
        paths = [*(pythonpath or []), _PACKAGE_ROOT]
        if child_env.get("PYTHONPATH"):
            paths.append(child_env["PYTHONPATH"])
        child_env["PYTHONPATH"] = os.pathsep.join(paths)
        proc = subprocess.Popen(
            [sys.executable, "-m", "flowstone.workers.worker", "--config", json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=child_env,
            start_new_session=True,
            close_fds=True,
        )
        return cls(proc, codec, max_frame_bytes)

    # Calls ------------------------------------------------------------------------------------

    def _send(self, request: dict[str, Any], deadline: float | None) -> None:
        frame = encode_frame(request, self.codec, self.max_frame_bytes)
        self._request_bytes, self._write_broken = len(frame), False
        try:
            write_all(self.stdin_fd, frame, deadline)
        except BrokenPipeError:
            self._write_broken = True  # nobody reads the pipe: the worker is gone
            raise

    def request_undelivered(self) -> bool:
        """After a call failed because the worker died: True when the worker provably never
        read the request, so sending it to another worker cannot run it twice.

        Either writing it hit a closed pipe, or (Linux) every byte of it still sits unread in
        the worker's stdin pipe (``FIONREAD`` on our end of the pipe works after the reader is
        gone). A worker reads a request only when idle, after it has read every earlier request
        whole, so an unread count of at least this frame's length means none of it was read.
        Call it before the pipes are closed (before ``kill``/``stop``).
        """
        if self._write_broken:
            return True
        if not self._request_bytes or not sys.platform.startswith("linux"):
            return False
        import fcntl
        import termios

        unread = array.array("i", [0])
        try:
            fcntl.ioctl(self.stdin_fd, termios.FIONREAD, unread)
        except OSError:
            return False
        return unread[0] >= self._request_bytes

    def frames(self, request: dict[str, Any], deadline: float | None) -> Iterator[dict[str, Any]]:
        """Send one request and yield its response frames (chunks, then the final one)."""
        self._send(request, deadline)
        request_id = request["id"]
        while True:
            frame = self.reader.read(deadline)
            if not isinstance(frame, dict) or frame.get("id") != request_id:
                from flowstone.workers.errors import ProtocolError

                raise ProtocolError(
                    f"worker pid {self.pid} answered request {request_id} with an unexpected frame: "
                    f"{str(frame)[:200]}"
                )
            yield frame
            if "chunk" not in frame:
                return

    def call(self, request: dict[str, Any], deadline: float | None) -> dict[str, Any]:
        """Send one request to a non-streaming command and return its reply (the fast path)."""
        self._send(request, deadline)
        frame = self.reader.read(deadline)
        if type(frame) is not dict or frame.get("id") != request["id"] or "chunk" in frame:
            from flowstone.workers.errors import ProtocolError

            raise ProtocolError(
                f"worker pid {self.pid} answered request {request['id']} with an unexpected frame: "
                f"{str(frame)[:200]}"
            )
        return frame

    # Lifecycle ----------------------------------------------------------------------------

    def exited(self) -> bool:
        """True once the worker process has ended (reaped or not); reaps nothing.

        One ``waitid`` system call, cheap enough to ask before every call the worker is handed:
        a worker killed while idle must not be given a request.
        """
        if self.proc.returncode is not None:
            return True
        if not _CAN_PEEK_EXIT:
            return self.proc.poll() is not None
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True  # already reaped elsewhere
        return info is not None

    def _reap(self) -> int | None:
        """The worker has ended: SIGKILL what is left of its group, then collect its status.

        In this order, the unreaped worker still holds its pid, so the group id cannot have been
        handed to another process yet.
        """
        if self.proc.returncode is None:
            self.signal_group(signal.SIGKILL)
        try:
            return self.proc.wait(5.0)
        except subprocess.TimeoutExpired:  # cannot happen for an exited child; never hang
            return self.proc.poll()

    def returncode(self) -> int | None:
        """The exit status once the worker has ended (its group killed, it reaped), else None."""
        return self._reap() if self.exited() else None

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the worker to end; reap it as :meth:`returncode`."""
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while not self.exited():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.05)
        return self._reap()

    def signal_group(self, sig: int) -> None:
        """Signal the worker's whole process group (it leads its own group)."""
        kill_group(self.pid, sig)

    def kill(self) -> int | None:
        """SIGKILL the group and reap; returns the exit status (negative signal number)."""
        if self.proc.returncode is None:
            self.signal_group(signal.SIGKILL)
        code = self.wait(5.0)
        self._close_pipes()
        return code

    def stop(self, grace: float) -> int | None:
        """Ask nicely (stdin EOF), then SIGTERM, then SIGKILL; returns the exit status."""
        self._close_stdin()
        code = self.wait(grace)
        if code is None:
            self.signal_group(signal.SIGTERM)
            code = self.wait(max(0.5, grace / 2))
        if code is None:
            code = self.kill()
        self._close_pipes()
        return code

    def _close_stdin(self) -> None:
        try:
            if self.proc.stdin and not self.proc.stdin.closed:
                self.proc.stdin.close()
        except OSError:
            pass

    def _close_pipes(self) -> None:
        self._close_stdin()
        self._close_statm()
        try:
            if self.proc.stdout and not self.proc.stdout.closed:
                self.proc.stdout.close()
        except OSError:
            pass

    def rss_bytes(self) -> int | None:
        """Resident memory now, or None once the process is gone.

        Cheap enough to call after every request (the pool does, to enforce ``max_rss_mb``
        even on a worker that is never idle): on Linux it re-reads ``/proc/<pid>/statm``
        through a descriptor kept open, about a microsecond; elsewhere it asks psutil.
        """
        fd = self._statm_fd
        if fd is not None:
            try:
                return int(os.pread(fd, 128, 0).split()[1]) * _PAGE_SIZE
            except (OSError, IndexError, ValueError):
                return None  # the process is gone (ESRCH) or the file is not what we expect
        import psutil

        try:
            return psutil.Process(self.pid).memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return None

    def _close_statm(self) -> None:
        fd, self._statm_fd = self._statm_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def describe(self) -> dict[str, Any]:
        rss = self.rss_bytes() if self.state != "dead" else None
        now = time.monotonic()
        return {
            "id": self.id,
            "pid": self.pid,
            "state": self.state,
            "rss_mb": round(rss / 1024 / 1024, 1) if rss is not None else None,
            "uptime_s": round(now - self.spawned_at, 1),
            "requests": self.requests,
            "failures": self.failures,
            "idle_s": round(now - self.last_used, 1),
            "overflow": self.overflow,
        }
