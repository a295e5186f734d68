"""What a zone hides stays hidden on every path, tried from the attacker's side on the real stack
through Envoy: a stranger on a PUBLIC run and a live link's holder get the trimmed trail's times,
distance and moving time, no analysis (its splits and efforts would measure the hidden stretch from
the door), and heart rate and cadence only once the owner shares them; a zone set while they watch
reaches their stream within 5 s."""

import asyncio
import datetime as dt
import itertools
import uuid

import pytest
from geographiclib.geodesic import Geodesic
from google.protobuf.field_mask_pb2 import FieldMask

from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from tests.helpers import http_json, token_channel
from tests.integration.test_files import fetch
from tests.integration.test_live import Phone, Watcher, create_link

HOME = (48.8566, 2.3522)
DEG_PER_M = 1 / 111_195.0
START = dt.datetime(2026, 6, 1, 6, 30, tzinfo=dt.UTC)


def place(seq: int) -> float:
    """Metres north of home: seqs 1-5 at the door, 6-25 out and back 100 m a point, 26-30 home."""
    if seq <= 5 or seq > 25:
        return 10.0 * (seq % 5)
    return 400.0 + 100.0 * min(seq - 6, 25 - seq)


def trail() -> list[tracking_pb2.TrackPoint]:
    out = []
    for seq in range(1, 31):
        p = tracking_pb2.TrackPoint(
            seq=seq,
            latitude=HOME[0] + place(seq) * DEG_PER_M,
            longitude=HOME[1],
            heart_rate_bpm=140 + seq,
            cadence_spm=170,
        )
        p.time.FromDatetime(START + dt.timedelta(seconds=20 * seq))
        out.append(p)
    return out


async def shared_run_with_a_zone(channel, run_id: str) -> list[tracking_pb2.TrackPoint]:
    points = trail()
    tracking, summary = tracking_pb2_grpc.TrackingServiceStub(channel), summary_pb2_grpc.SummaryServiceStub(channel)
    await tracking.RecordTrack(iter([tracking_pb2.RecordTrackRequest(run_id=run_id, points=points)]))
    overview = summary_pb2.RunOverview(distance_m=4000.0, point_count=30, avg_heart_rate_bpm=155.0, polyline="_p~iF")
    overview.start_time.CopyFrom(points[0].time)
    overview.end_time.CopyFrom(points[-1].time)
    overview.moving_time.FromSeconds(580)
    await summary.StopRun(summary_pb2.StopRunRequest(run_id=run_id, overview=overview))
    for _ in range(100):  # the analysis is computed after StopRun answers
        if (await summary.GetRun(summary_pb2.GetRunRequest(run_id=run_id))).HasField("analysis"):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the owner's run never got its analysis")
    await tracking.SetPrivacyZones(
        tracking_pb2.SetPrivacyZonesRequest(
            zones=[tracking_pb2.PrivacyZone(latitude=HOME[0], longitude=HOME[1], radius_m=200)]
        )
    )
    await summary.UpdateRun(
        summary_pb2.UpdateRunRequest(
            run=summary_pb2.Run(run_id=run_id, visibility=summary_pb2.PUBLIC),
            update_mask=FieldMask(paths=["visibility"]),
        )
    )
    return points


def geodesic_m(points) -> float:
    inverse = Geodesic.WGS84.Inverse
    return sum(inverse(a.latitude, a.longitude, b.latitude, b.longitude)["s12"] for a, b in itertools.pairwise(points))


async def test_a_stranger_gets_the_visible_part_only_and_heart_rate_once_shared(stack, channel, run_id, token):
    points = await shared_run_with_a_zone(channel, run_id)
    visible = [p for p in points if 6 <= p.seq <= 25]
    stranger = stack.issuer.token(f"stranger-{uuid.uuid4().hex[:6]}")
    async with token_channel(stack.envoy_address, stranger) as theirs:
        run = await summary_pb2_grpc.SummaryServiceStub(theirs).GetRun(summary_pb2.GetRunRequest(run_id=run_id))
        o = run.overview
        assert not run.HasField("analysis") and o.polyline == "" and not o.HasField("avg_heart_rate_bpm")
        assert (o.start_time, o.end_time, o.point_count) == (visible[0].time, visible[-1].time, 20)
        assert o.distance_m == pytest.approx(geodesic_m(visible), abs=0.5)
        assert o.moving_time.seconds == 18 * 20  # 19 stretches of 20 s, one standing at the turn
        track = await tracking_pb2_grpc.TrackingServiceStub(theirs).GetTrack(
            tracking_pb2.GetTrackRequest(run_id=run_id)
        )
        assert [p.seq for p in track.points] == list(range(6, 26))
        assert not any(p.HasField("heart_rate_bpm") or p.HasField("cadence_spm") for p in track.points)
    status, body = http_json(stack.envoy_address, "GET", f"/v1/runs/{run_id}", token=stranger)
    assert status == 200 and "analysis" not in body and body["overview"]["startTime"] == "2026-06-01T06:32:00Z"
    status, _, gpx = await asyncio.to_thread(fetch, stack.envoy_address, f"/v1/runs/{run_id}/track.gpx", stranger)
    assert status == 200 and b"<trkpt" in gpx and b"hr>" not in gpx and b"cad>" not in gpx
    # The owner shares heart rate (over JSON, as the page does): it reaches the stranger's reads.
    status, body = http_json(
        stack.envoy_address,
        "PATCH",
        f"/v1/runs/{run_id}?updateMask=shareHealth",
        {"shareHealth": True},
        token=token,
    )
    assert status == 200 and body["shareHealth"] is True, body
    async with token_channel(stack.envoy_address, stranger) as theirs:
        track = await tracking_pb2_grpc.TrackingServiceStub(theirs).GetTrack(
            tracking_pb2.GetTrackRequest(run_id=run_id)
        )
        assert [p.heart_rate_bpm for p in track.points] == [140 + s for s in range(6, 26)]
    status, _, gpx = await asyncio.to_thread(fetch, stack.envoy_address, f"/v1/runs/{run_id}/track.gpx", stranger)
    assert b"hr>146<" in gpx
    # The owner still sees everything.
    mine = await summary_pb2_grpc.SummaryServiceStub(channel).GetRun(summary_pb2.GetRunRequest(run_id=run_id))
    assert mine.HasField("analysis") and mine.overview.point_count == 30 and mine.overview.avg_heart_rate_bpm == 155.0


async def test_a_link_holder_gets_the_visible_part_only(stack, channel, run_id):
    await shared_run_with_a_zone(channel, run_id)
    await summary_pb2_grpc.SummaryServiceStub(channel).UpdateRun(
        summary_pb2.UpdateRunRequest(
            run=summary_pb2.Run(run_id=run_id, visibility=summary_pb2.PRIVATE),
            update_mask=FieldMask(paths=["visibility"]),
        )
    )
    link = await create_link(channel, run_id)
    async with token_channel(stack.envoy_address, link.token) as holder:
        run = await summary_pb2_grpc.SummaryServiceStub(holder).GetRun(summary_pb2.GetRunRequest(run_id=run_id))
        assert not run.HasField("analysis") and run.overview.point_count == 20
        assert not run.overview.HasField("avg_heart_rate_bpm")
        watcher = Watcher(holder, run_id)
        await watcher.until(lambda: "STOPPED" in watcher.states)
        assert sorted(watcher.points) == list(range(6, 26))


async def test_a_zone_set_while_others_watch_reaches_their_stream_within_five_seconds(stack, channel, run_id):
    phone = Phone(channel, run_id)
    await phone.started()
    link = await create_link(channel, run_id)
    async with token_channel(stack.envoy_address, link.token) as holder:
        watcher, own = Watcher(holder, run_id), Watcher(channel, run_id)
        for _ in range(2):
            await phone.send()
        await watcher.until(lambda: len(watcher.points) == 3)
        # The runner is now near a place they keep private: they add a zone around it.
        zone = tracking_pb2.PrivacyZone(latitude=phone.lat, longitude=phone.lon, radius_m=300)
        await tracking_pb2_grpc.TrackingServiceStub(channel).SetPrivacyZones(
            tracking_pb2.SetPrivacyZonesRequest(zones=[zone])
        )
        await asyncio.sleep(5)
        inside = [await phone.send(5.0) for _ in range(3)]
        await own.until(lambda: all(s in own.points for s in inside))
        await asyncio.sleep(1.5)  # a live point reaches a watcher well within this
        assert not any(s in watcher.points for s in inside), "points inside the new zone reached the link's holder"
        outside = await phone.send(1000.0)  # the runner leaves: what lay between is the trail's middle
        await watcher.until(lambda: outside in watcher.points)
    await phone.finish()
