"""The dashboard page in a real browser (Debian's Chromium, driven by Playwright) through Envoy.

Runs are streamed with the gRPC client first; the page then signs in from `#token=`, lists them,
draws a trail, follows a run being recorded, charts the weeks, shares and deletes. A screenshot of
each view is written under .dev/logs/test/web/ for a person to look at.
"""

import asyncio
import datetime as dt
import json
import time
import urllib.request
import uuid

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from playwright.async_api import Page, expect

from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from tests.helpers import point
from tests.integration.faults import report

UTC = dt.UTC


def ts(value: dt.datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(value)
    return t


async def record(channel, run_id: str, points, *, stop_at: dt.datetime | None = None, km: float = 5.0):
    """Streams `points` for a new run and, with `stop_at`, stops it with an overview."""
    await tracking_pb2_grpc.TrackingServiceStub(channel).RecordTrack(
        iter(
            [
                tracking_pb2.RecordTrackRequest(run_id=run_id, points=points[k : k + 1000])
                for k in range(0, len(points), 1000)
            ]
        )
    )
    if stop_at is not None:
        overview = summary_pb2.RunOverview(
            start_time=ts(stop_at - dt.timedelta(minutes=30)),
            end_time=ts(stop_at),
            distance_m=km * 1000,
            moving_time=Duration(seconds=1700),
            elevation_gain_m=12,
            point_count=len(points),
            polyline="_p~iF~ps|U",
        )
        await summary_pb2_grpc.SummaryServiceStub(channel).StopRun(
            summary_pb2.StopRunRequest(run_id=run_id, overview=overview)
        )


async def screenshot(stack, page: Page, name: str) -> None:
    folder = stack.spec.logs / "web"
    folder.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def page_url(stack, token: str, run_id: str | None = None) -> str:
    return f"http://{stack.envoy_address}/#token={token}" + (f"&run={run_id}" if run_id else "")


async def test_signing_in_from_the_url_lists_the_runs_newest_first_and_takes_the_token_out_of_the_url(
    stack, channel, page, token
):
    now = dt.datetime.now(UTC).replace(microsecond=0)
    ids = [str(uuid.uuid4()) for _ in range(3)]
    for k, run_id in enumerate(ids):
        await record(channel, run_id, [point(1), point(2)], stop_at=now - dt.timedelta(days=3 - k), km=5 + k)
    await page.goto(page_url(stack, token))
    items = page.locator("#runs li[data-run-id]")
    await expect(items).to_have_count(3)
    assert [await item.get_attribute("data-run-id") for item in await items.all()] == ids[::-1]
    await expect(items.first).to_contain_text("7.00 km")
    assert "token" not in page.url
    assert await page.evaluate("sessionStorage.getItem('runtrack.token')") == token
    await expect(page.locator("#stats-chart")).to_have_attribute("data-weeks", "12")
    first_list_ms = await page.evaluate("performance.getEntriesByName('runtrack:first-list')[0].startTime")
    transferred = await page.evaluate(
        """() => [...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource')]
                 .filter((e) => !e.name.includes('/v1/'))
                 .reduce((sum, e) => sum + e.transferSize, 0)"""
    )
    await screenshot(stack, page, "runs")
    report(
        stack, "web_first_load", kilobytes_transferred=round(transferred / 1024, 1), first_list_ms=round(first_list_ms)
    )
    # A reload keeps the runner signed in (the token is in sessionStorage, not in the URL).
    await page.reload()
    await expect(items).to_have_count(3)


async def test_a_run_opens_with_its_overview_and_its_whole_trail_paged_to_the_end(stack, channel, page, token):
    run_id = str(uuid.uuid4())
    n = 10_050  # more than one GetTrack page of 10,000
    start_ms = (int(time.time()) - 4 * 3600) * 1000  # one fix a second, all in the past
    points = [
        point(s, start_ms=start_ms, latitude=48.85 + s * 1e-5, longitude=2.35 + (s % 200) * 1e-5)
        for s in range(1, n + 1)
    ]
    await record(channel, run_id, points, stop_at=dt.datetime.now(UTC) - dt.timedelta(hours=1))
    await page.goto(page_url(stack, token, run_id))
    await expect(page.locator(f"svg[data-points='{n}']")).to_have_count(1, timeout=20_000)
    await expect(page.locator("#run-overview")).to_contain_text("5.00 km")
    await expect(page.locator("#run-overview")).to_contain_text(str(n))
    await screenshot(stack, page, "run")


async def test_a_run_being_recorded_redraws_as_its_points_arrive(stack, channel, page, token):
    run_id = str(uuid.uuid4())
    stub = tracking_pb2_grpc.TrackingServiceStub(channel)
    call = stub.RecordTrack()
    await call.write(tracking_pb2.RecordTrackRequest(run_id=run_id, points=[point(s) for s in range(1, 6)]))
    await asyncio.sleep(0.3)
    await page.goto(page_url(stack, token, run_id))
    await expect(page.locator("svg[data-points='5']")).to_have_count(1)
    await expect(page.locator("#run-state")).to_contain_text("Being recorded")
    for seq in range(6, 16):  # the phone goes on, one point a message
        await call.write(tracking_pb2.RecordTrackRequest(points=[point(seq)]))
    await expect(page.locator("svg[data-points='15']")).to_have_count(1, timeout=10_000)
    await expect(page.locator("#run-state")).to_contain_text("15 points so far")
    await screenshot(stack, page, "run-live")
    await call.done_writing()
    assert (await call).contiguous_seq == 15


def _week_with_km(starts: str, km: str) -> dict[str, float]:
    return {s: float(k) for s, k in zip(starts.split(","), km.split(","), strict=True) if float(k) > 0}


async def test_the_weekly_chart_counts_weeks_in_the_browsers_time_zone(stack, browser, channel, token):
    # A run at 01:00 UTC on the Monday a week ago: that Monday's week in UTC, and the week before
    # in New York (Sunday evening there).
    today = dt.datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    monday = today - dt.timedelta(days=today.weekday() + 7)
    end = monday + dt.timedelta(hours=1)
    await record(channel, str(uuid.uuid4()), [point(1)], stop_at=end + dt.timedelta(minutes=30), km=8)
    seen = {}
    for zone in ("UTC", "America/New_York"):
        context = await browser.new_context(viewport={"width": 1100, "height": 900}, timezone_id=zone)
        page = await context.new_page()
        await page.goto(page_url(stack, token))
        chart = page.locator("#stats-chart")
        await expect(chart).to_have_attribute("data-weeks", "12")
        seen[zone] = _week_with_km(await chart.get_attribute("data-week-starts"), await chart.get_attribute("data-km"))
        await expect(page.locator("#stats-total")).to_contain_text(zone)
        await screenshot(stack, page, f"stats-{zone.replace('/', '-')}")
        await context.close()
    assert seen["UTC"] == {monday.date().isoformat(): 8.0}
    assert seen["America/New_York"] == {(monday - dt.timedelta(days=7)).date().isoformat(): 8.0}


async def test_the_owner_switches_a_run_public_and_private(stack, channel, page, token, run_id):
    await record(channel, run_id, [point(1), point(2)], stop_at=dt.datetime.now(UTC) - dt.timedelta(hours=2))
    summary = summary_pb2_grpc.SummaryServiceStub(channel)
    await page.goto(page_url(stack, token, run_id))
    switch = page.locator("#public-switch")
    await expect(switch).not_to_be_checked()
    for want, state in ((True, summary_pb2.PUBLIC), (False, summary_pb2.PRIVATE)):
        await switch.click()
        await expect(switch).to_be_checked(checked=want)
        deadline = time.monotonic() + 5
        while (await summary.GetRun(summary_pb2.GetRunRequest(run_id=run_id))).visibility != state:
            assert time.monotonic() < deadline, f"the run did not become {state}"
            await asyncio.sleep(0.1)
    await screenshot(stack, page, "run-owner")


async def test_deleting_a_run_asks_first_and_then_it_is_gone(stack, channel, page, token, run_id):
    await record(channel, run_id, [point(1), point(2)], stop_at=dt.datetime.now(UTC) - dt.timedelta(hours=2))
    await page.goto(page_url(stack, token, run_id))
    await expect(page.locator("svg[data-points='2']")).to_have_count(1)
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.dismiss()))
    await page.locator("#delete-run").click()
    await expect(page.locator("#run-view")).to_be_visible()
    summary = summary_pb2_grpc.SummaryServiceStub(channel)
    assert (await summary.GetRun(summary_pb2.GetRunRequest(run_id=run_id))).run_id == run_id
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.locator("#delete-run").click()
    await expect(page.locator("#runs-view")).to_be_visible()
    await expect(page.locator(f"li[data-run-id='{run_id}']")).to_have_count(0)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await summary.GetRun(summary_pb2.GetRunRequest(run_id=run_id))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_privacy_zones_are_edited_and_a_broken_rule_is_shown_in_words(stack, channel, page, token):
    await page.goto(page_url(stack, token))
    await expect(page.locator("#runs-view")).to_be_visible()
    await page.locator("#add-zone").click()
    row = page.locator("#zones tr").last
    await row.locator("input[name=latitude]").fill("48.8566")
    await row.locator("input[name=longitude]").fill("2.3522")
    await row.locator("input[name=radiusM]").fill("50")
    await page.get_by_role("button", name="Save zones").click()
    await expect(page.locator("#error")).to_contain_text("zones[0].radius_m: must be between 100 and 5000 metres")
    await screenshot(stack, page, "zones-error")
    await row.locator("input[name=radiusM]").fill("300")
    await page.get_by_role("button", name="Save zones").click()
    await expect(page.locator("#zones-status")).to_contain_text("Saved 1 zone")
    await expect(page.locator("#error")).to_be_hidden()
    zones = await tracking_pb2_grpc.TrackingServiceStub(channel).GetPrivacyZones(tracking_pb2.GetPrivacyZonesRequest())
    assert [(z.latitude, z.longitude, z.radius_m) for z in zones.zones] == [(48.8566, 2.3522, 300.0)]


async def test_an_expired_token_sends_the_runner_back_to_sign_in(stack, page, user_id):
    expired = stack.issuer.token(user_id, exp=int(time.time()) - 120)
    await page.goto(page_url(stack, expired))
    await expect(page.locator("#sign-in")).to_be_visible()
    await expect(page.locator("#sign-in-reason")).to_contain_text("Jwt is expired")
    assert await page.evaluate("sessionStorage.getItem('runtrack.token')") is None
    await screenshot(stack, page, "sign-in")
    # Signing in with a good token by pasting it.
    await page.locator("#token-input").fill(stack.issuer.token(user_id))
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#who")).to_contain_text(user_id)


async def test_a_public_run_of_someone_else_opens_without_owner_controls(stack, channel, browser, run_id):
    await record(channel, run_id, [point(1), point(2), point(3)], stop_at=dt.datetime.now(UTC))
    await summary_pb2_grpc.SummaryServiceStub(channel).UpdateRun(
        summary_pb2.UpdateRunRequest(run=summary_pb2.Run(run_id=run_id, visibility=summary_pb2.PUBLIC))
    )
    context = await browser.new_context(timezone_id="UTC")
    page = await context.new_page()
    await page.goto(page_url(stack, stack.issuer.token("bob"), run_id))
    await expect(page.locator("svg[data-points='3']")).to_have_count(1)
    await expect(page.locator("#run-owner-actions")).to_be_hidden()
    await context.close()


def test_the_openapi_document_is_served_open_and_declares_bearer_auth(stack):
    with urllib.request.urlopen(f"http://{stack.envoy_address}/openapi.json", timeout=10) as reply:
        document = json.loads(reply.read())
    assert document["openapi"].startswith("3.")
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert document["security"] == [{"bearerAuth": []}]
    assert "/v1/runs/{runId}:stop" in document["paths"] and "/v1/users/{userId}/privacyZones" in document["paths"]


def test_the_page_and_its_bundle_are_served_open_and_gzipped(stack):
    with urllib.request.urlopen(f"http://{stack.envoy_address}/", timeout=10) as reply:
        assert reply.headers["content-type"].startswith("text/html") and b"/assets/app.js" in reply.read()
    request = urllib.request.Request(f"http://{stack.envoy_address}/assets/app.js", headers={"accept-encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.headers["content-encoding"] == "gzip"
        assert reply.headers["content-type"].startswith("application/javascript")


async def test_more_than_a_page_of_runs_is_listed_by_asking_for_more(stack, channel, page, token):
    now = dt.datetime.now(UTC).replace(microsecond=0)
    ids = [str(uuid.uuid4()) for _ in range(23)]
    for k, run_id in enumerate(ids):
        await record(channel, run_id, [point(1)], stop_at=now - dt.timedelta(hours=k + 1))
    await page.goto(page_url(stack, token))
    items = page.locator("#runs li[data-run-id]")
    await expect(items).to_have_count(20)
    await page.locator("#more-runs").click()
    await expect(items).to_have_count(23)
    await expect(page.locator("#more-runs")).to_be_hidden()
    assert [await item.get_attribute("data-run-id") for item in await items.all()] == ids
