"""`scripts/bench trim`: what a non-owner's read of a trail trimmed by privacy zones costs, against
the owner's read of the same trail, through Envoy, in the same run.

A runner records a trail of `points` points (default 100,000), sets 10 privacy zones and makes the
run PUBLIC. Two shapes: `edges`, the first and last 10 % inside a zone (home, work) and the rest
outside; `inside`, every point inside a zone (a stranger sees nothing, and every point must be
decided). For each: the owner reads every page of GetTrack (10,000 a page), then a stranger does;
wall time and the tracking replicas' CPU per read, and the ratio. Then ten strangers read at once
while each replica's health is asked every 20 ms straight at its port, from a process of its own (and
for 3 s idle before): p50, p99 and the slowest answer. The old rule (a geodesic per point and zone) is
timed in this process on the same points for comparison.
Figures go to .dev/bench/trim-<time>.json.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.field_mask_pb2 import FieldMask
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.sampling import cpu_seconds
from devstack.auth import token_channel
from devstack.stack import Stack
from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from tracking_service.domain import Point
from tracking_service.privacy import Zone, inside_any
from tracking_service.tracks import RANGE_TTL_S

HOME = (48.8566, 2.3522)
DEG_PER_M = 1 / 111_195.0
ZONES = [Zone(HOME[0] + 0.02 * k, HOME[1], 300.0) for k in range(10)]
PAGE = 10_000
READERS = 10


def _near(zone: Zone, rng: random.Random) -> tuple[float, float]:
    """A place well inside the zone (within 60 % of its radius)."""
    r = zone.radius_m * 0.6 * rng.random()
    return zone.latitude + r * DEG_PER_M, zone.longitude


def trail(shape: str, n: int, seed: int = 7) -> list[tracking_pb2.TrackPoint]:
    rng = random.Random(seed)
    start = int(time.time()) - n - 60
    out = []
    edge = n // 10
    for seq in range(1, n + 1):
        if shape == "inside" or seq <= edge or seq > n - edge:
            lat, lon = _near(ZONES[(seq // 10_000) % len(ZONES)], rng)
        else:  # out on the road, 2 km east of every zone
            lat, lon = HOME[0] + (seq % 5000) * 3 * DEG_PER_M, HOME[1] + 0.03
        p = tracking_pb2.TrackPoint(seq=seq, latitude=lat, longitude=lon)
        p.time.FromSeconds(start + seq)
        out.append(p)
    return out


async def record(channel: grpc.aio.Channel, run_id: str, points: list[tracking_pb2.TrackPoint]) -> None:
    def messages() -> Iterator[tracking_pb2.RecordTrackRequest]:
        for i in range(0, len(points), 1000):
            yield tracking_pb2.RecordTrackRequest(run_id=run_id if i == 0 else "", points=points[i : i + 1000])

    reply = await tracking_pb2_grpc.TrackingServiceStub(channel).RecordTrack(messages(), timeout=300)
    assert reply.contiguous_seq == len(points), reply
    overview = summary_pb2.RunOverview(point_count=len(points))
    overview.start_time.CopyFrom(points[0].time)
    overview.end_time.CopyFrom(points[-1].time)
    await summary_pb2_grpc.SummaryServiceStub(channel).StopRun(
        summary_pb2.StopRunRequest(run_id=run_id, overview=overview)
    )
    await summary_pb2_grpc.SummaryServiceStub(channel).UpdateRun(
        summary_pb2.UpdateRunRequest(
            run=summary_pb2.Run(run_id=run_id, visibility=summary_pb2.PUBLIC),
            update_mask=FieldMask(paths=["visibility"]),
        )
    )
    # The run's analysis (the whole trail read and its geodesics, seconds of a replica's CPU) is
    # computed after StopRun: the reads are timed once it is done, not beside it.
    for _ in range(600):
        run = await summary_pb2_grpc.SummaryServiceStub(channel).GetRun(summary_pb2.GetRunRequest(run_id=run_id))
        if run.HasField("analysis"):
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"run {run_id} was not analysed within 5 minutes")


async def read_all(channel: grpc.aio.Channel, run_id: str) -> tuple[int, float]:
    stub = tracking_pb2_grpc.TrackingServiceStub(channel)
    began, count, token = time.perf_counter(), 0, ""
    while True:
        page = await stub.GetTrack(
            tracking_pb2.GetTrackRequest(run_id=run_id, page_size=PAGE, page_token=token), timeout=120
        )
        count += len(page.points)
        token = page.next_page_token
        if not token:
            return count, time.perf_counter() - began


def tracking_pids(stack: Stack) -> list[int]:
    return [int(str(p["pid"])) for p in stack.processes() if p["kind"] == "tracking-replica" and p.get("pid")]


async def timed_read(stack: Stack, channel: grpc.aio.Channel, run_id: str, repeats: int) -> dict[str, float]:
    pids = tracking_pids(stack)
    walls, cpus, seen = [], [], 0
    for _ in range(repeats):
        await asyncio.sleep(RANGE_TTL_S + 0.2)  # each read finds no visible range kept: the whole cost
        cpu = sum(cpu_seconds(p) for p in pids)
        seen, wall = await read_all(channel, run_id)
        cpus.append(sum(cpu_seconds(p) for p in pids) - cpu)
        walls.append(wall)
    return {"points_seen": seen, "wall_ms": round(statistics.median(walls) * 1000, 1),
            "replica_cpu_ms": round(statistics.median(cpus) * 1000, 1)}  # fmt: skip


def probe(ports: list[int]) -> None:
    """The health prober's own process (not the readers' event loop, whose parsing would be counted):
    asks each port's health every 20 ms until its stdin closes, then prints every answer's ms as JSON."""
    stop = threading.Event()
    times: dict[int, list[float]] = {p: [] for p in ports}

    def ask(port: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub: Any = health_pb2_grpc.HealthStub(ch)
            while not stop.is_set():
                began = time.perf_counter()
                stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
                times[port].append((time.perf_counter() - began) * 1000)
                time.sleep(0.02)

    threads = [threading.Thread(target=ask, args=(p,)) for p in ports]
    for t in threads:
        t.start()
    sys.stdin.read()
    stop.set()
    for t in threads:
        t.join()
    print(json.dumps(times))


async def health_during(stack: Stack, readers: list[Any]) -> dict[str, float]:
    """Every tracking replica's health asked every 20 ms, straight at its port, from a process of its
    own, while `readers` run: the answers' p50, p99 and slowest in ms, over all replicas."""
    ports = ",".join(str(p) for p in stack.replica_ports()["tracking"])
    prober = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.trim", "--probe", ports,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await asyncio.sleep(0.5)  # its channels connected
        await asyncio.gather(*readers)
    finally:
        assert prober.stdin is not None
        prober.stdin.close()
        out, _ = await prober.communicate()
    answers = sorted(ms for per_port in json.loads(out).values() for ms in per_port)
    return {
        "health_p50_ms": round(statistics.median(answers), 1),
        "health_p99_ms": round(answers[int(len(answers) * 0.99)], 1),
        "slowest_health_ms": round(answers[-1], 1),
        "health_answers": len(answers),
    }


def old_rule_ms(points: list[tracking_pb2.TrackPoint]) -> float:
    """The former check: a geodesic per point and zone until one contains it (here, in this process)."""
    sample = [Point(seq=p.seq, time_ms=0, latitude=p.latitude, longitude=p.longitude) for p in points[:5000]]
    began = time.process_time()
    for p in sample:
        inside_any(p, ZONES)
    return round((time.process_time() - began) * len(points) / len(sample) * 1000, 1)


async def bench(stack: Stack, n: int, repeats: int) -> dict[str, Any]:
    owner, stranger = f"bench-owner-{uuid.uuid4().hex[:6]}", f"bench-stranger-{uuid.uuid4().hex[:6]}"
    out: dict[str, Any] = {"points": n, "zones": len(ZONES), "shapes": {}}
    async with (
        token_channel(stack.envoy_address, stack.issuer.token(owner)) as mine,
        token_channel(stack.envoy_address, stack.issuer.token(stranger)) as theirs,
    ):
        await tracking_pb2_grpc.TrackingServiceStub(mine).SetPrivacyZones(
            tracking_pb2.SetPrivacyZonesRequest(
                zones=[
                    tracking_pb2.PrivacyZone(latitude=z.latitude, longitude=z.longitude, radius_m=z.radius_m)
                    for z in ZONES
                ]
            )
        )
        for shape in ("edges", "inside"):
            points = trail(shape, n)
            run_id = str(uuid.uuid4())
            await record(mine, run_id, points)
            await read_all(mine, run_id)  # warm: the first read of a partition is the store's, not the trim's
            own = await timed_read(stack, mine, run_id, repeats)
            other = await timed_read(stack, theirs, run_id, repeats)
            idle = await health_during(stack, [asyncio.sleep(3)])
            channels = [token_channel(stack.envoy_address, stack.issuer.token(stranger)) for _ in range(READERS)]
            began = time.perf_counter()
            health = await health_during(stack, [read_all(c, run_id) for c in channels])
            ten_wall = time.perf_counter() - began
            for c in channels:
                await c.close()
            out["shapes"][shape] = {
                "owner": own,
                "stranger": other,
                "cpu_ratio": round(other["replica_cpu_ms"] / max(own["replica_cpu_ms"], 0.1), 2),
                "wall_ratio": round(other["wall_ms"] / max(own["wall_ms"], 0.1), 2),
                "ten_strangers_wall_ms": round(ten_wall * 1000, 1),
                **health,
                "idle_health_p99_ms": idle["health_p99_ms"],
                "idle_slowest_health_ms": idle["slowest_health_ms"],
                "old_rule_cpu_ms": old_rule_ms(points),
            }
    return out


def run(stack: Stack, n: int, repeats: int, out_dir: Path) -> dict[str, Any]:
    result = asyncio.run(bench(stack, n, repeats))
    print(f"a trail of {n:,} points, {len(ZONES)} privacy zones; GetTrack pages of {PAGE:,}, median of {repeats}")
    print(f"  {'shape':7} {'who':9} {'seen':>8} {'wall ms':>9} {'replica CPU ms':>15}")
    for shape, f in result["shapes"].items():
        for who in ("owner", "stranger"):
            r = f[who]
            print(f"  {shape:7} {who:9} {r['points_seen']:>8,} {r['wall_ms']:>9.1f} {r['replica_cpu_ms']:>15.1f}")
        print(
            f"  {shape:7} stranger/owner: CPU {f['cpu_ratio']:.2f}x, wall {f['wall_ratio']:.2f}x; "
            f"{READERS} strangers at once {f['ten_strangers_wall_ms']:.0f} ms, health answers p50/p99/slowest "
            f"{f['health_p50_ms']:.1f}/{f['health_p99_ms']:.1f}/{f['slowest_health_ms']:.1f} ms (idle p99/slowest "
            f"{f['idle_health_p99_ms']:.1f}/{f['idle_slowest_health_ms']:.1f}); the old rule alone: "
            f"{f['old_rule_cpu_ms']:.0f} ms of CPU"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"trim-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"figures: {out}")
    return result


if __name__ == "__main__":  # the health prober: python -m bench.trim --probe PORT[,PORT...]
    probe([int(p) for p in sys.argv[2].split(",")])
