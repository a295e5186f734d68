"""The Grafana dashboards of deploy/grafana/, read against the real stack: Prometheus (Debian's, devstack/
monitoring.py) scrapes the test stack's replicas and Envoy every second while phones record runs through
Envoy, a spectator follows one, its owner makes and revokes a live link, and the dashboard's calls run
(StopRun, GetRun, ListRuns, GetUserStats, GetTrack, a GetRun of a run that does not exist). Then every
query of every panel is asked of Prometheus, and each must return data."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import grpc
import pytest

from deploy import grafana
from devstack.monitoring import Monitoring
from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from tests.integration.faults import new_run, overview, paced

# Seconds of traffic before the queries: their windows (1m and 5m rates) need two scrapes or more.
TRAFFIC_S = 20.0


@pytest.fixture(scope="module")
def monitoring(stack):
    mon = Monitoring(stack, scrape_interval_s=1.0)
    mon.up()
    yield mon
    mon.down()


async def dashboard_calls(channel, until: asyncio.Event) -> dict[str, int]:
    """The dashboard's calls, a few a second, until `until`; the count of each status."""
    summary = summary_pb2_grpc.SummaryServiceStub(channel)
    tracking = tracking_pb2_grpc.TrackingServiceStub(channel)
    codes: dict[str, int] = {}
    i = 0
    while not until.is_set():
        run_id = str(uuid.uuid4())
        calls = [
            summary.StopRun(summary_pb2.StopRunRequest(run_id=run_id, overview=overview(i))),
            summary.GetRun(summary_pb2.GetRunRequest(run_id=run_id)),
            summary.ListRuns(summary_pb2.ListRunsRequest(page_size=10)),
            summary.GetUserStats(summary_pb2.GetUserStatsRequest()),
            tracking.GetTrack(tracking_pb2.GetTrackRequest(run_id=run_id)),
            summary.GetRun(summary_pb2.GetRunRequest(run_id=str(uuid.uuid4()))),  # NOT_FOUND
        ]
        for call in calls:
            try:
                await call
                code = "OK"
            except grpc.aio.AioRpcError as err:
                code = err.code().name
            codes[code] = codes.get(code, 0) + 1
        i += 1
        await asyncio.sleep(0.5)
    return codes


async def test_every_panels_query_returns_data_after_traffic(stack, channel, monitoring):
    tracking = tracking_pb2_grpc.TrackingServiceStub(channel)
    runs = [new_run(channel, 400) for _ in range(3)]
    uploads = [asyncio.create_task(r.upload(paced(pts, 0.1))) for r, pts in runs]
    followed = runs[0][0].run_id
    events = 0

    async def follow() -> None:
        nonlocal events
        async for _ in tracking.WatchRun(tracking_pb2.WatchRunRequest(run_id=followed)):
            events += 1

    await asyncio.sleep(1.0)  # the run exists before it is followed
    watcher = asyncio.create_task(follow())
    link = await tracking.CreateLiveLink(tracking_pb2.CreateLiveLinkRequest(run_id=followed))
    await tracking.ListLiveLinks(tracking_pb2.ListLiveLinksRequest(run_id=followed))
    await tracking.DeleteLiveLink(tracking_pb2.DeleteLiveLinkRequest(run_id=followed, link_id=link.link_id))
    until = asyncio.Event()
    calls = asyncio.create_task(dashboard_calls(channel, until))
    await asyncio.sleep(TRAFFIC_S)
    until.set()
    codes = await calls
    await asyncio.sleep(2.0)  # the last scrape after the traffic
    for task in (*uploads, watcher):
        task.cancel()
    for task in (*uploads, watcher):
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await task
    assert codes.get("OK") and codes.get("NOT_FOUND"), codes
    assert events > 0, "the spectator got no event"

    empty = [
        f"{q.dashboard} / {q.panel} / {q.legend}: {q.expr}"
        for q in grafana.queries()
        if not await asyncio.to_thread(monitoring.query, q.expr)
    ]
    assert not empty, "queries with no data:\n" + "\n".join(empty)
    stored = await asyncio.to_thread(monitoring.value, "sum(rate(runtrack_points_stored_total[1m]))")
    assert stored and stored > 0, "no points stored in the last minute, as Prometheus saw it"
