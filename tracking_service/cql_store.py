"""The TrackStore on ScyllaDB (or Cassandra) through scylla-driver, bridged into asyncio."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cassandra
from cassandra import ConsistencyLevel, InvalidRequest
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable, Session
from cassandra.connection import ConnectionBusy, ConnectionException
from cassandra.policies import (
    ConstantSpeculativeExecutionPolicy,
    DCAwareRoundRobinPolicy,
    ExponentialReconnectionPolicy,
    RetryPolicy,
    TokenAwarePolicy,
)
from cassandra.pool import NoConnectionsAvailable
from cassandra.protocol import ErrorMessage, IsBootstrappingErrorMessage, OverloadedErrorMessage
from cassandra.query import UNSET_VALUE, BatchStatement, BatchType, PreparedStatement, dict_factory

from runtrack_common import queries
from runtrack_common.config import Settings
from runtrack_common.errors import Internal, RunTrackError, Unavailable
from tracking_service.domain import Cursor, Point, cursor_from_seqs
from tracking_service.live import FEED_SHARDS, FeedRow, LinkRecord, LiveRow, feed_shard
from tracking_service.privacy import Zone
from tracking_service.webhooks import OUTBOX_SHARDS, Delivery, outbox_shard

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# The write timestamp (microseconds) of a deletion: far above any real write's, so it shadows them all.
DELETED_FOREVER_US = 2**62


# A lightweight transaction: sent twice, the second answer says "not applied" (the first claimed it).
NOT_IDEMPOTENT = frozenset({"claim_run", "change_state", "outbox_take"})

# A retry can fix these: no node reachable, a timeout, a node overloaded, starting or rate-limiting.
RETRYABLE: tuple[type[BaseException], ...] = (
    NoHostAvailable,
    cassandra.OperationTimedOut,
    cassandra.Unavailable,
    cassandra.Timeout,
    cassandra.RateLimitReached,
    ConnectionException,
    ConnectionBusy,
    NoConnectionsAvailable,
    OverloadedErrorMessage,
    IsBootstrappingErrorMessage,
    OSError,
)


# A lightweight transaction whose outcome a coordinator could not learn (a node slow or lost mid-way);
# the driver knows no class for this protocol-v5 code. Retrying the ownership claim is safe: if it
# was applied, the retry reads the claimant back as the owner.
CAS_WRITE_UNKNOWN = 0x1700


def classify(err: Exception) -> RunTrackError:
    """What a failed CQL request means for the client. Unreachable or slow: UNAVAILABLE, retry.
    Anything else (a rejected statement, bad data, a refused login, a failed replica write): a
    bug or a misconfiguration that a retry cannot fix, INTERNAL."""
    if isinstance(err, RETRYABLE) or (isinstance(err, ErrorMessage) and err.code == CAS_WRITE_UNKNOWN):
        return Unavailable(f"CQL store unavailable: {type(err).__name__}", metadata={"store": "cql"})
    return Internal(f"CQL store rejected the request: {type(err).__name__}", metadata={"store": "cql"})


def _opt(value: Any) -> Any:
    # Absent optional fields stay unset: writing None would write a tombstone.
    return UNSET_VALUE if value is None else value


async def _execute(session: Session, statement: Any, params: Any = None, *, all_pages: bool = False) -> list[Any]:
    """Runs a statement on the driver's threads and awaits it on the event loop."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[list[Any]] = loop.create_future()
    rows: list[Any] = []

    def settle(result: Any, exc: BaseException | None) -> None:
        if done.done():
            return
        if exc is not None:
            done.set_exception(exc)
        else:
            done.set_result(result)

    response = session.execute_async(statement, params)

    def on_page(page: list[Any] | None) -> None:
        if page:  # writes answer with no rows
            rows.extend(page)
        if all_pages and response.has_more_pages:
            response.start_fetching_next_page()
        else:
            loop.call_soon_threadsafe(settle, rows, None)

    def on_error(exc: BaseException) -> None:
        loop.call_soon_threadsafe(settle, None, exc)

    response.add_callbacks(on_page, on_error)
    try:
        return await done
    except asyncio.CancelledError:
        raise
    except Exception as err:
        raise classify(err) from err
    finally:
        # The callbacks refer to the response and it to them: unlinked, the request and what it carried
        # are freed at once instead of by the cycle collector (which cost a loaded replica a third of
        # its CPU).
        response.clear_callbacks()


async def _execute_batch(session: Session, statement: Any) -> None:
    """Writes a batch (or one bound statement); its rows are let go once written, for the same reason."""
    try:
        await _execute(session, statement)
    finally:
        if isinstance(statement, BatchStatement):
            statement.clear()


# What Cassandra 5 and ScyllaDB answer to an ADD of a column the table already has.
COLUMN_EXISTS = ("already exists", "conflicts with an existing column")


def _apply_schema(session: Session, cql: str) -> None:
    """One statement of schema.cql: CREATE ... IF NOT EXISTS runs as is; an ALTER TABLE ... ADD of a
    column already there (a replica started before, or another starting now) is skipped."""
    try:
        session.execute(cql, timeout=60)
    except InvalidRequest as err:
        if not (cql.lstrip().upper().startswith("ALTER TABLE") and any(m in str(err) for m in COLUMN_EXISTS)):
            raise


class CqlTrackStore:
    def __init__(self, settings: Settings) -> None:
        if settings.cql_consistency not in ConsistencyLevel.name_to_value:
            raise ValueError(f"SCYLLA_CONSISTENCY: {settings.cql_consistency!r} is not a CQL consistency level")
        self.settings = settings
        self.cluster: Cluster | None = None
        self.session: Session | None = None
        self.q: dict[str, PreparedStatement] = {}
        self._connecting = asyncio.Lock()

    def _connect_blocking(self) -> None:
        s = self.settings
        profile = ExecutionProfile(
            # Straight to a replica of the run's partition (ScyllaDB's driver also picks its shard).
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
            consistency_level=ConsistencyLevel.name_to_value[s.cql_consistency],
            serial_consistency_level=ConsistencyLevel.LOCAL_SERIAL,
            # Below Envoy's 15 s route timeout: a slow node answers UNAVAILABLE before the call dies.
            request_timeout=s.cql_request_timeout_s,
            # The driver's default policy: a read timeout retried once when enough replicas answered,
            # an unavailable coordinator retried on the next host. Only idempotent statements (all but
            # the ownership claim) are also tried on a second node when the first is slow.
            retry_policy=RetryPolicy(),
            # Rows as dicts: the driver's default builds a new namedtuple class for every answer, which
            # cost a stream's start and end more CPU than all of its other work together.
            row_factory=dict_factory,
            speculative_execution_policy=ConstantSpeculativeExecutionPolicy(
                delay=s.cql_speculative_delay_s, max_attempts=1
            ),
        )
        cluster = Cluster(
            contact_points=list(s.scylla_hosts),
            port=s.scylla_port,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            connect_timeout=s.cql_connect_timeout_s,
            control_connection_timeout=s.cql_connect_timeout_s,
            reconnection_policy=ExponentialReconnectionPolicy(0.5, 4.0),
            idle_heartbeat_interval=5,
            # ScyllaDB's protocol; with Cassandra 5 the driver would pick v5, whose checksummed frames it
            # builds in Python on its I/O thread (a loaded replica's I/O thread: 0.065 cores on v5, 0.013 on v4).
            protocol_version=4,
        )
        try:
            session = cluster.connect()
            for cql in queries.load(HERE / "schema.cql").values():
                _apply_schema(session, cql.format(keyspace=s.keyspace, replication=s.replication))
            session.set_keyspace(s.keyspace)
            prepared = {name: session.prepare(cql) for name, cql in queries.load(HERE / "queries.cql").items()}
            for name, statement in prepared.items():
                # Upserts of fixed values, reads and deletes at a fixed timestamp: safe to send twice.
                statement.is_idempotent = name not in NOT_IDEMPOTENT
        except Exception:
            cluster.shutdown()
            raise
        self.cluster, self.session, self.q = cluster, session, prepared
        log.info("connected hosts=%s keyspace=%s", ",".join(s.scylla_hosts), s.keyspace)

    async def ensure_ready(self) -> None:
        if self.session is None:
            async with self._connecting:
                if self.session is None:
                    try:
                        await asyncio.to_thread(self._connect_blocking)
                    except Exception as err:
                        raise Unavailable(f"CQL store unavailable: {err}", metadata={"store": "cql"}) from err
        await _execute(self.session, self.q["ping"])

    def _ready(self) -> Session:
        if self.session is None:
            raise Unavailable("CQL store unavailable: not connected yet", metadata={"store": "cql"})
        return self.session

    async def close(self) -> None:
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.shutdown)
            self.cluster = self.session = None

    async def claim_run(self, run_id: uuid.UUID, user_id: str) -> str:
        now = dt.datetime.now(dt.UTC)
        rows = await _execute(self._ready(), self.q["claim_run"], (run_id, user_id, now))
        row = rows[0]
        return user_id if row["[applied]"] else str(row["user_id"])

    async def run_owner(self, run_id: uuid.UUID) -> str | None:
        rows = await _execute(self._ready(), self.q["run_owner"], (run_id,))
        return str(rows[0]["user_id"]) if rows else None

    async def write_points(self, run_id: uuid.UUID, points: Sequence[Point]) -> None:
        session = self._ready()
        insert = self.q["insert_point"]
        if len(points) == 1:
            statement: Any = insert.bind(self._values(run_id, points[0]))
        else:
            # One partition: an unlogged batch is a single mutation, applied atomically.
            statement = BatchStatement(batch_type=BatchType.UNLOGGED)
            statement.is_idempotent = True  # the same points again: the same rows
            for p in points:
                statement.add(insert, self._values(run_id, p))
        await _execute_batch(session, statement)

    async def write_rows(self, rows: Sequence[tuple[uuid.UUID, Sequence[Point]]]) -> None:
        if len(rows) == 1:
            await self.write_points(*rows[0])
            return
        session = self._ready()
        insert = self.q["insert_point"]
        # Rows of many partitions in one request: an unlogged batch, which the coordinator applies per
        # partition (no batch log). It saves the replica a request per run, not the store its work.
        statement = BatchStatement(batch_type=BatchType.UNLOGGED)
        statement.is_idempotent = True  # the same points again: the same rows
        for run_id, points in rows:
            for p in points:
                statement.add(insert, self._values(run_id, p))
        await _execute_batch(session, statement)

    @staticmethod
    def _values(run_id: uuid.UUID, p: Point) -> tuple[Any, ...]:
        assert p.time_ms is not None, "only validated points are written"
        recorded_at = EPOCH + dt.timedelta(milliseconds=p.time_ms)
        return (
            run_id,
            p.seq,
            recorded_at,
            p.latitude,
            p.longitude,
            _opt(p.altitude_m),
            _opt(p.horizontal_accuracy_m),
            _opt(p.speed_mps),
            _opt(p.heart_rate_bpm),
            _opt(p.cadence_spm),
            True if p.after_pause else UNSET_VALUE,  # no cell for the points that are not
        )

    async def cursor(self, run_id: uuid.UUID) -> Cursor:
        """Reads only the seqs after the run's last known contiguous_seq, then moves that mark up."""
        session = self._ready()
        hint_rows = await _execute(session, self.q["cursor_hint"], (run_id,))
        known = (hint_rows[0]["contiguous_hint"] or 0) if hint_rows else 0
        rows = await _execute(session, self.q["seqs_after"], (run_id, known), all_pages=True)
        cursor = cursor_from_seqs((r["seq"] for r in rows), known)
        if cursor.contiguous_seq > known:
            await _execute(session, self.q["save_cursor_hint"], (cursor.contiguous_seq, run_id))
        return cursor

    async def points_after(self, run_id: uuid.UUID, after_seq: int, limit: int) -> list[Point]:
        rows = await _execute(self._ready(), self.q["points_after"], (run_id, after_seq, limit), all_pages=True)
        return await _points(rows)

    async def points_before(self, run_id: uuid.UUID, before_seq: int, limit: int) -> list[Point]:
        rows = await _execute(self._ready(), self.q["points_before"], (run_id, before_seq, limit), all_pages=True)
        return await _points(rows)

    async def deleted_by(self, run_id: uuid.UUID) -> str | None:
        rows = await _execute(self._ready(), self.q["deleted_by"], (run_id,))
        return str(rows[0]["user_id"]) if rows else None

    async def mark_deleted(self, run_id: uuid.UUID, user_id: str) -> None:
        await _execute(self._ready(), self.q["mark_deleted"], (run_id, user_id, dt.datetime.now(dt.UTC)))

    async def delete_trail(self, run_id: uuid.UUID) -> None:
        session = self._ready()
        for name in ("delete_points", "delete_cursor", "delete_owner"):
            await _execute(session, self.q[name], (DELETED_FOREVER_US, run_id))

    async def privacy_zones(self, user_id: str) -> list[Zone]:
        rows = await _execute(self._ready(), self.q["privacy_zones"], (user_id,))
        return [Zone(*zone) for zone in (rows[0]["zones"] or [])] if rows else []

    async def set_privacy_zones(self, user_id: str, zones: Sequence[Zone]) -> None:
        values = [(z.latitude, z.longitude, z.radius_m) for z in zones]
        await _execute(self._ready(), self.q["set_privacy_zones"], (user_id, values))

    async def live_row(self, run_id: uuid.UUID) -> LiveRow:
        rows = await _execute(self._ready(), self.q["live_row"], (run_id,), all_pages=True)
        if not rows:
            return LiveRow()
        first = rows[0]
        links = {
            r["link_id"]: LinkRecord(
                link_id=r["link_id"],
                created_at=_utc(r["created_at"]),
                expire_at=_utc(r["expire_at"]) if r["expire_at"] is not None else None,
                webhook_url=r["webhook_url"] or "",
                webhook_secret=r["webhook_secret"] or "",
            )
            for r in rows
            if r["link_id"] is not None and r["created_at"] is not None
        }
        return LiveRow(
            state=first["state"],
            state_at=_utc(first["state_at"]) if first["state_at"] is not None else None,
            stopped_at=_utc(first["stopped_at"]) if first["stopped_at"] is not None else None,
            links=links,
        )

    async def add_link(self, run_id: uuid.UUID, link: LinkRecord) -> None:
        values = (run_id, link.link_id, link.created_at, link.expire_at, link.webhook_url, link.webhook_secret)
        await _execute(self._ready(), self.q["insert_link"], values)

    async def delete_link(self, run_id: uuid.UUID, link_id: str) -> None:
        await _execute(self._ready(), self.q["delete_link"], (run_id, link_id))

    async def change_state(self, run_id: uuid.UUID, new: str, at: dt.datetime, expected: str | None) -> str | None:
        rows = await _execute(self._ready(), self.q["change_state"], (new, at, run_id, expected))
        row = rows[0]
        return new if row["[applied]"] else row.get("state")

    async def mark_stopped(self, run_id: uuid.UUID, at: dt.datetime) -> None:
        await _execute(self._ready(), self.q["mark_stopped"], (at, at, run_id))

    async def mark_live_deleted(self, run_id: uuid.UUID, at: dt.datetime, link_ids: Sequence[str]) -> None:
        session = self._ready()
        await _execute(session, self.q["mark_live_deleted"], (at, run_id))
        for link_id in link_ids:
            await _execute(session, self.q["delete_link"], (run_id, link_id))

    # ---- the live feed ----------------------------------------------------------------------

    async def feed_points(self, bucket: int, rows: Sequence[tuple[uuid.UUID, Sequence[Point]]]) -> None:
        statement = BatchStatement(batch_type=BatchType.UNLOGGED)
        statement.is_idempotent = True
        insert = self.q["feed_point"]
        for run_id, points in rows:
            shard = feed_shard(run_id)
            for p in points:
                statement.add(insert, (bucket, shard, *self._values(run_id, p)))
        await _execute_batch(self._ready(), statement)

    async def feed_event(self, bucket: int, run_id: uuid.UUID, event: str) -> None:
        await _execute(self._ready(), self.q["feed_event"], (bucket, feed_shard(run_id), run_id, event))

    async def read_feed(self, bucket: int) -> list[FeedRow]:
        session = self._ready()
        pages = await asyncio.gather(
            *(_execute(session, self.q["feed_read"], (bucket, shard), all_pages=True) for shard in range(FEED_SHARDS))
        )
        return [FeedRow(r["run_id"], r["event"], _point(r) if not r["event"] else None) for page in pages for r in page]

    async def mark_watched(self, run_ids: Sequence[uuid.UUID]) -> None:
        statement = BatchStatement(batch_type=BatchType.UNLOGGED)
        statement.is_idempotent = True
        for run_id in run_ids:
            statement.add(self.q["mark_watched"], (feed_shard(run_id), run_id))
        await _execute_batch(self._ready(), statement)

    async def watched_runs(self) -> set[uuid.UUID]:
        session = self._ready()
        pages = await asyncio.gather(
            *(_execute(session, self.q["watched_runs"], (shard,), all_pages=True) for shard in range(FEED_SHARDS))
        )
        return {r["run_id"] for page in pages for r in page}

    # ---- the webhooks' outbox -----------------------------------------------------------------

    async def outbox_put(self, d: Delivery, lease_until: dt.datetime) -> None:
        values = (outbox_shard(d.event_id), d.event_id, uuid.UUID(d.run_id), d.link_id, d.url, d.secret, d.state)
        await _execute(self._ready(), self.q["outbox_put"], (*values, d.at, d.reason, lease_until))

    async def outbox_waiting(self) -> list[tuple[Delivery, dt.datetime]]:
        session = self._ready()
        pages = await asyncio.gather(
            *(_execute(session, self.q["outbox_shard"], (shard,), all_pages=True) for shard in range(OUTBOX_SHARDS))
        )
        return [
            (
                Delivery(
                    str(r["run_id"]),
                    r["link_id"],
                    r["url"],
                    r["secret"],
                    r["state"],
                    r["at"],
                    r["reason"],
                    event_id=r["event_id"],
                    attempts=r["attempts"] or 0,
                ),
                _utc(r["lease_until"]),
            )
            for page in pages
            for r in page
            if r["lease_until"] is not None
        ]

    async def outbox_take(self, event_id: uuid.UUID, held_until: dt.datetime, lease_until: dt.datetime) -> bool:
        params = (lease_until, outbox_shard(event_id), event_id, held_until)
        rows = await _execute(self._ready(), self.q["outbox_take"], params)
        return bool(rows[0]["[applied]"])

    async def outbox_renew(self, event_id: uuid.UUID, attempts: int, lease_until: dt.datetime) -> None:
        params = (lease_until, attempts, outbox_shard(event_id), event_id)
        await _execute(self._ready(), self.q["outbox_renew"], params)

    async def outbox_done(self, event_id: uuid.UUID) -> None:
        await _execute(self._ready(), self.q["outbox_done"], (outbox_shard(event_id), event_id))


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _point(r: dict[str, Any]) -> Point:
    return Point(
        seq=r["seq"],
        time_ms=_to_ms(r["recorded_at"]),
        latitude=r["latitude"],
        longitude=r["longitude"],
        altitude_m=r["altitude_m"],
        horizontal_accuracy_m=r["horizontal_accuracy_m"],
        speed_mps=r["speed_mps"],
        heart_rate_bpm=r["heart_rate_bpm"],
        cadence_spm=r["cadence_spm"],
        after_pause=bool(r["after_pause"]),
    )


# Rows converted between two yields to the event loop (a page of 10,000 is ~30 ms of work).
ROWS_PER_YIELD = 2000


async def _points(rows: Sequence[Any]) -> list[Point]:
    out: list[Point] = []
    for start in range(0, len(rows), ROWS_PER_YIELD):
        if start:
            await asyncio.sleep(0)
        out += [_point(r) for r in rows[start : start + ROWS_PER_YIELD]]
    return out


def _to_ms(value: dt.datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return (value - EPOCH) // dt.timedelta(milliseconds=1)
