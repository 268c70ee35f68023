"""``PythonWorkerPoolResource``: warm Python workers for a step, private or shared.

With ``socket_path`` set, every step connects to the pool server (``flowstone pool serve``) that
already holds the model, so a backfill of many partitions loads it once. Without it, by default,
the host's shared pool is used (``auto_pool``): the first heavy metric of a step (one marked
``heavy`` in ``METRICS``, such as ``embedding_similarity``) finds the server on the default
socket or starts it (:mod:`flowstone.workers.autostart`); light metrics run in the step's own
process, so a run that needs no encoder starts nothing. If that server cannot be had, the step
scores in its own process after one warning: a pool that fails to start never fails a run.
``FLOWSTONE_POOL=off`` (or ``auto_pool=False``) scores in-process; ``private_pool`` starts a pool
that lives and dies with the step (isolation and memory caps).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

POOL_SOCKET_ENV = "FLOWSTONE_POOL_SOCKET"
_logger = logging.getLogger(__name__)


class PythonWorkerPoolResource(dg.ConfigurableResource):
    """Run bridge commands (``metrics:compute``, ``inference:predict``...) on warm workers."""

    socket_path: str | None = Field(
        default=None,
        description="Unix socket of a running `flowstone pool serve`. Unset: private_pool, then "
        "auto_pool decide.",
    )
    private_pool: bool = Field(
        default=False,
        description="Without a server, start a private pool for the step (isolation, memory caps). "
        "False: auto_pool decides.",
    )
    auto_pool: bool = Field(
        default=True,
        description="Without socket_path or private_pool, score heavy metrics on the host's "
        "shared pool server, started by the first step that needs it (FLOWSTONE_POOL=off turns "
        "it off; FLOWSTONE_POOL_IDLE_TIMEOUT sets when it stops). False, or when it cannot "
        "start: metrics run in the step's own process.",
    )
    fallback_to_private_pool: bool = Field(
        default=False,
        description="When socket_path is set but no server answers, start a private pool instead of failing.",
    )
    connect_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="How long to keep trying to reach the server (it may be starting).",
    )
    bridge: str = Field(
        default="metrics",
        description="Bridge of a private pool: echo, metrics, inference or module:Class.",
    )
    workers: int = Field(default=2, ge=1, description="Worker processes of a private pool.")
    auto_pool_workers: int = Field(
        default=1,
        ge=1,
        description="Worker processes of the host's shared pool when a step starts it. One warm "
        "encoder starts fastest and already uses every core; raise it for many concurrent steps.",
    )
    bridge_options: dict[str, Any] = Field(
        default_factory=dict,
        description='Bridge options of a private pool, e.g. {"preload": true}, or of a shared '
        'one a step starts (which preloads the encoder unless {"preload": false}).',
    )
    timeout_s: float = Field(
        default=300.0, gt=0, description="Per-call timeout; the worker is replaced past it."
    )
    memory_limit_mb: int | None = Field(
        default=None, description="RLIMIT_AS cap per private worker, MB."
    )
    max_requests: int | None = Field(
        default=None, description="Recycle a private worker after this many calls."
    )
    max_rss_mb: float | None = Field(
        default=None, description="Recycle a private worker above this resident memory."
    )
    start_timeout_s: float = Field(
        default=180.0,
        gt=0,
        description="How long a private worker, or a shared pool server a step starts, may take "
        "to start (the step scores in-process past it).",
    )

    _backend: Any = PrivateAttr(default=None)
    _mode: str = PrivateAttr(default="unset")
    _log: Any = PrivateAttr(default=None)
    _auto: bool = PrivateAttr(default=False)  # the host's shared pool, started on demand
    _auto_lock: Any = PrivateAttr(default_factory=threading.RLock)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        from flowstone.workers.errors import ServerUnavailableError
        from flowstone.workers.pool import PoolConfig, WorkerPool
        from flowstone.workers.server import PoolClient

        log = self._log = context.log
        if self.socket_path:
            client = PoolClient(self.socket_path, connect_timeout_s=self.connect_timeout_s)
            try:
                client.ping()
                self._backend, self._mode = client, "server"
                if log:
                    log.info(f"worker pool: using the shared server on {self.socket_path}")
                return
            except ServerUnavailableError:
                client.close()
                if not self.fallback_to_private_pool:
                    raise
                if log:
                    log.warning(
                        f"worker pool: no server on {self.socket_path}; starting a private pool"
                    )
        elif not self.private_pool:
            from flowstone.workers.autostart import auto_pool_setting

            # Nothing starts here: the first heavy metric finds or starts the shared server.
            self._auto = self.auto_pool and auto_pool_setting().enabled
            self._mode = "auto" if self._auto else "in_process"
            return
        config = PoolConfig(
            bridge=self.bridge,
            size=self.workers,
            bridge_options=dict(self.bridge_options),
            default_timeout_s=self.timeout_s,
            memory_limit_mb=self.memory_limit_mb,
            max_requests=self.max_requests,
            max_rss_mb=self.max_rss_mb,
            start_timeout_s=self.start_timeout_s,
        )
        # Workers boot while the step does its own set-up; the first call waits for one.
        self._backend, self._mode = WorkerPool(config).start(wait=False), "private"
        if log:
            log.info(
                f"worker pool: started a private '{self.bridge}' pool of {self.workers} workers"
            )

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._backend is not None:
            self._backend.close()  # a client only disconnects; a private pool stops its workers
            self._backend = None

    @property
    def mode(self) -> str:
        """``server`` (shared pool), ``private`` (this step's pool), ``auto`` (the host's shared
        pool, not needed yet), ``in_process`` (no pool) or ``unset`` (not set up)."""
        return self._mode

    def _require(self) -> Any:
        if self._mode == "auto":
            self._connect_auto()  # a bridge command needs the server; it raises if there is none
        if self._backend is None:
            raise dg.DagsterInvariantViolationError(
                "PythonWorkerPoolResource is used outside a run; Dagster sets it up for each step"
            )
        return self._backend

    # The host's shared pool -----------------------------------------------------------------

    def _connect_auto(self, *, fall_back: bool = False) -> bool:
        """Find or start the host's shared server and connect to it (mode ``server``). On
        failure, with ``fall_back``: warn once and score in-process from now on (False);
        without: raise."""
        from flowstone.workers.autostart import AutoPool
        from flowstone.workers.errors import PoolError
        from flowstone.workers.server import PoolClient

        with self._auto_lock:
            if self._mode != "auto":
                return self._mode == "server"
            auto = AutoPool.from_env(
                workers=self.auto_pool_workers,
                start_timeout_s=self.start_timeout_s,
                bridge_options={"preload": True, **self.bridge_options},
            )
            try:
                info = auto.ensure()
            except PoolError as exc:
                if not fall_back:
                    raise
                self._fall_back(f"the shared pool server is not available ({exc})")
                return False
            self._backend = PoolClient(auto.socket_path, connect_timeout_s=self.connect_timeout_s)
            self._mode = "server"
            idle = info.get("idle_timeout_s")
            self._info(
                f"worker pool: {'started' if info['started'] else 'using'} the host's shared "
                f"'{info.get('bridge')}' pool server (pid {info.get('pid')}, {info.get('size')} "
                f"workers) on {auto.socket_path}"
                + (f"; it stops after {idle:g}s idle" if idle else "")
            )
            return True

    def _fall_back(self, reason: str) -> None:
        """Score in this process from now on, after one warning (never a failed run)."""
        with self._auto_lock:
            if self._mode == "in_process":
                return  # another call already fell back, and warned
            if self._backend is not None:
                self._backend.close()
                self._backend = None
            self._mode = "in_process"
        message = (
            f"worker pool: {reason}; scoring in this step's process instead "
            "(set FLOWSTONE_POOL=off to skip the shared pool)"
        )
        if self._log is not None:
            self._log.warning(message)
        else:
            _logger.warning(message)

    def _info(self, message: str) -> None:
        if self._log is not None:
            self._log.info(message)
        else:
            _logger.info(message)

    def execute(
        self,
        command: str,
        args: Any = None,
        *,
        session_id: str | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """Run one command and return its result (errors are typed: see flowstone.workers.errors)."""
        return self._require().execute(
            command, args, timeout=timeout_s or self.timeout_s, session_id=session_id
        )

    def execute_stream(
        self, command: str, args: Any = None, *, timeout_s: float | None = None
    ) -> Iterator[Any]:
        return self._require().execute_stream(command, args, timeout=timeout_s or self.timeout_s)

    def map(
        self, command: str, items: Iterable[Any], *, timeout_s: float | None = None
    ) -> list[Any]:
        return self._require().map(command, items, timeout=timeout_s or self.timeout_s)

    def compute_metric(
        self, metric: str, predictions: list[str], references: list[Any], **options: Any
    ) -> list[float]:
        """Per-case scores from the ``metrics`` bridge (the encoder stays loaded between calls),
        or from this process when no pool is configured. With the host's shared pool, only
        heavy metrics go to it; the first one finds or starts the server."""
        from flowstone.evaluation.metrics import METRICS, compute

        if self._auto:
            known = METRICS.get(metric)
            if known is None or not known.heavy:  # cheaper here than a trip to the pool
                return compute(metric, predictions, references, **options)
            backend = self._backend if self._connect_auto(fall_back=True) else None
            if backend is None:
                return compute(metric, predictions, references, **options)
            try:
                return self._remote_compute(metric, predictions, references, options, backend)
            except self._lost_server_errors() as exc:
                self._fall_back(f"lost the shared pool server ({exc})")
                return compute(metric, predictions, references, **options)
        if self._mode == "in_process":
            return compute(metric, predictions, references, **options)
        return self._remote_compute(metric, predictions, references, options, self._require())

    def _remote_compute(
        self,
        metric: str,
        predictions: list[str],
        references: list[Any],
        options: dict[str, Any],
        backend: Any,
    ) -> list[float]:
        args = {
            "metric": metric,
            "predictions": list(predictions),
            "references": list(references),
            "options": options,
        }
        return backend.execute("metrics:compute", args, timeout=self.timeout_s)

    @staticmethod
    def _lost_server_errors() -> tuple[type[Exception], ...]:
        """Errors that mean the shared server went away (it stopped, or died), not that the
        metric failed: the step then scores in-process rather than fail."""
        from flowstone.workers.errors import (
            PoolClosedError,
            ServerConnectionError,
            ServerUnavailableError,
        )

        return (ServerUnavailableError, ServerConnectionError, PoolClosedError)

    def stats(self) -> dict[str, Any]:
        return self._require().stats()

    def worker_list(self) -> list[dict[str, Any]]:
        return self._require().workers()


def worker_pool_resource_from_env(**config: Any) -> PythonWorkerPoolResource:
    """The pool the code location uses: the shared server named by ``FLOWSTONE_POOL_SOCKET``
    when that variable is set, else the host's shared pool, started on demand (``FLOWSTONE_POOL``
    and ``FLOWSTONE_POOL_IDLE_TIMEOUT`` are read when a step runs, not here).

    The variable becomes a ``dg.EnvVar`` only when set, since an EnvVar of a missing variable
    fails resource initialisation.
    """
    if os.environ.get(POOL_SOCKET_ENV) and "socket_path" not in config:
        config["socket_path"] = dg.EnvVar(POOL_SOCKET_ENV)
    return PythonWorkerPoolResource(**config)
