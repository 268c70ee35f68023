"""Small helpers shared by the worker pool tests."""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent


def alive(pid: int) -> bool:
    """True while pid is a running (not zombie) process."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def child_env(dagster_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["DAGSTER_HOME"] = str(dagster_home)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return env
