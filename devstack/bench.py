"""scripts/bench: measured speed and memory on the dev stack (started when it is not running).

scripts/bench dashboard   seeds 10,000 users x 50 runs, then StopRun, GetRun, ListRuns (first
                          and deep pages) and GetUserStats (12 and 104 weeks) through Envoy with
                          16 concurrent clients, beside the same reads issued straight to PostgreSQL
scripts/bench ingest      unlogged batches vs concurrent inserts on the CQL store; streams through
                          Envoy (points/s, stream latency); how long until a live point is durable
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import psycopg
from psycopg_pool import AsyncConnectionPool

from devstack import procs
from devstack.stack import Stack, dev_spec
from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
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
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
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
        have = conn.execute("SELECT count(*) FROM runs WHERE user_id LIKE 'bench-%'").fetchone()[0]
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
        run_ids = [
            r[0]
            for r in conn.execute("SELECT run_id FROM runs WHERE user_id LIKE 'bench-%' ORDER BY random() LIMIT 5000")
        ]
    users = [f"bench-{u:05d}" for u in range(BENCH_USERS)]
    rng = random.Random(11)
    channels = [grpc.aio.insecure_channel(stack.envoy_address) for _ in range(4)]
    stubs = [summary_pb2_grpc.SummaryServiceStub(c) for c in channels]

    def s(i: int):
        return stubs[i % len(stubs)]

    deep_tokens: dict[str, str] = {}
    for user in users[:300]:
        page = await s(0).ListRuns(summary_pb2.ListRunsRequest(user_id=user, page_size=20))
        page = await s(0).ListRuns(
            summary_pb2.ListRunsRequest(user_id=user, page_size=20, page_token=page.next_page_token)
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
                summary_pb2.StopRunRequest(run_id=str(uuid.uuid4()), user_id=rng.choice(users), overview=overview())
            ),
            calls=calls,
        ),
        await drive(
            "GetRun", lambda i: s(i).GetRun(summary_pb2.GetRunRequest(run_id=str(rng.choice(run_ids)))), calls=calls
        ),
        await drive(
            "ListRuns first page",
            lambda i: s(i).ListRuns(summary_pb2.ListRunsRequest(user_id=rng.choice(users))),
            calls=calls,
        ),
        await drive(
            "ListRuns deep page (runs 41-50)",
            lambda i: s(i).ListRuns(
                summary_pb2.ListRunsRequest(
                    user_id=(u := rng.choice(deep_users)), page_size=20, page_token=deep_tokens[u]
                )
            ),
            calls=calls,
        ),
        await drive(
            "GetUserStats 12 weeks",
            lambda i: s(i).GetUserStats(
                summary_pb2.GetUserStatsRequest(user_id=rng.choice(users), time_zone="Europe/Paris")
            ),
            calls=calls,
        ),
        await drive(
            "GetUserStats 104 weeks",
            lambda i: s(i).GetUserStats(
                summary_pb2.GetUserStatsRequest(user_id=rng.choice(users), time_zone="Europe/Paris", weeks=104)
            ),
            calls=calls,
        ),
    ]
    for c in channels:
        await c.close()

    q = queries.load(SUMMARY_DIR / "queries.sql")
    async with AsyncConnectionPool(url, min_size=16, max_size=16, open=False) as pool:
        await pool.open(wait=True)

        async def sql(query: str, params: dict) -> None:
            async with pool.connection() as conn:
                await (await conn.execute(query, params)).fetchall()

        floor = [
            await drive("SQL get_run", lambda i: sql(q["get_run"], {"run_id": rng.choice(run_ids)}), calls=calls),
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
    from tracking_service.cql_store import CqlTrackStore
    from tracking_service.domain import Point

    print("\nCQL store: 40 runs x 2,000 points, 8 writes of 100 points in flight per run")
    for mode in ("batch", "concurrent"):
        settings = Settings.from_env(
            {
                "SCYLLA_HOSTS": stack.scylla_hosts,
                "SCYLLA_PORT": str(stack.scylla_port),
                "SCYLLA_KEYSPACE": stack.spec.keyspace,
                "TRACK_WRITE_MODE": mode,
            }
        )
        store = CqlTrackStore(settings)
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

            async def write(batch):
                async with per_run, slots:
                    await store.write_points(rid, batch)

            await asyncio.gather(*(write(pts[i : i + 100]) for i in range(0, len(pts), 100)))

        t0 = time.perf_counter()
        await asyncio.gather(*(one_run() for _ in range(40)))
        took = time.perf_counter() - t0
        print(f"  {mode:10} {80_000 / took:9.0f} points/s  ({took:.2f}s)")
        await store.close()


async def bench_streams(stack: Stack, streams: int, points: int) -> None:
    channels = [grpc.aio.insecure_channel(stack.envoy_address) for _ in range(4)]
    start_s = int(time.time()) - 2 * 3600
    payload = _points(points, start_s)
    latencies: list[float] = []

    async def one(i: int) -> None:
        stub = tracking_pb2_grpc.TrackingServiceStub(channels[i % 4])
        rid = str(uuid.uuid4())

        async def gen():
            for k in range(0, points, 50):
                req = tracking_pb2.RecordTrackRequest(points=payload[k : k + 50])
                if k == 0:
                    req.run_id, req.user_id = rid, f"bench-ingest-{i}"
                yield req

        t0 = time.perf_counter()
        r = await stub.RecordTrack(gen())
        latencies.append((time.perf_counter() - t0) * 1000)
        assert r.points_stored == points and r.contiguous_seq == points, r

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(streams)))
    took = time.perf_counter() - t0
    lat = sorted(latencies)
    print(f"\nthrough Envoy: {streams} concurrent streams x {points} points (messages of 50)")
    print(
        f"  {streams * points / took:9.0f} points/s stored; whole-stream time p50 {statistics.median(lat):.0f} ms,"
        f" max {lat[-1]:.0f} ms"
    )

    # Durability delay: one point per message on a live stream, then poll the cursor until it is durable.
    stub = tracking_pb2_grpc.TrackingServiceStub(channels[0])
    rid = str(uuid.uuid4())
    live = _points(40, start_s)
    call = stub.RecordTrack()
    delays: list[float] = []
    for k, p in enumerate(live):
        req = tracking_pb2.RecordTrackRequest(points=[p])
        if k == 0:
            req.run_id, req.user_id = rid, "bench-durability"
        t0 = time.perf_counter()
        await call.write(req)
        while True:
            try:
                c = await stub.GetTrackCursor(tracking_pb2.GetTrackCursorRequest(run_id=rid))
                if c.contiguous_seq >= p.seq:
                    break
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            await asyncio.sleep(0.005)
        delays.append((time.perf_counter() - t0) * 1000)
    await call.done_writing()
    await call
    d = sorted(delays)
    print(
        f"  a live point durable after: p50 {statistics.median(d):.0f} ms, max {d[-1]:.0f} ms"
        f" (write linger + write + a cursor poll every 5 ms)"
    )
    for c in channels:
        await c.close()


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
    args = parser.parse_args(argv)
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
    else:
        asyncio.run(bench_ingest(stack, args.streams, args.points))
    if args.what == "dashboard":
        replica_memory(stack)
    return 0


if __name__ == "__main__":
    sys.exit(main())
