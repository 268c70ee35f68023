"""Installing a missing system package (PostgreSQL, Redis) with apt-get for a test.

The storage and scale-out helpers both installed their servers this way, each with its own
copy; the behaviour is kept: ``apt-get update -q`` then ``apt-get install -y -q <package>``,
non-interactive, and only as root (otherwise :class:`CannotInstall`, which pytest callers turn
into a skip).
"""

from __future__ import annotations

import os
import subprocess


class CannotInstall(RuntimeError):
    """The package is missing and apt-get cannot be used to install it (not root)."""


def apt_install(package: str) -> None:
    if os.geteuid() != 0:
        raise CannotInstall(f"{package} is not installed and we are not root to apt-get it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", package], check=True, env=env, capture_output=True
    )
