"""Find the host's shared pool server, or start it: the warm worker pool by default on one host.

Why: every Dagster step is a fresh process, and scoring ``embedding_similarity`` in it imports
torch and loads MiniLM again (seconds a step). The first step that needs the encoder starts one
``flowstone pool serve`` (``metrics`` bridge, encoder preloaded) on the default socket
(:func:`flowstone.workers.server.default_socket_path`, ``<instance>/pool/metrics.sock``),
detached from the run; later steps and runs find it there and pay only for encoding. The server
stops by itself after ``FLOWSTONE_POOL_IDLE_TIMEOUT`` seconds without calls (default 600).

- A file lock next to the socket covers "ping, else spawn, then wait until it answers", so two
  runs starting at once start one server; the second finds the first's.
- A server that cannot be spawned, exits while starting or does not answer within the start
  timeout is stopped and :class:`AutoPoolError` is raised: the caller scores in its own process
  instead. The failure is noted next to the socket for ``retry_after_s``, so the steps of the
  next minute do not each wait for a server that will not come.
- ``FLOWSTONE_POOL=off`` turns it off. So does a scale-out executor (``FLOWSTONE_EXECUTOR``
  celery or k8s: steps run on several hosts), unless ``FLOWSTONE_POOL=on``.

Plain Python, no Dagster: ``resources/worker_pool.py`` calls :meth:`AutoPool.ensure` on the first
heavy metric, and ``flowstone doctor`` calls :meth:`AutoPool.status`. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowstone.errors import ConfigError
from flowstone.workers.errors import PoolError
from flowstone.workers.server import PoolClient, _server_listening, default_socket_path

POOL_ENV = "FLOWSTONE_POOL"
IDLE_TIMEOUT_ENV = "FLOWSTONE_POOL_IDLE_TIMEOUT"
EXECUTOR_ENV = "FLOWSTONE_EXECUTOR"  # owned by assets/scaleout.py; read here to spot scale-out
SCALE_OUT_EXECUTORS = ("celery", "k8s")
DEFAULT_IDLE_TIMEOUT_S = 600.0
BRIDGE = "metrics"
_OFF = ("off", "0", "false", "no")
_ON = ("on", "1", "true", "yes", "auto")


class AutoPoolError(PoolError):
    """The host's shared pool server could not be found or started; the caller scores in its
    own process instead."""


@dataclass(frozen=True)
class AutoPoolSetting:
    """Whether runs use (and start) the host's shared pool, and why, in words for the doctor."""

    enabled: bool
    detail: str


def auto_pool_setting(environ: Mapping[str, str] | None = None) -> AutoPoolSetting:
    """On unless ``FLOWSTONE_POOL=off``, or a scale-out executor without ``FLOWSTONE_POOL=on``."""
    env = os.environ if environ is None else environ
    raw = (env.get(POOL_ENV) or "").strip()
    value = raw.lower()
    if value in _OFF:
        return AutoPoolSetting(False, f"off ({POOL_ENV}={raw})")
    if value and value not in _ON:
        raise ConfigError(
            f"environment variable {POOL_ENV}",
            raw,
            "not one of on, off (unset: on, on a single host)",
        )
    executor = (env.get(EXECUTOR_ENV) or "").strip().lower()
    if not value and executor in SCALE_OUT_EXECUTORS:
        return AutoPoolSetting(
            False,
            f"off on the {executor} executor (steps run on several hosts): set "
            f"FLOWSTONE_POOL_SOCKET to a per-host server, or {POOL_ENV}=on",
        )
    return AutoPoolSetting(True, "on" + (f" ({POOL_ENV}={raw})" if raw else ""))


def idle_timeout_from_env(environ: Mapping[str, str] | None = None) -> float:
    """``FLOWSTONE_POOL_IDLE_TIMEOUT`` in seconds (default 600; 0: never stop)."""
    env = os.environ if environ is None else environ
    raw = (env.get(IDLE_TIMEOUT_ENV) or "").strip()
    if not raw:
        return DEFAULT_IDLE_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0 or value != value:  # negative, not a number, or NaN
        raise ConfigError(
            f"environment variable {IDLE_TIMEOUT_ENV}", raw, "not a number of seconds >= 0"
        )
    return value


def metrics_pools_config() -> Path | None:
    """The pools.yaml whose ``metrics`` bridge the on-demand server runs, or None (no file, or
    no such bridge in it: the plain ``--bridge metrics`` server). A file that does not parse
    is left to the server, whose log then names the file and key."""
    from flowstone.workers.pools_config import load_pools_config, pools_config_path

    path = pools_config_path()
    if not path.is_file():
        return None
    try:
        return path if BRIDGE in load_pools_config(path).bridges else None
    except ConfigError:
        return path


@dataclass(frozen=True)
class AutoPool:
    """The host's shared ``metrics`` pool server: where it listens and how to start it."""

    socket_path: Path = field(default_factory=default_socket_path)
    workers: int = 1  # one warm encoder starts fastest and already uses every core
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    start_timeout_s: float = 180.0
    bridge_options: Mapping[str, Any] = field(default_factory=lambda: {"preload": True})
    command: Sequence[str] | None = None  # replaces server_command() (a wrapper; tests)
    retry_after_s: float = 60.0
    # pools.yaml with a ``metrics`` bridge: the server is then that file's supervisor serving
    # its ``metrics`` bridge (limits, recycling, env from the file; ``workers`` and
    # ``bridge_options`` above still override the entry's)
    pools_config: Path | None = None

    @classmethod
    def from_env(cls, **overrides: Any) -> AutoPool:
        """The default socket, the idle timeout from ``FLOWSTONE_POOL_IDLE_TIMEOUT``, and the
        project's pools.yaml (``FLOWSTONE_POOLS_CONFIG``) when it has a ``metrics`` bridge."""
        overrides.setdefault("idle_timeout_s", idle_timeout_from_env())
        overrides.setdefault("pools_config", metrics_pools_config())
        return cls(**overrides)

    # Files next to the socket --------------------------------------------------------------

    @property
    def folder(self) -> Path:
        return Path(self.socket_path).parent

    @property
    def lock_path(self) -> Path:
        return Path(self.socket_path).with_suffix(".lock")

    @property
    def log_path(self) -> Path:
        """The server's stdout and stderr (the previous server's in ``.log.1``)."""
        return Path(self.socket_path).with_suffix(".log")

    @property
    def failure_path(self) -> Path:
        return Path(self.socket_path).with_suffix(".failed")

    def server_command(self) -> list[str]:
        serves = (
            ["--config", str(self.pools_config), "--only", BRIDGE]
            if self.pools_config is not None
            else ["--bridge", BRIDGE]
        )
        return [
            sys.executable,
            "-m",
            "flowstone.workers.cli",
            "serve",
            "--socket",
            str(self.socket_path),
            *serves,
            "--workers",
            str(self.workers),
            "--options",
            json.dumps(dict(self.bridge_options)),
            "--idle-timeout",
            f"{self.idle_timeout_s:g}",
            "--start-timeout-s",
            f"{self.start_timeout_s:g}",
        ]

    # Looking -------------------------------------------------------------------------------

    def find(self, timeout_s: float = 5.0) -> dict[str, Any] | None:
        """The running server's ping (pid, bridge, size, idle time left...), or None. A ping
        counts as activity: the server's idle clock starts again."""
        return self._ask("pool:ping", timeout_s)

    def status(self, timeout_s: float = 5.0) -> dict[str, Any] | None:
        """The running server's stats (``server`` holds its ping fields), or None. Only looks:
        the server's idle clock keeps running."""
        return self._ask("pool:stats", timeout_s)

    def _ask(self, command: str, timeout_s: float) -> dict[str, Any] | None:
        if not _server_listening(Path(self.socket_path)):
            return None
        try:
            with PoolClient(
                self.socket_path, connect_timeout_s=0.2, reply_grace_s=timeout_s
            ) as client:
                return client.execute(command, None, timeout=timeout_s)
        except PoolError:
            return None

    def last_failure(self) -> dict[str, Any] | None:
        """The last failed start (``at``, ``error``) while it still holds back new attempts."""
        try:
            failure = json.loads(self.failure_path.read_text())
            at = float(failure["at"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if time.time() - at >= self.retry_after_s:
            return None
        return {**failure, "retry_in_s": round(self.retry_after_s - (time.time() - at), 1)}

    # Starting ------------------------------------------------------------------------------

    def ensure(self) -> dict[str, Any]:
        """The running server's ping, starting the server first if nobody answers; the result's
        ``started`` says which. Raises :class:`AutoPoolError` when there is no server to use."""
        info = self.find()
        if info is not None:
            return self._usable(info, started=False)
        self._prepare_folder()
        from filelock import FileLock, Timeout

        lock_wait_s = self.start_timeout_s + 30.0  # a starter holds it at most start + stop
        try:
            with FileLock(str(self.lock_path), timeout=lock_wait_s):
                info = self.find()  # another run may have started it while we waited
                if info is not None:
                    return self._usable(info, started=False)
                failure = self.last_failure()
                if failure is not None:
                    raise AutoPoolError(
                        f"the pool server on {self.socket_path} failed to start "
                        f"{self.retry_after_s - failure['retry_in_s']:.0f}s ago "
                        f"({failure.get('error')}); the next try is in {failure['retry_in_s']:.0f}s "
                        f"(remove {self.failure_path} to try now)",
                        socket=str(self.socket_path),
                    )
                try:
                    info = self._spawn_and_wait()
                except AutoPoolError as exc:
                    self._note_failure(exc)
                    raise
                self.failure_path.unlink(missing_ok=True)
                return self._usable(info, started=True)
        except Timeout:
            raise AutoPoolError(
                f"another process held {self.lock_path} for over {lock_wait_s:g}s while starting "
                f"the pool server on {self.socket_path}",
                socket=str(self.socket_path),
            ) from None

    def _usable(self, info: dict[str, Any], *, started: bool) -> dict[str, Any]:
        bridge = info.get("bridge")
        if bridge != BRIDGE:
            raise AutoPoolError(
                f"the pool server on {self.socket_path} (pid {info.get('pid')}) runs the "
                f"'{bridge}' bridge, not '{BRIDGE}': stop it (`flowstone pool stop --socket "
                f"{self.socket_path}`), or serve it elsewhere",
                socket=str(self.socket_path),
            )
        return {**info, "started": started}

    def _prepare_folder(self) -> None:
        folder = self.folder
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            status = folder.stat()
        except OSError as exc:
            raise AutoPoolError(
                f"cannot create the pool server's folder {folder}: {exc}", socket=str(folder)
            ) from None
        if folder.parent == Path("/tmp") and (
            status.st_uid != os.getuid() or status.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        ):  # the short fallback under /tmp: someone else's folder is not ours to serve from
            raise AutoPoolError(
                f"{folder} belongs to another user or is writable by others; remove it or set "
                "DAGSTER_HOME to a shorter path",
                socket=str(folder),
            )

    def _spawn_and_wait(self) -> dict[str, Any]:
        command = list(self.command) if self.command else self.server_command()
        log_path = self.log_path
        try:
            if log_path.exists():
                log_path.replace(log_path.with_suffix(".log.1"))
            log = open(log_path, "ab")  # noqa: SIM115 - the child keeps writing to it
        except OSError as exc:
            raise AutoPoolError(f"cannot write the pool server's log {log_path}: {exc}") from None
        with log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"# {stamp} pid {os.getpid()} starts: {shlex.join(command)}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # outlives this step; no terminal signals reach it
                    cwd=str(self.folder),
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            except OSError as exc:
                raise AutoPoolError(
                    f"cannot start the pool server ({shlex.join(command)}): {exc}",
                    socket=str(self.socket_path),
                ) from None
        try:
            return self._await_answer(proc)
        finally:
            # Reap it whenever it exits, so it never lingers as a zombie of a long-lived caller.
            threading.Thread(target=proc.wait, name="flowstone-pool-reaper", daemon=True).start()

    def _await_answer(self, proc: subprocess.Popen) -> dict[str, Any]:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            code = proc.poll()
            if code is not None:
                raise AutoPoolError(
                    f"the pool server (pid {proc.pid}) exited with status {code} while starting "
                    f"on {self.socket_path}; its log {self.log_path} ends: {self._log_tail()}",
                    socket=str(self.socket_path),
                )
            info = self.find(timeout_s=5.0)
            if info is not None:
                return info
            if time.monotonic() >= deadline:
                _stop(proc)
                raise AutoPoolError(
                    f"the pool server (pid {proc.pid}) did not answer on {self.socket_path} "
                    f"within {self.start_timeout_s:g}s and was stopped; see {self.log_path}",
                    socket=str(self.socket_path),
                )
            time.sleep(0.1)

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(unreadable)"
        tail = [line for line in text.splitlines() if line.strip()][-lines:]
        return " | ".join(tail) or "(empty)"

    def _note_failure(self, exc: AutoPoolError) -> None:
        with contextlib.suppress(OSError):
            self.failure_path.write_text(json.dumps({"at": time.time(), "error": str(exc)[:2000]}))


def _stop(proc: subprocess.Popen, grace_s: float = 3.0) -> None:
    """SIGTERM its process group, then SIGKILL; its workers die with it (parent-death signal)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(grace_s)
            return
        except subprocess.TimeoutExpired:
            continue
