"""The contract's simple status codes, over gRPC and over JSON, through Envoy."""

import uuid

import grpc
import pytest

from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from tests.helpers import http_json, point


@pytest.mark.parametrize("path", ["/v1/runs/{id}", "/v1/runs/{id}/track", "/v1/runs/{id}/cursor"])
def test_an_unknown_run_is_404_with_a_status_body(stack, path, token):
    status, body = http_json(stack.envoy_address, "GET", path.format(id=uuid.uuid4()), token=token)
    assert status == 404
    assert body["code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert "run" in body["message"]


@pytest.mark.parametrize("path", ["/v1/runs/{id}", "/v1/runs/{id}/track", "/v1/runs/{id}/cursor"])
def test_a_run_id_that_is_not_a_uuid_is_400_naming_the_field(stack, path, token):
    status, body = http_json(stack.envoy_address, "GET", path.format(id="not-a-uuid"), token=token)
    assert status == 400
    assert body["message"].startswith("run_id: must be a UUID")


async def test_unknown_run_over_grpc_is_not_found(channel):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await summary_pb2_grpc.SummaryServiceStub(channel).GetRun(summary_pb2.GetRunRequest(run_id=str(uuid.uuid4())))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tracking_pb2_grpc.TrackingServiceStub(channel).GetTrack(
            tracking_pb2.GetTrackRequest(run_id=str(uuid.uuid4()))
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_stream_whose_run_id_is_not_a_uuid_is_invalid_argument(channel):
    async def messages():
        yield tracking_pb2.RecordTrackRequest(run_id="run-1", points=[point(1)])

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tracking_pb2_grpc.TrackingServiceStub(channel).RecordTrack(messages())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "run_id: must be a UUID" in err.value.details()


async def test_bad_points_are_listed_and_good_ones_stored(channel, run_id, user_id):
    stub = tracking_pb2_grpc.TrackingServiceStub(channel)

    async def messages():
        yield tracking_pb2.RecordTrackRequest(
            run_id=run_id, user_id=user_id, points=[point(1), point(2, latitude=123.0), point(3)]
        )

    r = await stub.RecordTrack(messages())
    assert (r.points_received, r.points_stored, r.points_rejected, r.contiguous_seq) == (3, 2, 1, 1)
    assert [(x.seq, x.reason) for x in r.rejections] == [(2, "latitude: must be a finite number in [-90, 90]")]


def test_stop_run_again_with_the_same_overview_returns_the_same_run(stack, run_id, user_id, token):
    body = {
        "userId": user_id,
        "overview": {
            "startTime": "2026-01-05T07:00:00Z",
            "endTime": "2026-01-05T07:40:00Z",
            "distanceM": 8000,
            "movingTime": "2300s",
            "pointCount": 2400,
        },
    }
    first = http_json(stack.envoy_address, "POST", f"/v1/runs/{run_id}:stop", body, token=token)
    again = http_json(stack.envoy_address, "POST", f"/v1/runs/{run_id}:stop", body, token=token)
    assert first[0] == again[0] == 200 and first[1] == again[1]
    body["overview"]["distanceM"] = 8001
    status, err = http_json(stack.envoy_address, "POST", f"/v1/runs/{run_id}:stop", body, token=token)
    assert status == 409 and "different overview" in err["message"]


def test_weekly_stats_come_back_in_the_asked_zone(stack, user_id, token):
    status, stats = http_json(
        stack.envoy_address, "GET", f"/v1/users/{user_id}/stats?timeZone=Asia/Tokyo&weeks=3", token=token
    )
    assert status == 200
    assert len(stats["weeks"]) == 3 and stats["totalRuns"] == 0
    status, err = http_json(stack.envoy_address, "GET", f"/v1/users/{user_id}/stats?timeZone=Nowhere/Land", token=token)
    assert status == 400 and err["message"].startswith("time_zone:")
