"""Settings, read once from the environment and passed explicitly."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

N = TypeVar("N", int, float)


def _number(env: Mapping[str, str], name: str, default: N, kind: Callable[[str], N]) -> N:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        return kind(raw)
    except ValueError:
        raise SystemExit(f"setting {name}={raw!r} must be a {'whole number' if kind is int else 'number'}") from None


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    return _number(env, name, default, int)


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    return _number(env, name, default, float)


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    raw = env.get(name) or default
    if raw not in choices:
        raise SystemExit(f"setting {name}={raw!r} must be one of {', '.join(choices)}")
    return raw


@dataclass(frozen=True)
class Settings:
    """Everything a replica needs to know; built once in main() by `from_env`."""

    bind_host: str = "127.0.0.1"
    # CQL store (ScyllaDB in production).
    scylla_hosts: tuple[str, ...] = ("127.0.0.1",)
    scylla_port: int = 9042
    keyspace: str = "runtrack"
    # A CQL replication map: SimpleStrategy RF 1 locally, NetworkTopologyStrategy in production.
    replication: str = "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    cql_connect_timeout_s: float = 5.0
    cql_request_timeout_s: float = 5.0
    # LOCAL_QUORUM: with RF 3, a write or read holds with one node of three down.
    cql_consistency: str = "LOCAL_QUORUM"
    # An idempotent statement not answered after this long is also sent to another replica.
    cql_speculative_delay_s: float = 0.2
    # Store writes in flight per replica, and the most points it holds before streams wait (backpressure).
    replica_inflight_writes: int = 64
    max_pending_points: int = 50_000
    # Points one stream may have waiting for the store before it is not read (a backlog, not 1 Hz).
    stream_max_pending_points: int = 800
    # Points per store write (the points of every stream, gathered), and how long a point may wait for
    # others before it is written.
    write_batch_points: int = 100
    write_linger_ms: int = 50
    # How long a batch the store did not take, a stream's claim or its cursor read is sent again (jittered
    # backoff) before the stream ends: longer than the store takes to convict a lost node (10 to 20 s on
    # a loaded cluster, while every write still waits on it and one slow live replica times it out) and
    # than a burst of claims (lightweight transactions) takes to clear, since the points wait in memory
    # unacknowledged anyway and the phone would only send them again.
    write_retry_budget_s: float = 30.0
    # A RecordTrack stream that sends nothing for this long is ended (DEADLINE_EXCEEDED).
    stream_idle_timeout_s: float = 300.0
    # A stream ends after about this long (jittered -20 %) with UNAVAILABLE STREAM_LIFETIME and the phone
    # resumes: streams are re-balanced over the replicas there are now (a burst that landed on the night
    # fleet spreads over the replicas added since). 0: no limit.
    stream_lifetime_s: float = 600.0
    # Above this many open streams a replica ends its newest ones (at most `stream_shed_per_s` a second)
    # with UNAVAILABLE REPLICA_OVERLOADED; they resume on the replica with the fewest. 0: never.
    stream_shed_above: int = 0
    stream_shed_per_s: int = 50
    max_concurrent_rpcs: int = 20_000
    # PostgreSQL.
    database_url: str = "postgresql://postgres@127.0.0.1:5432/runtrack"
    pg_pool_min: int = 2
    pg_pool_max: int = 8
    pg_statement_timeout_ms: int = 2000
    pg_connect_timeout_s: float = 3.0
    # Envoy, where a replica calls the other service's public API on a caller's behalf.
    api_address: str = "127.0.0.1:8080"
    api_timeout_s: float = 5.0
    # gRPC server.
    max_message_bytes: int = 1024 * 1024
    # HTTP/2 streams at once on one connection (Envoy's to this replica): as many as Envoy itself opens
    # on one upstream connection (edge/config.py Layout.max_concurrent_streams).
    max_streams_per_connection: int = 10_000
    # How often the database behind a replica is probed for the health status.
    health_probe_interval_s: float = 1.0
    # On SIGTERM: report NOT_SERVING, wait this long for Envoy to notice, then stop.
    drain_delay_s: float = 2.0
    shutdown_grace_s: float = 10.0
    # Following a run live: each watched run's new points are read once per poll per replica, its live
    # state and links once per state poll; STALLED after no point (or under stall_m of movement) for stall_s.
    live_poll_s: float = 1.0
    live_state_poll_s: float = 2.0
    # How often the writers re-read which runs are followed, a follower re-marks its runs, and reads a
    # followed run itself to reconcile (and its live row) whatever the feed said.
    live_watched_refresh_s: float = 2.0
    live_mark_s: float = 10.0
    live_reconcile_s: float = 30.0
    live_stall_s: float = 180.0
    live_stall_m: float = 20.0
    # Events a watcher may fall behind by before its stream is ended (it reconnects with after_seq).
    watch_queue_events: int = 300
    # Trail pages read at once per tracking replica (GetTrack, ExportTrack, a visible summary); 0: no limit.
    # One: a page is ~100 ms of the event loop at most, in slices; two at once interleave on the same
    # loop (no more throughput) and double what a health answer waits behind.
    trail_reads_at_once: int = 1
    # Strangers following one PUBLIC run at once on this replica (the owner and link holders aside).
    live_max_spectators_per_run: int = 500
    # Live links: signed with this key (PEM, ES256); Envoy verifies them with its public half.
    live_link_key_file: str = ""
    live_link_issuer: str = "https://live.runtrack.local"
    live_link_audience: str = "runtrack-live"
    # The page's origin for a link's url; empty: from the call's authority (http://<host:port>).
    public_origin: str = ""
    # Webhooks: attempts per state change (backoff base doubling), and whether loopback and private
    # addresses may be targets (development only: otherwise a link could make the server call inside).
    webhook_attempts: int = 6
    webhook_backoff_s: float = 1.0
    webhook_timeout_s: float = 5.0
    webhook_allow_private: bool = False
    # Networks (CIDR, comma-separated) whose addresses may be targets although not public, over http
    # too: a test's receiver on 127.0.0.1/32, an operator's own relay. Everything else stays refused.
    webhook_allow_networks: str = ""
    # Deliveries at once (threads), and at once to one receiver (host:port): a slow one waits alone.
    webhook_threads: int = 16
    webhook_per_receiver: int = 2
    # A pending delivery is its replica's while it works on it (each attempt's timeout and backoff, and
    # this margin); every sweep, each replica takes those whose lease ran out (their replica gone).
    webhook_lease_s: float = 10.0
    webhook_sweep_s: float = 5.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        d = cls()
        hosts = tuple(h.strip() for h in env.get("SCYLLA_HOSTS", "").split(",") if h.strip())
        return cls(
            bind_host=env.get("RUNTRACK_BIND_HOST", d.bind_host),
            scylla_hosts=hosts or d.scylla_hosts,
            scylla_port=_int(env, "SCYLLA_PORT", d.scylla_port),
            keyspace=env.get("SCYLLA_KEYSPACE", d.keyspace),
            replication=env.get("SCYLLA_REPLICATION", d.replication),
            cql_connect_timeout_s=_float(env, "SCYLLA_CONNECT_TIMEOUT_S", d.cql_connect_timeout_s),
            cql_request_timeout_s=_float(env, "SCYLLA_REQUEST_TIMEOUT_S", d.cql_request_timeout_s),
            cql_consistency=env.get("SCYLLA_CONSISTENCY", d.cql_consistency).upper(),
            cql_speculative_delay_s=_float(env, "SCYLLA_SPECULATIVE_DELAY_S", d.cql_speculative_delay_s),
            replica_inflight_writes=_int(env, "TRACK_REPLICA_INFLIGHT_WRITES", d.replica_inflight_writes),
            max_pending_points=_int(env, "TRACK_MAX_PENDING_POINTS", d.max_pending_points),
            stream_max_pending_points=_int(env, "TRACK_STREAM_MAX_PENDING_POINTS", d.stream_max_pending_points),
            write_batch_points=_int(env, "TRACK_WRITE_BATCH_POINTS", d.write_batch_points),
            write_linger_ms=_int(env, "TRACK_WRITE_LINGER_MS", d.write_linger_ms),
            write_retry_budget_s=_float(env, "TRACK_WRITE_RETRY_BUDGET_S", d.write_retry_budget_s),
            stream_idle_timeout_s=_float(env, "TRACK_STREAM_IDLE_TIMEOUT_S", d.stream_idle_timeout_s),
            stream_lifetime_s=_float(env, "TRACK_STREAM_LIFETIME_S", d.stream_lifetime_s),
            stream_shed_above=_int(env, "TRACK_SHED_ABOVE_STREAMS", d.stream_shed_above),
            stream_shed_per_s=_int(env, "TRACK_SHED_PER_S", d.stream_shed_per_s),
            max_concurrent_rpcs=_int(env, "GRPC_MAX_CONCURRENT_RPCS", d.max_concurrent_rpcs),
            database_url=env.get("DATABASE_URL", d.database_url),
            pg_pool_min=_int(env, "PG_POOL_MIN", d.pg_pool_min),
            pg_pool_max=_int(env, "PG_POOL_MAX", d.pg_pool_max),
            pg_statement_timeout_ms=_int(env, "PG_STATEMENT_TIMEOUT_MS", d.pg_statement_timeout_ms),
            pg_connect_timeout_s=_float(env, "PG_CONNECT_TIMEOUT_S", d.pg_connect_timeout_s),
            api_address=env.get("RUNTRACK_API_ADDRESS", d.api_address),
            api_timeout_s=_float(env, "RUNTRACK_API_TIMEOUT_S", d.api_timeout_s),
            max_message_bytes=_int(env, "GRPC_MAX_MESSAGE_BYTES", d.max_message_bytes),
            max_streams_per_connection=_int(env, "GRPC_MAX_CONCURRENT_STREAMS", d.max_streams_per_connection),
            health_probe_interval_s=_float(env, "HEALTH_PROBE_INTERVAL_S", d.health_probe_interval_s),
            drain_delay_s=_float(env, "DRAIN_DELAY_S", d.drain_delay_s),
            shutdown_grace_s=_float(env, "SHUTDOWN_GRACE_S", d.shutdown_grace_s),
            live_poll_s=_float(env, "LIVE_POLL_S", d.live_poll_s),
            live_state_poll_s=_float(env, "LIVE_STATE_POLL_S", d.live_state_poll_s),
            live_watched_refresh_s=_float(env, "LIVE_WATCHED_REFRESH_S", d.live_watched_refresh_s),
            live_mark_s=_float(env, "LIVE_MARK_S", d.live_mark_s),
            live_reconcile_s=_float(env, "LIVE_RECONCILE_S", d.live_reconcile_s),
            live_stall_s=_float(env, "LIVE_STALL_S", d.live_stall_s),
            live_stall_m=_float(env, "LIVE_STALL_M", d.live_stall_m),
            trail_reads_at_once=_int(env, "TRAIL_READS_AT_ONCE", d.trail_reads_at_once),
            live_max_spectators_per_run=_int(env, "LIVE_MAX_SPECTATORS_PER_RUN", d.live_max_spectators_per_run),
            watch_queue_events=_int(env, "WATCH_QUEUE_EVENTS", d.watch_queue_events),
            live_link_key_file=env.get("LIVE_LINK_KEY_FILE", d.live_link_key_file),
            live_link_issuer=env.get("LIVE_LINK_ISSUER", d.live_link_issuer),
            live_link_audience=env.get("LIVE_LINK_AUDIENCE", d.live_link_audience),
            public_origin=env.get("PUBLIC_ORIGIN", d.public_origin),
            webhook_attempts=_int(env, "LIVE_WEBHOOK_ATTEMPTS", d.webhook_attempts),
            webhook_backoff_s=_float(env, "LIVE_WEBHOOK_BACKOFF_S", d.webhook_backoff_s),
            webhook_timeout_s=_float(env, "LIVE_WEBHOOK_TIMEOUT_S", d.webhook_timeout_s),
            webhook_allow_networks=env.get("LIVE_WEBHOOK_ALLOW_NETWORKS", d.webhook_allow_networks),
            webhook_threads=_int(env, "LIVE_WEBHOOK_THREADS", d.webhook_threads),
            webhook_per_receiver=_int(env, "LIVE_WEBHOOK_PER_RECEIVER", d.webhook_per_receiver),
            webhook_lease_s=_float(env, "LIVE_WEBHOOK_LEASE_S", d.webhook_lease_s),
            webhook_sweep_s=_float(env, "LIVE_WEBHOOK_SWEEP_S", d.webhook_sweep_s),
            webhook_allow_private=_choice(
                env, "LIVE_WEBHOOK_ALLOW_PRIVATE", ("0", "1"), "1" if d.webhook_allow_private else "0"
            )
            == "1",
        )
