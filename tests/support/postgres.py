"""PostgreSQL for tests: the server already running on loopback, or a throwaway cluster.

The storage tests, the approval tests and the scale-out stack each had their own way to find or
start a server; this module is the one way. The server on 127.0.0.1:$FLOWSTONE_TEST_PG_PORT
(default 5432) is used when it answers. Otherwise PostgreSQL's binaries are found under
/usr/lib/postgresql/*/bin (or initdb on PATH), installed with apt-get when missing (as root; a
pytest caller skips otherwise), and a cluster is created in a temp folder and run as the
``postgres`` user (initdb and postgres refuse to run as root) on a free loopback port, with
durability switched off for speed. Tests get a fresh database each, dropped afterwards.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from support.apt import CannotInstall, apt_install
from support.net import free_port, reachable

PORT_ENV = "FLOWSTONE_TEST_PG_PORT"
# Settings every throwaway cluster gets; callers add their own (e.g. max_connections).
FAST_SETTINGS = {"fsync": "off", "full_page_writes": "off"}


def shared_port() -> int:
    """The port of the machine's PostgreSQL: $FLOWSTONE_TEST_PG_PORT, default 5432."""
    return int(os.environ.get(PORT_ENV, "5432"))


def pg_bin_dir() -> Path:
    """PostgreSQL's bin folder, installing the ``postgresql`` package if there is none.

    Raises :class:`support.apt.CannotInstall` when it is missing and we are not root."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found and shutil.which("initdb"):
        found = [shutil.which("initdb")]
    if not found:
        apt_install("postgresql")
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).resolve().parent


@dataclass
class PgServer:
    """Where a PostgreSQL server listens (``own``: a cluster we started for the tests)."""

    host: str
    port: int
    user: str = "postgres"
    own: bool = False

    def url(self, database: str = "") -> str:
        """SQLAlchemy URL of ``database`` (or of the server, without a database)."""
        base = f"postgresql+psycopg://{self.user}@{self.host}:{self.port}"
        return f"{base}/{database}" if database else base

    def admin(self, sql: str) -> None:
        """Run one statement on the ``postgres`` database, outside a transaction."""
        import psycopg

        with psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(sql)

    @contextlib.contextmanager
    def database(self, prefix: str, digits: int = 10) -> Iterator[str]:
        """A new, empty database named ``<prefix>_<random hex>``; dropped afterwards."""
        name = f"{prefix}_{uuid.uuid4().hex[:digits]}"
        self.admin(f'CREATE DATABASE "{name}"')
        try:
            yield name
        finally:
            self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class PgCluster:
    """A throwaway PostgreSQL cluster in a temp folder, run as the postgres user.

    ``settings`` are added to :data:`FAST_SETTINGS` as ``-c name=value`` server options."""

    port: int = field(default_factory=free_port)
    prefix: str = "fs-pg-"
    settings: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    user: str = "postgres"
    root: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=self.prefix))

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        cmd = list(args)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> PgCluster:
        bin_dir = pg_bin_dir()
        self.pg_ctl = str(bin_dir / "pg_ctl")
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        data = self.root / "data"
        self._run(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8")  # fmt: skip
        self.data = data
        self._ctl("start")
        return self

    def _ctl(self, action: str) -> None:
        settings = {**FAST_SETTINGS, **self.settings}
        options = " ".join(f"-c {name}={value}" for name, value in settings.items())
        opts = f"-p {self.port} -h 127.0.0.1 -k {self.root} {options}"
        self._run(self.pg_ctl, "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"),
                  "-w", "-t", "60", action)  # fmt: skip

    def restart(self) -> None:
        self._ctl("restart")

    def stop(self, check: bool = True) -> None:
        """Stop the server and remove its folder; ``check=False``: a failing stop is ignored."""
        try:
            self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except subprocess.SubprocessError:
            if check:
                raise
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def server(self) -> PgServer:
        return PgServer(self.host, self.port, self.user, own=True)


def start_cluster_or_skip(**options) -> PgCluster:
    """``PgCluster(**options).start()``; a pytest skip when PostgreSQL cannot be installed."""
    import pytest

    cluster = PgCluster(**options)
    try:
        return cluster.start()
    except CannotInstall as exc:
        shutil.rmtree(cluster.root, ignore_errors=True)
        pytest.skip(str(exc))


@contextlib.contextmanager
def running_or_own_server(
    skip_if_missing: bool = False, check_stop: bool = True, **cluster_options
) -> Iterator[PgServer]:
    """The server on 127.0.0.1:$FLOWSTONE_TEST_PG_PORT when it answers, else a cluster of our
    own (``PgCluster(**cluster_options)``), stopped on exit.

    ``skip_if_missing``: skip the test (pytest) rather than raise when PostgreSQL is missing and
    cannot be installed. ``check_stop=False``: a failing stop of our cluster is ignored."""
    port = shared_port()
    if reachable("127.0.0.1", port):
        yield PgServer("127.0.0.1", port)
        return
    if skip_if_missing:
        cluster = start_cluster_or_skip(**cluster_options)
    else:
        cluster = PgCluster(**cluster_options).start()
    try:
        yield cluster.server()
    finally:
        cluster.stop(check=check_stop)
