"""A runner's data is theirs, on the real stack through Envoy: ownership on every method, sharing
(PRIVATE / PUBLIC), `me` in paths, and privacy zones trimming a trail for everyone but its owner."""

import datetime as dt
import uuid

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from tests.helpers import http_json, point, token_channel
from tests.integration.faults import stored_trail
from tests.integration.test_dashboard import overview

HOME = (48.8566, 2.3522)
DEG_PER_M = 1 / 111_195.0  # one metre north, in degrees of latitude
POLYLINE = "_p~iF~ps|U_ulLnnqC"


def north(seq: int, metres: float) -> tracking_pb2.TrackPoint:
    return point(seq, latitude=HOME[0] + metres * DEG_PER_M, longitude=HOME[1])


async def record(channel, run_id: str, points) -> tracking_pb2.RecordTrackResponse:
    return await tracking_pb2_grpc.TrackingServiceStub(channel).RecordTrack(
        iter([tracking_pb2.RecordTrackRequest(run_id=run_id, points=points)])
    )


async def stopped_run(channel, run_id: str, points, **extra) -> summary_pb2.Run:
    await record(channel, run_id, points)
    ov = overview(dt.datetime(2026, 4, 1, 7, 0, tzinfo=dt.UTC), polyline=POLYLINE, **extra)
    return await summary_pb2_grpc.SummaryServiceStub(channel).StopRun(
        summary_pb2.StopRunRequest(run_id=run_id, overview=ov)
    )


async def share(channel, run_id: str, visibility=summary_pb2.PUBLIC) -> summary_pb2.Run:
    return await summary_pb2_grpc.SummaryServiceStub(channel).UpdateRun(
        summary_pb2.UpdateRunRequest(
            run=summary_pb2.Run(run_id=run_id, visibility=visibility), update_mask=FieldMask(paths=["visibility"])
        )
    )


async def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code()


@pytest.fixture
async def mallory(stack):
    async with token_channel(stack.envoy_address, stack.issuer.token(f"mallory-{uuid.uuid4().hex[:8]}")) as ch:
        yield ch


async def test_a_new_run_is_private_and_every_read_of_it_by_someone_else_is_not_found(
    stack, channel, mallory, run_id, user_id
):
    run = await stopped_run(channel, run_id, [point(1), point(2)])
    assert run.visibility == summary_pb2.PRIVATE and run.user_id == user_id
    summary, tracking = summary_pb2_grpc.SummaryServiceStub(mallory), tracking_pb2_grpc.TrackingServiceStub(mallory)
    assert await code_of(summary.GetRun(summary_pb2.GetRunRequest(run_id=run_id))) == grpc.StatusCode.NOT_FOUND
    assert await code_of(tracking.GetTrack(tracking_pb2.GetTrackRequest(run_id=run_id))) == grpc.StatusCode.NOT_FOUND
    cursor = tracking.GetTrackCursor(tracking_pb2.GetTrackCursorRequest(run_id=run_id))
    assert await code_of(cursor) == grpc.StatusCode.NOT_FOUND
    listed = await summary.ListRuns(summary_pb2.ListRunsRequest(user_id=user_id))
    assert list(listed.runs) == []
    # The same answers over JSON.
    mallory_token = stack.issuer.token("mallory")
    for path in (f"/v1/runs/{run_id}", f"/v1/runs/{run_id}/track", f"/v1/runs/{run_id}/cursor"):
        assert http_json(stack.envoy_address, "GET", path, token=mallory_token)[0] == 404, path


async def test_a_public_run_reads_for_others_without_polyline_and_its_cursor_stays_the_owners(
    stack, channel, mallory, run_id, user_id
):
    await stopped_run(channel, run_id, [point(s) for s in range(1, 6)])
    shared = await share(channel, run_id)
    assert shared.visibility == summary_pb2.PUBLIC and shared.overview.polyline == POLYLINE
    summary, tracking = summary_pb2_grpc.SummaryServiceStub(mallory), tracking_pb2_grpc.TrackingServiceStub(mallory)
    seen = await summary.GetRun(summary_pb2.GetRunRequest(run_id=run_id))
    assert seen.user_id == user_id and seen.overview.polyline == "" and seen.overview.distance_m == 5000.0
    assert [p.seq for p in await stored_trail(mallory, run_id)] == [1, 2, 3, 4, 5]
    listed = await summary.ListRuns(summary_pb2.ListRunsRequest(user_id=user_id))
    assert [r.run_id for r in listed.runs] == [run_id] and listed.runs[0].overview.polyline == ""
    cursor = tracking.GetTrackCursor(tracking_pb2.GetTrackCursorRequest(run_id=run_id))
    assert await code_of(cursor) == grpc.StatusCode.NOT_FOUND
    # Over JSON too, and the owner still sees the polyline.
    status, body = http_json(stack.envoy_address, "GET", f"/v1/runs/{run_id}", token=stack.issuer.token("bob"))
    assert status == 200 and body["overview"].get("polyline", "") == "" and body["visibility"] == "PUBLIC"
    owner = await summary_pb2_grpc.SummaryServiceStub(channel).GetRun(summary_pb2.GetRunRequest(run_id=run_id))
    assert owner.overview.polyline == POLYLINE
    # Made private again, it is gone for others.
    await share(channel, run_id, summary_pb2.PRIVATE)
    assert await code_of(summary.GetRun(summary_pb2.GetRunRequest(run_id=run_id))) == grpc.StatusCode.NOT_FOUND
    assert await code_of(tracking.GetTrack(tracking_pb2.GetTrackRequest(run_id=run_id))) == grpc.StatusCode.NOT_FOUND


async def test_another_users_list_shows_their_public_runs_only_paged(stack, channel, mallory, user_id):
    ids = [str(uuid.uuid4()) for _ in range(5)]
    for k, run_id in enumerate(ids):
        await record(channel, run_id, [point(1)])
        ov = overview(dt.datetime(2026, 4, 1 + k, 7, 0, tzinfo=dt.UTC))
        await summary_pb2_grpc.SummaryServiceStub(channel).StopRun(
            summary_pb2.StopRunRequest(run_id=run_id, overview=ov)
        )
    for run_id in ids[::2]:
        await share(channel, run_id)
    pages, token = [], ""
    while True:
        page = await summary_pb2_grpc.SummaryServiceStub(mallory).ListRuns(
            summary_pb2.ListRunsRequest(user_id=user_id, page_size=1, page_token=token)
        )
        pages.append([r.run_id for r in page.runs])
        token = page.next_page_token
        if not token:
            break
    assert [run for p in pages for run in p] == [ids[4], ids[2], ids[0]]
    own = await summary_pb2_grpc.SummaryServiceStub(channel).ListRuns(summary_pb2.ListRunsRequest(user_id="me"))
    assert [r.run_id for r in own.runs] == ids[::-1]
    # A page token of the owner's full list does not page another user's view of it.
    first = await summary_pb2_grpc.SummaryServiceStub(channel).ListRuns(summary_pb2.ListRunsRequest(page_size=1))
    peek = summary_pb2_grpc.SummaryServiceStub(mallory).ListRuns(
        summary_pb2.ListRunsRequest(user_id=user_id, page_token=first.next_page_token)
    )
    assert await code_of(peek) == grpc.StatusCode.INVALID_ARGUMENT


async def test_changing_deleting_or_reading_the_stats_of_someone_elses_runs_is_refused(
    stack, channel, mallory, run_id, user_id
):
    await stopped_run(channel, run_id, [point(1)])
    summary = summary_pb2_grpc.SummaryServiceStub(mallory)
    # Private: it does not exist for her.
    assert await code_of(share(mallory, run_id)) == grpc.StatusCode.NOT_FOUND
    assert await code_of(summary.DeleteRun(summary_pb2.DeleteRunRequest(run_id=run_id))) == grpc.StatusCode.NOT_FOUND
    # Public: she sees it, and may not change it.
    await share(channel, run_id)
    assert await code_of(share(mallory, run_id, summary_pb2.PRIVATE)) == grpc.StatusCode.PERMISSION_DENIED
    delete = summary.DeleteRun(summary_pb2.DeleteRunRequest(run_id=run_id))
    assert await code_of(delete) == grpc.StatusCode.PERMISSION_DENIED
    stats = summary.GetUserStats(summary_pb2.GetUserStatsRequest(user_id=user_id))
    assert await code_of(stats) == grpc.StatusCode.PERMISSION_DENIED
    stop = summary.StopRun(
        summary_pb2.StopRunRequest(
            run_id=run_id, user_id=user_id, overview=overview(dt.datetime(2026, 4, 1, 7, 0, tzinfo=dt.UTC))
        )
    )
    assert await code_of(stop) == grpc.StatusCode.PERMISSION_DENIED
    tracking = tracking_pb2_grpc.TrackingServiceStub(mallory)
    for call in (
        tracking.GetPrivacyZones(tracking_pb2.GetPrivacyZonesRequest(user_id=user_id)),
        tracking.SetPrivacyZones(tracking_pb2.SetPrivacyZonesRequest(user_id=user_id)),
    ):
        assert await code_of(call) == grpc.StatusCode.PERMISSION_DENIED
    write = record(mallory, run_id, [point(2)])
    assert await code_of(write) == grpc.StatusCode.PERMISSION_DENIED
    # DeleteTrack, the method DeleteRun calls, asked directly: someone else's trail does not exist.
    erase = tracking.DeleteTrack(tracking_pb2.DeleteTrackRequest(run_id=run_id))
    assert await code_of(erase) == grpc.StatusCode.NOT_FOUND
    # Over JSON.
    bob = stack.issuer.token("bob")
    for method, path, body, want in (
        ("PATCH", f"/v1/runs/{run_id}?updateMask=visibility", {"visibility": "PRIVATE"}, 403),
        ("DELETE", f"/v1/runs/{run_id}", None, 403),
        ("GET", f"/v1/users/{user_id}/stats", None, 403),
        ("GET", f"/v1/users/{user_id}/privacyZones", None, 403),
        ("PUT", f"/v1/users/{user_id}/privacyZones", {"zones": []}, 403),
    ):
        status, reply = http_json(stack.envoy_address, method, path, body, token=bob)
        assert status == want, (method, path, reply)
    # Nothing changed.
    run = await summary_pb2_grpc.SummaryServiceStub(channel).GetRun(summary_pb2.GetRunRequest(run_id=run_id))
    assert run.visibility == summary_pb2.PUBLIC
    assert [p.seq for p in await stored_trail(channel, run_id)] == [1]


def test_me_in_a_path_is_the_caller(stack, user_id, token):
    zones = {"zones": [{"latitude": HOME[0], "longitude": HOME[1], "radiusM": 300}]}
    status, body = http_json(stack.envoy_address, "PUT", "/v1/users/me/privacyZones", zones, token=token)
    assert status == 200 and body["userId"] == user_id
    for path in ("/v1/users/me/privacyZones", f"/v1/users/{user_id}/privacyZones"):
        status, body = http_json(stack.envoy_address, "GET", path, token=token)
        assert status == 200 and body["zones"] == [{"latitude": HOME[0], "longitude": HOME[1], "radiusM": 300}]
    status, body = http_json(stack.envoy_address, "GET", "/v1/users/me/stats?weeks=2", token=token)
    assert status == 200 and body["userId"] == user_id and len(body["weeks"]) == 2
    status, body = http_json(stack.envoy_address, "GET", "/v1/users/me/runs", token=token)
    assert status == 200


def test_update_run_rules_over_json(stack, run_id, token):
    status, body = http_json(
        stack.envoy_address,
        "PATCH",
        f"/v1/runs/{run_id}?updateMask=overview.distanceM",
        {"visibility": "PUBLIC"},
        token=token,
    )
    assert status == 400 and body["details"][1]["fieldViolations"][0]["field"] == "update_mask"
    status, body = http_json(stack.envoy_address, "PATCH", f"/v1/runs/{run_id}", {"visibility": "PUBLIC"}, token=token)
    assert status == 404  # a valid request for a run that does not exist


async def test_update_run_without_a_mask_changes_the_populated_visibility(channel, run_id):
    await stopped_run(channel, run_id, [point(1)])
    shared = await summary_pb2_grpc.SummaryServiceStub(channel).UpdateRun(
        summary_pb2.UpdateRunRequest(run=summary_pb2.Run(run_id=run_id, visibility=summary_pb2.PUBLIC))
    )
    assert shared.visibility == summary_pb2.PUBLIC
    bad = summary_pb2_grpc.SummaryServiceStub(channel).UpdateRun(
        summary_pb2.UpdateRunRequest(run=summary_pb2.Run(run_id=run_id), update_mask=FieldMask(paths=["visibility"]))
    )
    assert await code_of(bad) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "name, metres, zoned, seen",
    [
        # A zone of 200 m at the door. Out and back: the start and the end inside it are hidden.
        ("zone at start and end", [0, 80, 150, 260, 900, 1500, 900, 300, 120, 10], True, [4, 5, 6, 7, 8]),
        # Starting elsewhere, ending at home: only the end is hidden.
        ("zone at the end", [-3000, -2500, -2000, -1200, -600, -150, -20], True, [1, 2, 3, 4, 5]),
        # Starting at home and running away: only the start is hidden.
        ("zone at the start", [5, 90, 199, 350, 800, 1600], True, [4, 5, 6]),
        # Passing by home in the middle: nothing is hidden.
        ("crossing in the middle", [-1500, -700, -100, 0, 100, 700, 1500], True, [1, 2, 3, 4, 5, 6, 7]),
        # No zone: nothing is hidden.
        ("no zone", [0, 80, 260, 900, 120, 10], False, [1, 2, 3, 4, 5, 6]),
    ],
)
async def test_privacy_zones_trim_a_shared_trail_for_everyone_but_its_owner(
    stack, channel, mallory, run_id, user_id, name, metres, zoned, seen
):
    points = [north(seq, m) for seq, m in enumerate(metres, start=1)]
    await stopped_run(channel, run_id, points)
    await share(channel, run_id)
    zones = [tracking_pb2.PrivacyZone(latitude=HOME[0], longitude=HOME[1], radius_m=200)] if zoned else []
    tracking = tracking_pb2_grpc.TrackingServiceStub(channel)
    await tracking.SetPrivacyZones(tracking_pb2.SetPrivacyZonesRequest(user_id="me", zones=zones))
    assert [p.seq for p in await stored_trail(mallory, run_id)] == seen, name
    assert [p.seq for p in await stored_trail(channel, run_id)] == list(range(1, len(metres) + 1))
    # Paged one point at a time, the view is the same.
    paged, token = [], ""
    while True:
        page = await tracking_pb2_grpc.TrackingServiceStub(mallory).GetTrack(
            tracking_pb2.GetTrackRequest(run_id=run_id, page_size=1, page_token=token)
        )
        paged += [p.seq for p in page.points]
        token = page.next_page_token
        if not token:
            break
    assert paged == seen


async def test_zones_apply_to_past_runs_from_the_moment_they_are_set(stack, channel, mallory, run_id):
    await stopped_run(channel, run_id, [north(s, m) for s, m in enumerate([0, 50, 400, 900, 400, 50], start=1)])
    await share(channel, run_id)
    assert [p.seq for p in await stored_trail(mallory, run_id)] == [1, 2, 3, 4, 5, 6]
    tracking = tracking_pb2_grpc.TrackingServiceStub(channel)
    zone = tracking_pb2.PrivacyZone(latitude=HOME[0], longitude=HOME[1], radius_m=100)
    set_reply = await tracking.SetPrivacyZones(tracking_pb2.SetPrivacyZonesRequest(zones=[zone]))
    assert list(set_reply.zones) == [zone]
    assert [p.seq for p in await stored_trail(mallory, run_id)] == [3, 4, 5]
    await tracking.SetPrivacyZones(tracking_pb2.SetPrivacyZonesRequest(zones=[]))
    assert [p.seq for p in await stored_trail(mallory, run_id)] == [1, 2, 3, 4, 5, 6]


async def test_bad_privacy_zones_are_invalid_argument_naming_each_zone(stack, token):
    zones = [{"latitude": 91, "longitude": 0, "radiusM": 200}, {"latitude": 0, "longitude": 0, "radiusM": 50}]
    status, body = http_json(stack.envoy_address, "PUT", "/v1/users/me/privacyZones", {"zones": zones}, token=token)
    assert status == 400
    violations = [(v["field"], v["description"]) for v in body["details"][1]["fieldViolations"]]
    assert violations == [
        ("zones[0].latitude", "must be a finite number in [-90, 90]"),
        ("zones[1].radius_m", "must be between 100 and 5000 metres"),
    ]
    many = {"zones": [{"latitude": 0, "longitude": 0, "radiusM": 200}] * 11}
    status, body = http_json(stack.envoy_address, "PUT", "/v1/users/me/privacyZones", many, token=token)
    assert status == 400 and body["message"] == "zones: at most 10 zones, got 11"
