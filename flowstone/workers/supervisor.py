"""One pool per framework bridge behind one entry point: :class:`BridgePools`.

A host that keeps an embedding model, a torch model and a user's own framework warm should not
run three servers, yet one framework's runaway must not cost the others their workers. So each
bridge of ``pools.yaml`` (:mod:`flowstone.workers.pools_config`) gets its own
:class:`~flowstone.workers.pool.WorkerPool` with its own size and limits, and ``BridgePools``
routes each ``bridge:command`` call to the pool of its prefix. It looks like a WorkerPool as far
as :class:`~flowstone.workers.server.PoolServer` is concerned (``execute``, ``execute_stream``,
``stats``, ``workers``, ``start``, ``close``, ``config.max_frame_bytes``), so one socket serves
them all.

A bridge that cannot run (a ``requires`` variable unset, an entry point that does not import or
is no Bridge, workers that fail to start) is *unavailable*: it is reported with its reason in
``stats()``, a call to it raises :class:`~flowstone.workers.errors.BridgeUnavailableError` saying
why, and every other bridge serves as usual.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowstone.workers.bridge import (
    BUILTIN_BRIDGES,
    ENTRY_POINT_GROUP,
    entry_point_bridges,
    load_bridge_class,
    register_bridge,
    registered_bridges,
)
from flowstone.workers.errors import (
    BridgeUnavailableError,
    PoolError,
    RemoteError,
    UnknownBridgeError,
)
from flowstone.workers.pool import _DEFAULT, WorkerPool, map_concurrently
from flowstone.workers.pools_config import BridgePoolSpec, PoolsConfig

# Counters summed across bridges into the top level of stats(), for tools that read one pool.
_TOTALS = ("requests", "succeeded", "failed", "timeouts", "crashes", "recycled", "started")


@dataclass(frozen=True)
class PoolsLabel:
    """What a server shows as its "bridge": the names of the bridges it runs."""

    name: str


def framework_version(framework: str | None) -> str | None:
    """The installed version of a bridge's framework distribution, None when absent."""
    if not framework:
        return None
    try:
        return importlib.metadata.version(framework)
    except importlib.metadata.PackageNotFoundError:
        return None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if isinstance(exc, PoolError) else f"{type(exc).__name__}: {text}"


class BridgePools:
    """A WorkerPool per available bridge of a :class:`PoolsConfig`, routed by command prefix."""

    def __init__(
        self,
        config: PoolsConfig,
        *,
        environ: Mapping[str, str] | None = None,
        **pool_overrides: Any,
    ):
        """``pool_overrides`` are server-wide PoolConfig fields (registry_dir, pythonpath,
        health_interval_s, queue_size, start_timeout_s...). Bridges are resolved here, in this
        process, so a broken one is known before any worker starts."""
        self.config = config
        self.bridge = PoolsLabel(",".join(config.bridges))
        self.pools: dict[str, WorkerPool] = {}
        self.unavailable: dict[str, str] = {}
        self._frameworks: dict[str, str | None] = {}
        self._closed = False
        self._started = False
        entry_points = entry_point_bridges()
        for name, spec in config.bridges.items():
            missing = spec.missing_requirements(environ)
            if missing:
                self.unavailable[name] = (
                    f"missing environment variable{'s' if len(missing) > 1 else ''} "
                    f"{', '.join(missing)} (requires: {', '.join(spec.requires)})"
                )
                continue
            try:
                self.pools[name] = self._make_pool(spec, entry_points, pool_overrides)
            except Exception as exc:  # a user's module may raise anything while importing
                self.unavailable[name] = self._origin(spec, entry_points) + _describe(exc)

    @staticmethod
    def _origin(spec: BridgePoolSpec, entry_points: Mapping[str, str]) -> str:
        local = spec.target or BUILTIN_BRIDGES.get(spec.name)
        if local is None and spec.name in entry_points:
            return (
                f"entry point {spec.name} = {entry_points[spec.name]} "
                f"(group {ENTRY_POINT_GROUP}) cannot be used: "
            )
        return ""

    def _make_pool(
        self, spec: BridgePoolSpec, entry_points: Mapping[str, str], overrides: Mapping[str, Any]
    ) -> WorkerPool:
        # An explicit target, else the built-in, else what this process registered, else an
        # entry point; registered under the config's name so that the pool answers to it.
        target = (
            spec.target
            or BUILTIN_BRIDGES.get(spec.name)
            or registered_bridges().get(spec.name)
            or entry_points.get(spec.name)
        )
        if target is not None:
            register_bridge(spec.name, target)
        pool = WorkerPool(spec.pool_config(**overrides))
        cls = load_bridge_class(pool.bridge.target)  # already imported by the validation
        self._frameworks[spec.name] = cls.framework
        return pool

    # Lifecycle ---------------------------------------------------------------------------

    def start(self, wait: bool = True) -> BridgePools:
        """Start every available bridge's workers at once; a bridge whose workers fail to
        start becomes unavailable (closed, with its reason), the others keep serving."""
        if self._started:
            return self
        self._started = True
        for pool in self.pools.values():
            pool.start(wait=False)
        if wait:
            for name, pool in list(self.pools.items()):
                try:
                    pool.await_ready(pool.config.start_timeout_s)
                except PoolError as exc:
                    pool.close()
                    del self.pools[name]
                    self.unavailable[name] = f"workers failed to start: {_describe(exc)}"
        return self

    def close(self) -> None:
        """Stop every bridge's workers."""
        self._closed = True
        for pool in self.pools.values():
            with contextlib.suppress(Exception):
                pool.close()

    def __enter__(self) -> BridgePools:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # Calls -------------------------------------------------------------------------------

    def _route(self, command: str) -> tuple[str, WorkerPool]:
        name, sep, _ = command.partition(":")
        pool = self.pools.get(name) if sep else None
        if pool is not None:
            return name, pool
        serving = sorted(self.pools)
        listed = ", ".join(serving) or "none"
        if not sep:
            raise UnknownBridgeError(
                f"'{command}' names no bridge: address commands as 'bridge:command' on a server "
                f"that runs several bridges (serving: {listed})",
                bridge=None,
                command=command,
                serving=serving,
            )
        reason = self.unavailable.get(name)
        if reason is not None:
            raise BridgeUnavailableError(
                f"bridge '{name}' is not running, so '{command}' cannot be served: {reason} "
                f"(serving: {listed})",
                bridge=name,
                command=command,
                serving=serving,
                reason=reason,
            )
        raise UnknownBridgeError(
            f"no bridge '{name}' on this pool server for '{command}' (serving: {listed})",
            bridge=name,
            command=command,
            serving=serving,
        )

    @staticmethod
    def _name_call(exc: PoolError, bridge: str, command: str) -> None:
        """Add the bridge and command to an error (a handler's message gets them too: its
        text alone does not say which of several frameworks raised it)."""
        exc.details.setdefault("bridge", bridge)
        exc.details.setdefault("command", command)
        if isinstance(exc, RemoteError) and exc.args and f"'{command}'" not in str(exc.args[0]):
            exc.args = (f"{exc.args[0]} (raised by '{command}' on bridge '{bridge}')",)

    @contextlib.contextmanager
    def _calling(self, command: str) -> Iterator[WorkerPool]:
        """The pool of ``command``'s bridge; a pool error raised meanwhile names the bridge and
        the command."""
        name, pool = self._route(command)
        try:
            yield pool
        except PoolError as exc:
            self._name_call(exc, name, command)
            raise

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
        """Run ``bridge:command`` on that bridge's pool (see WorkerPool.execute)."""
        with self._calling(command) as pool:
            return pool.execute(command, args, timeout=timeout, session_id=session_id,
                                session_mode=session_mode, idempotent=idempotent)  # fmt: skip

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
        """Stream ``bridge:command``'s chunks from that bridge's pool."""
        with self._calling(command) as pool:
            yield from pool.execute_stream(command, args, timeout=timeout, session_id=session_id,
                                           session_mode=session_mode, idempotent=idempotent)  # fmt: skip

    def map(
        self,
        command: str,
        items: Iterable[Any],
        *,
        timeout: float | None = _DEFAULT,
        concurrency: int = 2,
    ) -> list[Any]:
        return map_concurrently(self, command, items, timeout=timeout, concurrency=concurrency)

    # Introspection ---------------------------------------------------------------------------

    def bridge_stats(self, name: str) -> dict[str, Any]:
        """One running bridge: its pool's stats plus framework, commands, limits, restarts."""
        pool, spec = self.pools[name], self.config.bridges[name]
        stats = pool.stats()
        framework = self._frameworks.get(name)
        stats.update(
            status="running",
            framework=framework,
            framework_version=framework_version(framework),
            commands=[f"{name}:{command}" for command in sorted(pool.bridge.commands)],
            target=pool.bridge.target,
            limits=spec.limits(),
            # Workers spawned beyond the first ``workers``: crashes, timeouts and recycling
            # (overflow workers started for bursts are not restarts).
            restarts=max(
                0, stats.get("started", 0) - stats.get("overflow_started", 0) - spec.workers
            ),
        )
        return stats

    def stats(self) -> dict[str, Any]:
        """Per-bridge stats under ``bridges``, the bridges not running (and why) under
        ``unavailable``, and totals at the top level."""
        bridges = {name: self.bridge_stats(name) for name in self.pools}
        unavailable = {
            name: {
                "status": "unavailable",
                "reason": reason,
                "requires": list(self.config.bridges[name].requires),
            }
            for name, reason in self.unavailable.items()
        }
        totals = {key: sum(b.get(key, 0) for b in bridges.values()) for key in _TOTALS}
        return {
            "bridge": self.bridge.name,
            "size": sum(b["size"] for b in bridges.values()),
            "workers_alive": sum(b["workers_alive"] for b in bridges.values()),
            "queue_depth": sum(b["queue_depth"] for b in bridges.values()),
            **totals,
            "bridges": bridges,
            "unavailable": unavailable,
            "closed": self._closed,
        }

    def workers(self) -> list[dict[str, Any]]:
        """Every worker of every bridge, each row naming its bridge."""
        rows = []
        for name, pool in self.pools.items():
            for row in pool.workers():
                rows.append({"bridge": name, **row})
        return rows

    def worker_pids(self) -> dict[str, list[int]]:
        return {name: pool.worker_pids() for name, pool in self.pools.items()}


def open_bridge_pools(
    path: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    **pool_overrides: Any,
) -> BridgePools:
    """Read ``pools.yaml`` (default: :func:`~flowstone.workers.pools_config.pools_config_path`)
    and resolve its bridges; call ``start()`` (or use it as a context manager) to spawn them."""
    from flowstone.workers.pools_config import load_pools_config

    return BridgePools(load_pools_config(path), environ=environ, **pool_overrides)
