"""Schemas change by a command, never by a replica: a replica on a store its release's migrations have
not reached stays NOT_SERVING and says which command to run; once it ran, the replica serves without
a restart. The commands apply what is missing only, and a second run applies nothing."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from cassandra.cluster import Cluster
from psycopg.conninfo import make_conninfo

from devstack import procs
from devstack.paths import ROOT
from runtrack_common.config import Settings
from summary_service.migrate import MIGRATIONS
from tests.integration.faults import SERVICE, replica_status
from tracking_service.migrate import statements


def said(log: Path) -> str:
    return log.read_text()


@contextmanager
def replica(stack, svc: str, env: dict[str, str]) -> Iterator[tuple[int, Path]]:
    port = procs.free_port()
    log = stack.spec.logs / f"{svc}-unmigrated-{port}.log"
    pid = procs.start(
        [sys.executable, "-m", f"{svc}_service", "--port", str(port)],
        log=log,
        pid_file=stack.run_dir / f"{svc}-unmigrated-{port}.pid",
        env=stack.replica_env() | env,
        cwd=ROOT,
    )
    try:
        yield port, log
    finally:
        procs.stop(pid, timeout=20)


async def until(port: int, svc: str, want: str, log: Path, timeout: float = 60) -> None:  # noqa: ASYNC109
    for _ in range(int(timeout * 4)):
        if await replica_status(port, SERVICE[svc]) == want:
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"{svc} replica on {port} never {want}:\n{said(log)[-3000:]}")


async def logged(log: Path, text: str, timeout: float = 60) -> None:  # noqa: ASYNC109
    """Waits until the replica's log says `text` (it starts NOT_SERVING before it has looked at the store)."""
    for _ in range(int(timeout * 4)):
        if text in said(log):
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"the log never said {text!r}:\n{said(log)[-3000:]}")


def migrate(module: str, env: dict[str, str], stack) -> str:
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", module],
        env=stack.replica_env() | env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


async def test_a_tracking_replica_waits_for_the_cql_migration_and_then_serves(stack):
    keyspace = f"runtrack_fresh_{uuid.uuid4().hex[:8]}"
    env = {"SCYLLA_KEYSPACE": keyspace}
    cluster = Cluster([stack.scylla_hosts], port=stack.scylla_port)
    try:
        with replica(stack, "tracking", env) as (port, log):
            await until(port, "tracking", "NOT_SERVING", log)
            await asyncio.sleep(1)
            assert await replica_status(port, SERVICE["tracking"]) == "NOT_SERVING"
            await logged(log, "run `python -m tracking_service.migrate`")
            session = await asyncio.to_thread(cluster.connect)
            keyspaces = await asyncio.to_thread(session.execute, "SELECT keyspace_name FROM system_schema.keyspaces")
            assert keyspace not in {r.keyspace_name for r in keyspaces}, "the replica made the keyspace itself"

            first = migrate("tracking_service.migrate", env, stack)
            names = list(statements(Settings.from_env(env)))
            assert f"applied={','.join(names)}" in first, first
            await until(port, "tracking", "SERVING", log)
            assert "applied=none" in migrate("tracking_service.migrate", env, stack)

            # A keyspace one release behind (a column added since): the replica's next connect is
            # refused until the migration adds it, and only it.
            await asyncio.to_thread(session.execute, f"ALTER TABLE {keyspace}.track_points DROP after_pause")
        with replica(stack, "tracking", env) as (port, log):
            await until(port, "tracking", "NOT_SERVING", log)
            await logged(log, "after_pause")
            assert "applied=track_points_after_pause\n" in migrate("tracking_service.migrate", env, stack) + "\n"
            await until(port, "tracking", "SERVING", log)
    finally:
        session = await asyncio.to_thread(cluster.connect)
        await asyncio.to_thread(session.execute, f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=60)
        await asyncio.to_thread(cluster.shutdown)


async def test_a_summary_replica_waits_for_the_postgresql_migrations_and_then_serves(stack):
    database = f"runtrack_fresh_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    url = make_conninfo(stack.database_url, dbname=database)
    env = {"DATABASE_URL": url}
    try:
        with replica(stack, "summary", env) as (port, log):
            await until(port, "summary", "NOT_SERVING", log)
            await logged(log, "run `python -m summary_service.migrate`")
            with psycopg.connect(url) as conn:
                tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
            assert tables == (0,), "the replica changed the schema itself"

            first = migrate("summary_service.migrate", env, stack)
            assert f"applied={','.join(p.stem for p in MIGRATIONS)}" in first, first
            await until(port, "summary", "SERVING", log)
            assert "applied=none" in migrate("summary_service.migrate", env, stack)
            with psycopg.connect(url) as conn:
                versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
            assert versions == [p.stem for p in MIGRATIONS]
    finally:
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
