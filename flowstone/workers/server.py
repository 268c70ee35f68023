"""Server mode: one warm pool behind a Unix socket, shared by every Dagster step process.

A backfill of fifty partitions runs fifty step processes; with a private pool each would load
the embedding model again. With ``flowstone pool serve`` running, each step's
:class:`PoolClient` sends its calls to the one pool that already has the model loaded.

The socket speaks the same frames as the worker pipes. A request adds ``session_id``,
``session_mode``, ``idempotent`` and ``stream`` to the worker request; ``pool:ping``,
``pool:stats``, ``pool:workers`` and ``pool:shutdown`` address the server itself. Errors cross
the socket typed (see :mod:`flowstone.workers.errors`), so a client raises what a private pool
would. The socket file is created with mode 0600: only its owner may use the pool.

With ``metrics_port`` set, the server also answers Prometheus scrapes on
``http://127.0.0.1:<port>/metrics`` (see :mod:`flowstone.telemetry.metrics`): the pool's workers
by state, queue depth, call latency, replacements and recycles.

With ``idle_timeout_s`` set, the server stops by itself (removing its socket) once it has had no
calls and no calling client for that long, so a server started on demand
(:mod:`flowstone.workers.autostart`) does not hold its models forever. ``pool:stats``,
``pool:workers`` and ``pool:shutdown`` are not activity: looking at a server does not keep it
alive. Any other command, ``pool:ping`` included, is, and so is a connection that sent one.

Each connection has its own thread, so two limits keep a client from holding the server:

- ``read_timeout_s`` (default 300 s): a connection that sends no complete request for that long
  after its last reply (an idle client, a stalled half frame), or takes no byte of a reply for
  that long, is closed; the server first sends a :class:`ServerReadTimeoutError` frame saying so.
  :class:`PoolClient` notices closed idle connections and reconnects by itself, and resends a
  request that met the closing (it was never read). ``None`` or 0: no timeout.
- ``max_connections`` (default 256): a connection past the cap gets a
  :class:`ServerBusyError` frame and is closed at once, by the accepting thread (no thread is
  started for it). ``None``: no cap.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import socket
import stat
import threading
import time
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowstone.paths import instance_dir
from flowstone.workers.errors import (
    MalformedFrameError,
    ProtocolError,
    ServerBusyError,
    ServerConnectionError,
    ServerReadTimeoutError,
    ServerUnavailableError,
    error_from_wire,
    error_to_wire,
)
from flowstone.workers.pool import _DEFAULT, WorkerPool, map_concurrently
from flowstone.workers.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    FrameReader,
    FrameTimeout,
    StreamClosed,
    encode_frame,
    write_all,
)

if TYPE_CHECKING:
    from flowstone.workers.supervisor import BridgePools

UNIX_PATH_MAX = 107
SOCKET_NAME = "metrics.sock"
# Admin commands that only look at the server: they do not count as activity for the idle timeout.
_PASSIVE_COMMANDS = frozenset({"pool:stats", "pool:workers", "pool:shutdown"})
# A client's longest silence, and the most clients served at once (see the module docstring).
DEFAULT_READ_TIMEOUT_S = 300.0
DEFAULT_MAX_CONNECTIONS = 256


def default_socket_path() -> Path:
    """The host's shared pool: ``<instance>/pool/metrics.sock``, the socket runs look for first
    and start a server on (:mod:`flowstone.workers.autostart`). When that path is too long for a
    Unix socket, a folder under /tmp named after this user and a hash of the instance folder."""
    preferred = instance_dir() / "pool" / SOCKET_NAME
    if len(os.fsencode(str(preferred))) <= UNIX_PATH_MAX:
        return preferred
    digest = hashlib.sha256(os.fsencode(str(preferred.parent))).hexdigest()[:12]
    return Path("/tmp") / f"flowstone-pool-{os.getuid()}-{digest}" / SOCKET_NAME


def _check_socket_path(path: Path) -> None:
    if len(os.fsencode(str(path))) > UNIX_PATH_MAX:
        raise ValueError(
            f"socket path {path} is {len(str(path))} bytes; Unix sockets allow {UNIX_PATH_MAX}. "
            "Pass a shorter --socket (for example /tmp/flowstone-pool.sock)"
        )


def _server_listening(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


class PoolServer:
    """Serve a started (or to-be-started) WorkerPool on a Unix socket, one thread a connection.

    ``pool`` may also be a :class:`~flowstone.workers.supervisor.BridgePools`: one pool per
    bridge of ``pools.yaml``, routed by command prefix behind this one socket.
    """

    def __init__(
        self,
        pool: WorkerPool | BridgePools,
        socket_path: Path | str | None = None,
        *,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        idle_timeout_s: float | None = None,
        read_timeout_s: float | None = DEFAULT_READ_TIMEOUT_S,
        max_connections: int | None = DEFAULT_MAX_CONNECTIONS,
    ):
        if idle_timeout_s is not None and idle_timeout_s <= 0:
            idle_timeout_s = None  # 0 means "never", as on the command line
        if read_timeout_s is not None and read_timeout_s <= 0:
            read_timeout_s = None
        if max_connections is not None and max_connections < 1:
            raise ValueError(f"max_connections must be >= 1 or None, got {max_connections}")
        self.pool = pool
        self.idle_timeout_s = idle_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_connections = max_connections
        self._refused = 0
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.metrics_server: Any = None
        self.socket_path = Path(socket_path) if socket_path else default_socket_path()
        _check_socket_path(self.socket_path)
        self.max_frame_bytes = pool.config.max_frame_bytes
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._calling: set[socket.socket] = set()  # connections that sent a call or a ping
        self._lock = threading.Lock()
        self._stopped = threading.Event()  # set when shutdown begins
        self._finished = threading.Event()  # set when shutdown is complete
        self._started_at = time.time()
        self._last_active = time.monotonic()
        self._socket_inode: int | None = None  # ours to remove; a successor's is not
        self.stop_reason: str | None = None  # "idle" when the idle timeout stopped it

    def start(self) -> PoolServer:
        path = self.socket_path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            if _server_listening(path):
                raise RuntimeError(
                    f"a pool server is already listening on {path}; stop it with `flowstone pool stop`"
                )
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise RuntimeError(f"{path} exists and is not a socket; choose another --socket")
            path.unlink()  # left behind by a server that was killed
        if self.metrics_port is not None:  # before the workers: a taken port fails fast
            from flowstone.telemetry.metrics import serve_metrics

            self.metrics_server = serve_metrics(self.metrics_port, self.metrics_host)
        try:
            if not self.pool._started:
                self.pool.start()
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old_umask = os.umask(0o177)
            try:
                listener.bind(str(path))
            finally:
                os.umask(old_umask)
        except BaseException:
            self._stop_metrics()
            raise
        self._socket_inode = path.lstat().st_ino
        listener.listen(128)
        if self.idle_timeout_s is not None:  # accept() wakes up now and then to check idleness
            listener.settimeout(max(0.05, min(1.0, self.idle_timeout_s / 4)))
        self._listener = listener
        self._touch()
        threading.Thread(
            target=self._accept_loop, name="flowstone-pool-accept", daemon=True
        ).start()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has shut down completely (True) or the timeout passes."""
        return self._finished.wait(timeout)

    def shutdown(self) -> None:
        """Stop accepting, fail in-flight calls with PoolClosedError, stop the workers."""
        with self._lock:
            already = self._stopped.is_set()
            self._stopped.set()
        if already:
            self._finished.wait(30)
            return
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        # Remove the socket before the (slower) pool shutdown, so a successor can bind it at
        # once; and only our own socket, never one a successor has bound since.
        self._unlink_socket()
        self.pool.close()
        time.sleep(0.05)  # let handler threads send their PoolClosedError replies
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._stop_metrics()
        self._finished.set()

    def _unlink_socket(self) -> None:
        with contextlib.suppress(OSError):
            status = self.socket_path.lstat()
            if stat.S_ISSOCK(status.st_mode) and status.st_ino == self._socket_inode:
                self.socket_path.unlink()

    def _stop_metrics(self) -> None:
        server, self.metrics_server = self.metrics_server, None
        if server is not None:
            server.close()

    def __enter__(self) -> PoolServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def info(self) -> dict[str, Any]:
        with self._lock:
            connections = len(self._connections)
        remaining = self.idle_remaining_s()
        info = {
            "socket": str(self.socket_path),
            "pid": os.getpid(),
            "bridge": self.pool.bridge.name,
            "size": self.pool.config.size,
            "uptime_s": round(time.time() - self._started_at, 1),
            "connections": connections,
            "max_connections": self.max_connections,
            "refused_connections": self._refused,
            "read_timeout_s": self.read_timeout_s,
            "idle_timeout_s": self.idle_timeout_s,
            "idle_remaining_s": None if remaining is None else round(remaining, 1),
        }
        if self.metrics_server is not None:
            info["metrics_url"] = self.metrics_server.url
        return info

    # Idle timeout --------------------------------------------------------------------------

    def _touch(self) -> None:
        with self._lock:
            self._last_active = time.monotonic()

    def idle_remaining_s(self) -> float | None:
        """Seconds before the idle timeout stops the server (the whole timeout while a client
        that made calls is connected); None without an idle timeout."""
        if self.idle_timeout_s is None:
            return None
        with self._lock:
            if self._calling:
                return self.idle_timeout_s
            idle = time.monotonic() - self._last_active
        return max(0.0, self.idle_timeout_s - idle)

    def _stop_if_idle(self) -> bool:
        """Called by the accept loop between connections: shut down once idle long enough."""
        if self.idle_remaining_s() != 0.0:
            return False
        self.stop_reason = "idle"
        self.shutdown()
        return True

    # Connections ---------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:  # only with an idle timeout: the listener wakes up to check
                if self._stop_if_idle():
                    return
                continue
            except OSError:
                return
            cap = self.max_connections
            with self._lock:
                refused = cap is not None and len(self._connections) >= cap
                if refused:
                    self._refused += 1
                else:
                    self._connections.add(conn)
            if refused:
                self._refuse(conn)
                continue
            conn.setblocking(False)  # every read and write below has a deadline
            threading.Thread(target=self._serve_connection, args=(conn,), daemon=True).start()

    def _refuse(self, conn: socket.socket) -> None:
        """Tell a client past ``max_connections`` why, and close: never a silent hang.

        The frame is small and the new socket's buffer empty, so one non-blocking send fits; the
        client reads it even after the close (a Unix socket keeps what was sent before).
        """
        error = ServerBusyError(
            f"the pool server at {self.socket_path} (pid {os.getpid()}) refused this connection: "
            f"it already serves {self.max_connections} connections (max_connections). Close idle "
            "clients, or start the server with a higher --max-connections",
            socket=str(self.socket_path),
            max_connections=self.max_connections,
        )
        try:
            conn.setblocking(False)
            conn.send(encode_frame({"id": None, "success": False, "error": error.to_wire()}))
        except OSError:
            pass
        finally:
            conn.close()

    def _deadline(self) -> float | None:
        timeout = self.read_timeout_s
        return None if timeout is None else time.monotonic() + timeout

    def _timed_out(self, fd: int) -> None:
        """Say why the connection closes (best effort: the client may not be reading)."""
        error = ServerReadTimeoutError(
            f"the pool server at {self.socket_path} closed this connection: no complete request "
            f"within read_timeout_s={self.read_timeout_s:g}s; nothing sent on it since its last "
            "reply was run. The next call reconnects",
            socket=str(self.socket_path),
        )
        with contextlib.suppress(OSError, FrameTimeout):
            frame = encode_frame({"id": None, "success": False, "error": error.to_wire()})
            write_all(fd, frame, time.monotonic() + 1.0)

    def _serve_connection(self, conn: socket.socket) -> None:
        fd = conn.fileno()
        reader = FrameReader(fd, max_frame_bytes=self.max_frame_bytes)
        try:
            while not self._stopped.is_set():
                try:
                    message = reader.read(self._deadline())
                except StreamClosed:
                    return
                except FrameTimeout:
                    self._timed_out(fd)
                    return
                except MalformedFrameError as exc:
                    self._send(fd, {"id": None, "success": False, "error": error_to_wire(exc)})
                    continue  # the frame boundary is intact: keep serving this client
                except ProtocolError as exc:
                    self._send(fd, {"id": None, "success": False, "error": error_to_wire(exc)})
                    return  # the stream cannot be re-synchronised; other clients are unaffected
                active = not (
                    isinstance(message, dict) and message.get("command") in _PASSIVE_COMMANDS
                )
                if active:
                    with self._lock:
                        self._calling.add(conn)
                    self._touch()
                try:
                    self._handle(fd, message)
                finally:
                    if active:
                        self._touch()  # the idle clock starts when the call ends
        except OSError:
            return  # the client went away mid-reply
        finally:
            with self._lock:
                self._connections.discard(conn)
                if conn in self._calling:
                    self._calling.discard(conn)
                    self._last_active = time.monotonic()
            with contextlib.suppress(OSError):
                conn.close()

    def _send(self, fd: int, message: dict[str, Any]) -> None:
        try:
            frame = encode_frame(message, max_frame_bytes=self.max_frame_bytes)
        except (TypeError, ValueError, ProtocolError) as exc:
            frame = encode_frame(
                {"id": message.get("id"), "success": False, "error": error_to_wire(exc)}
            )
        try:
            write_all(fd, frame, self._deadline())
        except FrameTimeout:  # an OSError, so the connection's thread drops the client
            raise TimeoutError(
                f"the client took no byte of a reply for {self.read_timeout_s:g}s (read_timeout_s)"
            ) from None

    def _handle(self, fd: int, message: Any) -> None:
        if not isinstance(message, dict) or not isinstance(message.get("command"), str):
            error = ProtocolError("a request must be an object with a string 'command'")
            request_id = message.get("id") if isinstance(message, dict) else None
            self._send(fd, {"id": request_id, "success": False, "error": error_to_wire(error)})
            return
        request_id = message.get("id")
        command = message["command"]
        try:
            if command.startswith("pool:"):
                result = self._admin(command)
            else:
                kwargs: dict[str, Any] = {
                    "session_id": message.get("session_id"),
                    "session_mode": message.get("session_mode"),
                    "idempotent": message.get("idempotent"),
                }
                if "timeout_ms" in message:
                    timeout_ms = message["timeout_ms"]
                    kwargs["timeout"] = None if timeout_ms is None else float(timeout_ms) / 1000.0
                if message.get("stream"):
                    for chunk in self.pool.execute_stream(command, message.get("args"), **kwargs):
                        self._send(fd, {"id": request_id, "chunk": chunk})
                    result = None
                else:
                    result = self.pool.execute(command, message.get("args"), **kwargs)
        except OSError:
            raise
        except Exception as exc:
            self._send(fd, {"id": request_id, "success": False, "error": error_to_wire(exc)})
            return
        self._send(fd, {"id": request_id, "success": True, "result": result})
        if command == "pool:shutdown":
            threading.Thread(target=self.shutdown, daemon=True).start()

    def _admin(self, command: str) -> Any:
        if command == "pool:ping":
            return {"pong": True, **self.info()}
        if command == "pool:stats":
            return {**self.pool.stats(), "server": self.info()}
        if command == "pool:workers":
            return self.pool.workers()
        if command == "pool:shutdown":
            return {"stopping": True, **self.info()}
        raise ValueError(
            f"unknown server command '{command}' (pool:ping, pool:stats, pool:workers, pool:shutdown)"
        )


def _closed_for_read_timeout(frame: Any) -> bool:
    return (
        isinstance(frame, dict)
        and frame.get("id") is None
        and (frame.get("error") or {}).get("type") == ServerReadTimeoutError.__name__
    )


class _Connection:
    def __init__(self, sock: socket.socket, max_frame_bytes: int):
        self.sock = sock
        self.fd = sock.fileno()
        self.max_frame_bytes = max_frame_bytes
        self.reader = FrameReader(self.fd, max_frame_bytes=max_frame_bytes)
        self.next_id = 0

    def stale(self) -> bool:
        """An idle connection with something to read has been closed by the server."""
        poller = select.poll()
        poller.register(self.fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        return bool(poller.poll(0))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class PoolClient:
    """Talks to a PoolServer; same calls as WorkerPool (execute, execute_stream, map, stats).

    Calls borrow a connection from a small idle list (one per concurrent call), opened on first
    use and reopened after the server restarts. A call in flight when the server goes away raises
    ServerConnectionError (it may or may not have run); an idle connection the server closed
    (restart, read timeout) is replaced silently. A server at its ``max_connections`` answers
    with ServerBusyError (nothing ran).
    """

    def __init__(
        self,
        socket_path: Path | str | None = None,
        *,
        connect_timeout_s: float = 5.0,
        reply_grace_s: float | None = 300.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_idle_connections: int = 16,
    ):
        self.socket_path = Path(socket_path) if socket_path else default_socket_path()
        _check_socket_path(self.socket_path)
        self.connect_timeout_s = connect_timeout_s
        self.reply_grace_s = reply_grace_s
        self.max_frame_bytes = max_frame_bytes
        self.max_idle_connections = max_idle_connections
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()
        self._lock = threading.Lock()
        self._closed = False

    # Connections ---------------------------------------------------------------------------

    def _connect(self) -> _Connection:
        deadline = time.monotonic() + self.connect_timeout_s
        delay = 0.05
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.socket_path))
            except OSError as exc:
                sock.close()
                if time.monotonic() + delay > deadline:
                    raise ServerUnavailableError(
                        f"no FlowStone pool server is listening on {self.socket_path} ({exc.strerror or exc}); "
                        f"start one with `flowstone pool serve --socket {self.socket_path}`, or leave "
                        "socket_path unset to use a private pool",
                        socket=str(self.socket_path),
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            sock.setblocking(False)
            conn = _Connection(sock, self.max_frame_bytes)
            with self._lock:
                self._all.add(conn)
            return conn

    def _checkout(self) -> tuple[_Connection, bool]:
        """A connection for one call, and whether it served calls before (it may then have met
        the server's read timeout just as this call began)."""
        if self._closed:
            from flowstone.workers.errors import PoolClosedError

            raise PoolClosedError("this PoolClient was closed")
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect(), False
            if not conn.stale():
                return conn, True
            # The server closed it while idle (it restarted, or its read timeout passed).
            self._drop(conn)

    def _checkin(self, conn: _Connection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.max_idle_connections:
                self._idle.append(conn)
                return
        self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        conn.close()
        with self._lock:
            self._all.discard(conn)

    def close(self) -> None:
        self._closed = True
        with self._lock:
            connections = list(self._all)
            self._all.clear()
            self._idle.clear()
        for conn in connections:
            conn.close()

    def __enter__(self) -> PoolClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Calls -------------------------------------------------------------------------------

    def _frames(self, message: dict[str, Any], timeout: float | None) -> Iterator[dict[str, Any]]:
        grace = self.reply_grace_s
        deadline = None if timeout is None or grace is None else time.monotonic() + timeout + grace
        command = message["command"]
        for attempt in (1, 2):
            conn, reused = self._checkout()
            conn.next_id += 1
            message["id"] = conn.next_id
            try:
                frame = self._send_request(conn, message, deadline)
                if attempt == 1 and reused and _closed_for_read_timeout(frame):
                    # The server timed the idle connection out as this call began; it never read
                    # the request, so sending it on a new connection cannot run it twice.
                    self._drop(conn)
                    continue
                while True:
                    if not isinstance(frame, dict) or frame.get("id") not in (message["id"], None):
                        raise ProtocolError(
                            f"pool server answered with an unexpected frame: {str(frame)[:200]}"
                        )
                    if "chunk" not in frame:
                        break
                    yield frame
                    frame = conn.reader.read(deadline)
            except (StreamClosed, OSError) as exc:
                self._drop(conn)
                raise ServerConnectionError(
                    f"lost the connection to the pool server at {self.socket_path} during "
                    f"'{command}' ({exc or 'connection closed'}): the server stopped or restarted, "
                    "and the call may or may not have run. The next call reconnects",
                    socket=str(self.socket_path),
                    command=command,
                ) from None
            except FrameTimeout:
                self._drop(conn)
                raise ServerConnectionError(
                    f"the pool server at {self.socket_path} sent no reply to '{command}' within "
                    f"its timeout plus {grace:g}s grace; the connection was dropped",
                    socket=str(self.socket_path),
                    command=command,
                ) from None
            except GeneratorExit:
                self._drop(conn)  # a half-read stream leaves the connection unusable
                raise
            except BaseException:
                self._drop(conn)
                raise
            if frame.get("id") is None:
                self._drop(conn)  # a server-level refusal (busy, timed out): it closed the stream
            else:
                self._checkin(conn)  # the reply is complete: the connection is clean for reuse
            yield frame
            return

    @staticmethod
    def _send_request(
        conn: _Connection, message: dict[str, Any], deadline: float | None
    ) -> dict[str, Any]:
        """Write the request; return the first frame of the answer.

        A server that refuses a connection (``max_connections``) or times it out sends its
        reason and closes; a request written after that close fails with a broken pipe, yet the
        reason still waits in this socket's buffer, and is the answer to give.
        """
        try:
            write_all(
                conn.fd, encode_frame(message, max_frame_bytes=conn.max_frame_bytes), deadline
            )
        except OSError:
            with contextlib.suppress(StreamClosed, ProtocolError, FrameTimeout, OSError):
                reason = conn.reader.read(time.monotonic() + 1.0)
                if isinstance(reason, dict) and reason.get("id") is None and "error" in reason:
                    return reason
            raise
        return conn.reader.read(deadline)

    def _call(self, message: dict[str, Any], timeout: float | None) -> Generator[Any, None, Any]:
        """Yields the reply's stream chunks, then returns its result."""
        for frame in self._frames(message, timeout):
            if "chunk" in frame:
                yield frame["chunk"]
            elif frame.get("success"):
                return frame.get("result")
            else:
                raise error_from_wire(frame.get("error") or {})
        return None

    def _message(
        self,
        command: str,
        args: Any,
        timeout: Any,
        session_id: Any,
        session_mode: Any,
        idempotent: Any,
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"command": command, "args": args}
        if timeout is not _DEFAULT:
            message["timeout_ms"] = None if timeout is None else int(timeout * 1000)
        if session_id is not None:
            message["session_id"] = session_id
        if session_mode is not None:
            message["session_mode"] = session_mode
        if idempotent is not None:
            message["idempotent"] = idempotent
        return message

    def execute(
        self,
        command: str,
        args: Any = None,
        *,
        timeout: float | None = _DEFAULT,
        session_id: str | None = None,
        session_mode: str | None = None,
        idempotent: bool | None = None,
    ) -> Any:
        message = self._message(command, args, timeout, session_id, session_mode, idempotent)
        calls = self._call(message, None if timeout is _DEFAULT else timeout)
        try:
            while True:
                next(calls)
        except StopIteration as done:
            return done.value

    def execute_stream(
        self,
        command: str,
        args: Any = None,
        *,
        timeout: float | None = _DEFAULT,
        session_id: str | None = None,
        session_mode: str | None = None,
        idempotent: bool | None = None,
    ) -> Iterator[Any]:
        message = self._message(command, args, timeout, session_id, session_mode, idempotent)
        message["stream"] = True
        yield from self._call(message, None if timeout is _DEFAULT else timeout)

    def map(
        self,
        command: str,
        items: Iterable[Any],
        *,
        timeout: float | None = _DEFAULT,
        concurrency: int = 2,
    ) -> list[Any]:
        return map_concurrently(self, command, items, timeout=timeout, concurrency=concurrency)

    def _admin(self, command: str) -> Any:
        return self.execute(command, None, timeout=30.0)

    def ping(self) -> dict[str, Any]:
        return self._admin("pool:ping")

    def stats(self) -> dict[str, Any]:
        return self._admin("pool:stats")

    def workers(self) -> list[dict[str, Any]]:
        return self._admin("pool:workers")

    def shutdown(self) -> dict[str, Any]:
        """Ask the server to stop (its workers stop with it)."""
        return self._admin("pool:shutdown")
