"""The RunStore on PostgreSQL through psycopg 3 and psycopg_pool."""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from prometheus_client import Gauge
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from runtrack_common import queries, tracing
from runtrack_common.config import Settings
from runtrack_common.errors import Internal, InvalidArgument, RunTrackError, Unavailable
from summary_service.analysis import MAX_RUNNING_MPS
from summary_service.domain import (
    RECORD_SPORTS,
    Improvement,
    Overview,
    Run,
    UserTotals,
    Visibility,
    WeekTotals,
    datetime_to_us,
    us_to_datetime,
)
from summary_service.migrate import COMMAND, MIGRATIONS, migrations_missing

log = logging.getLogger(__name__)
POOL_IN_USE = Gauge("runtrack_pg_pool_in_use", "PostgreSQL connections of this replica's pool in use now.")
POOL_WAITING = Gauge("runtrack_pg_pool_waiting", "Calls waiting for a PostgreSQL connection of this replica now.")
HERE = Path(__file__).parent


# SQLSTATE classes and codes a retry can fix: the connection broke or could not be made, the server
# is shutting down or out of room, the statement ran over its timeout, a serialization conflict, or
# the node no longer takes writes (25006: a primary demoted in a failover; a new connection finds the
# new primary, as DATABASE_URL may name every node with target_session_attrs=read-write).
RETRYABLE_SQLSTATE_CLASSES = ("08", "53", "40")
RETRYABLE_SQLSTATES = ("57014", "57P01", "57P02", "57P03", "55P03", "25006")
# A connection that answered this is not put back in the pool for another call.
READ_ONLY = "25006"

# Commits the synchronous standby never confirmed: a cancel request ended the primary's wait for it
# (statement_timeout does not), and PostgreSQL answered success with this WARNING. Such a commit is on the
# primary only and a failover now would lose it, so the call is not acknowledged: UNAVAILABLE, and
# the client's retry (every write here is idempotent) answers once the standby has it.
SYNC_WAIT_CANCELLED = "canceling wait for synchronous replication"
_UNCONFIRMED: weakref.WeakSet[psycopg.AsyncConnection[DictRow]] = weakref.WeakSet()


async def _watch_sync_commits(conn: psycopg.AsyncConnection[DictRow]) -> None:
    """The pool's `configure`: marks the connection when a commit's synchronous wait was cancelled; its
    statements traced when traces are on."""
    ref = weakref.ref(conn)

    def notice(diag: psycopg.errors.Diagnostic) -> None:
        held = ref()
        if held is not None and SYNC_WAIT_CANCELLED in (diag.message_primary or ""):
            _UNCONFIRMED.add(held)

    conn.add_notice_handler(notice)
    tracing.instrument_pg_connection(conn)


def classify(err: Exception) -> RunTrackError:
    """What a failed PostgreSQL call means for the client: UNAVAILABLE when a retry can fix it,
    INTERNAL (a rejected statement, bad data, missing privileges) when it cannot."""
    if isinstance(err, PoolTimeout):
        return Unavailable(f"PostgreSQL unavailable: {type(err).__name__}", metadata={"store": "postgresql"})
    if isinstance(err, psycopg.Error):
        state = err.sqlstate
        if (state is None and isinstance(err, psycopg.OperationalError)) or (
            state is not None and (state[:2] in RETRYABLE_SQLSTATE_CLASSES or state in RETRYABLE_SQLSTATES)
        ):
            return Unavailable(f"PostgreSQL unavailable: {type(err).__name__}", metadata={"store": "postgresql"})
    return Internal(f"PostgreSQL rejected the request: {type(err).__name__}", metadata={"store": "postgresql"})


def _row_to_run(row: dict[str, Any]) -> Run:
    return Run(
        run_id=row["run_id"],
        user_id=row["user_id"],
        overview=Overview(
            start_us=datetime_to_us(row["start_time"]),
            end_us=datetime_to_us(row["end_time"]),
            distance_m=row["distance_m"],
            moving_time_us=row["moving_time_us"],
            elevation_gain_m=row["elevation_gain_m"],
            point_count=row["point_count"],
            avg_heart_rate_bpm=row["avg_heart_rate_bpm"],
            polyline=row["polyline"],
        ),
        stopped_at_us=datetime_to_us(row["stopped_at"]),
        visibility=Visibility(row["visibility"]),
        analysis=row.get("analysis"),
        stored_name=row.get("name") or "",
        share_health=bool(row.get("share_health", False)),
        sport=row.get("sport") or "",
    )


class PgRunStore:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.q = queries.load(HERE / "queries.sql")
        self.pool: AsyncConnectionPool[psycopg.AsyncConnection[DictRow]] | None = None
        self._migrated = False
        self._keys: dict[str, bytes] = {}
        self._lock = asyncio.Lock()
        POOL_IN_USE.set_function(lambda: self._pool_stat("in_use"))
        POOL_WAITING.set_function(lambda: self._pool_stat("requests_waiting"))

    def _pool_stat(self, name: str) -> float:
        """Read on each scrape, from the metrics thread (the pool's counters are plain ints)."""
        if self.pool is None:
            return 0.0
        stats = self.pool.get_stats()
        if name == "in_use":
            return float(stats.get("pool_size", 0) - stats.get("pool_available", 0))
        return float(stats.get(name, 0))

    def _new_pool(self) -> AsyncConnectionPool[psycopg.AsyncConnection[DictRow]]:
        s = self.settings
        return AsyncConnectionPool(
            s.database_url,
            connection_class=psycopg.AsyncConnection[DictRow],
            min_size=s.pg_pool_min,
            max_size=s.pg_pool_max,
            open=False,
            timeout=s.pg_connect_timeout_s,
            # No check on every checkout (a round trip per call): a connection found broken
            # fails its call with UNAVAILABLE (retried by Envoy elsewhere) and is discarded, as is
            # one on a node that no longer takes writes (see _Connection). A new connection is made
            # on demand; with a multi-host DATABASE_URL it goes to whichever node is primary now.
            reconnect_timeout=0,  # a failed connect is not retried in the background: the next call asks again
            configure=_watch_sync_commits,
            kwargs={
                "autocommit": True,
                "row_factory": dict_row,
                "connect_timeout": max(1, int(s.pg_connect_timeout_s)),
                "options": f"-c statement_timeout={s.pg_statement_timeout_ms}",
            },
            name="runs",
        )

    async def ensure_ready(self) -> None:
        async with self._lock:
            if self.pool is None:
                self.pool = self._new_pool()
                await self.pool.open(wait=False)
            if not self._migrated:
                async with self._conn() as conn:
                    missing = await migrations_missing(conn)
                if missing:
                    raise Unavailable(
                        f"PostgreSQL schema is behind this replica (missing {', '.join(missing)}): run `{COMMAND}`"
                    )
                self._migrated = True
                log.info("schema ready migrations=%d", len(MIGRATIONS))
        async with self._conn() as conn:
            await conn.execute(self.q["ping"])

    def _conn(self) -> _Connection:
        if self.pool is None:
            raise Unavailable("PostgreSQL unavailable: not connected yet")
        return _Connection(self.pool)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    async def insert_run(
        self, run_id: uuid.UUID, user_id: str, overview: Overview, name: str = "", sport: str = ""
    ) -> tuple[Run | None, bool]:
        params = {
            "name": name,
            "sport": sport,
            "run_id": run_id,
            "user_id": user_id,
            "start_time": us_to_datetime(overview.start_us),
            "end_time": us_to_datetime(overview.end_us),
            "distance_m": overview.distance_m,
            "moving_time_us": overview.moving_time_us,
            "elevation_gain_m": overview.elevation_gain_m,
            "point_count": overview.point_count,
            "avg_heart_rate_bpm": overview.avg_heart_rate_bpm,
            "polyline": overview.polyline,
        }
        async with self._conn() as conn:
            cur = await conn.execute(self.q["insert_run"], params)
            row = await cur.fetchone()
            if row is not None:
                return _row_to_run(row), True
            # Someone stored it first (a retry, or a racing twin): committed, so visible now.
            cur = await conn.execute(self.q["get_run"], {"run_id": run_id})
            row = await cur.fetchone()
            if row is None and await self._deleted_by(conn, run_id) is not None:
                return None, False
        if row is None:
            raise Unavailable(f"run {run_id} vanished while being stored; retry")
        return _row_to_run(row), False

    async def get_run(self, run_id: uuid.UUID) -> Run | None:
        async with self._conn() as conn:
            cur = await conn.execute(self.q["get_run"], {"run_id": run_id})
            row = await cur.fetchone()
        return None if row is None else _row_to_run(row)

    async def set_analysis(self, run_id: uuid.UUID, analysis: dict[str, Any]) -> bool:
        async with self._conn() as conn:
            params = {"run_id": run_id, "analysis": Jsonb(analysis), "point_count": analysis.get("point_count", 0)}
            cur = await conn.execute(self.q["set_analysis"], params)
            return await cur.fetchone() is not None

    async def set_name(self, run_id: uuid.UUID, name: str) -> Run | None:
        async with self._conn() as conn:
            cur = await conn.execute(self.q["set_name"], {"run_id": run_id, "name": name})
            row = await cur.fetchone()
        return None if row is None else _row_to_run(row)

    async def record_improvements(self, user_id: str) -> list[Improvement]:
        async with self._conn() as conn:
            cur = await conn.execute(
                self.q["record_improvements"],
                {"user_id": user_id, "max_mps": Jsonb(MAX_RUNNING_MPS), "record_sports": list(RECORD_SPORTS)},
            )
            rows = await cur.fetchall()
        return [
            Improvement(r["name"], r["distance_m"], r["elapsed_s"], r["run_id"], datetime_to_us(r["start_time"]))
            for r in rows
        ]

    async def list_runs(
        self, user_id: str, after: tuple[int, uuid.UUID] | None, limit: int, *, public_only: bool = False
    ) -> list[Run]:
        kind = "list_public_runs" if public_only else "list_runs"
        async with self._conn() as conn:
            if after is None:
                cur = await conn.execute(self.q[f"{kind}_first"], {"user_id": user_id, "limit": limit})
            else:
                cur = await conn.execute(
                    self.q[f"{kind}_after"],
                    {"user_id": user_id, "start_time": us_to_datetime(after[0]), "run_id": after[1], "limit": limit},
                )
            rows = await cur.fetchall()
        return [_row_to_run(r) for r in rows]

    async def set_share_health(self, run_id: uuid.UUID, share: bool) -> Run | None:
        async with self._conn() as conn:
            cur = await conn.execute(self.q["set_share_health"], {"run_id": run_id, "share_health": share})
            row = await cur.fetchone()
        return None if row is None else _row_to_run(row)

    async def set_visibility(self, run_id: uuid.UUID, visibility: Visibility) -> Run | None:
        async with self._conn() as conn:
            cur = await conn.execute(self.q["set_visibility"], {"run_id": run_id, "visibility": int(visibility)})
            row = await cur.fetchone()
        return None if row is None else _row_to_run(row)

    async def delete_run(self, run_id: uuid.UUID, user_id: str) -> None:
        async with self._conn() as conn:
            await conn.execute(self.q["delete_run"], {"run_id": run_id, "user_id": user_id})

    async def server_key(self, name: str) -> bytes:
        key = self._keys.get(name)
        if key is None:
            async with self._conn() as conn:
                await conn.execute(self.q["add_server_key"], {"name": name, "key": secrets.token_bytes(32)})
                cur = await conn.execute(self.q["server_key"], {"name": name})
                row = await cur.fetchone()
            if row is None:
                raise Internal(f"server key {name!r} was not stored", metadata={"store": "postgresql"})
            key = self._keys[name] = bytes(row["key"])
        return key

    async def deleted_by(self, run_id: uuid.UUID) -> str | None:
        async with self._conn() as conn:
            return await self._deleted_by(conn, run_id)

    async def _deleted_by(self, conn: psycopg.AsyncConnection[DictRow], run_id: uuid.UUID) -> str | None:
        cur = await conn.execute(self.q["deleted_by"], {"run_id": run_id})
        row = await cur.fetchone()
        return None if row is None else str(row["user_id"])

    async def user_stats(self, user_id: str, time_zone: str, weeks: int) -> UserTotals:
        async with self._conn() as conn:
            try:
                cur = await conn.execute(self.q["user_stats"], {"user_id": user_id, "tz": time_zone, "weeks": weeks})
            except psycopg.errors.InvalidParameterValue:
                raise InvalidArgument("time_zone", f"must be an IANA time zone name, got {time_zone!r}") from None
            rows = await cur.fetchall()
        return UserTotals(
            weeks=[
                WeekTotals(r["week_start"], r["run_count"], r["distance_m"], r["moving_time_us"], r["elevation_gain_m"])
                for r in rows
            ],
            total_runs=rows[0]["total_runs"] if rows else 0,
            total_distance_m=rows[0]["total_distance_m"] if rows else 0.0,
        )


class _Connection:
    """A pooled connection whose failures surface as classified RunTrackErrors."""

    def __init__(self, pool: AsyncConnectionPool[psycopg.AsyncConnection[DictRow]]) -> None:
        self._cm = pool.connection()
        self._conn: psycopg.AsyncConnection[DictRow] | None = None

    async def __aenter__(self) -> psycopg.AsyncConnection[DictRow]:
        try:
            self._conn = await self._cm.__aenter__()
        except (PoolTimeout, psycopg.Error) as err:
            raise classify(err) from err
        return self._conn

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(exc, psycopg.Error) and exc.sqlstate == READ_ONLY and self._conn is not None:
            # On a node demoted to standby: closed, so that the pool drops it and connects anew.
            await self._conn.close()
        unconfirmed = self._conn is not None and self._conn in _UNCONFIRMED
        if unconfirmed and self._conn is not None:
            _UNCONFIRMED.discard(self._conn)
        await self._cm.__aexit__(exc_type, exc, tb)
        if isinstance(exc, psycopg.Error):
            raise classify(exc) from exc
        if exc is None and unconfirmed:
            log.warning("commit not confirmed by the synchronous standby: answered UNAVAILABLE")
            raise Unavailable(
                "PostgreSQL unavailable: the commit is not confirmed by the synchronous standby",
                metadata={"store": "postgresql"},
            )
