"""Following a run live in a real browser (Debian's Chromium, driven by Playwright) through Envoy:
the spectator's page `#live=<token>` and the owner's live links on the run's page.

A phone is played by the reference client (runtrack_client.RunRecorder) streaming through Envoy, fed
a point every 0.4 s by a task, each stamped with the time it is recorded, moving or standing still as the test says. The
stack the fixtures start must call a runner stalled after 3 s (LIVE_STALL_S=3 on the tracking
replicas; 180 s in production). A screenshot of each view is written under .dev/logs/test/web/.
"""

import asyncio
import contextlib
import datetime as dt
import itertools
import re
import statistics
import time

import pytest
from geographiclib.geodesic import Geodesic
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from playwright.async_api import Page, expect

from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from runtrack_client import RunRecorder
from tests.e2e.test_web_page import page_url, screenshot, ts
from tests.helpers import point
from tests.integration.faults import report

UTC = dt.UTC
# The tracking replicas' stall time in the test stack, in seconds (LIVE_STALL_S).
STALL_S = 3
# A point is on the spectator's screen within this long of being durable.
ON_SCREEN_S = 2.0
# Degrees a moving phone goes north and east between points 0.4 s apart: about 6.7 m, 50 m in the
# stall time, well above the 20 m under which a runner counts as stalled.
STEP = 5e-5
LIVE_STATE = re.compile("^(LIVE|RESUMED)$")
RUN_STATE = re.compile("^(LIVE|RESUMED|STALLED)$")


def now_stamp(t: float) -> Timestamp:
    return Timestamp(seconds=int(t), nanos=int((t % 1) * 1e9))


class Phone:
    """A phone recording run `run_id` with the reference client (runtrack_client.RunRecorder, which
    resumes a broken stream from the cursor): a point every `every_s` from a task, each stamped with
    the time it is recorded, moving or standing still as the test says."""

    def __init__(self, channel, run_id: str, every_s: float = 0.4) -> None:
        self.recorder = RunRecorder(channel, run_id, "", points_per_message=1)
        self.run_id = run_id
        self.every_s = every_s
        self.seq = 0
        self.lat, self.lon = 48.8566, 2.3522
        self.moving = True
        self.step = STEP
        self.sent: dict[int, float] = {}  # seq -> time.time() as it was recorded
        self.track: list[tuple[float, float]] = []
        self._recorded: asyncio.Queue[tracking_pb2.TrackPoint | None] = asyncio.Queue()
        self._halt = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._upload = asyncio.create_task(self.recorder.upload(self._live()))

    async def _live(self):
        """The points as the phone records them: one message each."""
        while (fix := await self._recorded.get()) is not None:
            yield fix

    async def send(self) -> None:
        if self._upload.done():
            await self._upload  # a failure the client could not recover from: raised here
        self.seq += 1
        if self.moving:
            self.lat += self.step
            self.lon += self.step
        t = time.time()
        fix = point(self.seq, time=now_stamp(t), latitude=self.lat, longitude=self.lon)
        await self._recorded.put(fix)
        self.sent[self.seq] = t
        self.track.append((self.lat, self.lon))

    async def _walk(self) -> None:
        while not self._halt.is_set():
            await self.send()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._halt.wait(), self.every_s)

    def start(self) -> None:
        self._halt.clear()
        self._task = asyncio.create_task(self._walk())

    async def pause(self) -> None:
        """Stops recording (the upload goes on); a failed write is raised here."""
        self._halt.set()
        if self._task is not None:
            task, self._task = self._task, None
            await task

    async def finish(self) -> tracking_pb2.RecordTrackResponse:
        await self.pause()
        await self._recorded.put(None)
        return await self._upload

    async def close(self) -> None:
        self._halt.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        if not self._upload.done():
            self._upload.cancel()
            with contextlib.suppress(BaseException):
                await self._upload


class Durable:
    """When each seq of a run was first seen durable: GetTrackCursor's contiguous_seq, read every 50 ms."""

    def __init__(self, channel, run_id: str) -> None:
        self.stub = tracking_pb2_grpc.TrackingServiceStub(channel)
        self.run_id = run_id
        self.at: dict[int, float] = {}
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        seen = 0
        while True:
            with contextlib.suppress(Exception):  # NOT_FOUND until the first point is stored
                cursor = await self.stub.GetTrackCursor(tracking_pb2.GetTrackCursorRequest(run_id=self.run_id))
                t = time.time()
                for seq in range(seen + 1, cursor.contiguous_seq + 1):
                    self.at[seq] = t
                seen = max(seen, cursor.contiguous_seq)
            await asyncio.sleep(0.05)

    async def until(self, seq: int, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while seq not in self.at:
            assert time.monotonic() < deadline, f"point {seq} was not durable within {timeout_s}s"
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@pytest.fixture
def spectator(page) -> Page:
    """A browser that never signed in: no token anywhere."""
    return page


@pytest.fixture
async def phone(channel, run_id):
    p = Phone(channel, run_id)
    yield p
    await p.close()


@pytest.fixture
async def durable(channel, run_id):
    d = Durable(channel, run_id)
    yield d
    await d.close()


async def started(phone: Phone, durable: Durable) -> None:
    """The phone walking, and its run known to the server (its first point durable)."""
    phone.start()
    await durable.until(1)


async def live_link(channel, run_id: str) -> tracking_pb2.LiveLink:
    link = await tracking_pb2_grpc.TrackingServiceStub(channel).CreateLiveLink(
        tracking_pb2.CreateLiveLinkRequest(run_id=run_id)
    )
    assert link.token and link.url.endswith(f"/#live={link.token}")
    return link


def live_url(stack, link_token: str) -> str:
    return f"http://{stack.envoy_address}/#live={link_token}"


async def stop_run(channel, run_id: str, phone: Phone) -> None:
    end = dt.datetime.now(UTC)
    overview = summary_pb2.RunOverview(
        start_time=ts(dt.datetime.fromtimestamp(phone.sent[1], UTC)),
        end_time=ts(end),
        distance_m=1000,
        moving_time=Duration(seconds=int(phone.sent[phone.seq] - phone.sent[1]) or 1),
        elevation_gain_m=0,
        point_count=phone.seq,
        polyline="_p~iF~ps|U",
    )
    await summary_pb2_grpc.SummaryServiceStub(channel).StopRun(
        summary_pb2.StopRunRequest(run_id=run_id, overview=overview)
    )


async def number(page: Page, selector: str, attribute: str) -> float:
    return float(await page.locator(selector).get_attribute(attribute) or 0)


# Notes in the page when #live-last-seq's seq changes: [seq, Date.now()] (the same clock as time.time()).
RECORD_SEEN = """() => {
  const element = document.getElementById('live-last-seq');
  window.seenAt = [];
  new MutationObserver(() => window.seenAt.push([Number(element.dataset.seq), Date.now()]))
    .observe(element, { attributes: true, attributeFilter: ['data-seq'] });
}"""


async def test_a_spectator_follows_a_run_point_by_point_until_it_finishes(
    stack, channel, spectator, phone, durable, run_id
):
    page = spectator
    await started(phone, durable)
    link = await live_link(channel, run_id)
    await page.goto(live_url(stack, link.token))
    await expect(page.locator("#live-view")).to_be_visible()
    await expect(page.locator("#sign-in")).to_be_hidden()
    await expect(page.locator("#live-state")).to_have_attribute("data-state", LIVE_STATE)
    await expect(page.locator("#live-points")).not_to_have_attribute("data-count", "0")
    assert await page.evaluate("sessionStorage.getItem('runtrack.token')") is None

    # The marker moves and the trail grows while the phone walks.
    marker = page.locator("#live-marker-pos")
    lat, lng = await marker.get_attribute("data-lat"), await marker.get_attribute("data-lng")
    count = await number(page, "#live-points", "data-count")
    await expect(marker).not_to_have_attribute("data-lat", lat or "")
    assert await marker.get_attribute("data-lng") != lng
    await expect(page.locator("#live-points")).not_to_have_attribute("data-count", str(int(count)))
    assert await number(page, "#live-points", "data-count") > count
    await expect(page.locator("#live-map svg path.trail-end")).to_have_count(1)

    # Each point reaches the screen within ON_SCREEN_S of being durable.
    await page.evaluate(RECORD_SEEN)
    first = phone.seq + 1
    await asyncio.sleep(8)
    last = phone.seq
    await page.wait_for_function(
        "(k) => Number(document.getElementById('live-last-seq').dataset.seq) >= k", arg=last, timeout=10_000
    )
    await durable.until(last)
    seen = await page.evaluate("window.seenAt")
    on_screen = {k: min(t for s, t in seen if s >= k) / 1000 for k in range(first, last + 1)}
    to_durable = [durable.at[k] - phone.sent[k] for k in on_screen]
    to_screen = [on_screen[k] - durable.at[k] for k in on_screen]
    sent_to_screen = [on_screen[k] - phone.sent[k] for k in on_screen]
    report(
        stack,
        "live_page_latency",
        points=len(on_screen),
        sent_to_durable_p50_s=round(statistics.median(to_durable), 3),
        sent_to_durable_max_s=round(max(to_durable), 3),
        durable_to_screen_p50_s=round(statistics.median(to_screen), 3),
        durable_to_screen_max_s=round(max(to_screen), 3),
        sent_to_screen_max_s=round(max(sent_to_screen), 3),
    )
    late = {k: round(s, 2) for k, s in zip(on_screen, to_screen, strict=True) if s > ON_SCREEN_S}
    assert not late, f"seconds from durable to on screen, over {ON_SCREEN_S}s: {late}"

    # Distance: the trail's geodesic length so far (the page sums Leaflet's sphere, this the ellipsoid).
    assert (await phone.finish()).contiguous_seq == phone.seq
    await expect(page.locator("#live-last-seq")).to_have_attribute("data-seq", str(phone.seq))
    await expect(page.locator("#live-points")).to_have_attribute("data-count", str(phone.seq))
    want_m = sum(Geodesic.WGS84.Inverse(*a, *b)["s12"] for a, b in itertools.pairwise(phone.track))
    assert await number(page, "#live-distance", "data-m") == pytest.approx(want_m, rel=0.01)
    await screenshot(stack, page, "live")

    await stop_run(channel, run_id, phone)
    await expect(page.locator("#live-end")).to_contain_text("Run finished", timeout=10_000)
    await expect(page.locator("#live-state")).to_have_attribute("data-state", "STOPPED")
    # Once over, elapsed time runs from the first point's time to the last's.
    assert await number(page, "#live-elapsed", "data-s") == pytest.approx(phone.sent[phone.seq] - phone.sent[1], abs=1)
    await expect(page.locator("#live-error")).to_be_hidden()
    await screenshot(stack, page, "live-finished")


async def test_the_spectator_sees_a_banner_while_the_runner_stands_still(
    stack, channel, spectator, phone, durable, run_id
):
    page = spectator
    await started(phone, durable)
    link = await live_link(channel, run_id)
    await page.goto(live_url(stack, link.token))
    banner = page.locator("#live-banner")
    await expect(page.locator("#live-state")).to_have_attribute("data-state", LIVE_STATE)
    await expect(banner).to_be_hidden()

    phone.moving = False  # the points go on, all in one place
    still = time.monotonic()
    await expect(banner).to_be_visible(timeout=STALL_S * 1000 + 10_000)
    stalled_after = time.monotonic() - still
    await expect(banner).to_contain_text("stalled")
    await expect(page.locator("#live-state")).to_have_attribute("data-state", "STALLED")
    await screenshot(stack, page, "live-stalled")

    phone.step = 3e-4  # about 40 m a point
    phone.moving = True
    moving = time.monotonic()
    await expect(banner).to_be_hidden(timeout=10_000)
    resumed_after = time.monotonic() - moving
    await expect(page.locator("#live-state")).to_have_attribute("data-state", LIVE_STATE)
    report(
        stack,
        "live_page_stall",
        stall_s=STALL_S,
        banner_after_s=round(stalled_after, 2),
        gone_after_s=round(resumed_after, 2),
    )
    assert (await phone.finish()).contiguous_seq == phone.seq


async def test_a_revoked_link_is_refused_on_an_open_page_and_on_a_new_one(
    stack, channel, browser, spectator, phone, durable, run_id
):
    page = spectator
    await started(phone, durable)
    link = await live_link(channel, run_id)
    await page.goto(live_url(stack, link.token))
    await expect(page.locator("#live-points")).not_to_have_attribute("data-count", "0")
    await expect(page.locator("#live-error")).to_be_hidden()

    await tracking_pb2_grpc.TrackingServiceStub(channel).DeleteLiveLink(
        tracking_pb2.DeleteLiveLinkRequest(run_id=run_id, link_id=link.link_id)
    )
    revoked = time.monotonic()
    # The open stream is ended within seconds; its reconnect is answered 401.
    error = page.locator("#live-error")
    await expect(error).to_contain_text("revoked", timeout=20_000)
    report(stack, "live_page_revoked", refused_after_s=round(time.monotonic() - revoked, 2))
    await expect(error).to_have_attribute("data-status", "401")
    await expect(page.locator("#live-banner")).to_be_hidden()
    await screenshot(stack, page, "live-revoked")

    context = await browser.new_context(timezone_id="UTC")
    fresh = await context.new_page()
    await fresh.goto(live_url(stack, link.token))
    await expect(fresh.locator("#live-error")).to_contain_text("revoked")
    await expect(fresh.locator("#live-points")).to_have_attribute("data-count", "0")
    await expect(fresh.locator("#sign-in")).to_be_hidden()
    await context.close()
    assert (await phone.finish()).contiguous_seq == phone.seq


async def test_the_owner_creates_shares_and_revokes_a_live_link_on_the_runs_page(
    stack, channel, browser, phone, durable, run_id, token
):
    context = await browser.new_context(viewport={"width": 1100, "height": 900}, timezone_id="UTC")
    page = await context.new_page()
    stub = tracking_pb2_grpc.TrackingServiceStub(channel)
    await started(phone, durable)
    await page.goto(page_url(stack, token, run_id))
    # The run is being recorded: the page follows it (the watch stream) and offers live links.
    await expect(page.locator("#run-state")).to_contain_text("points so far")
    section = page.locator("#live-links")
    items = page.locator("#live-link-list li[data-link-id]")
    await expect(section).to_be_visible()
    await expect(items).to_have_count(0)
    await expect(page.locator("#no-live-links")).to_be_visible()

    await page.locator("#create-live-link").click()
    url = page.locator("#live-link-url")
    await expect(url).to_have_text(re.compile(r"/#live=[\w-]+\.[\w-]+\.[\w-]+$"))
    await expect(items).to_have_count(1)
    await expect(page.locator("#live-link-secret-row")).to_be_hidden()
    link_token = (await url.text_content() or "").split("#live=", 1)[1]
    links = (await stub.ListLiveLinks(tracking_pb2.ListLiveLinksRequest(run_id=run_id))).links
    assert [link.link_id for link in links] == [await items.first.get_attribute("data-link-id")]
    await screenshot(stack, page, "live-links")

    # The owner opens the link in the same tab: the spectator's view, with the link's token and
    # not the owner's, which stays where it was.
    async with page.expect_request(lambda r: ":watch?afterSeq=0" in r.url) as watch:
        await page.goto(live_url(stack, link_token))
    assert (await (await watch.value).all_headers())["authorization"] == f"Bearer {link_token}"
    await expect(page.locator("#live-view")).to_be_visible()
    await expect(page.locator("#live-state")).to_have_attribute("data-state", RUN_STATE)
    assert await page.evaluate("sessionStorage.getItem('runtrack.token')") == token

    await page.goto(f"http://{stack.envoy_address}/#run={run_id}")
    await expect(items).to_have_count(1)
    await expect(page.locator("#live-link-created")).to_be_hidden()  # the token was shown once
    await items.first.locator("button.revoke-link").click()
    await expect(items).to_have_count(0)
    await expect(page.locator("#no-live-links")).to_be_visible()
    assert not (await stub.ListLiveLinks(tracking_pb2.ListLiveLinksRequest(run_id=run_id))).links
    await expect(page.locator("#error")).to_be_hidden()
    await context.close()
    assert (await phone.finish()).contiguous_seq == phone.seq
