"""A GPX, TCX or FIT file made by each format's own writer becomes a run of the caller, through Envoy:
its points in the CQL store, its overview and analysis on the dashboard at once, matching gpxpy's
own distances; the same file again is the same run; a bad file is refused with what is wrong and
where, and nothing of it is stored."""

import asyncio
import dataclasses
import datetime as dt
import hashlib
import http.client
import itertools
import json
import re
import subprocess
import uuid

import gpxpy
import grpc
import psycopg
import pytest
from geographiclib.geodesic import Geodesic
from google.api import httpbody_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from devstack.activity_files import Fix, fit_file, gpx_file, synthetic_run, tcx_file
from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from summary_service.analysis import Sample, analyse
from summary_service.runs import IMPORT_KEY, imported_run_id
from tests.helpers import http_json
from tests.integration.test_files import fetch, record

GPX_TYPE = "application/gpx+xml"
TCX_TYPE = "application/vnd.garmin.tcx+xml"
FIT_TYPE = "application/vnd.ant.fit"


def post_file(base: str, body: bytes, content_type: str, token: str, **headers: str) -> tuple[int, dict]:
    host, port = base.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request(
        "POST",
        "/v1/runs:import",
        body=body,
        headers={"authorization": f"Bearer {token}", "content-type": content_type, **headers},
    )
    response = conn.getresponse()
    raw = response.read()
    conn.close()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, {"raw": raw.decode(errors="replace")}


def gpxpy_length(fixes: list[Fix]) -> float:
    """gpxpy's own distance over the fixes (its formula, not the server's geodesics)."""
    segment = gpxpy.gpx.GPXTrackSegment([gpxpy.gpx.GPXTrackPoint(f.latitude, f.longitude, time=f.time) for f in fixes])
    return segment.length_2d()


def gpxpy_best_effort_s(fixes: list[Fix], distance: float) -> float:
    """The fastest stretch of `distance` metres by gpxpy's distances, fix to fix, brute force."""
    cum = [0.0]
    for a, b in itertools.pairwise(fixes):
        cum.append(cum[-1] + gpxpy.geo.distance(a.latitude, a.longitude, None, b.latitude, b.longitude, None))
    best = float("inf")
    j = 0
    for i in range(len(fixes)):
        while j < len(fixes) and cum[j] - cum[i] < distance:
            j += 1
        if j == len(fixes):
            break
        # Scaled to exactly `distance` over the last fix-to-fix stretch.
        over = (cum[j] - cum[i] - distance) / max(cum[j] - cum[j - 1], 1e-9)
        seconds = (fixes[j].time - fixes[i].time).total_seconds() - over * (fixes[j].time - fixes[j - 1].time).seconds
        best = min(best, seconds)
    return best


async def trail(channel, run_id: str) -> list[tracking_pb2.TrackPoint]:
    stub = tracking_pb2_grpc.TrackingServiceStub(channel)
    out, token = [], ""
    while True:
        page = await stub.GetTrack(tracking_pb2.GetTrackRequest(run_id=run_id, page_size=10_000, page_token=token))
        out += page.points
        token = page.next_page_token
        if not token:
            return out


async def test_a_gpx_file_imports_as_a_run_on_the_dashboard_with_splits_and_efforts_matching_gpxpy(
    stack, channel, token, user_id
):
    fixes = synthetic_run(1500)  # 25 minutes, ~5 km
    status, run = await asyncio.to_thread(
        post_file, stack.envoy_address, gpx_file(fixes), GPX_TYPE, token, **{"x-runtrack-time-zone": "Europe/Paris"}
    )
    assert status == 200, run
    assert run["userId"] == user_id and run["name"] == "Bois de Boulogne loop"
    o = run["overview"]
    assert o["pointCount"] == 1500
    assert o["startTime"] == "2026-04-18T06:30:00Z" and o["endTime"] == "2026-04-18T06:54:59Z"
    expected = gpxpy_length(fixes)
    assert o["distanceM"] == pytest.approx(expected, rel=0.005), "gpxpy's own distance within 0.5 %"
    assert o["avgHeartRateBpm"] == pytest.approx(sum(f.heart_rate_bpm for f in fixes) / len(fixes))
    assert o["polyline"]

    a = run["analysis"]
    assert a["pointCount"] == 1500
    assert len(a["splitsKm"]) == int(expected // 1000) + 1
    assert sum(s["distanceM"] for s in a["splitsKm"]) == pytest.approx(expected, rel=0.005)
    assert sum(float(s["elapsedTime"].rstrip("s")) for s in a["splitsKm"]) == pytest.approx(1499, abs=0.01)
    efforts = {e["name"]: float(e["elapsedTime"].rstrip("s")) for e in a["bestEfforts"]}
    assert set(efforts) >= {"400m", "1k", "1mile"}
    for name, distance in (("400m", 400.0), ("1k", 1000.0), ("1mile", 1609.344)):
        assert efforts[name] == pytest.approx(gpxpy_best_effort_s(fixes, distance), rel=0.01), name
    assert a["elevationGainM"] > 0 and len(a["heartRateZones"]) == 5

    # On the dashboard at once, and its trail is the file's points in order.
    status, listed = http_json(stack.envoy_address, "GET", "/v1/users/me/runs", token=token)
    assert [r["runId"] for r in listed["runs"]] == [run["runId"]]
    points = await trail(channel, run["runId"])
    assert [p.seq for p in points] == list(range(1, 1501))
    for p, f in zip(points, fixes, strict=True):
        assert (p.latitude, p.longitude, p.altitude_m) == (f.latitude, f.longitude, f.altitude_m)
        assert p.time.ToDatetime(dt.UTC) == f.time
        assert (p.heart_rate_bpm, p.cadence_spm) == (f.heart_rate_bpm, f.cadence_spm)


async def test_the_same_file_twice_is_one_run_and_another_runner_gets_their_own(stack, channel, token, user_id):
    body = gpx_file(synthetic_run(120, seed=3), name="Twice")
    first = await asyncio.to_thread(post_file, stack.envoy_address, body, GPX_TYPE, token)
    again = await asyncio.to_thread(post_file, stack.envoy_address, body, GPX_TYPE, token)
    assert first[0] == again[0] == 200
    assert again[1] == first[1]
    _, listed = http_json(stack.envoy_address, "GET", "/v1/users/me/runs", token=token)
    assert [r["runId"] for r in listed["runs"]] == [first[1]["runId"]]
    other = stack.issuer.token(f"other-{uuid.uuid4().hex[:8]}")
    theirs = await asyncio.to_thread(post_file, stack.envoy_address, body, GPX_TYPE, other)
    assert theirs[0] == 200 and theirs[1]["runId"] != first[1]["runId"]


@pytest.mark.parametrize("kind", ["tcx", "fit"])
async def test_tcx_and_fit_files_import_over_grpc_with_heart_rate_cadence_and_gaps(stack, channel, kind):
    fixes = synthetic_run(600, seed=7, start=dt.datetime(2025, 9, 1, 18, 15, tzinfo=dt.UTC))
    data, content_type = (
        (tcx_file(fixes, notes="Track Tuesday"), TCX_TYPE)
        if kind == "tcx"
        else (
            fit_file(fixes, pauses=4),
            FIT_TYPE,
        )
    )
    run = await summary_pb2_grpc.SummaryServiceStub(channel).ImportRun(
        httpbody_pb2.HttpBody(content_type=content_type, data=data), metadata=(("x-runtrack-time-zone", "UTC"),)
    )
    assert run.name == ("Track Tuesday" if kind == "tcx" else "Evening run")
    assert run.overview.point_count == 600, "fixes without a position are not trail points"
    assert run.overview.distance_m == pytest.approx(gpxpy_length(fixes), rel=0.005)
    assert run.analysis.point_count == 600 and len(run.analysis.splits_km) >= 2
    points = await trail(channel, run.run_id)
    assert len(points) == 600
    for p, f in zip(points, fixes, strict=True):
        assert p.latitude == pytest.approx(f.latitude, abs=1e-7) and p.longitude == pytest.approx(f.longitude, abs=1e-7)
        assert p.heart_rate_bpm == f.heart_rate_bpm and p.cadence_spm == f.cadence_spm
        assert p.altitude_m == pytest.approx(f.altitude_m, abs=0.2)


async def test_an_exported_run_imports_back_to_the_same_points(stack, channel, token, run_id):
    sent = await record(channel, run_id, 90)
    status, _, body = await asyncio.to_thread(fetch, stack.envoy_address, f"/v1/runs/{run_id}/track.tcx", token)
    assert status == 200
    status, run = await asyncio.to_thread(post_file, stack.envoy_address, body, TCX_TYPE, token)
    assert status == 200, run
    assert run["runId"] != run_id
    points = await trail(channel, run["runId"])
    assert [(p.seq, p.latitude, p.longitude, p.heart_rate_bpm, p.cadence_spm) for p in points] == [
        (p.seq, p.latitude, p.longitude, p.heart_rate_bpm, p.cadence_spm) for p in sent
    ]
    assert [p.time for p in points] == [p.time for p in sent]


def billion_laughs() -> bytes:
    entities = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    return (
        f'<?xml version="1.0"?><!DOCTYPE gpx [<!ENTITY l0 "ha">{entities}]>'
        '<gpx xmlns="http://www.topografix.com/GPX/1/1" version="1.1"><trk><name>&l9;</name></trk></gpx>'
    ).encode()


def fit_claiming_2_gb() -> bytes:
    data = bytearray(fit_file(synthetic_run(20)))
    data[4:8] = (2_000_000_000).to_bytes(4, "little")  # the header's data size; its CRC is then off too
    data[12:14] = b"\x00\x00"  # a header CRC of 0 means "not computed"
    return bytes(data)


def flipped(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


GOOD_GPX = gpx_file(synthetic_run(40))
GOOD_FIT = fit_file(synthetic_run(40))
BAD_FILES = {
    "truncated GPX": (GOOD_GPX[: len(GOOD_GPX) // 2], GPX_TYPE, "BAD_FILE", "line "),
    "billion laughs": (billion_laughs(), GPX_TYPE, "XML_DTD_FORBIDDEN", "DTD"),
    "GPX points without time": (
        re.sub(rb"<trkpt([^>]*)>\s*(<ele>[^<]*</ele>)?\s*<time>[^<]*</time>", rb"<trkpt\1>\2", GOOD_GPX),
        GPX_TYPE,
        "EMPTY_TRACK",
        "has 0 track point(s) with a time and a position; a run needs at least 2",
    ),
    "GPX latitude out of range": (
        GOOD_GPX.replace(b'lat="48.85"', b'lat="91.5"', 1),
        GPX_TYPE,
        "BAD_FILE",
        "point 1: latitude",
    ),
    "truncated FIT": (GOOD_FIT[: len(GOOD_FIT) - 200], FIT_TYPE, "BAD_FILE", "FIT file unreadable"),
    "FIT with a corrupt byte": (flipped(GOOD_FIT, 300), FIT_TYPE, "BAD_FILE", "FIT file unreadable"),
    "FIT claiming 2 GB": (fit_claiming_2_gb(), FIT_TYPE, "BAD_FILE", "FIT file unreadable"),
    "a PNG named .gpx": (b"\x89PNG\r\n\x1a\n" + bytes(200), GPX_TYPE, "UNKNOWN_FILE_TYPE", "not a GPX, TCX or FIT"),
    "KML": (
        b'<?xml version="1.0"?><kml xmlns="http://www.opengis.net/kml/2.2"><Document/></kml>',
        GPX_TYPE,
        "UNKNOWN_FILE_TYPE",
        "root element",
    ),
    "one point": (gpx_file(synthetic_run(1)), GPX_TYPE, "EMPTY_TRACK", "at least 2"),
    "empty": (b"", GPX_TYPE, "BAD_FILE", "is empty"),
}


def import_id(stack, user_id: str, data: bytes):
    """The id the replicas give this file for this runner, with the key they keep in PostgreSQL."""
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute("SELECT key FROM server_keys WHERE name = %s", (IMPORT_KEY,)).fetchone()
    # No key yet: no import ever got as far as an id (an empty file is refused before).
    return imported_run_id(bytes(row[0]) if row else b"none", user_id, hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize("case", sorted(BAD_FILES))
async def test_a_bad_file_is_refused_naming_what_and_where_and_nothing_is_stored(stack, channel, token, user_id, case):
    data, content_type, reason, words = BAD_FILES[case]
    status, body = await asyncio.to_thread(post_file, stack.envoy_address, data, content_type, token)
    assert status == 400, body
    info = next(d for d in body["details"] if d["@type"].endswith("ErrorInfo"))
    violation = next(d for d in body["details"] if d["@type"].endswith("BadRequest"))["fieldViolations"][0]
    assert info["reason"] == reason, body
    assert violation["field"] == "file" and words in violation["description"], body
    status, listed = http_json(stack.envoy_address, "GET", "/v1/users/me/runs", token=token)
    assert listed["runs"] == []
    would_be = import_id(stack, user_id, data)
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # no point of the would-be run was stored
        await tracking_pb2_grpc.TrackingServiceStub(channel).GetTrackCursor(
            tracking_pb2.GetTrackCursorRequest(run_id=str(would_be))
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_file_sent_with_the_wrong_type_imports_as_what_it_is(stack, token):
    fixes = synthetic_run(60, seed=11)
    status, run = await asyncio.to_thread(post_file, stack.envoy_address, fit_file(fixes), GPX_TYPE, token)
    assert status == 200, run
    assert run["overview"]["pointCount"] == 60


async def test_a_file_over_the_size_limit_is_refused_before_it_is_read(stack, token):
    body = GOOD_GPX + b"<!--" + b"x" * (17 * 1024 * 1024) + b"-->"
    # Envoy answers from the headers (the content-length) and closes: curl stops sending then, where
    # a client that writes the whole body first sees the connection reset.
    out = await asyncio.to_thread(
        subprocess.run,
        [
            "curl", "-sS", "--data-binary", "@-", "-o", "-", "-w", "\n%{http_code}",
            "-H", f"content-type: {GPX_TYPE}", "-H", f"authorization: Bearer {token}",
            f"http://{stack.envoy_address}/v1/runs:import",
        ],
        input=body, capture_output=True, timeout=60,
    )  # fmt: skip
    text, _, code = out.stdout.decode(errors="replace").rpartition("\n")
    assert code == "413", (code, text[:300], out.stderr)
    assert json.loads(text)["details"][0]["reason"] == "REQUEST_TOO_LARGE"
    status, listed = http_json(stack.envoy_address, "GET", "/v1/users/me/runs", token=token)
    assert (status, listed["runs"]) == (200, [])


async def test_a_deleted_imported_run_is_not_brought_back_by_the_same_file(stack, channel, token):
    body = gpx_file(synthetic_run(50, seed=5))
    status, run = await asyncio.to_thread(post_file, stack.envoy_address, body, GPX_TYPE, token)
    assert status == 200
    await summary_pb2_grpc.SummaryServiceStub(channel).DeleteRun(summary_pb2.DeleteRunRequest(run_id=run["runId"]))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await summary_pb2_grpc.SummaryServiceStub(channel).ImportRun(
            httpbody_pb2.HttpBody(content_type=GPX_TYPE, data=body)
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = rpc_status.from_call(caught.value).details
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in details) and info.reason == "RUN_DELETED"


async def test_an_import_needs_a_signed_in_runner(stack):
    async with grpc.aio.insecure_channel(stack.envoy_address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await summary_pb2_grpc.SummaryServiceStub(ch).ImportRun(
                httpbody_pb2.HttpBody(content_type=GPX_TYPE, data=GOOD_GPX)
            )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_point_without_a_time_is_skipped_and_the_rest_imports(stack, token):
    data = GOOD_GPX.replace(b"<time>2026-04-18T06:30:02Z</time>", b"", 1)
    assert data != GOOD_GPX
    status, run = await asyncio.to_thread(post_file, stack.envoy_address, data, GPX_TYPE, token)
    assert status == 200, run
    assert run["overview"]["pointCount"] == 39


# ---- real recorders' pauses and the declared sport ------------------------------------------------


def paused_for(fixes: list[Fix], at: int, seconds: float, north_deg: float = 0.01) -> list[Fix]:
    """The fixes from `at` on later by `seconds` and ~1.1 km further north (0.01 deg): the runner
    stopped the watch and went on elsewhere."""
    return fixes[:at] + [
        dataclasses.replace(f, time=f.time + dt.timedelta(seconds=seconds), latitude=f.latitude + north_deg)
        for f in fixes[at:]
    ]


def samples_of_trail(points: list[tracking_pb2.TrackPoint]) -> list[Sample]:
    """The stored trail as the summary service reads it to compute an analysis again."""
    return [
        Sample(
            p.seq,
            p.time.seconds + p.time.nanos / 1e9,
            p.latitude,
            p.longitude,
            p.altitude_m if p.HasField("altitude_m") else None,
            p.heart_rate_bpm if p.HasField("heart_rate_bpm") else None,
            p.after_pause,
        )
        for p in points
    ]


async def test_a_multi_segment_gpx_imports_without_the_distance_or_time_across_its_pauses(
    stack, channel, token, user_id
):
    fixes = paused_for(paused_for(synthetic_run(1200, seed=21), 400, 900), 800, 600)  # 20 min run, 25 min paused
    gpxpy_whole = gpxpy_length(fixes)
    gpxpy_stretches = gpxpy_length(fixes[:400]) + gpxpy_length(fixes[400:800]) + gpxpy_length(fixes[800:])
    body = gpx_file(fixes, pauses=[400], new_tracks=[800], sport="running")
    status, run = await asyncio.to_thread(post_file, stack.envoy_address, body, GPX_TYPE, token)
    assert status == 200, run
    o = run["overview"]
    assert run["sport"] == "running"
    assert o["distanceM"] == pytest.approx(gpxpy_stretches, rel=0.005)
    assert gpxpy_whole - o["distanceM"] > 2000, "the two ~1.1 km jumps are not in the distance"
    assert o["movingTime"] == "1197s", "1,200 fixes a second apart, less the two steps across a pause"
    assert run["elapsedTime"] == "2699s"
    a = run["analysis"]
    assert a["distanceM"] == pytest.approx(o["distanceM"])
    assert sum(float(s["elapsedTime"].rstrip("s")) for s in a["splitsKm"]) == pytest.approx(1197, abs=0.01)

    # The trail keeps the pauses: an analysis computed again from it is the one stored.
    points = await trail(channel, run["runId"])
    assert [p.seq for p in points if p.after_pause] == [401, 801]
    again = dataclasses.asdict(analyse(samples_of_trail(points)))
    assert again["distance_m"] == pytest.approx(a["distanceM"], rel=1e-9)
    assert [e["name"] for e in again["best_efforts"]] == [e["name"] for e in a["bestEfforts"]]
    for mine, stored in zip(again["best_efforts"], a["bestEfforts"], strict=True):
        assert (mine["start_seq"], mine["end_seq"]) == (stored["startSeq"], stored["endSeq"])
    assert all(not (e["startSeq"] <= 400 < e["endSeq"] or e["startSeq"] <= 800 < e["endSeq"]) for e in a["bestEfforts"])

    # GetRun and ListRuns show the sport; the export writes the pauses back as segments.
    status, got = http_json(stack.envoy_address, "GET", f"/v1/runs/{run['runId']}", token=token)
    assert status == 200 and got["sport"] == "running"
    status, listed = http_json(stack.envoy_address, "GET", "/v1/users/me/runs", token=token)
    assert [r["sport"] for r in listed["runs"]] == ["running"]
    status, _, exported = await asyncio.to_thread(
        fetch, stack.envoy_address, f"/v1/runs/{run['runId']}/track.gpx", token
    )
    assert status == 200 and exported.count(b"<trkseg>") == 3


@pytest.mark.parametrize("kind", ["tcx", "fit"])
async def test_a_tcx_track_and_a_fit_timer_stop_are_pauses_on_the_imported_run(stack, channel, kind):
    fixes = paused_for(synthetic_run(600, seed=23), 300, 1200)
    data, content_type = (
        (tcx_file(fixes, laps=[150, 300, 450], pauses=[300], sport="Running"), TCX_TYPE)
        if kind == "tcx"
        else (fit_file(fixes, timer_stops=[300], sport="running"), FIT_TYPE)
    )
    run = await summary_pb2_grpc.SummaryServiceStub(channel).ImportRun(
        httpbody_pb2.HttpBody(content_type=content_type, data=data)
    )
    assert run.sport == "running"
    assert run.overview.distance_m == pytest.approx(gpxpy_length(fixes[:300]) + gpxpy_length(fixes[300:]), rel=0.005)
    assert run.overview.moving_time.ToTimedelta().total_seconds() == 598
    points = await trail(channel, run.run_id)
    assert [p.seq for p in points if p.after_pause] == [301]


async def test_a_ride_or_a_drive_declared_as_such_sets_no_running_record(stack, channel, token):
    """At 6 m/s a kilometre takes 167 s: a speed a runner can reach, so only the declared sport tells
    a ride from a run. The ride (and a drive) hold no record; the same trail undeclared does."""
    start = dt.datetime(2025, 5, 1, 7, 0, tzinfo=dt.UTC)

    def fast(seed: int, hours: int) -> list[Fix]:
        fixes = synthetic_run(400, seed=seed, start=start + dt.timedelta(hours=hours))
        out, lat, lon = [], fixes[0].latitude, fixes[0].longitude
        for f in fixes:  # 6 m/s due east
            out.append(dataclasses.replace(f, latitude=lat, longitude=lon))
            step = Geodesic.WGS84.Direct(lat, lon, 90.0, 6.0)
            lat, lon = round(step["lat2"], 7), round(step["lon2"], 7)
        return out

    for seed, hours, sport in ((31, 0, "cycling"), (32, 2, "driving"), (33, 4, None)):
        status, run = await asyncio.to_thread(
            post_file, stack.envoy_address, fit_file(fast(seed, hours), sport=sport), FIT_TYPE, token
        )
        assert status == 200, run
        assert run.get("sport", "") == (sport or "")
        assert any(e["name"] == "1k" for e in run["analysis"]["bestEfforts"]), "the run's own analysis keeps it"
        if sport is None:
            undeclared = run["runId"]
    records = {r.name: r for r in (await summary_pb2_grpc.SummaryServiceStub(channel).ListRecords(
        summary_pb2.ListRecordsRequest(user_id="me"))).records}  # fmt: skip
    assert [h.run_id for h in records["1k"].history] == [undeclared]
