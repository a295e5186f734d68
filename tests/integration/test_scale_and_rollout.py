"""Scaling and rolling out while traffic flows: no failed request, no lost point, Envoy untouched."""

import asyncio
import os
import signal
import time
import uuid

import grpc
import pytest

from devstack.autoscale import scrape
from devstack.stack import metrics_port
from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from tests.integration.faults import new_run, paced, report, stored_trail


async def unary_traffic(channel, stop: asyncio.Event, failures: list, calls: list) -> None:
    """Plain calls through Envoy, no client retries: every one must succeed (or be NOT_FOUND)."""
    summary = summary_pb2_grpc.SummaryServiceStub(channel)
    tracking = tracking_pb2_grpc.TrackingServiceStub(channel)
    user = "me"
    i = 0
    while not stop.is_set():
        i += 1
        ov = summary_pb2.RunOverview(distance_m=1000, point_count=10)
        ov.start_time.seconds, ov.end_time.seconds, ov.moving_time.seconds = 1_780_000_000 + i, 1_780_000_600 + i, 500
        for call in (
            summary.StopRun(summary_pb2.StopRunRequest(run_id=str(uuid.uuid4()), user_id=user, overview=ov)),
            summary.ListRuns(summary_pb2.ListRunsRequest(user_id=user, page_size=5)),
            tracking.GetTrackCursor(tracking_pb2.GetTrackCursorRequest(run_id=str(uuid.uuid4()))),
        ):
            try:
                await call
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.NOT_FOUND:
                    failures.append(f"{err.code().name}: {err.details()}")
            calls.append(1)
        await asyncio.sleep(0.01)


async def _under_traffic(stack, channel, change) -> tuple[list, list, list]:
    stop, failures, calls = asyncio.Event(), [], []
    traffic = [asyncio.create_task(unary_traffic(channel, stop, failures, calls)) for _ in range(4)]
    runs = [new_run(channel, 400) for _ in range(4)]
    uploads = [asyncio.create_task(r.upload(paced(pts, 0.02))) for r, pts in runs]
    envoy_pid = stack.envoy_pid()
    envoy_log = stack.spec.logs / "envoy.log"
    logged = envoy_log.stat().st_size if envoy_log.exists() else 0
    views: list[tuple[float, dict]] = []  # Envoy's view of each replica through the change

    async def sample() -> None:
        while not stop.is_set():
            views.append((round(time.monotonic(), 2), await asyncio.to_thread(stack.host_health)))
            await asyncio.sleep(0.25)

    sampler = asyncio.create_task(sample())
    await asyncio.sleep(0.5)
    await asyncio.to_thread(change)
    await asyncio.wait_for(asyncio.gather(*uploads), timeout=120)
    stop.set()
    await asyncio.gather(*traffic, sampler)
    assert stack.envoy_pid() == envoy_pid, "Envoy was restarted"
    for recorder, pts in runs:
        assert list(await stored_trail(channel, recorder.run_id)) == pts
    if failures:  # which replica each failed call went to, and how Envoy saw the replicas meanwhile
        with envoy_log.open(errors="replace") as f:
            f.seek(logged)
            failed = [line for line in f if "request failed" in line]
        changes = [v for i, v in enumerate(views) if i == 0 or v[1] != views[i - 1][1]]
        failures.append({"envoy_failure_lines": failed[-20:], "envoy_views_when_they_changed": changes})
    return failures, calls, runs


async def test_scaling_out_and_in_under_traffic_fails_no_request(stack, channel):
    def change():
        stack.scale({"tracking": 3, "summary": 3})
        stack.scale({"tracking": 1, "summary": 1})
        stack.scale({"tracking": 2, "summary": 2})

    failures, calls, runs = await _under_traffic(stack, channel, change)
    assert failures == []
    assert {svc: len(p) for svc, p in stack.replica_ports().items()} == {"tracking": 2, "summary": 2}
    report(
        stack,
        "scale_3_1_2",
        unary_calls=len(calls),
        failed=len(failures),
        points_lost=0,
        streams_resumed=sum(r.stats.retries for r, _ in runs),
    )


async def test_two_of_three_replicas_killed_at_once_fail_no_unary_request(stack, channel):
    """Two of three replicas of each service die together (a node lost, or a scale-in of two at once
    whose health checks lag): until Envoy's health checks take them out, a call's first attempts can
    land on either dead one. Each retry goes to a replica not tried yet, so the live one answers."""
    await asyncio.to_thread(stack.scale, {"tracking": 3, "summary": 3})
    victims = {svc: ports[1:] for svc, ports in stack.replica_ports().items()}
    stop, failures, calls = asyncio.Event(), [], []
    traffic = [asyncio.create_task(unary_traffic(channel, stop, failures, calls)) for _ in range(4)]
    try:
        await asyncio.sleep(1.0)
        before = len(calls)
        views: list[tuple[float, dict]] = []

        async def sample() -> None:
            while not stop.is_set():
                views.append((round(time.monotonic(), 2), await asyncio.to_thread(stack.host_health)))
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        for svc, ports in victims.items():
            for port in ports:
                os.kill(stack.replica_pid(svc, port), signal.SIGKILL)
        # Traffic on until the health checks, too, have taken every dead one out: the whole window.
        await _wait_for(
            "Envoy's health checks taking the killed replicas out",
            lambda: all(
                all(p not in victims[svc] or "failed_active_hc" in flags for p, flags in hosts.items())
                for svc, hosts in stack.host_health().items()
            ),
            30,
        )
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*traffic)
        await sampler
        during = len(calls) - before
        changes = [v for i, v in enumerate(views) if i == 0 or v[1] != views[i - 1][1]]
        ejected = stack.envoy_stats("outlier_detection.ejections_enforced_total")
        assert failures == [], f"{len(failures)} of {during} calls failed: {failures[:3]} {changes} {ejected}"
        report(stack, "two_of_three_killed", unary_calls=during, failed=len(failures), ejections=ejected)
    finally:
        stop.set()
        await asyncio.gather(*traffic, return_exceptions=True)
        for svc, ports in victims.items():
            for port in ports:
                await asyncio.to_thread(stack.start_replica, svc, port)
        await asyncio.to_thread(stack.wait_healthy, stack.replica_ports())
        await asyncio.to_thread(stack.scale, {"tracking": 2, "summary": 2})


async def test_a_rollout_under_traffic_fails_no_request_and_loses_no_point(stack, channel):
    def pids():
        return {svc: {stack.replica_pid(svc, p) for p in ports} for svc, ports in stack.replica_ports().items()}

    before = pids()
    failures, calls, runs = await _under_traffic(stack, channel, stack.rollout)
    assert failures == []
    after = pids()
    for svc in after:
        assert len(after[svc]) == 2 and None not in after[svc] and not before[svc] & after[svc], (before, after)
    report(
        stack,
        "rollout",
        unary_calls=len(calls),
        failed=len(failures),
        points_lost=0,
        streams_resumed=sum(r.stats.retries for r, _ in runs),
    )


def _streams_open(port: int) -> int:
    return int(scrape(metrics_port(port))["streams_open"])


async def _wait_for(what: str, check, timeout_s: float) -> float:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout_s, f"{what}: not within {timeout_s} s"
        await asyncio.sleep(0.1)
    return time.monotonic() - start


@pytest.mark.parametrize(
    ("mode", "settings"),
    [("lifetime", {"TRACK_STREAM_LIFETIME_S": "2"}), ("shed", {"TRACK_SHED_ABOVE_STREAMS": "4"})],
)
async def test_a_burst_on_one_replica_spreads_over_a_replica_added_later_and_loses_no_point(
    stack, channel, mode, settings
):
    """A burst lands on the one replica there is. Streams have a bounded lifetime (ended with UNAVAILABLE
    STREAM_LIFETIME), or a replica over its limit ends its newest (REPLICA_OVERLOADED): each phone
    resumes through Envoy, which sends it to the replica with the fewest requests, the one added later."""
    original = stack.replica_ports()["tracking"]
    burst = await asyncio.to_thread(stack.add_replica, "tracking", settings)
    for port in original:
        await asyncio.to_thread(stack.retire_replica, "tracking", port)
    added = None
    try:
        runs = [new_run(channel, 160) for _ in range(12)]
        uploads = [asyncio.create_task(r.upload(paced(pts, 0.05))) for r, pts in runs]  # 8 s each
        await _wait_for("the burst on one replica", lambda: _streams_open(burst) == len(runs), 5)
        adding = time.monotonic()
        added = await asyncio.to_thread(stack.add_replica, "tracking")
        await _wait_for("a stream on the added replica", lambda: _streams_open(added) > 0, 6)
        moved_after_s = time.monotonic() - adding
        await asyncio.sleep(2.5)  # one more lifetime: most streams have come back by now
        on_added = _streams_open(added)
        assert on_added >= len(runs) // 3, f"{on_added} of {len(runs)} streams on the added replica"
        await asyncio.wait_for(asyncio.gather(*uploads), timeout=120)
        for recorder, pts in runs:
            assert list(await stored_trail(channel, recorder.run_id)) == pts
        resumed = sum(r.stats.retries for r, _ in runs)
        assert resumed >= (len(runs) if mode == "lifetime" else len(runs) - 4), resumed
        report(
            stack,
            f"burst_spreads_{mode}",
            streams=len(runs),
            first_moved_s=round(moved_after_s, 2),
            on_added_a_lifetime_later=on_added,
            streams_resumed=resumed,
            points_lost=0,
        )
    finally:
        for port in (burst, added):
            if port is not None:
                await asyncio.to_thread(stack.retire_replica, "tracking", port)
        await asyncio.to_thread(stack.scale, {"tracking": len(original)})
