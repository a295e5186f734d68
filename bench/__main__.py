"""scripts/bench: measured speed and memory on the dev stack (started when it is not running).

scripts/bench dashboard   seeds 10,000 users x 50 runs, then StopRun, GetRun, ListRuns (first
                          and deep pages) and GetUserStats (12 and 104 weeks) through Envoy with
                          16 concurrent clients, beside the same reads issued straight to PostgreSQL
scripts/bench ingest      unlogged batches vs concurrent inserts on the CQL store; streams through
                          Envoy (points/s, stream latency); how long until a live point is durable
scripts/bench day         a day of runners compressed into --minutes (default 10), run with a fixed
                          fleet and then with the autoscaler: cost, latency per phase, points lost;
                          JSON and a chart under .dev/bench/
scripts/bench auth        the cost of the token check: GetRun and 1-point streams through Envoy with
                          jwt_authn, against a second Envoy without it (same replicas), interleaved
scripts/bench phones --compare REF   the same on commit REF, then on this checkout (bench/compare.py)
scripts/bench watch       live runs followed by spectators (WatchRun through Envoy): latency from a
                          point to every watcher, CPU per point with and without watchers
scripts/bench phone       the Kotlin phone library (scripts/phone) through Toxiproxy: CPU and bytes on
                          the wire per point against a short run's, one point as protobuf and JSON, the jar
scripts/bench imports     memory per import of a 16 MiB GPX and TCX and a FIT of 100,000 records, as a
                          multiple of the file (no stack); four at once under the summary pod's cap

Every call through Envoy carries a token for its runner, signed by the stack's key.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import random
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import grpc
import psycopg
from psycopg_pool import AsyncConnectionPool

from devstack import procs
from devstack.auth import token_channel
from devstack.paths import ROOT
from devstack.stack import Stack, cluster_test_spec, dev_spec
from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from runtrack_client import RunRecorder
from runtrack_common import queries
from summary_service.pg_store import HERE as SUMMARY_DIR

BENCH_USERS = 10_000
RUNS_PER_USER = 50
UTC = dt.UTC


@dataclass
class Result:
    name: str
    latencies_ms: list[float]
    seconds: float

    def row(self) -> str:
        lat = sorted(self.latencies_ms)
        p50 = statistics.median(lat)
        p99 = _p99(lat)
        return f"{self.name:34} {len(lat):7d} {len(lat) / self.seconds:9.0f}/s {p50:8.2f} {p99:8.2f}"


HEADER = f"{'method':34} {'calls':>7} {'throughput':>11} {'p50 ms':>8} {'p99 ms':>8}"


THINK_S = 0.0  # pause of each client between calls (--think-ms): 0 is a closed loop at full speed


async def drive(
    name: str, make_call: Callable[[int], Awaitable[object]], *, calls: int, concurrency: int = 16
) -> Result:
    latencies: list[float] = []
    counter = iter(range(calls))

    async def worker() -> None:
        for i in counter:
            t0 = time.perf_counter()
            await make_call(i)
            latencies.append((time.perf_counter() - t0) * 1000)
            if THINK_S:
                await asyncio.sleep(THINK_S)

    for i in range(min(50, calls)):  # warm up connections and plans
        await make_call(i)
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Result(name, latencies, time.perf_counter() - start)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- dashboard ---------------------------------------------------------------------------------


def seed(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM runs WHERE user_id LIKE 'bench-%'").fetchone()
        have = row[0] if row else 0
        if have >= BENCH_USERS * RUNS_PER_USER:
            say(f"seed: {have} bench runs already there")
            return
        conn.execute("DELETE FROM runs WHERE user_id LIKE 'bench-%'")
        say(f"seed: {BENCH_USERS} users x {RUNS_PER_USER} runs ...")
        t0 = time.perf_counter()
        rng = random.Random(7)
        now = dt.datetime.now(UTC)
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY runs (run_id, user_id, start_time, end_time, distance_m, moving_time_us, elevation_gain_m,"
                " point_count, avg_heart_rate_bpm, polyline) FROM STDIN"
            ) as copy,
        ):
            for u in range(BENCH_USERS):
                user = f"bench-{u:05d}"
                for _ in range(RUNS_PER_USER):
                    start = now - dt.timedelta(seconds=rng.randrange(2 * 365 * 86400))
                    minutes = rng.randrange(15, 120)
                    copy.write_row(
                        (
                            uuid.UUID(int=rng.getrandbits(128), version=4),
                            user,
                            start,
                            start + dt.timedelta(minutes=minutes),
                            minutes * 180.0,
                            (minutes * 60 - 30) * 1_000_000,
                            rng.random() * 200,
                            minutes * 60,
                            150.0,
                            "",
                        )
                    )
        conn.execute("ANALYZE runs")
        say(f"seed: done in {time.perf_counter() - t0:.1f}s")


async def bench_dashboard(stack: Stack, calls: int) -> None:
    url = stack.database_url
    await asyncio.to_thread(seed, url)
    with psycopg.connect(url) as conn:
        owned = [
            (str(r[0]), r[1])
            for r in conn.execute(
                "SELECT run_id, user_id FROM runs WHERE user_id LIKE 'bench-%' ORDER BY random() LIMIT 5000"
            )
        ]
    users = [f"bench-{u:05d}" for u in range(BENCH_USERS)]
    rng = random.Random(11)
    auth = {u: stack.issuer.metadata(u, ttl_s=6 * 3600) for u in users}
    channels = [grpc.aio.insecure_channel(stack.envoy_address) for _ in range(4)]
    stubs = [summary_pb2_grpc.SummaryServiceStub(c) for c in channels]

    def s(i: int) -> summary_pb2_grpc.SummaryServiceAsyncStub:
        return stubs[i % len(stubs)]

    deep_tokens: dict[str, str] = {}
    for user in users[:300]:
        page = await s(0).ListRuns(summary_pb2.ListRunsRequest(user_id=user, page_size=20), metadata=auth[user])
        page = await s(0).ListRuns(
            summary_pb2.ListRunsRequest(user_id=user, page_size=20, page_token=page.next_page_token),
            metadata=auth[user],
        )
        deep_tokens[user] = page.next_page_token
    deep_users = list(deep_tokens)

    def overview() -> summary_pb2.RunOverview:
        start = int(time.time()) - rng.randrange(86400 * 30)
        o = summary_pb2.RunOverview(distance_m=5000, point_count=1800, elevation_gain_m=10)
        o.start_time.seconds, o.end_time.seconds, o.moving_time.seconds = start, start + 1800, 1700
        return o

    grpc_results = [
        await drive(
            "StopRun",
            lambda i: s(i).StopRun(
                summary_pb2.StopRunRequest(
                    run_id=str(uuid.uuid4()), user_id=(u := rng.choice(users)), overview=overview()
                ),
                metadata=auth[u],
            ),
            calls=calls,
        ),
        await drive(
            "GetRun",
            lambda i: s(i).GetRun(
                summary_pb2.GetRunRequest(run_id=(run := rng.choice(owned))[0]), metadata=auth[run[1]]
            ),
            calls=calls,
        ),
        await drive(
            "ListRuns first page",
            lambda i: s(i).ListRuns(summary_pb2.ListRunsRequest(user_id=(u := rng.choice(users))), metadata=auth[u]),
            calls=calls,
        ),
        await drive(
            "ListRuns deep page (runs 41-50)",
            lambda i: s(i).ListRuns(
                summary_pb2.ListRunsRequest(
                    user_id=(u := rng.choice(deep_users)), page_size=20, page_token=deep_tokens[u]
                ),
                metadata=auth[u],
            ),
            calls=calls,
        ),
        await drive(
            "GetUserStats 12 weeks",
            lambda i: s(i).GetUserStats(
                summary_pb2.GetUserStatsRequest(user_id=(u := rng.choice(users)), time_zone="Europe/Paris"),
                metadata=auth[u],
            ),
            calls=calls,
        ),
        await drive(
            "GetUserStats 104 weeks",
            lambda i: s(i).GetUserStats(
                summary_pb2.GetUserStatsRequest(user_id=(u := rng.choice(users)), time_zone="Europe/Paris", weeks=104),
                metadata=auth[u],
            ),
            calls=calls,
        ),
    ]
    for c in channels:
        await c.close()

    q = queries.load(SUMMARY_DIR / "queries.sql")
    async with AsyncConnectionPool(url, min_size=16, max_size=16, open=False) as pool:
        await pool.open(wait=True)

        async def sql(query: str, params: dict[str, Any]) -> None:
            async with pool.connection() as conn:
                await (await conn.execute(query, params)).fetchall()

        floor = [
            await drive("SQL get_run", lambda i: sql(q["get_run"], {"run_id": rng.choice(owned)[0]}), calls=calls),
            await drive(
                "SQL list_runs_first",
                lambda i: sql(q["list_runs_first"], {"user_id": rng.choice(users), "limit": 21}),
                calls=calls,
            ),
            await drive(
                "SQL user_stats 12 weeks",
                lambda i: sql(q["user_stats"], {"user_id": rng.choice(users), "tz": "Europe/Paris", "weeks": 12}),
                calls=calls,
            ),
            await drive(
                "SQL user_stats 104 weeks",
                lambda i: sql(q["user_stats"], {"user_id": rng.choice(users), "tz": "Europe/Paris", "weeks": 104}),
                calls=calls,
            ),
        ]
    seeded = BENCH_USERS * RUNS_PER_USER
    print(f"\ndashboard: {seeded} seeded runs, 16 concurrent clients, through Envoy ({stack.envoy_address})")
    print(HEADER)
    for r in grpc_results:
        print(r.row())
    print("\nfloor: the same reads straight to PostgreSQL (psycopg pool of 16)")
    print(HEADER)
    for r in floor:
        print(r.row())


# ---- ingest ---------------------------------------------------------------------------------------


def _points(n: int, start_s: int) -> list[tracking_pb2.TrackPoint]:
    out = []
    for seq in range(1, n + 1):
        p = tracking_pb2.TrackPoint(
            seq=seq,
            latitude=48.85 + seq * 1e-5,
            longitude=2.35 + seq * 1e-5,
            altitude_m=35.0,
            horizontal_accuracy_m=4.0,
            speed_mps=3.0,
            heart_rate_bpm=150,
        )
        p.time.seconds = start_s + seq
        out.append(p)
    return out


async def bench_store_modes(stack: Stack) -> None:
    from runtrack_common.config import Settings
    from tracking_service import cql_session, cql_store
    from tracking_service.cql_session import CqlSession
    from tracking_service.cql_store import CqlTrackStore
    from tracking_service.domain import Point

    class PerPointStore(CqlTrackStore):
        """The store's writes as one insert per point, what its unlogged batches are measured against."""

        async def write_points(self, run_id: uuid.UUID, points: Any) -> None:
            session, insert = self.cql.ready(), self.cql.q.insert_point
            await asyncio.gather(
                *(cql_session._execute(session, insert, cql_store.point_values(run_id, p)) for p in points)
            )

    print("\nCQL store: 40 runs x 2,000 points, 8 writes of 100 points in flight per run")
    for mode, kind in (("batch", CqlTrackStore), ("concurrent", PerPointStore)):
        settings = Settings.from_env(
            {
                "SCYLLA_HOSTS": stack.scylla_hosts,
                "SCYLLA_PORT": str(stack.scylla_port),
                "SCYLLA_KEYSPACE": stack.spec.keyspace,
            }
        )
        store = kind(CqlSession(settings))
        await store.ensure_ready()
        now_ms = int(time.time() * 1000) - 3_600_000
        slots = asyncio.Semaphore(8 * 40)

        async def one_run(store: CqlTrackStore = store, slots: asyncio.Semaphore = slots, now_ms: int = now_ms) -> None:
            rid = uuid.uuid4()
            pts = [
                Point(seq=s, time_ms=now_ms + s * 1000, latitude=48.0, longitude=2.0, speed_mps=3.0)
                for s in range(1, 2001)
            ]
            per_run = asyncio.Semaphore(8)

            async def write(batch: list[Point]) -> None:
                async with per_run, slots:
                    await store.write_points(rid, batch)

            await asyncio.gather(*(write(pts[i : i + 100]) for i in range(0, len(pts), 100)))

        t0 = time.perf_counter()
        await asyncio.gather(*(one_run() for _ in range(40)))
        took = time.perf_counter() - t0
        print(f"  {mode:10} {80_000 / took:9.0f} points/s  ({took:.2f}s)")
        await store.close()


async def bench_streams(stack: Stack, streams: int, points: int, live_points: int = 40) -> dict[str, float]:
    channels = [grpc.aio.insecure_channel(stack.envoy_address) for _ in range(4)]
    start_s = int(time.time()) - 2 * 3600
    payload = _points(points, start_s)
    latencies: list[float] = []

    retries = 0

    async def one(i: int) -> None:
        """A phone uploading a backlog with the reference client: a store that times out under the
        load (UNAVAILABLE) is waited out and resumed from the cursor, as the app would."""
        nonlocal retries
        async with token_channel(stack.envoy_address, stack.issuer.token(f"bench-ingest-{i}")) as channel:
            recorder = RunRecorder(channel, str(uuid.uuid4()), "", points_per_message=50)
            recorder.record(payload)
            t0 = time.perf_counter()
            r = await recorder.upload()
            latencies.append((time.perf_counter() - t0) * 1000)
            retries += recorder.stats.retries
        assert r.contiguous_seq == points, r

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(streams)))
    took = time.perf_counter() - t0
    lat = sorted(latencies)
    figures: dict[str, float] = {"points_per_s": streams * points / took, "stream_retries": retries}
    print(f"\nthrough Envoy: {streams} concurrent streams x {points} points (messages of 50)")
    print(
        f"  {streams * points / took:9.0f} points/s stored; whole-stream time p50 {statistics.median(lat):.0f} ms,"
        f" max {lat[-1]:.0f} ms; {retries} streams resumed after UNAVAILABLE"
    )

    # Durability delay: one point per message on a live stream, then poll the cursor until it is durable.
    stub = tracking_pb2_grpc.TrackingServiceStub(channels[0])
    rid = str(uuid.uuid4())
    live = _points(live_points, start_s)
    owner = stack.issuer.metadata("bench-durability")
    call = stub.RecordTrack(metadata=owner)
    delays: list[float] = []
    for k, p in enumerate(live):
        req = tracking_pb2.RecordTrackRequest(points=[p])
        if k == 0:
            req.run_id, req.user_id = rid, "bench-durability"
        t0 = time.perf_counter()
        await call.write(req)
        while True:
            try:
                cursor = await stub.GetTrackCursor(tracking_pb2.GetTrackCursorRequest(run_id=rid), metadata=owner)
                if cursor.contiguous_seq >= p.seq:
                    break
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            await asyncio.sleep(0.005)
        delays.append((time.perf_counter() - t0) * 1000)
    await call.done_writing()
    await call
    d = sorted(delays)
    figures.update(durable_p50_ms=statistics.median(d), durable_p99_ms=_p99(d), durable_max_ms=d[-1])
    print(
        f"  a live point durable after: p50 {statistics.median(d):.0f} ms, p99 {_p99(d):.0f} ms, max {d[-1]:.0f} ms"
        f" (write linger + write + a cursor poll every 5 ms)"
    )
    for c in channels:
        await c.close()
    return figures


def replica_memory(stack: Stack) -> None:
    print("\nreplica memory (VmHWM peak / VmRSS now, MiB):")
    for svc, ports in stack.replica_ports().items():
        for port in ports:
            pid = stack.replica_pid(svc, port)
            if pid is None:
                continue
            vals = procs.memory_mb(pid)
            print(f"  {svc}:{port}  {vals.get('VmHWM', 0):.0f} / {vals.get('VmRSS', 0):.0f}")


async def bench_ingest(stack: Stack, streams: int, points: int) -> None:
    await bench_store_modes(stack)
    await bench_streams(stack, streams, points)
    replica_memory(stack)


def bench_ingest_cluster(stack: Stack, streams: int, points: int) -> None:
    """Streams through Envoy on the one-node store (RF 1), then on a three-node cluster (RF 3,
    LOCAL_QUORUM) started beside it for the comparison: throughput and time to durable."""
    one = asyncio.run(bench_streams(stack, streams, points, live_points=200))
    stack.down()  # the machine's two cores for the cluster alone; `scripts/dev up` brings it back
    spec = replace(
        cluster_test_spec(),
        name="bench-cluster",
        state=ROOT / ".dev" / "bench-cluster",
        logs=ROOT / ".dev" / "logs" / "bench-cluster",
    )
    cluster = Stack(spec)
    say("starting a three-node CQL cluster beside the dev stack for the comparison")
    cluster.up()
    try:
        three = asyncio.run(bench_streams(cluster, streams, points, live_points=200))
    finally:
        cluster.down()
    print(f"\n{'':34} {'1 node, RF 1':>14} {'3 nodes, RF 3':>14}")
    for key, label in (
        ("points_per_s", "points/s through Envoy"),
        ("durable_p50_ms", "live point durable p50 (ms)"),
        ("durable_p99_ms", "live point durable p99 (ms)"),
        ("durable_max_ms", "live point durable max (ms)"),
        ("stream_retries", "streams resumed (store overloaded)"),
    ):
        print(f"{label:34} {one[key]:14.0f} {three[key]:14.0f}")


# ---- auth -----------------------------------------------------------------------------------------


async def _until_serving(
    stub: summary_pb2_grpc.SummaryServiceAsyncStub, request: Any, metadata: Any, timeout_s: float = 30.0
) -> Any:
    """Retries `GetRun` until the listener routes it (a new Envoy health-checks its hosts first)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await stub.GetRun(request, metadata=metadata)
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def bench_auth(stack: Stack, calls: int, rounds: int) -> None:
    """GetRun and 1-point streams through Envoy with jwt_authn, and through a second Envoy on the
    same replicas without it (the client names itself in x-runtrack-user, as Envoy would), in
    alternating rounds so both see the same machine."""
    user = "bench-auth"
    baseline = replace(
        stack.spec.layout, auth=None, listen_port=stack.spec.envoy_port + 1, admin_port=stack.spec.envoy_admin_port + 1
    )
    pid = stack.start_envoy(baseline, name="envoy-bench-no-auth")
    variants = {
        "token checked": (stack.envoy_address, stack.issuer.metadata(user, ttl_s=6 * 3600)),
        "no token check": (f"127.0.0.1:{baseline.listen_port}", (("x-runtrack-user", user),)),
    }
    channels = {label: grpc.aio.insecure_channel(address) for label, (address, _) in variants.items()}
    try:
        run_id = str(uuid.uuid4())
        owner = variants["token checked"][1]
        tracking = tracking_pb2_grpc.TrackingServiceStub(channels["token checked"])
        start_s = int(time.time()) - 3600
        await tracking.RecordTrack(
            iter([tracking_pb2.RecordTrackRequest(run_id=run_id, points=_points(10, start_s))]), metadata=owner
        )
        o = summary_pb2.RunOverview(distance_m=5000, point_count=10)
        o.start_time.seconds, o.end_time.seconds, o.moving_time.seconds = start_s, start_s + 1800, 1700
        summary = summary_pb2_grpc.SummaryServiceStub(channels["token checked"])
        await summary.StopRun(summary_pb2.StopRunRequest(run_id=run_id, overview=o), metadata=owner)
        get = summary_pb2.GetRunRequest(run_id=run_id)
        for label, (_, metadata) in variants.items():
            await _until_serving(summary_pb2_grpc.SummaryServiceStub(channels[label]), get, metadata)

        results: dict[tuple[str, str], Result] = {}

        def merge(r: Result, label: str) -> None:
            key = (r.name, label)
            if key in results:
                results[key].latencies_ms += r.latencies_ms
                results[key].seconds += r.seconds
            else:
                results[key] = r

        async def one_point_stream(stub: tracking_pb2_grpc.TrackingServiceAsyncStub, metadata: Any) -> None:
            request = tracking_pb2.RecordTrackRequest(run_id=str(uuid.uuid4()), points=_points(1, start_s))
            reply = await stub.RecordTrack(iter([request]), metadata=metadata)
            assert reply.contiguous_seq == 1, reply

        live = _points(500, start_s)

        async def live_stream(stub: tracking_pb2_grpc.TrackingServiceAsyncStub, metadata: Any) -> float:
            """A phone's live stream: 500 messages of one point; ms per message until all durable."""

            async def messages() -> AsyncIterator[tracking_pb2.RecordTrackRequest]:
                yield tracking_pb2.RecordTrackRequest(run_id=str(uuid.uuid4()), points=live[:1])
                for p in live[1:]:
                    yield tracking_pb2.RecordTrackRequest(points=[p])

            t0 = time.perf_counter()
            reply = await stub.RecordTrack(messages(), metadata=metadata)
            assert reply.contiguous_seq == len(live), reply
            return (time.perf_counter() - t0) * 1000 / len(live)

        per_message: dict[str, list[float]] = {label: [] for label in variants}
        for k in range(rounds):
            say(f"auth: round {k + 1} of {rounds}")
            for label, (_, metadata) in variants.items():
                sstub: Any = summary_pb2_grpc.SummaryServiceStub(channels[label])
                tstub: Any = tracking_pb2_grpc.TrackingServiceStub(channels[label])
                merge(
                    await drive(
                        "GetRun",
                        functools.partial(lambda stub, md, _i: stub.GetRun(get, metadata=md), sstub, metadata),
                        calls=calls,
                    ),
                    label,
                )
                merge(
                    await drive(
                        "1-point stream (open, 1 point, reply)",
                        functools.partial(lambda stub, md, _i: one_point_stream(stub, md), tstub, metadata),
                        calls=calls // 4,
                    ),
                    label,
                )
                per_message[label].append(await live_stream(tstub, metadata))
    finally:
        for channel in channels.values():
            await channel.close()
        procs.stop(pid, timeout=10)

    print(
        f"\nauth: through Envoy with jwt_authn (ES256) vs without, same replicas,"
        f" {rounds} alternating rounds, 16 clients"
    )
    print(f"{'':16}{HEADER}")
    for (_, label), r in results.items():
        print(f"{label:16}{r.row()}")
    print("\ncost of the token check (with / without):")
    for name in dict.fromkeys(name for name, _ in results):
        with_, without = results[(name, "token checked")], results[(name, "no token check")]
        p50 = statistics.median(with_.latencies_ms) / statistics.median(without.latencies_ms)
        p99 = _p99(with_.latencies_ms) / _p99(without.latencies_ms)
        print(f"  {name:40} p50 x{p50:.2f}  p99 x{p99:.2f}")
    checked, plain = (statistics.median(v) for v in per_message.values())
    print(
        f"  {'live stream, 500 one-point messages':40} {checked:.2f} vs {plain:.2f} ms per message"
        f" (x{checked / plain:.2f}; the token is checked once, when the stream opens)"
    )


def _p99(latencies: list[float]) -> float:
    lat = sorted(latencies)
    return lat[min(len(lat) - 1, int(len(lat) * 0.99))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    d = sub.add_parser("dashboard")
    d.add_argument("--calls", type=int, default=3000, help="calls per method")
    d.add_argument("--think-ms", type=float, default=0.0, help="pause of each client between calls")
    i = sub.add_parser("ingest")
    i.add_argument("--streams", type=int, default=64)
    i.add_argument("--points", type=int, default=2000)
    i.add_argument("--cql-nodes", type=int, choices=(1, 3), default=1, help="3: also on a three-node cluster, beside")
    day = sub.add_parser("day")
    day.add_argument("--minutes", type=float, default=10.0, help="real minutes for one simulated day")
    day.add_argument("--peak", type=float, default=1.2, help="new runs per second at the morning peak")
    day.add_argument("--fixed", type=int, default=4, help="replicas of each service in the fixed fleet")
    day.add_argument("--target", action="append", default=[], metavar="SERVICE=VALUE", help="autoscaler targets")
    ph = sub.add_parser("phones", help="live phones at 1 Hz through Envoy, stepped up to the ceiling")
    ph.add_argument("--max", type=int, default=4000, help="most phones (default 4000)")
    ph.add_argument("--step", type=int, default=1000, help="phones added each step (default 1000)")
    ph.add_argument("--start", type=int, default=0, help="phones of the first step (default: --step)")
    ph.add_argument(
        "--seconds", type=float, default=30.0, help="seconds each phone streams (at least the ramp plus 20)"
    )
    ph.add_argument("--ramp-rate", type=float, default=250.0, help="phones starting per second (default 250)")
    ph.add_argument(
        "--compare",
        metavar="REF",
        help="the same bench on commit REF (a worktree of its own, its own stack), then on this checkout; both printed",
    )
    trc = sub.add_parser("traces", help="CPU per point with traces on at the default sampling, against off")
    trc.add_argument("--phones", type=int, default=2000, help="phones at 1 Hz (default 2000)")
    trc.add_argument("--seconds", type=float, default=40.0, help="seconds each phone streams (default 40)")
    trc.add_argument("--rounds", type=int, default=2, help="rounds of off then on (default 2)")
    trc.add_argument("--ramp-rate", type=float, default=250.0, help="phones starting per second (default 250)")
    w = sub.add_parser("watch", help="live runs followed by spectators with WatchRun, against none")
    w.add_argument("--runs", type=int, default=1000, help="live runs, one phone each at 1 Hz (default 1000)")
    w.add_argument("--watchers", type=int, default=0, help="spectators, spread over the runs (default 10 per run)")
    w.add_argument("--seconds", type=float, default=60.0, help="the steady window with watchers (default 60)")
    w.add_argument(
        "--baseline-seconds", type=float, default=20.0, help="the window before, phones alone (default 20; 0: none)"
    )
    w.add_argument("--ramp-rate", type=float, default=250.0, help="phones starting per second (default 250)")
    w.add_argument("--watch-rate", type=float, default=1000.0, help="watchers starting per second (default 1000)")
    w.add_argument("--replicas", type=int, default=2, help="tracking replicas (default 2)")
    w.add_argument(
        "--no-stop-runs", dest="stop_runs", action="store_false", help="end without StopRun (watchers cancelled)"
    )
    f = sub.add_parser("files", help="GPX/TCX/FIT import and export through Envoy, and the analysis's CPU")
    f.add_argument("--points", type=int, default=3600, help="fixes per file (default 3600: an hour)")
    f.add_argument("--files", type=int, default=6, help="files per format (default 6)")
    f.add_argument("--clients", type=int, default=2, help="clients at once (default 2)")
    f.add_argument("--repeats", type=int, default=5, help="analysis runs per length (default 5)")
    fl = sub.add_parser("flood", help="other runners' calls while one token floods, against the same calls quiet")
    fl.add_argument("--rounds", type=int, default=3)
    t = sub.add_parser("tls", help="TLS handshakes and calls at Envoy against plaintext, alternating rounds")
    t.add_argument("--connections", type=int, default=2000, help="new connections per round (default 2000)")
    t.add_argument("--calls", type=int, default=5000, help="GetRun calls per round (default 5000)")
    t.add_argument("--rounds", type=int, default=3)
    tr = sub.add_parser("trim", help="a stranger's read of a trail trimmed by privacy zones, against the owner's")
    tr.add_argument("--points", type=int, default=100_000, help="points in the trail (default 100,000)")
    tr.add_argument("--repeats", type=int, default=3, help="reads of each kind, the median reported (default 3)")
    pho = sub.add_parser("phone", help="the Kotlin phone library's CPU and bytes on the wire per point, its jar")
    pho.add_argument("--minutes", type=float, default=20.0, help="the measured route (one fix a second)")
    pho.add_argument("--baseline-minutes", type=float, default=2.0, help="the short route taken away")
    pho.add_argument("--rate", type=float, default=20.0, help="fixes recorded a second")
    a = sub.add_parser("auth")
    a.add_argument("--calls", type=int, default=2000, help="GetRun calls per round (streams: a quarter)")
    a.add_argument("--rounds", type=int, default=3)
    sub.add_parser(
        "imports", help="memory per import (GPX, TCX, FIT) as a multiple of the file, and 4 at once under the pod's cap"
    )
    args = parser.parse_args(argv)
    if args.what == "imports":  # no stack: the import's own process, measured and capped
        from bench import imports as bench_imports

        bench_imports.run(ROOT / ".dev" / "bench")
        return 0
    if args.what == "phones" and args.compare:
        from bench import compare

        compare.run(args.compare, compare.bench_args(list(sys.argv[1:] if argv is None else argv)))
        return 0
    stack = Stack(dev_spec())
    stack.up()
    if args.what == "dashboard":
        global THINK_S
        THINK_S = args.think_ms / 1000
        print(
            f"clients pause {args.think_ms:g} ms between calls"
            if args.think_ms
            else "closed loop: no pause between calls"
        )
        asyncio.run(bench_dashboard(stack, args.calls))
    elif args.what == "day":
        from bench.day import DayConfig, run_day

        config = DayConfig(minutes=args.minutes, peak_arrivals_per_s=args.peak, fixed=args.fixed)
        for item in args.target:
            svc, _, value = item.partition("=")
            if svc == "tracking":
                config.tracking_target = float(value)
            elif svc == "summary":
                config.summary_target = float(value)
            else:
                parser.error(f"--target {item!r}: tracking=N or summary=N")
        run_day(stack, config, ROOT / ".dev" / "bench")
    elif args.what == "phones":
        from bench import phones as bench_phones

        first = args.start or args.step
        steps = list(range(first, args.max + 1, args.step)) or [args.max]
        bench_phones.run(stack, steps, args.seconds, ROOT / ".dev" / "bench", args.ramp_rate)
    elif args.what == "traces":
        from bench import traces as bench_traces

        bench_traces.run(stack, args.phones, args.seconds, args.rounds, ROOT / ".dev" / "bench", args.ramp_rate)
    elif args.what == "watch":
        from bench import watch as bench_watch

        watch_config = bench_watch.WatchConfig(
            runs=args.runs,
            watchers=args.watchers or 10 * args.runs,
            seconds=args.seconds,
            baseline_s=args.baseline_seconds,
            ramp_rate=args.ramp_rate,
            watch_rate=args.watch_rate,
            replicas=args.replicas,
            stop_runs=args.stop_runs,
        )
        bench_watch.run(stack, watch_config, ROOT / ".dev" / "bench")
    elif args.what == "files":
        from bench import files as bench_files

        bench_files.run(stack, args.points, args.files, args.clients, args.repeats, ROOT / ".dev" / "bench")
    elif args.what == "flood":
        from bench import flood as bench_flood

        bench_flood.run(stack, args.rounds, ROOT / ".dev" / "bench")
    elif args.what == "tls":
        from bench import tls as bench_tls

        bench_tls.run(stack, args.connections, args.calls, args.rounds, ROOT / ".dev" / "bench")
    elif args.what == "trim":
        from bench import trim as bench_trim

        bench_trim.run(stack, args.points, args.repeats, ROOT / ".dev" / "bench")
    elif args.what == "phone":
        from bench import phone as bench_phone

        bench_phone.run(stack, args.minutes, args.baseline_minutes, args.rate, ROOT / ".dev" / "bench")
    elif args.what == "auth":
        asyncio.run(bench_auth(stack, args.calls, args.rounds))
    elif args.cql_nodes == 3:
        bench_ingest_cluster(stack, args.streams, args.points)
    else:
        asyncio.run(bench_ingest(stack, args.streams, args.points))
    if args.what == "dashboard":
        replica_memory(stack)
    return 0


if __name__ == "__main__":
    sys.exit(main())
