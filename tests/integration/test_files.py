"""A run's trail as a file through Envoy: GPX read back by gpxpy and TCX by lxml give the points
stored, with heart rate and cadence; someone else gets a shared run's trail as GetTrack shows it, and
nothing of a private one; a bad format is named."""

import asyncio
import datetime as dt
import http.client
import uuid

import gpxpy
import gpxpy.gpx
import grpc
import pytest
from geographiclib.geodesic import Geodesic
from lxml import etree

from devstack import tools
from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from tests.helpers import http_json, point, token_channel
from tests.integration.test_dashboard import overview
from tracking_service.files import ACTX_NS, GPXTPX, TCX_NS

START = dt.datetime(2026, 5, 2, 7, 0, tzinfo=dt.UTC)


def fetch(base: str, path: str, token: str) -> tuple[int, dict[str, str], bytes]:
    host, port = base.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", path, headers={"authorization": f"Bearer {token}"})
    response = conn.getresponse()
    out = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    conn.close()
    return out


async def record(channel, run_id: str, n: int) -> list[tracking_pb2.TrackPoint]:
    start_ms = int(START.timestamp() * 1000)
    points = [point(seq, start_ms=start_ms) for seq in range(1, n + 1)]
    await tracking_pb2_grpc.TrackingServiceStub(channel).RecordTrack(
        iter([tracking_pb2.RecordTrackRequest(run_id=run_id, points=points)])
    )
    return points


async def test_gpx_and_tcx_read_back_to_the_points_stored(stack, channel, token, run_id):
    sent = await record(channel, run_id, 120)
    status, headers, body = await asyncio.to_thread(fetch, stack.envoy_address, f"/v1/runs/{run_id}/track.gpx", token)
    assert status == 200, body[:300]
    assert headers["content-type"] == "application/gpx+xml"
    assert headers["content-disposition"] == f'attachment; filename="runtrack-{run_id}.gpx"'
    gpx = gpxpy.parse(body.decode())
    assert gpx.version == "1.1"
    fixes = [p for t in gpx.tracks for s in t.segments for p in s.points]
    assert len(fixes) == len(sent)
    for fix, p in zip(fixes, sent, strict=True):
        assert (fix.latitude, fix.longitude) == (p.latitude, p.longitude)
        assert fix.elevation == pytest.approx(p.altitude_m)
        assert fix.time == p.time.ToDatetime(dt.UTC)
        (ext,) = fix.extensions
        assert ext.find(f"{{{GPXTPX}}}hr").text == str(p.heart_rate_bpm)
        assert ext.find(f"{{{GPXTPX}}}cad").text == str(round(p.cadence_spm / 2))

    status, headers, body = await asyncio.to_thread(fetch, stack.envoy_address, f"/v1/runs/{run_id}/track.tcx", token)
    assert status == 200 and headers["content-type"] == "application/vnd.garmin.tcx+xml"
    assert headers["content-disposition"].endswith('.tcx"')
    root = etree.fromstring(body, etree.XMLParser(resolve_entities=False, no_network=True))
    ns = {"t": TCX_NS, "x": ACTX_NS}
    points = root.findall(".//t:Trackpoint", ns)
    assert len(points) == len(sent)
    distances = [float(tp.findtext("t:DistanceMeters", namespaces=ns)) for tp in points]
    assert distances == sorted(distances) and distances[0] == 0
    for tp, p in zip(points, sent, strict=True):
        assert float(tp.findtext("t:Position/t:LatitudeDegrees", namespaces=ns)) == p.latitude
        assert tp.findtext("t:HeartRateBpm/t:Value", namespaces=ns) == str(p.heart_rate_bpm)
        assert tp.findtext("t:Extensions/x:TPX/x:RunCadence", namespaces=ns) == str(round(p.cadence_spm / 2))
    lap_distance = float(root.findtext(".//t:Lap/t:DistanceMeters", namespaces=ns))
    assert lap_distance == pytest.approx(distances[-1], abs=0.01)
    assert gpx.length_2d() == pytest.approx(lap_distance, rel=0.005), "gpxpy's own distance within 0.5 %"

    # Over gRPC too (an HttpBody), and the format named in the request.
    body_grpc = await tracking_pb2_grpc.TrackingServiceStub(channel).ExportTrack(
        tracking_pb2.ExportTrackRequest(run_id=run_id, format="tcx")
    )
    assert body_grpc.content_type == "application/vnd.garmin.tcx+xml"
    assert len(etree.fromstring(body_grpc.data).findall(".//t:Trackpoint", ns)) == len(sent)


async def test_someone_else_gets_a_shared_trail_as_gettrack_shows_it_and_nothing_of_a_private_one(
    stack, channel, run_id
):
    sent = await record(channel, run_id, 200)  # ~1.3 m apart: the first ~75 inside the 100 m zone
    zone = tracking_pb2.PrivacyZone(latitude=sent[0].latitude, longitude=sent[0].longitude, radius_m=100)
    await tracking_pb2_grpc.TrackingServiceStub(channel).SetPrivacyZones(
        tracking_pb2.SetPrivacyZonesRequest(user_id="me", zones=[zone])
    )
    other = stack.issuer.token(f"other-{uuid.uuid4().hex[:8]}")
    status, _, body = await asyncio.to_thread(fetch, stack.envoy_address, f"/v1/runs/{run_id}/track.gpx", other)
    assert status == 404, body[:200]
    await summary_pb2_grpc.SummaryServiceStub(channel).StopRun(
        summary_pb2.StopRunRequest(run_id=run_id, overview=overview(START, 1))
    )
    await summary_pb2_grpc.SummaryServiceStub(channel).UpdateRun(
        summary_pb2.UpdateRunRequest(
            run=summary_pb2.Run(run_id=run_id, visibility=summary_pb2.PUBLIC), update_mask={"paths": ["visibility"]}
        )
    )
    status, _, body = await asyncio.to_thread(fetch, stack.envoy_address, f"/v1/runs/{run_id}/track.gpx", other)
    assert status == 200
    exported = [
        (p.latitude, p.longitude) for t in gpxpy.parse(body.decode()).tracks for s in t.segments for p in s.points
    ]
    async with token_channel(stack.envoy_address, other) as ch:
        page = await tracking_pb2_grpc.TrackingServiceStub(ch).GetTrack(tracking_pb2.GetTrackRequest(run_id=run_id))
    assert exported == [(p.latitude, p.longitude) for p in page.points]
    assert 0 < len(exported) < len(sent), "the start near the owner's door is left out"


async def test_a_format_other_than_gpx_or_tcx_is_named(stack, channel, token, run_id):
    await record(channel, run_id, 3)
    status, body = http_json(stack.envoy_address, "GET", f"/v1/runs/{run_id}/track.gpx?format=kml", token=token)
    assert status == 400
    assert body["details"][1]["fieldViolations"][0]["field"] == "format", body
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tracking_pb2_grpc.TrackingServiceStub(channel).ExportTrack(
            tracking_pb2.ExportTrackRequest(run_id=run_id, format="fit")
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_after_stop_run_the_run_carries_its_analysis_matching_an_independent_computation(
    stack, channel, token, run_id
):
    # 2.3 km: 1.2 km at 4 m/s, 400 m at 5 m/s, 700 m at 3.5 m/s, a fix a second, heading north-east.
    speeds = [4.0] * 300 + [5.0] * 80 + [3.5] * 200
    lat, lon, t0 = 47.0, 8.0, int(START.timestamp())
    points = [point(1, start_ms=t0 * 1000, latitude=lat, longitude=lon)]
    for k, v in enumerate(speeds, start=2):
        step = Geodesic.WGS84.Direct(lat, lon, 45.0, v)
        lat, lon = step["lat2"], step["lon2"]
        points.append(point(k, start_ms=t0 * 1000, latitude=lat, longitude=lon))
    await tracking_pb2_grpc.TrackingServiceStub(channel).RecordTrack(
        iter([tracking_pb2.RecordTrackRequest(run_id=run_id, points=points)])
    )
    summary = summary_pb2_grpc.SummaryServiceStub(channel)
    stop = overview(START, 10)
    stop.point_count = len(points)
    await summary.StopRun(summary_pb2.StopRunRequest(run_id=run_id, overview=stop))
    for _ in range(100):  # computed after StopRun answered
        run = await summary.GetRun(summary_pb2.GetRunRequest(run_id=run_id))
        if run.HasField("analysis"):
            break
        await asyncio.sleep(0.1)
    a = run.analysis
    assert a.point_count == len(points)
    reference = gpxpy.gpx.GPXTrackSegment([gpxpy.gpx.GPXTrackPoint(p.latitude, p.longitude) for p in points])
    assert a.distance_m == pytest.approx(reference.length_2d(), rel=0.005), "gpxpy's distance within 0.5 %"
    assert a.distance_m == pytest.approx(sum(speeds), abs=0.5)
    assert [s.index for s in a.splits_km] == [1, 2, 3]
    assert a.splits_km[0].elapsed_time.ToTimedelta().total_seconds() == pytest.approx(250)
    assert sum(s.distance_m for s in a.splits_km) == pytest.approx(a.distance_m)
    efforts = {e.name: e.elapsed_time.ToTimedelta().total_seconds() for e in a.best_efforts}
    assert set(efforts) == {"400m", "1k", "1mile"}
    assert efforts["400m"] == pytest.approx(80)  # the 400 m at 5 m/s
    assert len(a.heart_rate_zones) == 5 and a.HasField("elevation_gain_m")
    status, body = http_json(stack.envoy_address, "GET", f"/v1/runs/{run_id}", token=token)
    assert status == 200 and body["analysis"]["bestEfforts"][0]["name"] == "400m"


async def analysed_run(channel, start: dt.datetime, speed: float, n: int = 300) -> str:
    """A run at one speed, stopped, returned once the server has analysed it."""
    run_id = str(uuid.uuid4())
    lat, lon, t0 = 46.0, 7.0, int(start.timestamp())
    points = [point(1, start_ms=t0 * 1000, latitude=lat, longitude=lon)]
    for k in range(2, n + 1):
        step = Geodesic.WGS84.Direct(lat, lon, 90.0, speed)
        lat, lon = step["lat2"], step["lon2"]
        points.append(point(k, start_ms=t0 * 1000, latitude=lat, longitude=lon))
    await tracking_pb2_grpc.TrackingServiceStub(channel).RecordTrack(
        iter([tracking_pb2.RecordTrackRequest(run_id=run_id, points=points)])
    )
    summary = summary_pb2_grpc.SummaryServiceStub(channel)
    stop = overview(start, 5)
    stop.point_count = n
    await summary.StopRun(summary_pb2.StopRunRequest(run_id=run_id, overview=stop))
    for _ in range(100):
        if (await summary.GetRun(summary_pb2.GetRunRequest(run_id=run_id))).HasField("analysis"):
            return run_id
        await asyncio.sleep(0.1)
    raise AssertionError(f"run {run_id} was not analysed")


async def test_personal_records_keep_each_improvement_and_a_deleted_run_gives_back_the_next_best(
    stack, channel, token, user_id
):
    day = dt.timedelta(days=1)
    slow = await analysed_run(channel, START, 4.0)  # 1 km in 250 s
    fast = await analysed_run(channel, START + day, 5.0)  # 200 s: a record
    middle = await analysed_run(channel, START + 2 * day, 4.5)  # 222 s: no record
    summary = summary_pb2_grpc.SummaryServiceStub(channel)

    def seconds(d) -> float:
        return d.ToTimedelta().total_seconds()

    listed = await summary.ListRecords(summary_pb2.ListRecordsRequest(user_id="me"))
    assert listed.user_id == user_id
    records = {r.name: r for r in listed.records}
    assert [r.name for r in listed.records] == ["400m", "1k"], "shortest first, only distances run"
    km = records["1k"]
    assert km.best.run_id == fast and seconds(km.best.elapsed_time) == pytest.approx(200)
    assert [h.run_id for h in km.history] == [slow, fast]
    assert km.history[0].achieved_time.ToDatetime(dt.UTC) == START
    status, body = http_json(stack.envoy_address, "GET", "/v1/users/me/records", token=token)
    assert status == 200 and body["records"][1]["best"]["runId"] == fast

    await summary.DeleteRun(summary_pb2.DeleteRunRequest(run_id=fast))
    records = {r.name: r for r in (await summary.ListRecords(summary_pb2.ListRecordsRequest(user_id="me"))).records}
    assert records["1k"].best.run_id == middle and seconds(records["1k"].best.elapsed_time) == pytest.approx(1000 / 4.5)
    assert [h.run_id for h in records["1k"].history] == [slow, middle]

    async with token_channel(stack.envoy_address, stack.issuer.token("someone-else")) as other:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await summary_pb2_grpc.SummaryServiceStub(other).ListRecords(
                summary_pb2.ListRecordsRequest(user_id=user_id)
            )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_an_effort_faster_than_any_runner_sets_no_personal_record(stack, channel):
    """A drive around town recorded as a run (20 m/s: 1 km in 50 s) keeps its analysis, but holds no
    record; the runner's own best stays the record."""
    day = dt.timedelta(days=1)
    ran = await analysed_run(channel, START, 4.0)
    drove = await analysed_run(channel, START + day, 20.0)
    summary = summary_pb2_grpc.SummaryServiceStub(channel)
    run = await summary.GetRun(summary_pb2.GetRunRequest(run_id=drove))
    assert any(e.name == "1k" for e in run.analysis.best_efforts)  # the run's own analysis says it
    records = {r.name: r for r in (await summary.ListRecords(summary_pb2.ListRecordsRequest(user_id="me"))).records}
    assert records["1k"].best.run_id == ran and [h.run_id for h in records["1k"].history] == [ran]


def schema(name: str) -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(tools.file_schemas() / name)))


async def test_the_exports_are_valid_against_the_gpx_1_1_and_tcx_v2_schemas(stack, channel, token, run_id):
    await record(channel, run_id, 60)
    await summary_pb2_grpc.SummaryServiceStub(channel).StopRun(
        summary_pb2.StopRunRequest(run_id=run_id, overview=overview(START, 60))
    )
    for suffix, xsd in (("gpx", "gpx11.xsd"), ("tcx", "tcx2.xsd")):
        status, _, body = await asyncio.to_thread(
            fetch, stack.envoy_address, f"/v1/runs/{run_id}/track.{suffix}", token
        )
        assert status == 200
        validator = schema(xsd)
        document = etree.fromstring(body, etree.XMLParser(resolve_entities=False, no_network=True))
        assert validator.validate(document), f"{suffix}: {validator.error_log}"
    # The schemas do refuse what breaks them: a trackpoint without its time.
    broken = etree.fromstring(body)
    tp = broken.find(f".//{{{TCX_NS}}}Trackpoint")
    tp.remove(tp.find(f"{{{TCX_NS}}}Time"))
    assert not schema("tcx2.xsd").validate(broken)


async def test_points_that_arrive_after_the_run_was_analysed_are_analysed_again(stack, channel, run_id):
    """The phone stopped with 300 points stored and sent the other 300 after (a stream resumed late)."""
    lat, lon, t0 = 45.0, 6.0, int(START.timestamp())
    points = [point(1, start_ms=t0 * 1000, latitude=lat, longitude=lon)]
    for k in range(2, 601):
        step = Geodesic.WGS84.Direct(lat, lon, 0.0, 4.0)
        lat, lon = step["lat2"], step["lon2"]
        points.append(point(k, start_ms=t0 * 1000, latitude=lat, longitude=lon))
    tracking = tracking_pb2_grpc.TrackingServiceStub(channel)
    await tracking.RecordTrack(iter([tracking_pb2.RecordTrackRequest(run_id=run_id, points=points[:300])]))
    summary = summary_pb2_grpc.SummaryServiceStub(channel)
    stop = overview(START, 5)
    stop.point_count = 300
    await summary.StopRun(summary_pb2.StopRunRequest(run_id=run_id, overview=stop))

    async def analysed(count: int) -> summary_pb2.Run:
        for _ in range(150):
            run = await summary.GetRun(summary_pb2.GetRunRequest(run_id=run_id))
            if run.analysis.point_count == count:
                return run
            await asyncio.sleep(0.1)
        raise AssertionError(f"not analysed with {count} points: {run.analysis.point_count}")

    first = await analysed(300)
    assert first.analysis.distance_m == pytest.approx(299 * 4.0, abs=0.5)
    await tracking.RecordTrack(iter([tracking_pb2.RecordTrackRequest(run_id=run_id, points=points[300:])]))
    again = await analysed(600)
    assert again.analysis.distance_m == pytest.approx(599 * 4.0, abs=0.5)
    assert [s.index for s in again.analysis.splits_km] == [1, 2, 3]
    assert {e.name for e in again.analysis.best_efforts} == {"400m", "1k", "1mile"}
