"""A run's name, analysis, records, files and importing, on the dashboard page in a real browser
(Debian's Chromium, driven by Playwright) through Envoy.

Runs are streamed with the gRPC client and stopped; the server analyses each one after StopRun has
answered, so the tests wait for the analysis through the API before comparing the page with it. The
page's numbers are read from its DOM (data attributes the page sets from what it drew) and compared
with GetRun, ListRecords and the files ExportTrack serves. A screenshot of each view is written under
.dev/logs/test/web/ for a person to look at.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import re
import time
import uuid
from pathlib import Path
from typing import Any

import gpxpy
import gpxpy.gpx
import grpc
import pytest
from lxml import etree
from playwright.async_api import Browser, FilePayload, Page, expect

from devstack.stack import Stack
from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2
from tests.e2e.test_web_page import page_url, record, screenshot
from tests.helpers import point

UTC = dt.UTC
# Metres per degree of latitude around Paris: a point this many degrees north of the last one is
# about `speed` metres further on.
M_PER_DEG_LAT = 111_200.0
TCX_NS = {"t": "http://www.garmin.com/xmlschemas/TrainingCenterDatabase/v2"}
ANALYSIS_WAIT_S = 60


def trail(speeds_mps: list[float], *, start: dt.datetime, heart_rate: bool = True) -> list[tracking_pb2.TrackPoint]:
    """One fix a second going north at the given speed (one speed per second), with altitude (a
    gentle hill) and, if `heart_rate`, a heart rate."""
    start_ms = int(start.timestamp()) * 1000
    lat, points = 48.85, []
    for k, speed in enumerate(speeds_mps):
        seq = k + 1
        lat += speed / M_PER_DEG_LAT
        extra: dict[str, Any] = {"latitude": lat, "longitude": 2.35, "altitude_m": 40 + 15 * math.sin(seq / 150)}
        if not heart_rate:
            extra["heart_rate_bpm"] = None
        points.append(point(seq, start_ms=start_ms, **extra))
    return points


async def analysed(channel: grpc.aio.Channel, run_id: str) -> summary_pb2.Run:
    """GetRun, once the server has stored the run's analysis."""
    summary = summary_pb2_grpc.SummaryServiceStub(channel)
    deadline = time.monotonic() + ANALYSIS_WAIT_S
    while True:
        run = await summary.GetRun(summary_pb2.GetRunRequest(run_id=run_id))
        if run.HasField("analysis"):
            return run
        assert time.monotonic() < deadline, f"run {run_id} was not analysed within {ANALYSIS_WAIT_S} s"
        await asyncio.sleep(0.25)


async def records(channel: grpc.aio.Channel) -> list[summary_pb2.PersonalRecord]:
    reply = await summary_pb2_grpc.SummaryServiceStub(channel).ListRecords(summary_pb2.ListRecordsRequest(user_id="me"))
    return list(reply.records)


async def two_runs(channel: grpc.aio.Channel) -> tuple[str, str]:
    """An older steady run at 4.2 m/s over 5.9 km, and a newer slower one at 3 m/s (4.7 km) with a
    75 s surge at 6 m/s: the newer one holds the 400 m record, the older one every longer one."""
    now = dt.datetime.now(UTC).replace(microsecond=0)
    older, newer = str(uuid.uuid4()), str(uuid.uuid4())
    steady = trail([4.2] * 1400, start=now - dt.timedelta(days=1, hours=1))
    await record(channel, older, steady, stop_at=now - dt.timedelta(days=1), km=5.9)
    surge = trail([3.0] * 100 + [6.0] * 75 + [3.0] * 1325, start=now - dt.timedelta(hours=1))
    await record(channel, newer, surge, stop_at=now - dt.timedelta(minutes=30), km=4.7)
    await analysed(channel, older)
    await analysed(channel, newer)
    return older, newer


def seconds(duration: Any) -> float:
    return float(duration.ToTimedelta().total_seconds())


async def rows(page: Page, selector: str) -> list[dict[str, str]]:
    """The data attributes of every element `selector` finds, in order."""
    found: list[dict[str, str]] = await page.eval_on_selector_all(selector, "(els) => els.map((e) => ({...e.dataset}))")
    return found


async def test_the_run_is_titled_by_its_name_and_its_owner_renames_it_for_good(
    stack: Stack, channel: grpc.aio.Channel, page: Page, token: str, run_id: str
) -> None:
    await record(
        channel,
        run_id,
        trail([3.0] * 20, start=dt.datetime.now(UTC) - dt.timedelta(hours=2)),
        stop_at=dt.datetime.now(UTC) - dt.timedelta(hours=1),
    )
    summary = summary_pb2_grpc.SummaryServiceStub(channel)
    default = (await summary.GetRun(summary_pb2.GetRunRequest(run_id=run_id))).name
    assert default.endswith(" run")
    await page.goto(page_url(stack, token))
    item = page.locator(f"#runs li[data-run-id='{run_id}'] [data-testid=run-name]")
    await expect(item).to_have_text(default)
    await item.click()
    title = page.get_by_test_id("run-title")
    await expect(title).to_have_text(default)

    # A refusal of the server is said in words, and the name stays what it was.
    await page.get_by_role("button", name="Rename").click()
    field = page.get_by_label("Name", exact=True)
    await expect(field).to_have_value(default)
    await field.fill("x" * 201)
    await page.get_by_test_id("rename-save").click()
    await expect(page.get_by_test_id("rename-error")).to_contain_text("at most 200 characters")
    assert (await summary.GetRun(summary_pb2.GetRunRequest(run_id=run_id))).name == default
    await screenshot(stack, page, "run-rename-refused")

    await field.fill("Hill repeats with Ada")
    await page.get_by_test_id("rename-save").click()
    await expect(title).to_have_text("Hill repeats with Ada")
    await expect(page.get_by_test_id("rename-form")).to_be_hidden()
    assert (await summary.GetRun(summary_pb2.GetRunRequest(run_id=run_id))).name == "Hill repeats with Ada"
    await page.reload()
    await expect(title).to_have_text("Hill repeats with Ada")
    await page.get_by_role("link", name="All runs").click()
    await expect(item).to_have_text("Hill repeats with Ada")


async def test_someone_else_sees_the_name_of_a_shared_run_but_cannot_rename_it(
    stack: Stack, channel: grpc.aio.Channel, browser: Browser, run_id: str
) -> None:
    await record(
        channel,
        run_id,
        trail([3.0] * 20, start=dt.datetime.now(UTC) - dt.timedelta(hours=2)),
        stop_at=dt.datetime.now(UTC) - dt.timedelta(hours=1),
    )
    await summary_pb2_grpc.SummaryServiceStub(channel).UpdateRun(
        summary_pb2.UpdateRunRequest(
            run=summary_pb2.Run(run_id=run_id, visibility=summary_pb2.PUBLIC, name="Parc loop")
        )
    )
    context = await browser.new_context(timezone_id="UTC")
    page = await context.new_page()
    await page.goto(page_url(stack, stack.issuer.token(f"bob-{uuid.uuid4().hex[:8]}"), run_id))
    await expect(page.get_by_test_id("run-title")).to_have_text("Parc loop")
    await expect(page.locator("svg[data-points='20']")).to_have_count(1)
    await expect(page.get_by_test_id("rename-button")).to_be_hidden()
    await context.close()


async def test_the_charts_splits_and_best_efforts_are_the_runs_with_a_pr_mark_on_its_records(
    stack: Stack, channel: grpc.aio.Channel, page: Page, token: str
) -> None:
    older, newer = await two_runs(channel)
    run = await analysed(channel, newer)
    await page.goto(page_url(stack, token, newer))

    chart = page.get_by_test_id("run-chart")
    await expect(chart).to_have_attribute("data-points", "1500", timeout=20_000)
    await expect(chart).to_have_attribute("data-datasets", "pace,elevation,heart-rate")
    values = json.loads(await chart.get_attribute("data-values") or "{}")
    assert values["elevation"] == values["heart-rate"] == 1500
    assert 1400 < values["pace"] <= 1500  # not over the first few metres
    drawn_km = float(await chart.get_attribute("data-distance-km") or "nan")
    assert math.isclose(drawn_km * 1000, run.analysis.distance_m, rel_tol=0.01)

    status = page.get_by_test_id("analysis-status")
    await expect(status).to_have_attribute("data-state", "ready")
    await expect(status).to_contain_text(f"{run.analysis.point_count} points")

    splits = page.locator("[data-testid=splits] tbody tr")
    await expect(splits).to_have_count(len(run.analysis.splits_km))
    assert len(run.analysis.splits_km) == 5  # 4.73 km: four whole kilometres and the rest
    shown = await rows(page, "[data-testid=splits] tbody tr")
    for row, split in zip(shown, run.analysis.splits_km, strict=True):
        assert int(row["index"]) == split.index
        assert math.isclose(float(row["distanceM"]), split.distance_m, abs_tol=1e-6)
        assert math.isclose(float(row["elapsedS"]), seconds(split.elapsed_time), abs_tol=1e-3)
        assert math.isclose(float(row["paceSPerKm"]), split.pace_s_per_km, abs_tol=1e-6)
    first = run.analysis.splits_km[0]
    m, s = divmod(round(seconds(first.elapsed_time)), 60)
    await expect(splits.first).to_contain_text(f"{m}:{s:02d}")

    await page.get_by_label("mile", exact=True).check()
    await expect(page.get_by_test_id("splits")).to_have_attribute("data-unit", "mile")
    await expect(splits).to_have_count(len(run.analysis.splits_mile))
    shown = await rows(page, "[data-testid=splits] tbody tr")
    assert [float(r["elapsedS"]) for r in shown] == [
        pytest.approx(seconds(split.elapsed_time), abs=1e-3) for split in run.analysis.splits_mile
    ]
    await expect(splits.first).to_contain_text("1.00 mi")

    efforts = page.locator("[data-testid=best-efforts] li")
    await expect(efforts).to_have_count(len(run.analysis.best_efforts))
    shown = await rows(page, "[data-testid=best-efforts] li")
    assert [r["name"] for r in shown] == [e.name for e in run.analysis.best_efforts] == ["400m", "1k", "1mile"]
    for row, effort in zip(shown, run.analysis.best_efforts, strict=True):
        assert math.isclose(float(row["elapsedS"]), seconds(effort.elapsed_time), abs_tol=1e-3)
    # The newer run holds the 400 m record (its surge), nothing longer.
    held = {r.name for r in await records(channel) if r.best.run_id == newer}
    assert held == {"400m"}
    await expect(page.locator("[data-testid=best-efforts] li:has([data-testid=pr-mark])")).to_have_count(1)
    await expect(page.locator("[data-testid=best-efforts] li[data-name='400m'] [data-testid=pr-mark]")).to_have_text(
        "PR"
    )
    await screenshot(stack, page, "run-analysis")

    # The older one: the records of 1 km and more, not the 400 m.
    await page.goto(page_url(stack, token, older))
    await expect(page.get_by_test_id("analysis-status")).to_have_attribute("data-state", "ready")
    marked = page.locator("[data-testid=best-efforts] li:has([data-testid=pr-mark])")
    await expect(marked).to_have_count(3)
    assert [await li.get_attribute("data-name") for li in await marked.all()] == ["1k", "1mile", "5k"]


async def test_heart_rate_is_charted_only_when_recorded(
    stack: Stack, channel: grpc.aio.Channel, page: Page, token: str, run_id: str
) -> None:
    now = dt.datetime.now(UTC)
    points = trail([3.0] * 400, start=now - dt.timedelta(hours=2), heart_rate=False)
    await record(channel, run_id, points, stop_at=now - dt.timedelta(hours=1), km=1.2)
    await page.goto(page_url(stack, token, run_id))
    chart = page.get_by_test_id("run-chart")
    await expect(chart).to_have_attribute("data-points", "400", timeout=20_000)
    await expect(chart).to_have_attribute("data-datasets", "pace,elevation")
    assert json.loads(await chart.get_attribute("data-values") or "{}")["elevation"] == 400


async def test_a_run_without_its_analysis_yet_says_so_and_shows_it_once_computed(
    stack: Stack, channel: grpc.aio.Channel, page: Page, token: str, run_id: str
) -> None:
    # StopRun says 900 points while 500 are stored: the server waits for the rest before analysing.
    now = dt.datetime.now(UTC).replace(microsecond=0)
    points = trail([3.0] * 900, start=now - dt.timedelta(hours=1))
    await record(channel, run_id, points[:500])
    summary = summary_pb2_grpc.SummaryServiceStub(channel)
    overview = summary_pb2.RunOverview(
        start_time=points[0].time, end_time=points[-1].time, distance_m=2700, point_count=900
    )
    await summary.StopRun(summary_pb2.StopRunRequest(run_id=run_id, overview=overview))
    await page.goto(page_url(stack, token, run_id))
    status = page.get_by_test_id("analysis-status")
    await expect(status).to_have_attribute("data-state", "pending")
    await expect(status).to_contain_text("being computed")
    await expect(page.get_by_test_id("analysis-details")).to_be_hidden()
    assert not (await summary.GetRun(summary_pb2.GetRunRequest(run_id=run_id))).HasField("analysis")
    await screenshot(stack, page, "run-analysis-pending")

    await record(channel, run_id, points[500:])  # the phone's last points arrive
    run = await analysed(channel, run_id)
    await expect(status).to_have_attribute("data-state", "ready", timeout=15_000)
    await expect(page.locator("[data-testid=splits] tbody tr")).to_have_count(len(run.analysis.splits_km))
    await expect(page.get_by_test_id("run-chart")).to_have_attribute("data-points", "900", timeout=10_000)


async def test_the_list_shows_the_records_listrecords_returns_each_linking_to_its_run(
    stack: Stack, channel: grpc.aio.Channel, page: Page, token: str
) -> None:
    older, newer = await two_runs(channel)
    want = await records(channel)
    assert [r.name for r in want] == ["400m", "1k", "1mile", "5k"]
    await page.goto(page_url(stack, token))
    table = page.get_by_test_id("records")
    await expect(table.locator("tbody tr")).to_have_count(len(want))
    shown = await rows(page, "[data-testid=records] tbody tr")
    assert [(r["name"], r["runId"]) for r in shown] == [(w.name, w.best.run_id) for w in want]
    assert [r["runId"] for r in shown] == [newer, older, older, older]
    for row, best in zip(shown, want, strict=True):
        assert math.isclose(float(row["elapsedS"]), seconds(best.best.elapsed_time), abs_tol=1e-3)
    achieved = want[0].best.achieved_time.ToDatetime(tzinfo=UTC)
    first = table.locator("tbody tr").first
    await expect(first).to_contain_text("400 m")
    await expect(first).to_contain_text(f"{achieved.strftime('%b')} {achieved.day}, {achieved.year}")
    await screenshot(stack, page, "records")
    await first.get_by_role("link", name="Open the run").click()
    await expect(page.locator("#run-view")).to_have_attribute("data-run-id", newer)
    await expect(page.get_by_test_id("analysis-status")).to_have_attribute("data-state", "ready")


async def test_the_trail_downloads_as_gpx_and_tcx_holding_the_runs_points(
    stack: Stack, channel: grpc.aio.Channel, page: Page, token: str, run_id: str, tmp_path: Path
) -> None:
    now = dt.datetime.now(UTC).replace(microsecond=0)
    points = trail([3.0] * 120, start=now - dt.timedelta(hours=2))
    await record(channel, run_id, points, stop_at=now - dt.timedelta(hours=1), km=0.36)
    await page.goto(page_url(stack, token, run_id))
    await expect(page.locator("svg[data-points='120']")).to_have_count(1)
    menu = page.get_by_test_id("download-menu")
    saved: dict[str, Path] = {}
    for fmt in ("gpx", "tcx"):
        await menu.locator("summary").click()
        async with page.expect_download() as info:
            await page.get_by_role("button", name=fmt.upper(), exact=True).click()
        download = await info.value
        assert download.suggested_filename == f"runtrack-{run_id}.{fmt}"
        saved[fmt] = tmp_path / download.suggested_filename
        await download.save_as(saved[fmt])
        await expect(page.get_by_test_id("download-status")).to_contain_text(download.suggested_filename)
        await menu.locator("summary").click()

    want = [(p.latitude, p.longitude, p.time.ToDatetime(tzinfo=UTC)) for p in points]
    gpx = gpxpy.parse(saved["gpx"].read_text())
    got = [(p.latitude, p.longitude, p.time) for t in gpx.tracks for s in t.segments for p in s.points]
    assert len(got) == len(want)
    for (lat, lon, at), (wlat, wlon, wat) in zip(got, want, strict=True):
        assert math.isclose(lat, wlat, abs_tol=1e-7) and math.isclose(lon, wlon, abs_tol=1e-7)
        assert at == wat

    tcx = etree.parse(str(saved["tcx"]))
    trackpoints = tcx.findall(".//t:Trackpoint", TCX_NS)
    assert len(trackpoints) == len(want)
    for tp, (wlat, wlon, wat) in zip(trackpoints, want, strict=True):
        lat = float(tp.findtext("t:Position/t:LatitudeDegrees", namespaces=TCX_NS))
        lon = float(tp.findtext("t:Position/t:LongitudeDegrees", namespaces=TCX_NS))
        at = dt.datetime.fromisoformat(tp.findtext("t:Time", namespaces=TCX_NS).replace("Z", "+00:00"))
        assert math.isclose(lat, wlat, abs_tol=1e-7) and math.isclose(lon, wlon, abs_tol=1e-7)
        assert at == wat
    hr = [int(tp.findtext("t:HeartRateBpm/t:Value", namespaces=TCX_NS)) for tp in trackpoints]
    assert hr == [p.heart_rate_bpm for p in points]


def gpx_file(n: int, start: dt.datetime) -> bytes:
    """A GPX 1.1 file as a watch writes it: `n` fixes a second apart going north, with elevation."""
    gpx = gpxpy.gpx.GPX()
    track = gpxpy.gpx.GPXTrack()  # no name: the run gets the default one, from its local start time
    segment = gpxpy.gpx.GPXTrackSegment()
    for k in range(n):
        segment.points.append(
            gpxpy.gpx.GPXTrackPoint(
                48.85 + k * 3.0 / M_PER_DEG_LAT,
                2.35,
                elevation=40 + k % 5,
                time=start + dt.timedelta(seconds=k),
            )
        )
    track.segments.append(segment)
    gpx.tracks.append(track)
    return gpx.to_xml(version="1.1").encode()


async def test_the_import_button_sends_a_gpx_file_and_opens_the_run_it_made(
    stack: Stack, channel: grpc.aio.Channel, browser: Browser, token: str
) -> None:
    # 23:30 UTC is 08:30 in Tokyo: the run's default name says the page sent the browser's zone.
    start = dt.datetime(2024, 5, 1, 23, 30, tzinfo=UTC) + dt.timedelta(seconds=uuid.uuid4().int % 600)
    data = gpx_file(300, start)
    context = await browser.new_context(viewport={"width": 1100, "height": 900}, timezone_id="Asia/Tokyo")
    page = await context.new_page()
    await page.goto(page_url(stack, token))
    await expect(page.locator("#runs-view")).to_be_visible()
    await expect(page.get_by_test_id("import-button")).to_be_visible()
    file = FilePayload(name="tokyo-morning.gpx", mimeType="application/gpx+xml", buffer=data)
    await page.get_by_test_id("import-file").set_input_files(file)
    await expect(page.locator("#run-view")).to_be_visible(timeout=20_000)
    await expect(page).to_have_url(re.compile(r"#run=[0-9a-f-]{36}$"))
    run_id = (await page.locator("#run-view").get_attribute("data-run-id")) or ""
    await expect(page.locator("svg[data-points='300']")).to_have_count(1)
    await expect(page.get_by_test_id("run-title")).to_have_text("Morning run")
    summary = summary_pb2_grpc.SummaryServiceStub(channel)
    run = await summary.GetRun(summary_pb2.GetRunRequest(run_id=run_id))
    assert run.overview.point_count == 300
    assert run.overview.start_time.ToDatetime(tzinfo=UTC) == start
    await screenshot(stack, page, "run-imported")

    # The same file again: the same run.
    await page.goto(page_url(stack, token))
    await expect(page.locator("#runs-view")).to_be_visible()
    await page.get_by_test_id("import-file").set_input_files(file)
    await expect(page.locator("#run-view")).to_be_visible(timeout=20_000)
    await expect(page.locator("#run-view")).to_have_attribute("data-run-id", run_id)
    listed = await summary.ListRuns(summary_pb2.ListRunsRequest(user_id="me", page_size=100))
    assert [r.run_id for r in listed.runs].count(run_id) == 1

    # A broken file: the server's words, naming where it breaks; no run is added.
    await page.goto(page_url(stack, token))
    await expect(page.locator("#runs-view")).to_be_visible()
    broken = data.replace(b"</trkseg>", b"<oops></trkseg>")
    line = broken[: broken.index(b"</trkseg>")].count(b"\n") + 1
    await page.get_by_test_id("import-file").set_input_files(
        FilePayload(name="broken.gpx", mimeType="application/gpx+xml", buffer=broken)
    )
    error = page.locator("#error")
    await expect(error).to_contain_text("broken.gpx was not imported", timeout=20_000)
    await expect(error).to_contain_text(re.compile(rf"line {line}, column \d+"))
    await screenshot(stack, page, "import-refused")
    await expect(page.locator("#runs-view")).to_be_visible()
    after = await summary.ListRuns(summary_pb2.ListRunsRequest(user_id="me", page_size=100))
    assert len(after.runs) == len(listed.runs)
    await context.close()
