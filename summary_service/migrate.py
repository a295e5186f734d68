"""PostgreSQL's schema brought up to this release: `python -m summary_service.migrate`.

The numbered files of migrations/, each applied once and recorded in schema_migrations, all in one
transaction under an advisory lock (two runs at once: the second waits, then finds nothing to do).
Replicas never change the schema: at connect they check that every migration is recorded, and
otherwise stay NOT_SERVING with this command in the reason (pg_store.py)."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from runtrack_common import logs
from runtrack_common.config import Settings

log = logging.getLogger("summary_service.migrate")
COMMAND = "python -m summary_service.migrate"
MIGRATIONS = sorted((Path(__file__).parent / "migrations").glob("*.sql"))
# Any stable number: serialises two runs of this command.
MIGRATION_LOCK = 0x52554E54


async def applied_versions(conn: psycopg.AsyncConnection[Any]) -> set[str]:
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
    row = await cur.fetchone()
    if row is None or not row[0]:
        return set()
    await cur.execute("SELECT version FROM schema_migrations")
    return {version for (version,) in await cur.fetchall()}


async def migrations_missing(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    """The migrations this release has that the database has not recorded, in order."""
    done = await applied_versions(conn)
    return [path.stem for path in MIGRATIONS if path.stem not in done]


async def apply_migrations(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    """Applies the numbered migrations not yet applied, each once, under an advisory lock."""
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = await applied_versions(conn)
        for path in MIGRATIONS:
            if path.stem in done:
                continue
            await conn.execute(path.read_text())
            await conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (path.stem,))
            applied.append(path.stem)
    return applied


async def migrate(database_url: str) -> list[str]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        return await apply_migrations(conn)


def main() -> int:
    logs.setup("summary_service.migrate")
    settings = Settings.from_env()
    try:
        applied = asyncio.run(migrate(settings.database_url))
    except (psycopg.Error, OSError) as err:
        log.error("schema not migrated error=%r", err)
        return 1
    log.info("schema ready migrations=%d applied=%s", len(MIGRATIONS), ",".join(applied) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
