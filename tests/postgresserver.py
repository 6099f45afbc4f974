"""A real PostgreSQL for the tests: a throwaway cluster (initdb, pg_ctl) in a temporary directory.

Run as the ``postgres`` system user when the tests run as root (PostgreSQL refuses to
run as root), as the current user otherwise; listens on 127.0.0.1 on a free port, trust
authentication for the ``test`` superuser. Each test gets a database of its own
(:func:`pg_url`), so tests never see each other's rows. Stopped by its own ``pg_ctl``.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.needs import missing

USER = "test"


def _bindir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


class PostgresServer:
    """One cluster; :meth:`restart` stops it hard (as a crash would) and starts it on the same port."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.host = "127.0.0.1"
        self._names = itertools.count(1)
        self._as: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
            self.dir.chmod(0o755)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", USER, "--no-sync")
        self.start()

    def _run(self, tool: str, *args: str, timeout: float = 120.0) -> None:
        command = [*self._as, str(self.bindir / tool), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.dir)
        if done.returncode != 0:
            log = (self.dir / "log").read_text(errors="replace")[-3000:] if (self.dir / "log").exists() else ""
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stdout}{done.stderr}\n{log}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses={self.host} -c fsync=off -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        """Kill it (``-m immediate``: no shutdown checkpoint, clients cut off) and start it again."""
        self.stop("immediate")
        self.start()

    def create_database(self) -> str:
        name = f"t{next(self._names)}"
        self._run("createdb", "-h", self.host, "-p", str(self.port), "-U", USER, name)
        return self.url(name)

    def url(self, database: str) -> str:
        return f"postgresql://{USER}@{self.host}:{self.port}/{database}"

    def close(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = _bindir()
    if bindir is None:
        missing("PostgreSQL is not installed (scripts/setup.d/postgresql.sh installs it)")
    server = PostgresServer(bindir)
    yield server
    server.close()


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database of the shared test cluster."""
    return postgres_server.create_database()
