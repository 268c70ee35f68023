"""Errors the worker pool raises, and how they cross a pipe or a socket.

Every error says which command, which worker (pid) and what to do. They are serialisable as
``{type, message, traceback, details}`` so that a pool server can send them to a client and the
client re-raises the same class: a step talking to a shared server sees exactly the errors it
would see with a private pool.
"""

from __future__ import annotations

from typing import Any

from flowstone.errors import FlowStoneError


class PoolError(FlowStoneError):
    """Base class for everything the worker pool raises."""

    def __init__(self, message: str, **details: Any):
        super().__init__(message)
        self.details = details

    def to_wire(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "message": str(self), "details": self.details}


class ProtocolError(PoolError):
    """A frame that is oversize, truncated or not valid JSON/msgpack; the stream is unusable."""


class MalformedFrameError(ProtocolError):
    """A whole frame whose body does not decode; the frame boundary is intact, so a reader
    may answer with an error and keep going."""


class BridgeError(PoolError):
    """A bridge that cannot be found, imported or validated (raised before any worker starts)."""


class UnknownCommandError(PoolError):
    """A command the worker's bridge does not define."""


class UnknownBridgeError(PoolError):
    """A call whose ``bridge:`` prefix names no bridge this server runs.

    ``details`` holds ``bridge``, ``command`` and ``serving`` (the bridges that do answer), so
    the caller sees at once whether it mistyped a name or talks to the wrong server.
    """


class BridgeUnavailableError(UnknownBridgeError):
    """A call to a configured bridge that is not running; ``details['reason']`` says why
    (a missing environment variable, an entry point that does not import, workers that failed
    to start). A subclass of UnknownBridgeError: either way nothing ran."""


class WorkerStartError(PoolError):
    """A worker that exited or never reported ready while starting."""


class PoolClosedError(PoolError):
    """The pool (or server) was shut down while the call waited or ran."""


class PoolSaturatedError(PoolError):
    """Every worker is busy and the wait queue is full (or the queue wait timed out)."""


class WorkerTimeoutError(PoolError):
    """A call ran past its timeout; the worker was killed and replaced."""


class WorkerCrashedError(PoolError):
    """The worker died during the call; ``details['exit']`` classifies how."""


class WorkerOutOfMemoryError(WorkerCrashedError):
    """The worker ran out of memory (its RLIMIT_AS cap, MemoryError or the kernel OOM killer)."""


class SessionLostError(PoolError):
    """A strict session's worker is gone, and the state it held with it."""


class RemoteError(PoolError):
    """A handler raised; ``remote_type`` and ``remote_traceback`` describe the original error.

    The worker stays up after this: one bad input must not cost the warm model.
    """

    def __init__(
        self,
        message: str,
        remote_type: str = "Exception",
        remote_traceback: str = "",
        **details: Any,
    ):
        super().__init__(message, **details)
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        return f"{self.remote_type}: {self.args[0]}"

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "message": self.args[0],
            "remote_type": self.remote_type,
            "traceback": self.remote_traceback,
            "details": self.details,
        }


class ServerUnavailableError(PoolError):
    """No pool server answers on the configured socket."""


class ServerConnectionError(PoolError):
    """The connection to the pool server broke during a call (for example, it restarted).

    The call may or may not have run; the next call opens a new connection.
    """


class ServerReadTimeoutError(ServerConnectionError):
    """The server closed a connection that sent no complete request within its read timeout.

    Nothing sent on that connection since its last reply was run, so a client may send it again
    on a new connection (:class:`~flowstone.workers.server.PoolClient` does, once).
    """


class ServerBusyError(ServerUnavailableError):
    """The server refused the connection: it already serves ``max_connections`` clients.

    Nothing was run. Close idle clients, or start the server with a higher ``--max-connections``.
    """


_WIRE_TYPES: dict[str, type[PoolError]] = {
    cls.__name__: cls
    for cls in (
        PoolError,
        ProtocolError,
        MalformedFrameError,
        BridgeError,
        UnknownCommandError,
        UnknownBridgeError,
        BridgeUnavailableError,
        WorkerStartError,
        PoolClosedError,
        PoolSaturatedError,
        WorkerTimeoutError,
        WorkerCrashedError,
        WorkerOutOfMemoryError,
        SessionLostError,
        RemoteError,
        ServerUnavailableError,
        ServerConnectionError,
        ServerReadTimeoutError,
        ServerBusyError,
    )
}


def error_to_wire(exc: BaseException) -> dict[str, Any]:
    """The wire form of any exception (pool errors keep their class, others become RemoteError)."""
    if isinstance(exc, PoolError):
        return exc.to_wire()
    return {
        "type": "RemoteError",
        "message": str(exc),
        "remote_type": type(exc).__name__,
        "traceback": "",
    }


def error_from_wire(payload: dict[str, Any]) -> PoolError:
    """Rebuild the exception a worker or server sent."""
    name = str(payload.get("type", "RemoteError"))
    details = payload.get("details") or {}
    cls = _WIRE_TYPES.get(name)
    if cls is RemoteError or cls is None:
        # A handler's own exception: keep its type name, message and traceback.
        return RemoteError(
            str(payload.get("message", "")),
            remote_type=str(payload.get("remote_type") or name),
            remote_traceback=str(payload.get("traceback") or ""),
            **details,
        )
    return cls(str(payload.get("message", "")), **details)
