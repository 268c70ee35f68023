"""A bridge that misbehaves on request, to drive the pool's fault handling with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from flowstone.workers.bridge import Bridge, command


def _await_file(path: str, timeout_s: float) -> bool:
    """True once path exists, False after timeout_s (a gate the test opens by creating it)."""
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class FaultyBridge(Bridge):
    name = "faulty"

    def setup(self) -> None:
        if self.options.get("kill_guard"):  # leave the group to the pool alone
            import psutil

            for guard in psutil.Process().children():
                guard.kill()
                guard.wait(30)
        if self.options.get("fail_setup"):
            raise RuntimeError("setup refused on purpose")
        gate = self.options.get("setup_gate")
        if gate and not _await_file(gate, 120):
            raise RuntimeError(f"setup gate {gate} never opened")

    @command(idempotent=True)
    def pid(self) -> int:
        return os.getpid()

    @command
    def echo(self, value: object = None) -> object:
        return value

    @command
    def wait_for(self, marker: str, timeout_s: float = 120.0) -> int:
        """Hold this worker until the test creates marker (deterministic "busy", no sleeps)."""
        if not _await_file(marker, timeout_s):
            raise TimeoutError(f"{marker} was never created")
        return os.getpid()

    @command
    def gated_count(self, marker: str, timeout_s: float = 60.0) -> Iterator[object]:
        """Yield 0, then 1 once marker exists; "gate timed out" if it never does."""
        yield 0
        yield 1 if _await_file(marker, timeout_s) else "gate timed out"

    @command
    def kill_self(self, sig: str = "SIGKILL") -> None:
        os.kill(os.getpid(), getattr(signal, sig))
        time.sleep(5)

    @command(idempotent=True)
    def kill_once(self, marker: str) -> int:
        """Die the first time (marker file absent), answer the second time: exercises retries."""
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return os.getpid()

    @command
    def segfault(self) -> None:
        import ctypes

        ctypes.string_at(0)

    @command
    def boom(self, message: str = "bad input") -> None:
        raise ValueError(message)

    @command
    def allocate(self, megabytes: int) -> int:
        block = bytearray(megabytes * 1024 * 1024)
        return len(block)

    @command
    def hold(self, megabytes: int) -> int:
        """Keep memory resident in this worker (drives RSS recycling)."""
        self.__dict__.setdefault("_held", []).append(b"x" * (megabytes * 1024 * 1024))
        return os.getpid()

    @command
    def hold_and_report(self, megabytes: int) -> dict[str, int]:
        """Keep memory resident, then say which worker holds it and its RSS as it replies."""
        self.hold(megabytes)
        with open("/proc/self/statm") as statm:
            rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        return {"pid": os.getpid(), "rss": rss}

    @command
    def chatty(self) -> str:
        print("this goes to stderr, not into the frame stream")
        sys.stdout.write("x" * 100_000)
        os.write(1, b"raw bytes on fd 1")
        return "still framed"

    @command
    def bad_result(self) -> object:
        return object()

    @command
    def hang(self, seconds: float = 60.0, started: str | None = None) -> None:
        """Sleep; ``started``: a file to write this worker's pid into once the call runs."""
        if started:
            Path(started).write_text(str(os.getpid()))
        time.sleep(seconds)

    @command
    def exit_with(self, code: int) -> None:
        os._exit(code)

    @command
    def spawn_grandchild(self, pid_file: str, then: str = "return") -> int:
        """Start ``sleep 300`` the way handlers start tools, note its pid in pid_file, then
        return, hang (for call timeouts) or die (for crashes)."""
        child = subprocess.Popen(["sleep", "300"])
        with open(pid_file + ".tmp", "w") as out:
            out.write(str(child.pid))
        os.replace(pid_file + ".tmp", pid_file)
        if then == "hang":
            time.sleep(300)
        elif then == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        return child.pid
