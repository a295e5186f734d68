"""A run from its first GPS point to the dashboard, through Envoy, on the real servers."""

import datetime as dt
import time

from google.protobuf.json_format import MessageToDict

from runtrack.v1 import tracking_pb2, tracking_pb2_grpc
from tests.helpers import http_json, point, without_analysis


async def test_a_streamed_run_is_on_the_dashboard_at_stop_and_its_trail_reads_back_in_order(
    stack, channel, run_id, user_id, token
):
    tracking = tracking_pb2_grpc.TrackingServiceStub(channel)
    start_ms = (int(time.time()) - 600) * 1000
    points = [point(seq, start_ms=start_ms) for seq in range(1, 121)]

    async def one_point_per_message():
        yield tracking_pb2.RecordTrackRequest(run_id=run_id, user_id=user_id, points=points[:1])
        for p in points[1:]:
            yield tracking_pb2.RecordTrackRequest(points=[p])

    response = await tracking.RecordTrack(one_point_per_message())
    assert (response.run_id, response.points_received, response.points_stored) == (run_id, 120, 120)
    assert (response.points_rejected, response.contiguous_seq) == (0, 120)

    start = dt.datetime.fromtimestamp(start_ms / 1000, dt.UTC)
    overview = {
        "startTime": start.isoformat().replace("+00:00", "Z"),
        "endTime": (start + dt.timedelta(seconds=119)).isoformat().replace("+00:00", "Z"),
        "distanceM": 402.5,
        "movingTime": "110s",
        "elevationGainM": 6.0,
        "pointCount": 120,
        "avgHeartRateBpm": 149.5,
    }
    status, run = http_json(
        stack.envoy_address, "POST", f"/v1/runs/{run_id}:stop", {"userId": user_id, "overview": overview}, token=token
    )
    assert status == 200, run
    assert run["trackUrl"] == f"/v1/runs/{run_id}/track"
    assert run["elapsedTime"] == "119s"
    assert run["avgPaceSPerKm"] == 110 / 0.4025

    status, listed = http_json(stack.envoy_address, "GET", f"/v1/users/{user_id}/runs", token=token)
    assert status == 200
    assert [r["runId"] for r in listed["runs"]] == [run_id]
    assert without_analysis(listed["runs"][0]) == without_analysis(run)

    trail, next_token = [], ""
    while True:
        query = f"?pageSize=50&pageToken={next_token}" if next_token else "?pageSize=50"
        status, page = http_json(stack.envoy_address, "GET", run["trackUrl"] + query, token=token)
        assert status == 200, page
        trail += page["points"]
        next_token = page["nextPageToken"]
        if not next_token:
            break
    assert trail == [MessageToDict(p) for p in points]


async def test_the_cursor_of_a_run_says_where_to_resume(stack, channel, run_id, user_id, token):
    tracking = tracking_pb2_grpc.TrackingServiceStub(channel)
    sent = [point(s) for s in (1, 2, 3, 5, 6)]

    async def messages():
        yield tracking_pb2.RecordTrackRequest(run_id=run_id, user_id=user_id, points=sent)

    response = await tracking.RecordTrack(messages())
    assert response.contiguous_seq == 3
    status, cursor = http_json(stack.envoy_address, "GET", f"/v1/runs/{run_id}/cursor", token=token)
    assert status == 200
    assert cursor == {"runId": run_id, "contiguousSeq": 3, "maxSeq": 6, "pointCount": 5}
