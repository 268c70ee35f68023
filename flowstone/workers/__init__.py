"""The warm Python worker pool: long-lived worker processes that keep models loaded.

``WorkerPool`` runs workers inside the current process tree; ``PoolServer``/``PoolClient`` share
one pool between processes over a Unix socket. Names are imported lazily so that a worker process
(which imports this package first) starts without loading the pool machinery.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "WorkerPool": "flowstone.workers.pool",
    "PoolConfig": "flowstone.workers.pool",
    "PoolServer": "flowstone.workers.server",
    "PoolClient": "flowstone.workers.server",
    "Bridge": "flowstone.workers.bridge",
    "command": "flowstone.workers.bridge",
    "register_bridge": "flowstone.workers.bridge",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'flowstone.workers' has no attribute '{name}'")
