"""``PythonWorkerPoolResource``: warm Python workers for a step, private or shared.

With ``socket_path`` set, every step connects to the pool server (``flowstone pool serve``) that
already holds the model, so a backfill of many partitions loads it once. Without it, the step
either gets a private pool that starts and stops with the step (``private_pool``: isolation and
memory caps) or, by default, runs metrics in its own process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

POOL_SOCKET_ENV = "FLOWSTONE_POOL_SOCKET"


class PythonWorkerPoolResource(dg.ConfigurableResource):
    """Run bridge commands (``metrics:compute``, ``inference:predict``...) on warm workers."""

    socket_path: str | None = Field(
        default=None,
        description="Unix socket of a running `flowstone pool serve`. Unset: private_pool decides.",
    )
    private_pool: bool = Field(
        default=False,
        description="Without a server, start a private pool for the step (isolation, memory caps). "
        "False: metrics run in the step's own process, which keeps the model warm for that process.",
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
    bridge_options: dict[str, Any] = Field(
        default_factory=dict,
        description='Bridge options of a private pool, e.g. {"preload": true}.',
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
        default=180.0, gt=0, description="How long a private worker may take to start."
    )

    _backend: Any = PrivateAttr(default=None)
    _mode: str = PrivateAttr(default="unset")

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        from flowstone.workers.errors import ServerUnavailableError
        from flowstone.workers.pool import PoolConfig, WorkerPool
        from flowstone.workers.server import PoolClient

        log = context.log
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
            self._mode = "in_process"
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
        """``server`` (shared pool), ``private`` (this step's pool), ``in_process`` (no pool) or
        ``unset`` (not set up)."""
        return self._mode

    def _require(self) -> Any:
        if self._backend is None:
            raise dg.DagsterInvariantViolationError(
                "PythonWorkerPoolResource is used outside a run; Dagster sets it up for each step"
            )
        return self._backend

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
        or from this process when no pool is configured."""
        if self._mode == "in_process":
            from flowstone.evaluation.metrics import compute

            return compute(metric, predictions, references, **options)
        return self.execute(
            "metrics:compute",
            {
                "metric": metric,
                "predictions": list(predictions),
                "references": list(references),
                "options": options,
            },
        )

    def stats(self) -> dict[str, Any]:
        return self._require().stats()

    def worker_list(self) -> list[dict[str, Any]]:
        return self._require().workers()


def worker_pool_resource_from_env(**config: Any) -> PythonWorkerPoolResource:
    """The pool the code location uses: the shared server named by ``FLOWSTONE_POOL_SOCKET``
    when that variable is set (`flowstone pool serve` prints it), else scoring in-process.

    The variable becomes a ``dg.EnvVar`` only when set, since an EnvVar of a missing variable
    fails resource initialisation.
    """
    if os.environ.get(POOL_SOCKET_ENV) and "socket_path" not in config:
        config["socket_path"] = dg.EnvVar(POOL_SOCKET_ENV)
    return PythonWorkerPoolResource(**config)
