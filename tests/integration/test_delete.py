"""DeleteRun on the real stores through Envoy: the dashboard row and the whole trail go, for good;
a retry after a failure finishes the job; a late stream or STOP RUN never brings the run back."""

import asyncio
import datetime as dt
import uuid

import grpc
import pytest

from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from tests.helpers import http_json, point, token_channel
from tests.integration.faults import wait_status
from tests.integration.test_dashboard import overview
from tests.integration.test_faults import retry_info
from tests.integration.test_ownership import code_of, record, stopped_run

START = dt.datetime(2026, 5, 4, 7, 0, tzinfo=dt.UTC)


def stubs(channel):
    return summary_pb2_grpc.SummaryServiceStub(channel), tracking_pb2_grpc.TrackingServiceStub(channel)


async def delete(channel, run_id: str):
    return await summary_pb2_grpc.SummaryServiceStub(channel).DeleteRun(summary_pb2.DeleteRunRequest(run_id=run_id))


async def durable(tracking, run_id: str, seq: int, timeout_s: float = 30) -> None:
    """Until the run's cursor says points 1..seq are stored."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            cursor = await tracking.GetTrackCursor(tracking_pb2.GetTrackCursorRequest(run_id=run_id), timeout=5)
            if cursor.contiguous_seq >= seq:
                return
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise
        assert asyncio.get_running_loop().time() < deadline, f"points 1..{seq} of {run_id} not stored"
        await asyncio.sleep(0.1)


async def assert_gone(channel, run_id: str) -> None:
    summary, tracking = stubs(channel)
    for call in (
        summary.GetRun(summary_pb2.GetRunRequest(run_id=run_id)),
        tracking.GetTrack(tracking_pb2.GetTrackRequest(run_id=run_id)),
        tracking.GetTrackCursor(tracking_pb2.GetTrackCursorRequest(run_id=run_id)),
    ):
        assert await code_of(call) == grpc.StatusCode.NOT_FOUND
    listed = await summary.ListRuns(summary_pb2.ListRunsRequest(page_size=100))
    assert run_id not in [r.run_id for r in listed.runs]


async def test_deleting_a_stopped_run_removes_the_row_and_the_trail_from_every_read(stack, channel, run_id, user_id):
    kept = str(uuid.uuid4())
    await stopped_run(channel, kept, [point(1)])
    await stopped_run(channel, run_id, [point(s) for s in range(1, 301)])
    summary, _ = stubs(channel)
    before = await summary.GetUserStats(summary_pb2.GetUserStatsRequest(weeks=104))
    await delete(channel, run_id)
    await assert_gone(channel, run_id)
    after = await summary.GetUserStats(summary_pb2.GetUserStatsRequest(weeks=104))
    assert after.total_runs == before.total_runs - 1 == 1
    assert after.total_distance_m == before.total_distance_m - 5000.0
    assert (await summary.GetRun(summary_pb2.GetRunRequest(run_id=kept))).run_id == kept
    # A second delete: the run is not there any more.
    assert await code_of(delete(channel, run_id)) == grpc.StatusCode.NOT_FOUND


def test_delete_over_json_then_a_second_delete_is_404(stack, run_id, token):
    status, body = http_json(
        stack.envoy_address,
        "POST",
        f"/v1/runs/{run_id}:stop",
        {"overview": {"startTime": "2026-05-01T08:00:00Z", "endTime": "2026-05-01T08:30:00Z", "movingTime": "60s"}},
        token=token,
    )
    assert status == 200, body
    status, body = http_json(stack.envoy_address, "DELETE", f"/v1/runs/{run_id}", token=token)
    assert (status, body) == (200, {})
    status, body = http_json(stack.envoy_address, "DELETE", f"/v1/runs/{run_id}", token=token)
    assert status == 404 and body["details"][0]["reason"] == "RUN_NOT_FOUND"
    assert http_json(stack.envoy_address, "GET", f"/v1/runs/{run_id}", token=token)[0] == 404


async def test_deleting_a_run_that_was_never_stopped_removes_its_trail(channel, run_id):
    r = await record(channel, run_id, [point(s) for s in range(1, 51)])
    assert r.contiguous_seq == 50
    await delete(channel, run_id)
    await assert_gone(channel, run_id)
    assert await code_of(delete(channel, run_id)) == grpc.StatusCode.NOT_FOUND


async def test_a_delete_that_fails_with_the_cql_node_down_is_finished_by_a_retry(stack, channel, run_id):
    await stopped_run(channel, run_id, [point(s) for s in range(1, 101)])
    summary, _ = stubs(channel)
    await asyncio.to_thread(stack.cql.stop)
    try:
        await wait_status(stack, "tracking", "NOT_SERVING", timeout=20)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await delete(channel, run_id)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert retry_info(err.value)[1] > 0, "no RetryInfo: the client cannot tell it may retry"
        # Nothing was half-deleted on the dashboard: the run is still there, and says so.
        assert (await summary.GetRun(summary_pb2.GetRunRequest(run_id=run_id))).run_id == run_id
    finally:
        await asyncio.to_thread(stack.cql.start)
        await asyncio.to_thread(stack.cql.wait_ready)
        await wait_status(stack, "tracking", "SERVING", timeout=60)
        await asyncio.to_thread(stack.wait_healthy, stack.replica_ports())  # as Envoy sees them
    await delete(channel, run_id)
    await assert_gone(channel, run_id)


async def test_a_delete_whose_dashboard_step_never_ran_is_finished_by_a_retry(channel, run_id):
    """The state a failure between the two stores leaves: the trail gone, the row still there."""
    await stopped_run(channel, run_id, [point(s) for s in range(1, 11)])
    _, tracking = stubs(channel)
    reply = await tracking.DeleteTrack(tracking_pb2.DeleteTrackRequest(run_id=run_id))
    assert reply.existed
    assert await code_of(tracking.GetTrack(tracking_pb2.GetTrackRequest(run_id=run_id))) == grpc.StatusCode.NOT_FOUND
    await delete(channel, run_id)
    await assert_gone(channel, run_id)


async def test_a_late_stream_or_stop_run_never_brings_a_deleted_run_back(stack, channel, run_id, user_id):
    _, tracking = stubs(channel)
    call = tracking.RecordTrack()
    await call.write(tracking_pb2.RecordTrackRequest(run_id=run_id, points=[point(s) for s in range(1, 21)]))
    await durable(tracking, run_id, 20)  # the run exists: its first points are stored
    await delete(channel, run_id)
    # The phone, unaware, goes on writing on its open stream, then ends it.
    for seq in range(21, 41):
        await call.write(tracking_pb2.RecordTrackRequest(points=[point(seq)]))
    await call.done_writing()
    try:
        await call
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    await assert_gone(channel, run_id)
    # A new stream, a resumed one, and STOP RUN: FAILED_PRECONDITION, over gRPC and JSON.
    late = record(channel, run_id, [point(41)])
    assert await code_of(late) == grpc.StatusCode.FAILED_PRECONDITION
    stop = summary_pb2_grpc.SummaryServiceStub(channel).StopRun(
        summary_pb2.StopRunRequest(run_id=run_id, overview=overview(START))
    )
    assert await code_of(stop) == grpc.StatusCode.FAILED_PRECONDITION
    status, body = http_json(
        stack.envoy_address,
        "POST",
        f"/v1/runs/{run_id}:stop",
        {"overview": {"startTime": "2026-05-01T08:00:00Z", "endTime": "2026-05-01T08:30:00Z"}},
        token=stack.issuer.token(user_id),
    )
    assert status == 400 and body["details"][0]["reason"] == "RUN_DELETED"
    await assert_gone(channel, run_id)


async def test_nobody_else_can_take_over_a_deleted_run_id(stack, channel, run_id):
    await stopped_run(channel, run_id, [point(1)])
    await delete(channel, run_id)
    async with token_channel(stack.envoy_address, stack.issuer.token("mallory")) as mallory:
        assert await code_of(record(mallory, run_id, [point(1)])) == grpc.StatusCode.PERMISSION_DENIED
        assert await code_of(delete(mallory, run_id)) == grpc.StatusCode.NOT_FOUND
