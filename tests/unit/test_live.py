"""The pure logic of following a run: the stall watch, the state machine, what a spectator may see
of points still arriving, a link's life, and the webhook's signature and target rules."""

import asyncio
import dataclasses
import datetime as dt
import http.server
import threading
import time
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracking_service.domain import Point
from tracking_service.live import (
    LIVE,
    RESUMED,
    STALLED,
    STOPPED,
    LinkRecord,
    LiveRow,
    Movement,
    SeqSet,
    ZoneTrim,
    link_expiry,
    next_state,
)
from tracking_service.privacy import Zone, trim
from tracking_service.webhooks import PRIVATE_RULE, TargetPolicy, check_url, post_pinned, signature, verify

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
M_PER_DEG_LAT = 111_200


def walk(n: int, step_m: float, *, every_s: float = 1.0, start_s: float = 0.0) -> list[Point]:
    return [
        Point(
            seq=i + 1,
            time_ms=int((start_s + i * every_s) * 1000),
            latitude=48.0 + i * step_m / M_PER_DEG_LAT,
            longitude=2.0,
        )
        for i in range(n)
    ]


def test_a_runner_standing_still_for_the_stall_time_is_stalled():
    m = Movement(stall_s=180, stall_m=20)
    m.add(walk(200, 0.05), seen_at=200)
    assert m.verdict(now=200) == "moved 9 m in 180s"  # the last 180 s: 180 steps of 5 cm


def test_a_runner_moving_is_not_stalled_and_a_short_watch_cannot_tell():
    moving = Movement(stall_s=180, stall_m=20)
    moving.add(walk(200, 3.0), seen_at=200)
    assert moving.verdict(now=200) is None
    short = Movement(stall_s=180, stall_m=20)
    short.add(walk(60, 0.0), seen_at=60)  # a minute of standing still: not yet three
    assert short.verdict(now=60) is None


def test_no_point_for_the_stall_time_is_stalled_whatever_the_last_movement():
    m = Movement(stall_s=180, stall_m=20)
    m.add(walk(10, 5.0), seen_at=1000)
    assert m.verdict(now=1179) is None
    assert m.verdict(now=1181) == "no point for 181s"


def test_the_window_keeps_only_the_stall_time_and_one_point_before_it():
    m = Movement(stall_s=10, stall_m=20)
    m.add(walk(100, 1.0), seen_at=100)
    assert len(m.window) == 11
    m.add(walk(1, 0.0, start_s=99.5), seen_at=101)
    assert m.window[0][0] <= m.window[-1][0] - 10_000


def test_moving_again_resumes_and_ended_runs_stay_ended():
    assert next_state(LIVE, "moved 3 m in 180s") == STALLED
    assert next_state(STALLED, "moved 3 m in 180s") is None
    assert next_state(STALLED, None) == RESUMED
    assert next_state(RESUMED, None) is None
    assert next_state(RESUMED, "no point for 200s") == STALLED
    assert next_state(STOPPED, "no point for 200s") is None


ZONE = Zone(48.0, 2.0, 100)


@given(
    steps=st.lists(st.sampled_from([-30.0, -5.0, 0.0, 5.0, 30.0, 60.0]), min_size=1, max_size=60),
    cuts=st.lists(st.integers(min_value=1, max_value=60), max_size=10),
)
def test_a_spectator_sees_at_every_moment_what_gettrack_shows_of_the_trail_so_far(steps, cuts):
    lat, points = 48.0, []
    for i, step in enumerate(steps):
        lat += step / M_PER_DEG_LAT
        points.append(Point(seq=i + 1, time_ms=i * 1000, latitude=lat, longitude=2.0))
    view, shown = ZoneTrim([ZONE]), []
    bounds = sorted({c for c in cuts if c < len(points)} | {len(points)})
    start = 0
    for end in bounds:
        shown += view.feed(points[start:end])
        assert shown == trim(points[:end], [ZONE])
        start = end


def test_without_zones_every_point_is_shown_at_once():
    assert ZoneTrim([]).feed(walk(3, 5.0)) == walk(3, 5.0)


def test_a_zone_set_during_a_watch_applies_from_the_next_point_and_heart_rate_stays_the_owners():
    beating = [dataclasses.replace(p, heart_rate_bpm=140, cadence_spm=160) for p in walk(6, 5.0)]
    view = ZoneTrim([], health=False)
    assert view.feed(beating[:2]) == [
        dataclasses.replace(p, heart_rate_bpm=None, cadence_spm=None) for p in beating[:2]
    ]
    home = Zone(beating[0].latitude, beating[0].longitude, 100.0)
    view.set_zones([home])  # the runner is still within 100 m of where the watch began
    assert view.feed(beating[2:4]) == []
    view.set_zones([])  # removed again: what was held back is shown
    assert [p.seq for p in view.feed(beating[4:])] == [3, 4, 5, 6]
    assert ZoneTrim([], health=True).feed(beating[:1]) == beating[:1]


def test_a_link_without_expiry_ends_an_hour_after_the_stop_and_a_revoked_one_at_once():
    link = LinkRecord("l1", NOW)
    live = LiveRow(links={"l1": link})
    assert live.expiry(link) is None and live.refusal("l1", NOW + dt.timedelta(days=3)) is None
    stopped = LiveRow(state=STOPPED, stopped_at=NOW, links={"l1": link})
    assert stopped.refusal("l1", NOW + dt.timedelta(minutes=59)) is None
    assert stopped.refusal("l1", NOW + dt.timedelta(minutes=61)) == "LINK_EXPIRED"
    assert stopped.refusal("gone", NOW) == "LINK_REVOKED"
    own = LinkRecord("l2", NOW, expire_at=NOW + dt.timedelta(hours=2))
    assert LiveRow(links={"l2": own}).refusal("l2", NOW + dt.timedelta(hours=2)) == "LINK_EXPIRED"


def test_a_link_expiry_is_in_the_future_and_within_seven_days():
    assert link_expiry(None, NOW) is None
    assert link_expiry(NOW + dt.timedelta(days=7), NOW) == NOW + dt.timedelta(days=7)
    with pytest.raises(ValueError, match="7 days"):
        link_expiry(NOW + dt.timedelta(days=7, seconds=1), NOW)
    with pytest.raises(ValueError, match="future"):
        link_expiry(NOW, NOW)


def test_the_signature_is_hmac_sha256_of_the_body_and_a_changed_byte_fails():
    # RFC 4231 test case 2: key "Jefe", "what do ya want for nothing?".
    body = b"what do ya want for nothing?"
    assert signature("Jefe", body) == "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert verify("Jefe", body, signature("Jefe", body))
    assert not verify("Jefe", body + b" ", signature("Jefe", body))
    assert not verify("other", body, signature("Jefe", body))


DOTTED = "must write an IPv4 host as four decimal numbers 0-255 (no hex, octal or short forms)"


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("ftp://example.org/x", "must be an absolute https URL"),
        ("/relative", "must be an absolute https URL"),
        ("http://example.org/hook", "must be an https URL"),
        ("https://user:pw@example.org/hook", "must not carry credentials"),
        ("https://127.0.0.1/hook", PRIVATE_RULE),
        ("https://10.1.2.3/hook", PRIVATE_RULE),
        ("https://169.254.169.254/latest", PRIVATE_RULE),
        ("https://[::1]/hook", PRIVATE_RULE),
        ("https://localhost/hook", PRIVATE_RULE),
        ("https://example.org/" + "a" * 2100, "must be at most 2048 characters"),
        # What a filter that reads the host differently from the client lets through.
        ("https://%31%32%37.0.0.1/hook", "must name its host plainly (no percent-escapes)"),
        ("https://%31%30.0.0.1/hook", "must name its host plainly (no percent-escapes)"),
        ("https://[::1%25lo]/hook", "must name its host plainly (no percent-escapes)"),
        ("https://2130706433/hook", DOTTED),
        ("https://0x7f000001/hook", DOTTED),
        ("https://0177.0.0.1/hook", DOTTED),
        ("https://0x7f.0.0.1/hook", DOTTED),
        ("https://127.1/hook", DOTTED),
        ("https://10.0.0.1./hook", PRIVATE_RULE),
        ("https://100.64.0.1/hook", PRIVATE_RULE),  # shared (CGNAT)
        ("https://224.0.0.1/hook", PRIVATE_RULE),
        ("https://0.0.0.0/hook", PRIVATE_RULE),
        ("https://[::]/hook", PRIVATE_RULE),
        ("https://[fd00::1]/hook", PRIVATE_RULE),  # unique local
        ("https://[fe80::1]/hook", PRIVATE_RULE),
        ("https://[::ffff:127.0.0.1]/hook", PRIVATE_RULE),  # IPv4-mapped
        ("https://[::ffff:a9fe:a9fe]/latest", PRIVATE_RULE),
        ("https://[64:ff9b::a00:1]/hook", PRIVATE_RULE),  # NAT64 of 10.0.0.1
        ("https://[2002:a00:1::]/hook", PRIVATE_RULE),  # 6to4 of 10.0.0.1
        ("https://@example.org/hook", "must not carry credentials"),
        ("https://example.org@10.0.0.1/hook", "must not carry credentials"),
        ("https://exa mple.org/hook", "must not contain spaces, control characters or backslashes"),
        ("https://example.org\\@10.0.0.1/", "must not contain spaces, control characters or backslashes"),
        ("https://ex_ample.org/hook", "must have a DNS name of letters, digits and hyphens as its host"),
        ("https://example.org:99999/hook", "must be an absolute https URL with a valid port"),
        ("https://example.org:0/hook", "must be an absolute https URL with a valid port"),
    ],
)
def test_a_webhook_target_must_be_public_https(url, rule):
    assert check_url(url, allow_private=False) == rule


def test_development_may_post_to_loopback_over_http():
    assert check_url("http://127.0.0.1:8099/hook", allow_private=True) is None
    assert check_url("https://hooks.example.org/runtrack", allow_private=False) is None
    assert check_url("https://93.184.215.14/hook") is None
    assert check_url("https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/hook") is None


def test_an_allowed_network_opens_only_itself():
    policy = TargetPolicy(allowed="127.0.0.1/32")
    assert check_url("http://127.0.0.1:8099/hook", policy=policy) is None
    assert check_url("http://127.0.0.2:8099/hook", policy=policy) == PRIVATE_RULE
    assert check_url("http://[::1]:8099/hook", policy=policy) == PRIVATE_RULE
    assert check_url("http://hooks.example.org/hook") == "must be an https URL"
    # A name over http, with an allowed network: taken, and delivered only to that network's addresses.
    assert check_url("http://hooks.example.org/hook", policy=policy) is None
    public = Recorder([["93.184.215.14"]])
    assert post_pinned("http://hooks.example.org/h", b"", {}, policy=policy, timeout_s=1, resolver=public) == (
        "refused:plain-http"
    )


class Recorder:
    def __init__(self, answers: list[list[str]]) -> None:
        self.answers = answers
        self.asked = 0

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked += 1
        return self.answers.pop(0)


@pytest.mark.parametrize(
    "addresses",
    [["10.0.0.1"], ["127.0.0.1"], ["93.184.215.14", "169.254.169.254"], ["::ffff:10.0.0.1"], ["100.64.1.1"]],
)
def test_a_name_is_refused_at_delivery_when_any_of_its_addresses_is_not_public(addresses):
    resolver = Recorder([addresses])
    outcome = post_pinned(
        "https://hooks.example.org/x", b"{}", {}, policy=TargetPolicy(), timeout_s=1, resolver=resolver
    )
    assert outcome == "refused:private-address" and resolver.asked == 1


def test_the_connection_goes_to_the_checked_address_whatever_the_name_answers_later():
    """A receiver on loopback (allowed here), reached through a name that answers a private address
    on its next look-up (rebinding): the name is resolved once per delivery and the connection made
    to the address that was checked; the next delivery sees the new answer and is refused."""
    hosts: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            hosts.append(self.headers["host"])
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        resolver = Recorder([["127.0.0.1"], ["10.0.0.1"]])
        policy = TargetPolicy(allowed="127.0.0.1/32")
        url = f"http://hooks.example.org:{port}/x"
        assert post_pinned(url, b"{}", {}, policy=policy, timeout_s=2, resolver=resolver) == 204
        assert hosts == [f"hooks.example.org:{port}"] and resolver.asked == 1
        assert post_pinned(url, b"{}", {}, policy=policy, timeout_s=2, resolver=resolver) == "refused:private-address"
        assert len(hosts) == 1
    finally:
        server.shutdown()


@given(st.lists(st.integers(min_value=1, max_value=60), max_size=80), st.integers(min_value=0, max_value=70))
def test_the_sent_set_holds_exactly_what_was_added_and_stays_compact(seqs, give_up_to):
    sent, model = SeqSet(), set()
    for seq in seqs:
        sent.add(seq)
        model.add(seq)
    assert all((seq in sent) == (seq in model) for seq in range(1, 62))
    assert all(seq > sent.floor + 1 for seq in sent.above), "the floor has passed every contiguous seq"
    sent.advance_to(give_up_to)
    assert all((seq in sent) == (seq in model or seq <= give_up_to) for seq in range(1, 62))


async def test_feed_points_a_gap_read_hands_over_are_measured_from_their_arrival():
    """A replica that stalled: the feed's rows wait behind a seq the feed never brought; once the gap
    has waited, a read of the run hands everything over, and the feed's points count in the
    live-following objective with their lag since arrival (the stall is not hidden from it)."""
    from prometheus_client import REGISTRY

    from runtrack_common.config import Settings
    from tests.unit.fakes import FakeTrackStore
    from tracking_service.hub import GAP_WAIT_S, LiveHub, PointsReleased, Watch, WatchedRun
    from tracking_service.live import FeedRow

    tracks = FakeTrackStore()
    run_id = uuid.uuid4()
    points = walk(5, 3.0)
    await tracks.write_points(run_id, points)
    settings = Settings()
    hub = LiveHub(tracks, None, settings, None)  # type: ignore[arg-type]  # the direct read needs only the trail
    run = WatchedRun(run_id, "owner", [], Movement(settings.live_stall_s, settings.live_stall_m))
    run.sent = SeqSet(1)
    watch = Watch(run, None, None)
    run.watches.add(watch)
    now = time.time()
    for p in points[2:]:  # seq 2 never came through the feed
        run.pending[p.seq] = FeedRow(run_id, "", p, arrived_at=now - 6.0)
    run.gap_since = now - GAP_WAIT_S
    run.reconcile_at = run.refresh_at = now + 60.0

    def lag(what: str) -> float:
        return REGISTRY.get_sample_value(f"runtrack_live_point_lag_seconds_{what}") or 0.0

    count, total = lag("count"), lag("sum")
    await hub._advance(run, now, False, asyncio.Semaphore(1))
    item = watch.queue.get_nowait()
    assert isinstance(item, PointsReleased) and [p.seq for p in item.points] == [2, 3, 4, 5]
    assert lag("count") - count == 3, "the three feed points, not the one only the read found"
    assert lag("sum") - total >= 3 * 6.0
