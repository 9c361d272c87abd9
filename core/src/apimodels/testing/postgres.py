"""A throwaway PostgreSQL cluster for tests and benchmarks: ``initdb`` into a temporary
folder, ``pg_ctl start`` on a free port of 127.0.0.1 (as the ``postgres`` user when running
as root, which PostgreSQL refuses to run as), stopped and removed after.

    with Cluster.start() as cluster:
        url = cluster.new_database()   # an empty database of its own, per test
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import bound_socket

#: Where Debian's ``postgresql`` package puts each major version's server binaries.
DEBIAN_BINARIES = Path("/usr/lib/postgresql")


def find_binaries() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl`` (APIMODELS_PG_BIN, Debian's newest, the
    PATH), or None when PostgreSQL is not installed."""
    if env := os.environ.get("APIMODELS_PG_BIN"):
        return Path(env)
    if DEBIAN_BINARIES.is_dir():
        versions = sorted(
            (p for p in DEBIAN_BINARIES.iterdir() if (p / "bin" / "initdb").exists()),
            key=lambda p: int(p.name) if p.name.isdigit() else 0,
        )
        if versions:
            return versions[-1] / "bin"
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@dataclass
class Cluster:
    folder: Path
    port: int
    binaries: Path
    user: str | None  # who runs the server (root cannot)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url_of(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """An empty database on the cluster; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_of(name)

    def _run(self, *args: str) -> None:
        command = [str(self.binaries / args[0]), *args[1:]]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        subprocess.run(command, check=True, capture_output=True)

    @classmethod
    @contextmanager
    def start(cls, binaries: Path | None = None, *, durable: bool = False) -> Iterator[Cluster]:
        """``durable``: fsync as a production server does (benchmarks); tests skip it."""
        binaries = binaries or find_binaries()
        if binaries is None:
            raise RuntimeError("PostgreSQL is not installed (initdb not found)")
        user = "postgres" if os.geteuid() == 0 else None
        folder = Path(tempfile.mkdtemp(prefix="apimodels-pg-"))
        if user:
            entry = pwd.getpwnam(user)
            os.chown(folder, entry.pw_uid, entry.pw_gid)
        with bound_socket() as probe:  # a free port (closed again for the server to take)
            port = probe.getsockname()[1]
        cluster = cls(folder, port, binaries, user)
        data = str(folder / "data")
        try:
            cluster._run("initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
            options = (
                f"-c listen_addresses=127.0.0.1 -c port={cluster.port}"
                f" -c unix_socket_directories={folder} -c max_connections=500"
            )
            if not durable:  # throwaway data: measure the code, not the disk
                options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            cluster._run("pg_ctl", "-D", data, "-o", options, "-w", "-l", f"{folder}/log", "start")
            try:
                yield cluster
            finally:
                cluster._run("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
