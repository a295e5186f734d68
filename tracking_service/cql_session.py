"""The CQL store (ScyllaDB, or Cassandra) through scylla-driver, bridged into asyncio: the session every
adapter shares, its statements by name, and what a failed request means for the client."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cassandra
from cassandra import ConsistencyLevel, InvalidRequest, WriteType
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
from cassandra.query import UNSET_VALUE, BatchStatement, PreparedStatement, dict_factory

from runtrack_common import queries, tracing
from runtrack_common.config import Settings
from runtrack_common.errors import Internal, RunTrackError, Unavailable

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


# A lightweight transaction: sent twice, the second answer says "not applied" (the first claimed it).
MIGRATE_COMMAND = "python -m tracking_service.migrate"
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


class IdempotentWriteRetryPolicy(RetryPolicy):  # type: ignore[misc]  # the driver is untyped
    """The driver's default policy, but a write the coordinator timed out (it heard from too few replicas
    within its write_request_timeout) is sent once more, to the next node, when it is idempotent.

    A node lost and not yet convicted by the others' failure detector (10 to 20 s on a loaded cluster) is
    still sent every mutation; the coordinators then need both live replicas for LOCAL_QUORUM, and one
    slow answer times the write out. The default policy rethrows every such timeout but the batch log's;
    another coordinator (its own local write, its own queues) often answers at once. The ownership claim
    (a lightweight transaction) is not idempotent and keeps the default."""

    def on_write_timeout(
        self,
        query: Any,
        consistency: Any,
        write_type: Any,
        required_responses: int,
        received_responses: int,
        retry_num: int,
    ) -> tuple[int, Any]:
        if retry_num == 0 and getattr(query, "is_idempotent", False) and write_type != WriteType.CAS:
            return self.RETRY_NEXT_HOST, None
        result: tuple[int, Any] = super().on_write_timeout(
            query, consistency, write_type, required_responses, received_responses, retry_num
        )
        return result


def _opt(value: Any) -> Any:
    # Absent optional fields stay unset: writing None would write a tombstone.
    return UNSET_VALUE if value is None else value


async def _execute(session: Session, statement: Any, params: Any = None, *, all_pages: bool = False) -> list[Any]:
    """Runs a statement on the driver's threads and awaits it on the event loop; a span of its own
    inside a traced call."""
    if not tracing.recording():
        return await _run(session, statement, params, all_pages)
    operation, query = _operation(statement)
    with tracing.store_span("cassandra", operation, query):
        return await _run(session, statement, params, all_pages)


def _operation(statement: Any) -> tuple[str, str]:
    """A statement's verb and CQL text (its markers, never its values), as a span names them."""
    if isinstance(statement, BatchStatement):
        return "BATCH", ""
    if isinstance(statement, str):
        query = statement
    else:
        prepared = getattr(statement, "prepared_statement", None)  # a bound statement
        query = getattr(prepared or statement, "query_string", "") or ""
    return (query.split(None, 1)[0].upper() if query else "QUERY"), query


_NO_PAGE_YET = object()


async def _run(session: Session, statement: Any, params: Any, all_pages: bool) -> list[Any]:
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
    lock = threading.Lock()
    taken: list[Any] = [_NO_PAGE_YET]  # the paging state after the last page taken

    def on_page(page: list[Any] | None) -> None:
        # With speculative execution the driver runs the callbacks once per answer: when both attempts
        # answer, the same page comes twice (a rolling restart of the nodes showed a trail read back
        # twice over). A page whose paging state is the one after the last page taken is that page again.
        with lock:
            state = response._paging_state
            if state == taken[0]:
                return
            taken[0] = state
            if page:  # writes answer with no rows
                rows.extend(page)
            more = all_pages and state is not None
            result = None if more else list(rows)
        if more:
            response.start_fetching_next_page()
        else:
            loop.call_soon_threadsafe(settle, result, None)

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


@dataclass(frozen=True)
class Statements:
    """Every statement of queries.cql, prepared once at connect, by its name there."""

    insert_point: PreparedStatement
    claim_run: PreparedStatement
    run_owner: PreparedStatement
    seqs_after: PreparedStatement
    cursor_hint: PreparedStatement
    save_cursor_hint: PreparedStatement
    points_after: PreparedStatement
    ping: PreparedStatement
    points_before: PreparedStatement
    deleted_by: PreparedStatement
    mark_deleted: PreparedStatement
    delete_points: PreparedStatement
    delete_cursor: PreparedStatement
    delete_owner: PreparedStatement
    privacy_zones: PreparedStatement
    set_privacy_zones: PreparedStatement
    live_row: PreparedStatement
    insert_link: PreparedStatement
    delete_link: PreparedStatement
    change_state: PreparedStatement
    mark_stopped: PreparedStatement
    mark_live_deleted: PreparedStatement
    feed_point: PreparedStatement
    feed_event: PreparedStatement
    feed_read: PreparedStatement
    mark_watched: PreparedStatement
    watched_runs: PreparedStatement
    outbox_put: PreparedStatement
    outbox_shard: PreparedStatement
    outbox_take: PreparedStatement
    outbox_renew: PreparedStatement
    outbox_done: PreparedStatement


class SchemaBehind(Exception):
    """The keyspace lacks a table or column this release uses."""


def prepare(session: Session, keyspace: str) -> dict[str, PreparedStatement]:
    """Every statement of queries.cql, prepared: the check that the schema is this release's (a table or
    column missing fails here, naming the command that adds it; the replica never changes the schema)."""
    try:
        session.set_keyspace(keyspace)
        return {name: session.prepare(cql) for name, cql in queries.load(HERE / "queries.cql").items()}
    except InvalidRequest as err:
        raise SchemaBehind(
            f"CQL schema of keyspace {keyspace} is behind this replica ({err}): run `{MIGRATE_COMMAND}`"
        ) from err


class CqlSession:
    """The connection to the CQL store every adapter shares: the cluster, the keyspace's schema applied,
    the statements prepared, and whether it answers (the replica's health)."""

    def __init__(self, settings: Settings) -> None:
        if settings.cql_consistency not in ConsistencyLevel.name_to_value:
            raise ValueError(f"SCYLLA_CONSISTENCY: {settings.cql_consistency!r} is not a CQL consistency level")
        self.settings = settings
        self.cluster: Cluster | None = None
        self.session: Session | None = None
        self._q: Statements | None = None
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
            # The driver's default policy (a read timeout retried once when enough replicas answered,
            # an unavailable coordinator retried on the next host), and an idempotent write that the
            # coordinator timed out retried once on the next node. Only idempotent statements (all but
            # the ownership claim) are also tried on a second node when the first is slow.
            retry_policy=IdempotentWriteRetryPolicy(),
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
            prepared = prepare(session, s.keyspace)
            for name, statement in prepared.items():
                # Upserts of fixed values, reads and deletes at a fixed timestamp: safe to send twice.
                statement.is_idempotent = name not in NOT_IDEMPOTENT
        except Exception:
            cluster.shutdown()
            raise
        self.cluster, self.session, self._q = cluster, session, Statements(**prepared)
        log.info("connected hosts=%s keyspace=%s", ",".join(s.scylla_hosts), s.keyspace)

    async def ensure_ready(self) -> None:
        if self.session is None:
            async with self._connecting:
                if self.session is None:
                    try:
                        await asyncio.to_thread(self._connect_blocking)
                    except Exception as err:
                        raise Unavailable(f"CQL store unavailable: {err}", metadata={"store": "cql"}) from err
        assert self._q is not None
        await _execute(self.session, self._q.ping)

    def ready(self) -> Session:
        if self.session is None:
            raise Unavailable("CQL store unavailable: not connected yet", metadata={"store": "cql"})
        return self.session

    @property
    def q(self) -> Statements:
        if self._q is None:
            raise Unavailable("CQL store unavailable: not connected yet", metadata={"store": "cql"})
        return self._q

    async def close(self) -> None:
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.shutdown)
            self.cluster = self.session = None
