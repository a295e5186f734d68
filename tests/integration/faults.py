"""What the fault tests share: paced live points, health probes, replica memory, a report."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack import procs
from runtrack.v1 import summary_pb2, tracking_pb2, tracking_pb2_grpc
from runtrack_client import Backoff, RunRecorder
from tests.helpers import point

SERVICE = {"tracking": "runtrack.v1.TrackingService", "summary": "runtrack.v1.SummaryService"}


async def paced(points: list, interval_s: float):
    for p in points:
        yield p
        await asyncio.sleep(interval_s)


def new_run(channel, n: int) -> tuple[RunRecorder, list]:
    recorder = RunRecorder(
        channel,
        str(uuid.uuid4()),
        "",  # the caller: the user the channel's token names
        backoff=Backoff(base_s=0.1, cap_s=1.0, max_attempts=200),
    )
    start_ms = (int(time.time()) - 3600) * 1000
    return recorder, [point(seq, start_ms=start_ms) for seq in range(1, n + 1)]


async def stored_trail(channel, run_id: str) -> list:
    stub = tracking_pb2_grpc.TrackingServiceStub(channel)
    points, token = [], ""
    while True:
        page = await stub.GetTrack(tracking_pb2.GetTrackRequest(run_id=run_id, page_size=10_000, page_token=token))
        points += page.points
        token = page.next_page_token
        if not token:
            return points


async def replica_status(port: int, service: str) -> str:
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            reply = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
            return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.aio.AioRpcError as err:
        return err.code().name


async def wait_status(stack, svc: str, want: str, timeout: float) -> float:  # noqa: ASYNC109
    """Seconds until every replica of `svc` reports `want`; fails after `timeout`."""
    start = time.monotonic()
    while True:
        states = [await replica_status(p, SERVICE[svc]) for p in stack.replica_ports()[svc]]
        if all(s == want for s in states):
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, f"{svc} replicas {states}, wanted {want}"
        await asyncio.sleep(0.1)


async def wait_envoy_unhealthy(stack, svc: str, timeout: float) -> float:  # noqa: ASYNC109
    """Seconds until Envoy's health checks have taken every replica of `svc` out (a replica's own
    NOT_SERVING reaches Envoy at its next check, up to an interval later)."""
    start = time.monotonic()
    while True:
        health = await asyncio.to_thread(stack.host_health)
        flags = [health[svc].get(p) for p in stack.replica_ports()[svc]]
        if all(f is not None and f != "healthy" for f in flags):
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, f"Envoy still sees {svc} replicas as {flags}"
        await asyncio.sleep(0.1)


def peak_rss_mb(pid: int) -> float:
    return procs.memory_mb(pid).get("VmHWM", 0.0)


def report(stack, name: str, **figures) -> None:
    """Appends the figures a test measured to .dev/logs/test/faults.jsonl (and prints them)."""
    stack.spec.logs.mkdir(parents=True, exist_ok=True)
    with open(stack.spec.logs / "faults.jsonl", "a") as f:
        f.write(json.dumps({"test": name, **figures}) + "\n")
    print(f"{name}: {figures}")


def busiest_replica(stack, svc: str) -> int:
    """The port of the replica of `svc` with the most requests open, as Envoy's admin says."""
    active = stack.host_stat("rq_active")[svc]
    return max(active, key=lambda port: int(active[port]))


def overview(i: int) -> summary_pb2.RunOverview:
    """A half-hour run's overview, the `i`-th of a series two hours apart."""
    start = 1_780_000_000 + i * 7200
    return summary_pb2.RunOverview(
        start_time=Timestamp(seconds=start), end_time=Timestamp(seconds=start + 1800), distance_m=5000, point_count=1800
    )
