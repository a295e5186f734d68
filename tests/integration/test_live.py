"""Following a run live, against the test stack (two tracking replicas, the CQL node, PostgreSQL,
Envoy): WatchRun over gRPC and as newline-delimited JSON through Envoy's transcoder, live links
tried from the attacker's side, the watch on a runner who stops moving, signed webhooks received
by a real local HTTP server, and a watcher's replica shut down under it.

The test stack's replicas call a runner stalled after 3 s without 20 m of movement (LIVE_STALL_S)
and read each watched run's live row every 0.5 s (LIVE_STATE_POLL_S)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import http.client
import http.server
import json
import threading
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2

from devstack.auth import LINK_AUDIENCE, LINK_ISSUER, LINK_KEY_ID
from devstack.stack import metrics_port
from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from runtrack_client import error_details, error_status
from tests.helpers import http_json, token_channel
from tests.integration.faults import report
from tracking_service.webhooks import SIGNATURE_HEADER, verify

LIVE = tracking_pb2.LiveState


def fix(seq: int, lat: float, lon: float) -> tracking_pb2.TrackPoint:
    """A point taken now (the phone's clock is the watch's clock for movement)."""
    t = Timestamp()
    t.FromDatetime(dt.datetime.now(dt.UTC))
    return tracking_pb2.TrackPoint(seq=seq, time=t, latitude=lat, longitude=lon, horizontal_accuracy_m=4.0)


class Phone:
    """A RecordTrack stream kept open, fed point by point as a phone does; `sent` has each seq's send
    time. A stream ended by the server (a replica shutting down) is resumed from the cursor."""

    def __init__(self, channel: grpc.aio.Channel, run_id: str) -> None:
        self.channel = channel
        self.run_id = run_id
        self.sent: dict[int, float] = {}
        self.points: list[tracking_pb2.TrackPoint] = []
        self.seq = 0
        self.resumed = 0
        self.lat, self.lon = 52.5200, 13.4050
        self._open([])
        self.keepalive = asyncio.create_task(self._keep_alive())

    def _open(self, backlog: list[tracking_pb2.TrackPoint]) -> None:
        self.queue: asyncio.Queue[tracking_pb2.RecordTrackRequest | None] = asyncio.Queue()
        if backlog:
            self.queue.put_nowait(tracking_pb2.RecordTrackRequest(run_id=self.run_id, points=backlog))
        self.call = tracking_pb2_grpc.TrackingServiceStub(self.channel).RecordTrack(self._messages(self.queue))
        self.last_sent = time.monotonic()

    @staticmethod
    async def _messages(queue: asyncio.Queue) -> AsyncIterator[tracking_pb2.RecordTrackRequest]:
        while (m := await queue.get()) is not None:
            yield m

    async def _resume_if_ended(self) -> None:
        if not self.call.done():
            return
        code = await self.call.code()
        assert code == grpc.StatusCode.UNAVAILABLE, f"the stream ended with {code}"
        cursor = await tracking_pb2_grpc.TrackingServiceStub(self.channel).GetTrackCursor(
            tracking_pb2.GetTrackCursorRequest(run_id=self.run_id)
        )
        self.resumed += 1
        self._open([p for p in self.points if p.seq > cursor.contiguous_seq])

    async def _keep_alive(self) -> None:
        """An empty message when the phone has sent nothing for 2 s (the test stack's idle limit is 4 s)."""
        while True:
            await asyncio.sleep(0.5)
            if self.seq and time.monotonic() - self.last_sent > 2:
                self.last_sent = time.monotonic()
                await self.queue.put(tracking_pb2.RecordTrackRequest(run_id=self.run_id))

    async def send(self, step_m: float = 10.0) -> int:
        """One point `step_m` north of the last (0: standing still)."""
        await self._resume_if_ended()
        self.seq += 1
        self.lat += step_m / 111_200
        p = fix(self.seq, self.lat, self.lon)
        self.points.append(p)
        self.sent[self.seq] = self.last_sent = time.monotonic()
        await self.queue.put(tracking_pb2.RecordTrackRequest(run_id=self.run_id, points=[p]))
        return self.seq

    async def started(self) -> None:
        """Once the run is claimed (the first point durable): links can be made for it."""
        await self.send()
        await asyncio.sleep(1.0)

    async def finish(self) -> tracking_pb2.RecordTrackResponse:
        self.keepalive.cancel()
        await self._resume_if_ended()
        await self.queue.put(None)
        return await self.call


class Watcher:
    """A WatchRun stream over gRPC: every event, with the time it arrived."""

    def __init__(self, channel: grpc.aio.Channel, run_id: str, after_seq: int = 0) -> None:
        self.points: dict[int, float] = {}
        self.states: list[str] = []
        self.order: list[int] = []
        self.error: grpc.aio.AioRpcError | None = None
        self.ended_at: float | None = None
        call = tracking_pb2_grpc.TrackingServiceStub(channel).WatchRun(
            tracking_pb2.WatchRunRequest(run_id=run_id, after_seq=after_seq)
        )
        self.task = asyncio.create_task(self._read(call))

    async def _read(self, call: Any) -> None:
        try:
            async for event in call:
                now = time.monotonic()
                if event.HasField("points"):
                    for p in event.points.points:
                        self.points.setdefault(p.seq, now)
                        self.order.append(p.seq)
                else:
                    self.states.append(LIVE.Name(event.state.state))
        except grpc.aio.AioRpcError as err:
            self.error = err
        self.ended_at = time.monotonic()

    async def until(self, predicate, within_s: float = 10.0) -> None:
        for _ in range(int(within_s / 0.05)):
            if predicate():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out: points={sorted(self.points)} states={self.states} error={self.error}")


class JsonWatch(threading.Thread):
    """GET /v1/runs/{id}:watch through Envoy, read line by line as the bytes arrive."""

    def __init__(self, base: str, run_id: str, token: str, after_seq: int = 0) -> None:
        super().__init__(daemon=True)
        self.base, self.run_id, self.token, self.after_seq = base, run_id, token, after_seq
        self.lines: list[tuple[float, dict]] = []
        self.status: int | None = None
        self.content_type = ""
        self.body: Any = None
        self.ended_at: float | None = None
        self.start()

    def run(self) -> None:
        host, port = self.base.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request(
            "GET",
            f"/v1/runs/{self.run_id}:watch?afterSeq={self.after_seq}",
            headers={"authorization": f"Bearer {self.token}", "accept-encoding": "gzip"},
        )
        response = conn.getresponse()
        self.status, self.content_type = response.status, response.getheader("content-type", "")
        if response.status != 200:
            self.body = json.loads(response.read())
        else:
            while line := response.readline():
                if line.strip():
                    self.lines.append((time.monotonic(), json.loads(line)))
        self.ended_at = time.monotonic()
        conn.close()

    def seqs(self) -> list[int]:
        return [p["seq"] for _, event in self.lines if "points" in event for p in event["points"]["points"]]

    def states(self) -> list[str]:
        return [event["state"]["state"] for _, event in self.lines if "state" in event]


async def create_link(channel, run_id: str, **fields: Any) -> tracking_pb2.LiveLink:
    return await tracking_pb2_grpc.TrackingServiceStub(channel).CreateLiveLink(
        tracking_pb2.CreateLiveLinkRequest(run_id=run_id, **fields)
    )


async def stop(channel, run_id: str, points: int) -> None:
    now = int(time.time())
    overview = summary_pb2.RunOverview(
        start_time=Timestamp(seconds=now - 600), end_time=Timestamp(seconds=now), distance_m=500, point_count=points
    )
    await summary_pb2_grpc.SummaryServiceStub(channel).StopRun(
        summary_pb2.StopRunRequest(run_id=run_id, overview=overview)
    )


def reason_of(err: grpc.aio.AioRpcError) -> str:
    info, _ = error_details(err)
    return info.reason if info is not None else ""


def violated_fields(err: grpc.aio.AioRpcError) -> list[str]:
    status = error_status(err)
    out = []
    for detail in status.details if status is not None else ():
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out += [v.field for v in bad.field_violations]
    return out


async def watch_error(channel, run_id: str) -> grpc.aio.AioRpcError:
    w = Watcher(channel, run_id)
    await asyncio.wait_for(w.task, 10)
    assert w.error is not None, f"the watch was accepted: {w.states} {sorted(w.points)}"
    return w.error


async def test_watchers_get_the_stored_points_then_each_new_point_within_two_seconds_then_stopped(
    stack, channel, run_id
):
    phone = Phone(channel, run_id)
    for _ in range(5):
        await phone.send()
    await phone.started()
    link = await create_link(channel, run_id)
    assert link.url == f"http://{stack.envoy_address}/#live={link.token}"
    assert not link.HasField("expire_time"), "a default link ends an hour after the run stops: unknown yet"
    # Several spectators on their own connections (so on both replicas), the owner, and one over JSON.
    spectators = [token_channel(stack.envoy_address, link.token) for _ in range(6)]
    watchers = [Watcher(ch, run_id) for ch in spectators] + [Watcher(channel, run_id)]
    as_json = JsonWatch(stack.envoy_address, run_id, link.token)
    for w in watchers:
        await w.until(lambda w=w: len(w.points) == 6)
    ports = stack.replica_ports()["tracking"]
    lag_before = {p: _metric(p, "runtrack_live_point_lag_seconds_count") for p in ports}
    lag_sum_before = sum(_metric(p, "runtrack_live_point_lag_seconds_sum") for p in ports)
    for _ in range(12):
        await phone.send()
        await asyncio.sleep(0.4)
    last = phone.seq
    for w in watchers:
        await w.until(lambda w=w: last in w.points)
    assert (await phone.finish()).contiguous_seq == last
    await stop(channel, run_id, last)
    for w in watchers:
        await asyncio.wait_for(w.task, 10)
        assert w.error is None, w.error
        assert sorted(w.points) == list(range(1, last + 1)), "every point, once"
        assert w.order == sorted(w.order), "oldest first, no repeats"
        assert w.states[0] == "LIVE" and w.states[-1] == "STOPPED"
    await asyncio.to_thread(as_json.join, 10)
    assert as_json.status == 200 and as_json.content_type.startswith("application/x-ndjson")  # one JSON object a line
    assert as_json.seqs() == list(range(1, last + 1))
    assert as_json.states()[0] == "LIVE" and as_json.states()[-1] == "STOPPED"
    first_new = next(t for t, e in as_json.lines if "points" in e and e["points"]["points"][0]["seq"] > 6)
    assert first_new < as_json.lines[-1][0] - 2, "lines arrive as they happen, not all at the end"
    # Sent to on screen: the point is durable within the phone's linger, then one poll away.
    lags = sorted(w.points[s] - phone.sent[s] for w in watchers for s in range(7, last + 1))
    p99 = lags[int(len(lags) * 0.99) - 1]
    report(
        stack,
        "live_watch",
        watchers=len(watchers),
        points=last,
        p50_s=round(lags[len(lags) // 2], 3),
        p99_s=round(p99, 3),
    )
    assert p99 <= 2.0, f"sent-to-watcher p99 {p99:.2f}s"
    # The objective's own measure (arrival at the replica to the watchers, docs/slos.md), on every
    # replica holding watchers, for the points the feed brought.
    lagged = {p: _metric(p, "runtrack_live_point_lag_seconds_count") - lag_before[p] for p in ports}
    assert all(n >= 1 for n in lagged.values()) and sum(lagged.values()) >= 6, lagged
    mean = (sum(_metric(p, "runtrack_live_point_lag_seconds_sum") for p in ports) - lag_sum_before) / sum(
        lagged.values()
    )
    assert 0 < mean <= 2.0, f"mean arrival-to-watcher lag {mean:.2f}s"
    feed_reads = [_metric(port, "runtrack_live_feed_reads_total") for port in ports]
    assert all(n > 0 for n in feed_reads), f"watchers on every replica, each reading the feed: {feed_reads}"
    assert sum(_metric(port, "runtrack_live_feed_points_total") for port in ports) >= last - 6
    for ch in spectators:
        await ch.close()


async def test_a_watcher_reconnecting_with_after_seq_gets_only_what_it_lacks(stack, channel, run_id):
    phone = Phone(channel, run_id)
    for _ in range(8):
        await phone.send()
    await phone.started()
    w = Watcher(channel, run_id, after_seq=5)
    await w.until(lambda: 9 in w.points)
    assert sorted(w.points) == [6, 7, 8, 9]
    await phone.finish()
    await stop(channel, run_id, 9)
    await asyncio.wait_for(w.task, 10)
    # A stopped run: its points, then STOPPED, and the stream ends.
    late = Watcher(channel, run_id, after_seq=7)
    await asyncio.wait_for(late.task, 10)
    assert late.error is None and sorted(late.points) == [8, 9] and late.states == ["STOPPED"]


async def test_a_spectator_sees_the_trail_trimmed_by_the_owners_privacy_zones(stack, channel, run_id, token):
    phone = Phone(channel, run_id)
    home = (phone.lat, phone.lon)
    zones = [tracking_pb2.PrivacyZone(latitude=home[0], longitude=home[1], radius_m=200)]
    await tracking_pb2_grpc.TrackingServiceStub(channel).SetPrivacyZones(
        tracking_pb2.SetPrivacyZonesRequest(user_id="me", zones=zones)
    )
    for _ in range(10):  # 10 m apart: the first 20 inside the zone
        await phone.send(step_m=10)
    await phone.started()
    link = await create_link(channel, run_id)
    async with token_channel(stack.envoy_address, link.token) as spectator:
        w_link, w_owner = Watcher(spectator, run_id), Watcher(channel, run_id)
        await w_owner.until(lambda: len(w_owner.points) == 11)
        await asyncio.sleep(1.5)
        assert w_link.points == {}, "the start inside the zone stays hidden"
        for _ in range(20):
            await phone.send(step_m=15)
        last = phone.seq
        await w_owner.until(lambda: last in w_owner.points)
        await w_link.until(lambda: last in w_link.points)
        visible = sorted(w_link.points)
        assert visible[0] > 1 and visible[-1] == last
        assert sorted(w_owner.points) == list(range(1, last + 1))
        # What GetTrack shows someone else of the same trail (the run is shared to read it).
        await phone.finish()
        await stop(channel, run_id, last)
        mask = {"paths": ["visibility"]}
        await summary_pb2_grpc.SummaryServiceStub(channel).UpdateRun(
            summary_pb2.UpdateRunRequest(
                run=summary_pb2.Run(run_id=run_id, visibility=summary_pb2.PUBLIC), update_mask=mask
            )
        )
        async with token_channel(stack.envoy_address, stack.issuer.token("someone-else")) as other:
            page = await tracking_pb2_grpc.TrackingServiceStub(other).GetTrack(
                tracking_pb2.GetTrackRequest(run_id=run_id)
            )
        assert [p.seq for p in page.points] == visible


# ---- live links from the attacker's side ---------------------------------------------------------


def _forge(stack, run_id: str, link_id: str, *, key=None, **claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": LINK_ISSUER,
        "aud": [LINK_AUDIENCE],
        "sub": f"live:{link_id}",
        "jti": link_id,
        "run_id": run_id,
        "iat": now,
        "exp": now + 600,
        **claims,
    }
    if key is None:
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(stack.link_keys.private_key_file.read_bytes(), password=None)
    return jwt.encode(body, key, algorithm="ES256", headers={"kid": LINK_KEY_ID})


def _altered(token: str, **claims: Any) -> str:
    header, payload, signature = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data.update(claims)
    forged = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


async def test_a_link_grants_its_own_run_only_and_nothing_else(stack, channel, run_id, user_id):
    phone = Phone(channel, run_id)
    await phone.started()
    link = await create_link(channel, run_id)
    other_run = str(uuid.uuid4())
    other_phone = Phone(channel, other_run)
    await other_phone.started()
    base = stack.envoy_address
    async with token_channel(base, link.token) as spectator:
        # Its run: WatchRun and GetRun (NOT_FOUND until StopRun, as for anyone).
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await summary_pb2_grpc.SummaryServiceStub(spectator).GetRun(summary_pb2.GetRunRequest(run_id=run_id))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        # Another run of the same owner, with a good link.
        err = await watch_error(spectator, other_run)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED and reason_of(err) == "LINK_OTHER_RUN"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await summary_pb2_grpc.SummaryServiceStub(spectator).GetRun(summary_pb2.GetRunRequest(run_id=other_run))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # Every other method: Envoy does not take a link there.
        t = tracking_pb2_grpc.TrackingServiceStub(spectator)
        s = summary_pb2_grpc.SummaryServiceStub(spectator)
        calls = {
            "GetTrack": t.GetTrack(tracking_pb2.GetTrackRequest(run_id=run_id)),
            "GetTrackCursor": t.GetTrackCursor(tracking_pb2.GetTrackCursorRequest(run_id=run_id)),
            "CreateLiveLink": t.CreateLiveLink(tracking_pb2.CreateLiveLinkRequest(run_id=run_id)),
            "ListLiveLinks": t.ListLiveLinks(tracking_pb2.ListLiveLinksRequest(run_id=run_id)),
            "DeleteLiveLink": t.DeleteLiveLink(tracking_pb2.DeleteLiveLinkRequest(run_id=run_id, link_id=link.link_id)),
            "MarkRunStopped": t.MarkRunStopped(tracking_pb2.MarkRunStoppedRequest(run_id=run_id)),
            "DeleteTrack": t.DeleteTrack(tracking_pb2.DeleteTrackRequest(run_id=run_id)),
            "GetPrivacyZones": t.GetPrivacyZones(tracking_pb2.GetPrivacyZonesRequest(user_id="me")),
            "SetPrivacyZones": t.SetPrivacyZones(tracking_pb2.SetPrivacyZonesRequest(user_id="me")),
            "ListRuns": s.ListRuns(summary_pb2.ListRunsRequest(user_id=user_id)),
            "GetUserStats": s.GetUserStats(summary_pb2.GetUserStatsRequest(user_id=user_id)),
            "DeleteRun": s.DeleteRun(summary_pb2.DeleteRunRequest(run_id=run_id)),
            "UpdateRun": s.UpdateRun(summary_pb2.UpdateRunRequest(run=summary_pb2.Run(run_id=run_id))),
            "RecordTrack": t.RecordTrack(iter([tracking_pb2.RecordTrackRequest(run_id=str(uuid.uuid4()))])),
        }
        for name, call in calls.items():
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
    # The same over JSON.
    refused = [
        ("GET", f"/v1/runs/{run_id}/track"),
        ("GET", f"/v1/runs/{run_id}/cursor"),
        ("GET", f"/v1/runs/{run_id}/liveLinks"),
        ("POST", f"/v1/runs/{run_id}/liveLinks"),
        ("DELETE", f"/v1/runs/{run_id}/liveLinks/{link.link_id}"),
        ("DELETE", f"/v1/runs/{run_id}"),
        ("POST", f"/v1/runs/{run_id}:stop"),
        ("GET", f"/v1/users/{user_id}/runs"),
        ("GET", "/v1/users/me/privacyZones"),
    ]
    for method, path in refused:
        status, body = http_json(base, method, path, {} if method == "POST" else None, token=link.token)
        assert status == 401, (method, path, status, body)
    status, body = http_json(base, "GET", f"/v1/runs/{other_run}", token=link.token)
    assert status == 403 and body["details"][0]["reason"] == "LINK_OTHER_RUN", body
    w = JsonWatch(base, other_run, link.token)
    await asyncio.to_thread(w.join, 10)
    assert w.status == 403, (w.status, w.body)
    # The link's data in spoofed headers, with a user's token or none: Envoy drops them.
    status, body = http_json(
        base,
        "GET",
        f"/v1/runs/{run_id}:watch",
        headers={"x-runtrack-link-run": run_id, "x-runtrack-link": link.link_id},
    )
    assert status == 401, body
    async with token_channel(base, stack.issuer.token("mallory")) as mallory:
        md = (("x-runtrack-link-run", run_id), ("x-runtrack-link", link.link_id))
        call = tracking_pb2_grpc.TrackingServiceStub(mallory).WatchRun(
            tracking_pb2.WatchRunRequest(run_id=run_id), metadata=md
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND, "mallory is mallory, not a link holder"
    await phone.finish()
    await other_phone.finish()


async def test_forged_altered_and_expired_links_are_refused(stack, channel, run_id):
    phone = Phone(channel, run_id)
    await phone.started()
    link = await create_link(channel, run_id)
    other_run = str(uuid.uuid4())
    foreign = ec.generate_private_key(ec.SECP256R1())
    bad = {
        "foreign key": _forge(stack, run_id, link.link_id, key=foreign),
        "run_id altered": _altered(link.token, run_id=other_run),
        "expired": _forge(stack, run_id, link.link_id, exp=int(time.time()) - 120),
        "wrong audience": _forge(stack, run_id, link.link_id, aud=["runtrack"]),
        "user issuer": _forge(stack, run_id, link.link_id, iss="https://auth.runtrack.local"),
        "unknown link id": _forge(stack, run_id, "never-made"),
    }
    for name, token in bad.items():
        async with token_channel(stack.envoy_address, token) as ch:
            err = await watch_error(ch, run_id)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED, name
        status, _ = http_json(stack.envoy_address, "GET", f"/v1/runs/{run_id}", token=token)
        assert status == 401, name
    # A link with an expiry: refused once it passes, on a stream already open too.
    short = await create_link(channel, run_id, expire_time=Timestamp(seconds=int(time.time()) + 3))
    assert short.HasField("expire_time")
    async with token_channel(stack.envoy_address, short.token) as ch:
        w = Watcher(ch, run_id)
        await w.until(lambda: w.states == ["LIVE"])
        await asyncio.wait_for(w.task, 10)
        assert w.error is not None and reason_of(w.error) == "LINK_EXPIRED"
        err = await watch_error(ch, run_id)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    await phone.finish()


async def test_a_revoked_link_is_refused_within_seconds_on_open_streams_too(stack, channel, run_id):
    phone = Phone(channel, run_id)
    await phone.started()
    link = await create_link(channel, run_id)
    keep = await create_link(channel, run_id)
    listed = await tracking_pb2_grpc.TrackingServiceStub(channel).ListLiveLinks(
        tracking_pb2.ListLiveLinksRequest(run_id=run_id)
    )
    assert {x.link_id for x in listed.links} == {link.link_id, keep.link_id}
    assert all(not x.token and not x.url and not x.webhook_secret for x in listed.links)
    spectators = [token_channel(stack.envoy_address, link.token) for _ in range(4)]
    watchers = [Watcher(ch, run_id) for ch in spectators]
    json_watch = JsonWatch(stack.envoy_address, run_id, link.token)
    async with token_channel(stack.envoy_address, keep.token) as kept:
        survivor = Watcher(kept, run_id)
        for w in [*watchers, survivor]:
            await w.until(lambda w=w: 1 in w.points)
        revoked_at = time.monotonic()
        await tracking_pb2_grpc.TrackingServiceStub(channel).DeleteLiveLink(
            tracking_pb2.DeleteLiveLinkRequest(run_id=run_id, link_id=link.link_id)
        )
        for w in watchers:
            await asyncio.wait_for(w.task, 10)
            assert w.error is not None and w.error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert reason_of(w.error) == "LINK_REVOKED"
        await asyncio.to_thread(json_watch.join, 10)
        took = max(w.ended_at for w in watchers)
        report(stack, "live_revoke", streams=len(watchers) + 1, ended_within_s=round(took - revoked_at, 2))
        assert took - revoked_at < 3.0
        assert json_watch.ended_at is not None and json_watch.ended_at - revoked_at < 3.0
        err = await watch_error(spectators[0], run_id)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED and reason_of(err) == "LINK_REVOKED"
        status, body = http_json(stack.envoy_address, "GET", f"/v1/runs/{run_id}:watch", token=link.token)
        assert status == 401 and body["details"][0]["reason"] == "LINK_REVOKED", body
        await phone.send()
        await survivor.until(lambda: 2 in survivor.points)
        assert survivor.error is None, "the other link still works"
    for ch in spectators:
        await ch.close()
    await phone.finish()


async def test_link_requests_are_checked(stack, channel, run_id, user_id):
    phone = Phone(channel, run_id)
    await phone.started()
    t = tracking_pb2_grpc.TrackingServiceStub(channel)
    cases = {
        "expire_time": tracking_pb2.CreateLiveLinkRequest(
            run_id=run_id, expire_time=Timestamp(seconds=int(time.time()) + 8 * 86400)
        ),
        "webhook_url": tracking_pb2.CreateLiveLinkRequest(run_id=run_id, webhook_url="ftp://example.org/x"),
    }
    for field, request in cases.items():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await t.CreateLiveLink(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(caught.value) == [field]
    async with token_channel(stack.envoy_address, stack.issuer.token("not-the-owner")) as other:
        for call in (
            tracking_pb2_grpc.TrackingServiceStub(other).CreateLiveLink(
                tracking_pb2.CreateLiveLinkRequest(run_id=run_id)
            ),
            tracking_pb2_grpc.TrackingServiceStub(other).ListLiveLinks(
                tracking_pb2.ListLiveLinksRequest(run_id=run_id)
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        # Someone else's private run is not theirs to watch either.
        err = await watch_error(other, run_id)
        assert err.code() == grpc.StatusCode.NOT_FOUND
    await phone.finish()


# What an attacker writes to make the replica call inside: every form is refused at creation, over
# gRPC and JSON, naming webhook_url (the test stack allows only its own receivers on 127.0.0.1/32).
INSIDE_TARGETS = [
    "https://%31%32%37.0.0.1/hook",
    "https://%31%30.0.0.1/hook",
    "https://2130706433/hook",
    "https://0x7f.0.0.1/hook",
    "https://0177.0.0.1/hook",
    "https://127.1/hook",
    "https://10.0.0.1/hook",
    "https://[::1]/hook",
    "https://[::ffff:127.0.0.1]/hook",
    "https://[64:ff9b::a9fe:a9fe]/hook",
    "https://169.254.169.254/latest/meta-data",
    "https://100.64.0.1/hook",
    "https://user@hooks.example.org/hook",
    "https://localhost/hook",
    "http://127.0.0.2:9/hook",
]


async def test_a_webhook_cannot_be_aimed_inside_whatever_the_spelling(stack, channel, run_id, token):
    phone = Phone(channel, run_id)
    await phone.started()
    t = tracking_pb2_grpc.TrackingServiceStub(channel)
    for url in INSIDE_TARGETS:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await t.CreateLiveLink(tracking_pb2.CreateLiveLinkRequest(run_id=run_id, webhook_url=url))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, url
        assert violated_fields(caught.value) == ["webhook_url"], url
        status, body = http_json(
            stack.envoy_address, "POST", f"/v1/runs/{run_id}/liveLinks", {"webhookUrl": url}, token=token
        )
        assert status == 400 and "webhook_url" in json.dumps(body), (url, body)
    listed = await t.ListLiveLinks(tracking_pb2.ListLiveLinksRequest(run_id=run_id))
    assert list(listed.links) == []  # nothing was stored
    await phone.finish()


# ---- the watch on the runner, and its webhooks ----------------------------------------------------


class Receiver(http.server.ThreadingHTTPServer):
    """A webhook receiver on loopback; answers 500 to the first delivery (to be retried)."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[float, dict[str, str], bytes]] = []
        self.failed_once = False
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.deliveries.append((time.monotonic(), {k.lower(): v for k, v in self.headers.items()}, body))
                fail = not receiver.failed_once
                receiver.failed_once = True
                self.send_response(500 if fail else 204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/runtrack"

    def events(self, secret: str) -> list[dict]:
        out = []
        for _, headers, body in self.deliveries:
            lowered = {k.lower(): v for k, v in headers.items()}
            assert verify(secret, body, lowered[SIGNATURE_HEADER]), "signed with the link's secret"
            out.append(json.loads(body))
        return out


async def test_a_runner_who_stops_moving_is_stalled_then_resumed_and_the_webhook_hears_each_change(
    stack, channel, run_id
):
    receiver = Receiver()
    try:
        phone = Phone(channel, run_id)
        await phone.started()
        link = await create_link(channel, run_id, webhook_url=receiver.url)
        assert link.webhook_secret.startswith("whsec_") and link.webhook_url == receiver.url
        listed = await tracking_pb2_grpc.TrackingServiceStub(channel).ListLiveLinks(
            tracking_pb2.ListLiveLinksRequest(run_id=run_id)
        )
        assert listed.links[0].webhook_url == receiver.url and not listed.links[0].webhook_secret
        async with token_channel(stack.envoy_address, link.token) as spectator:
            w = Watcher(spectator, run_id)
            await w.until(lambda: w.states == ["LIVE"])
            for _ in range(12):  # six seconds standing still, fixes every half second
                await phone.send(step_m=0.5)
                await asyncio.sleep(0.5)
            await w.until(lambda: "STALLED" in w.states)
            for _ in range(8):  # running again
                await phone.send(step_m=15)
                await asyncio.sleep(0.5)
            await w.until(lambda: "RESUMED" in w.states)
            await phone.finish()
            await stop(channel, run_id, phone.seq)
            await asyncio.wait_for(w.task, 10)
            assert w.states == ["LIVE", "STALLED", "RESUMED", "STOPPED"], w.states
        for _ in range(50):
            if len({e["state"] for e in receiver.events(link.webhook_secret)}) == 3:
                break
            await asyncio.sleep(0.2)
        events = receiver.events(link.webhook_secret)
        states = [e["state"] for e in events]
        # The first delivery failed (500) and came again with the same id; each change once more.
        assert states[0] == states[1] == "STALLED" and events[0]["id"] == events[1]["id"]
        assert [s for i, s in enumerate(states) if i == 0 or events[i]["id"] != events[i - 1]["id"]] == [
            "STALLED",
            "RESUMED",
            "STOPPED",
        ]
        assert all(e["run_id"] == run_id and e["link_id"] == link.link_id for e in events)
        assert "moved" in events[0]["reason"]
        # Tampered bodies do not verify.
        _, headers, body = receiver.deliveries[-1]
        assert not verify(link.webhook_secret, body.replace(b"STOPPED", b"STALLED"), headers[SIGNATURE_HEADER])
        lines = [
            line
            for f in stack.spec.logs.glob("tracking-*.log")
            for line in f.read_text(errors="replace").splitlines()
            if "webhook run_id=" + run_id in line
        ]
        assert len(lines) == len(receiver.deliveries), "one log line per delivery attempt"
    finally:
        receiver.shutdown()


async def test_watchers_see_a_deleted_run_end(stack, channel, run_id):
    phone = Phone(channel, run_id)
    await phone.started()
    link = await create_link(channel, run_id)
    await phone.finish()
    await stop(channel, run_id, 1)
    # A stopped run: watchable until an hour after the stop, by its link too.
    async with token_channel(stack.envoy_address, link.token) as spectator:
        w = Watcher(spectator, run_id)
        await asyncio.wait_for(w.task, 10)
        assert w.error is None and w.states == ["STOPPED"] and sorted(w.points) == [1]
        run = await summary_pb2_grpc.SummaryServiceStub(spectator).GetRun(summary_pb2.GetRunRequest(run_id=run_id))
        assert run.run_id == run_id and run.overview.polyline == ""
    other = str(uuid.uuid4())
    live = Phone(channel, other)
    await live.started()
    owner_watch = Watcher(channel, other)
    await owner_watch.until(lambda: 1 in owner_watch.points)
    await live.finish()
    await summary_pb2_grpc.SummaryServiceStub(channel).DeleteRun(summary_pb2.DeleteRunRequest(run_id=other))
    await asyncio.wait_for(owner_watch.task, 10)
    assert owner_watch.states[-1] == "DELETED"
    err = await watch_error(channel, other)
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_a_watcher_whose_replica_shuts_down_reconnects_and_misses_nothing(stack, channel, run_id):
    """The replica is told to stop (as a rollout does): its watchers are ended with UNAVAILABLE and
    REPLICA_SHUTTING_DOWN; reconnecting with after_seq, through Envoy to the other replica, each
    continues where it was."""
    phone = Phone(channel, run_id)
    await phone.started()
    link = await create_link(channel, run_id)
    spectators = [token_channel(stack.envoy_address, link.token) for _ in range(6)]
    watchers = [Watcher(ch, run_id) for ch in spectators]
    for w in watchers:
        await w.until(lambda w=w: 1 in w.points)
    before = stack.replica_ports()["tracking"]
    await asyncio.to_thread(stack.add_replica, "tracking")  # a rollout: the new one serves first
    served = {port for port in before if _metric(port, "runtrack_watchers_open") > 0}
    assert served, "the watchers are on the replicas that were there"
    victim = next(iter(served))
    stopping = asyncio.create_task(asyncio.to_thread(stack.retire_replica, "tracking", victim))
    held: dict[int, int] = {}
    try:
        ended = []
        for _ in range(30):
            await phone.send()
            await asyncio.sleep(0.3)
            for i, w in enumerate(watchers):
                if w.task.done() and i not in held:
                    ended.append(w)
                    held[i] = max(w.points, default=0)
                    # Reconnect from where it was (a fresh watcher on the same channel).
                    watchers[i] = Watcher(spectators[i], run_id, after_seq=held[i])
                    watchers[i].points.update(w.points)
        await stopping
        assert ended, "some watchers were on the replica that stopped"
        assert all(w.error is not None and reason_of(w.error) == "REPLICA_SHUTTING_DOWN" for w in ended)
        last = phone.seq
        for w in watchers:
            await w.until(lambda w=w: last in w.points)
            assert sorted(w.points) == list(range(1, last + 1))
        report(stack, "live_rollout", watchers=len(watchers), reconnected=len(ended), points=last)
    finally:
        await phone.finish()
        for ch in spectators:
            await ch.close()


def _metric(port: int, name: str) -> float:
    """A replica's metric (summed over its labels), from its own endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port(port)}/metrics") as r:
        text = r.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.split("{")[0].split(" ")[0] == name)
