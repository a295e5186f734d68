"""Per-runner limits at Envoy (edge/limits.yaml), on a second Envoy of the test stack that enforces
them (the stack's own serves the other tests, which drive one runner hard on purpose): a runner over
its calls per second or its streams opened per second gets RESOURCE_EXHAUSTED (429 over HTTP) with
ErrorInfo RATE_LIMITED naming the limit, RetryInfo and the rate-limit headers; another runner is not
slowed; after the delay the runner is served again."""

import asyncio
import contextlib
import dataclasses
import json
import time
import urllib.error
import urllib.request
import uuid

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from bench import flood as bench_flood
from devstack import procs
from devstack.auth import token_channel
from edge.config import Limits
from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from tests.integration.faults import report
from tests.integration.test_live import Phone, create_link, stop

LIMITS = Limits.load()
# The test Envoy's WatchRun streams per link and per runner: the file's numbers lowered so that the
# test opens a few streams, not a hundred (the replicas take the number Envoy sends; the chart's test
# checks that Envoy sends the file's).
WATCHERS = 3


@pytest.fixture(scope="module")
def limited(stack):
    """host:port of an Envoy with the product's limits, in front of the test stack's replicas."""
    limits = dataclasses.replace(LIMITS, watch_streams_per_link=WATCHERS, watch_streams_per_runner=WATCHERS)
    pid, address = bench_flood.limited_envoy(stack, limits)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://{address}/openapi.json", timeout=1).close()
            break
        except (OSError, urllib.error.URLError):
            time.sleep(0.2)
    yield address
    procs.stop(pid, timeout=10)


def refusal(err: grpc.aio.AioRpcError) -> tuple[str, dict[str, str], float]:
    status = rpc_status.from_call(err)
    assert status is not None, err.details()
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    reason, metadata, delay = "", {}, 0.0
    for detail in status.details:
        if detail.Unpack(info):
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Unpack(retry):
            delay = retry.retry_delay.ToTimedelta().total_seconds()
    return reason, metadata, delay


async def burst(channel, run_id: str, n: int) -> tuple[int, list[grpc.aio.AioRpcError]]:
    """n GetRun calls, at most 50 in flight at once: they reach Envoy within a fraction of a second
    however slowly the machine answers (one after another, a busy replica's 50 ms answers would let
    the bucket refill as fast as it drains)."""
    stub = summary_pb2_grpc.SummaryServiceStub(channel)
    gate = asyncio.Semaphore(50)

    async def one() -> grpc.aio.AioRpcError | None:
        async with gate:
            try:
                await stub.GetRun(summary_pb2.GetRunRequest(run_id=run_id))
            except grpc.aio.AioRpcError as err:
                return None if err.code() == grpc.StatusCode.NOT_FOUND else err
            return None

    outcomes = await asyncio.gather(*(one() for _ in range(n)))
    refused = [err for err in outcomes if err is not None]
    return n - len(refused), refused


async def test_a_runner_over_its_calls_per_second_is_told_to_slow_down_and_others_are_not(stack, limited):
    ada, bob = (stack.issuer.token(f"{name}-{uuid.uuid4().hex[:6]}") for name in ("ada", "bob"))
    n = LIMITS.calls.burst + 3 * LIMITS.calls.per_second
    async with token_channel(limited, ada) as channel:
        began = time.monotonic()
        ok, refused = await burst(channel, str(uuid.uuid4()), n)
        took = time.monotonic() - began
    # At most the burst plus what refilled meanwhile went through; the rest was refused.
    assert ok <= LIMITS.calls.burst + LIMITS.calls.per_second * (took + 1), (ok, took)
    assert refused and len(refused) + ok == n
    codes = {e.code() for e in refused}
    assert codes == {grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    reason, metadata, delay = refusal(refused[0])
    assert (reason, metadata, delay) == ("RATE_LIMITED", {"limit": "calls"}, 1.0)
    figures = {"sent": n, "served": ok, "refused": len(refused), "seconds": round(took, 2)}
    async with token_channel(limited, bob) as channel:
        _, refused_bob = await burst(channel, str(uuid.uuid4()), LIMITS.calls.burst)
    assert refused_bob == [], "another runner's calls are their own"
    await asyncio.sleep(delay + 0.2)
    async with token_channel(limited, ada) as channel:
        ok, refused = await burst(channel, str(uuid.uuid4()), LIMITS.calls.per_second // 2)
    assert refused == [], "served again after the delay"
    report(stack, "per_runner_calls", **figures, burst=LIMITS.calls.burst, per_second=LIMITS.calls.per_second)


def test_over_http_the_refusal_is_429_with_the_rate_limit_headers(stack, limited):
    token = stack.issuer.token(f"cyd-{uuid.uuid4().hex[:6]}")
    statuses, last = [], None
    for _ in range(LIMITS.calls.burst + 2 * LIMITS.calls.per_second):
        req = urllib.request.Request(f"http://{limited}/v1/users/me/runs", headers={"authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                statuses.append(resp.status)
                last_ok = resp.headers
        except urllib.error.HTTPError as err:
            statuses.append(err.code)
            last = err
    assert 200 in statuses and 429 in statuses
    assert last is not None
    assert last.headers["x-ratelimit-limit"].split(",")[0] == str(LIMITS.calls.burst)
    assert last.headers["x-ratelimit-remaining"] == "0"
    body = last.read().decode()
    assert '"RATE_LIMITED"' in body and '"calls"' in body
    assert int(last_ok["x-ratelimit-remaining"]) >= 0


async def test_streams_opened_past_the_limit_are_refused_naming_that_limit(stack, limited):
    token = stack.issuer.token(f"dee-{uuid.uuid4().hex[:6]}")
    opened, refused = 0, []
    async with token_channel(limited, token) as channel:
        stub = tracking_pb2_grpc.TrackingServiceStub(channel)
        for _ in range(LIMITS.stream_opens.burst + 5):
            run_id = str(uuid.uuid4())
            point = tracking_pb2.TrackPoint(
                seq=1, latitude=48.85, longitude=2.35, time={"seconds": int(time.time()) - 60}
            )
            try:
                await stub.RecordTrack(iter([tracking_pb2.RecordTrackRequest(run_id=run_id, points=[point])]))
                opened += 1
            except grpc.aio.AioRpcError as err:
                refused.append(err)
    assert opened >= LIMITS.stream_opens.burst and refused
    reason, metadata, _ = refusal(refused[0])
    assert refused[0].code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (reason, metadata) == ("RATE_LIMITED", {"limit": "stream_opens"})


async def test_files_have_a_limit_of_their_own_and_leave_the_runners_calls_alone(stack, limited):
    token = stack.issuer.token(f"fil-{uuid.uuid4().hex[:6]}")
    served, refused = 0, []
    async with token_channel(limited, token) as channel:
        stub = tracking_pb2_grpc.TrackingServiceStub(channel)
        for _ in range(LIMITS.files.burst + 5):
            try:
                await stub.ExportTrack(tracking_pb2.ExportTrackRequest(run_id=str(uuid.uuid4()), format="gpx"))
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    refused.append(err)
                else:
                    assert err.code() == grpc.StatusCode.NOT_FOUND, err
                    served += 1
        assert LIMITS.files.burst <= served <= LIMITS.files.burst + 2 and refused
        reason, metadata, delay = refusal(refused[0])
        assert (reason, metadata, delay) == ("RATE_LIMITED", {"limit": "files"}, 1.0)
        # Its other calls have their own bucket, untouched.
        ok, others = await burst(channel, str(uuid.uuid4()), 10)
        assert (ok, others) == (10, [])
    # As the page downloads files: 429 naming the same limit once what refilled meanwhile is used.
    codes = []
    for _ in range(5):
        web = urllib.request.Request(
            f"http://{limited}/v1/runs/{uuid.uuid4()}/track.gpx", headers={"authorization": f"Bearer {token}"}
        )
        with pytest.raises(urllib.error.HTTPError) as http_refused:
            await asyncio.to_thread(urllib.request.urlopen, web, timeout=10)
        codes.append(http_refused.value.code)
        if codes[-1] == 429:
            assert '"files"' in http_refused.value.read().decode()
            break
    assert codes[-1] == 429 and set(codes[:-1]) <= {404}, codes
    report(stack, "per_runner_files", served=served, refused=len(refused), burst=LIMITS.files.burst)


async def test_a_flood_of_50000_calls_from_one_token_is_held_to_its_rate_and_others_are_served(stack, limited):
    # Ten other runners, 100 calls each way (10 s at 10 a second, within the flood's ~12 s): 1,000 calls,
    # so that the p99 is a percentile and not the slowest call. `scripts/bench flood` runs more rounds.
    r = await bench_flood.one_round(stack, limited)
    assert r.quiet_failed == 0
    assert r.failed == 0, "another runner's call failed during the flood"
    assert r.served + r.refused == bench_flood.FLOOD_CALLS
    assert r.served <= LIMITS.calls.burst + LIMITS.calls.per_second * (r.seconds + 1), (r.served, r.seconds)
    report(stack, "flood_from_one_token", calls=bench_flood.FLOOD_CALLS, **r.figures())


async def test_a_runner_holds_at_most_its_record_streams_open_and_nothing_they_sent_is_lost(stack, limited):
    most = LIMITS.record_streams_per_runner
    token = stack.issuer.token(f"ria-{uuid.uuid4().hex[:6]}")
    one_point = tracking_pb2.RecordTrackRequest(
        run_id=str(uuid.uuid4()),
        points=[tracking_pb2.TrackPoint(seq=1, latitude=48.85, longitude=2.35, time={"seconds": int(time.time()) - 5})],
    )
    async with token_channel(limited, token) as channel, token_channel(limited, stack.issuer.token("rob")) as other:
        stub = tracking_pb2_grpc.TrackingServiceStub(channel)
        phones = [Phone(channel, str(uuid.uuid4())) for _ in range(most)]
        for phone in phones:
            await phone.started()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.RecordTrack(iter([one_point]))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        reason, metadata, delay = refusal(refused.value)
        assert (reason, metadata, delay) == ("RATE_LIMITED", {"limit": "record_streams", "max_open": str(most)}, 5.0)
        assert "RecordTrack streams open" in refused.value.details()
        # Another runner is not held back by this one's streams.
        answer = await tracking_pb2_grpc.TrackingServiceStub(other).RecordTrack(iter([one_point]))
        assert answer.points_stored == 1
        # The open streams go on; one that ends makes room for a new one.
        for phone in phones:
            for _ in range(3):
                await phone.send()
        first = await phones[0].finish()
        assert (first.points_stored, first.contiguous_seq) == (4, 4)
        again = await stub.RecordTrack(
            iter([tracking_pb2.RecordTrackRequest(run_id=str(uuid.uuid4()), points=one_point.points)])
        )
        assert again.points_stored == 1
        for phone in phones[1:]:
            done = await phone.finish()
            assert (done.points_stored, done.contiguous_seq, phone.resumed) == (4, 4, 0)
    report(stack, "record_streams_limit", most=most, refused_reason=reason, retry_after_s=delay)


async def seen(call, seq: int) -> None:
    """Reads the watch's events until one holds point `seq`."""
    while True:
        event = await asyncio.wait_for(call.read(), 10)
        assert event is not grpc.aio.EOF, "the watch ended"
        if event.HasField("points") and any(p.seq >= seq for p in event.points.points):
            return


async def test_a_live_link_holds_at_most_its_watchers_and_the_owner_is_not_counted(stack, limited):
    owner = stack.issuer.token(f"liv-{uuid.uuid4().hex[:6]}")
    run_id = str(uuid.uuid4())
    async with token_channel(limited, owner) as channel:
        phone = Phone(channel, run_id)
        await phone.started()
        link = await create_link(channel, run_id)
        request = tracking_pb2.WatchRunRequest(run_id=run_id)
        async with token_channel(limited, link.token) as spectators:
            stub = tracking_pb2_grpc.TrackingServiceStub(spectators)
            watching = [stub.WatchRun(request) for _ in range(WATCHERS)]
            for call in watching:
                await seen(call, 1)
            extra = stub.WatchRun(request)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await extra.read()
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            reason, metadata, delay = refusal(refused.value)
            assert (reason, metadata) == ("RATE_LIMITED", {"limit": "link_watchers", "max_open": str(WATCHERS)})
            assert delay > 0
            # Over HTTP (the page of a spectator): 429 with the status as JSON.
            web = urllib.request.Request(
                f"http://{limited}/v1/runs/{run_id}:watch", headers={"Authorization": f"Bearer {link.token}"}
            )
            with pytest.raises(urllib.error.HTTPError) as http_refused:
                await asyncio.to_thread(urllib.request.urlopen, web, timeout=10)
            assert http_refused.value.code == 429
            body = json.loads(http_refused.value.read())
            assert body["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
            assert any(d.get("reason") == "RATE_LIMITED" for d in body["details"]), body
            # The owner watching from the dashboard is not one of the link's watchers.
            mine = tracking_pb2_grpc.TrackingServiceStub(channel).WatchRun(request)
            await seen(mine, 1)
            # A spectator who leaves makes room (the replica sees the cancel within moments).
            watching.pop().cancel()
            for attempt in range(50):
                again = stub.WatchRun(request)
                try:
                    await seen(again, 1)
                    break
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and attempt < 49, err
                    await asyncio.sleep(0.1)
            watching.append(again)
            # The watchers held are served the new points.
            seq = await phone.send()
            for call in [*watching, mine]:
                await seen(call, seq)
            for call in [*watching, mine]:
                call.cancel()
        done = await phone.finish()
        assert done.points_stored == 2
    report(stack, "link_watchers_limit", most=WATCHERS, refused_reason=reason)


async def test_a_live_links_calls_and_watches_opened_have_limits_of_their_own(stack, limited):
    """A link's token carries no runner: its GetRun calls and WatchRun opens count in the link's own
    buckets (sized as a runner's), and the owner's are untouched."""
    owner = stack.issuer.token(f"lnk-{uuid.uuid4().hex[:6]}")
    run_id = str(uuid.uuid4())
    async with token_channel(limited, owner) as channel:
        phone = Phone(channel, run_id)
        await phone.started()
        link = await create_link(channel, run_id)
        async with token_channel(limited, link.token) as holder:
            served, refused = await burst(holder, run_id, LIMITS.calls.burst + 3 * LIMITS.calls.per_second)
            assert refused and served >= LIMITS.calls.burst
            assert refusal(refused[0])[:2] == ("RATE_LIMITED", {"limit": "calls"})
            stub = tracking_pb2_grpc.TrackingServiceStub(holder)
            opens: list[str] = []
            began = time.monotonic()
            for _ in range(LIMITS.stream_opens.burst + 5):
                call = stub.WatchRun(tracking_pb2.WatchRunRequest(run_id=run_id))
                try:
                    await seen(call, 1)
                    opens.append("opened")
                except grpc.aio.AioRpcError as err:
                    opens.append(refusal(err)[1].get("limit", err.code().name))
                call.cancel()
            # At most the burst and what refilled while the opens went on (a token each half second).
            refilled = LIMITS.stream_opens.per_second * (time.monotonic() - began)
            assert "stream_opens" in opens and opens.count("opened") <= LIMITS.stream_opens.burst + refilled, opens
        # The owner's own calls are not the link's: served.
        owner_served, owner_refused = await burst(channel, run_id, 5)
        assert (owner_served, owner_refused) == (5, [])
        await phone.finish()
    report(stack, "link_limits", link_calls_served=served, link_calls_refused=len(refused), watch_opens=opens)


async def test_a_runner_holds_at_most_its_watches_open_and_their_links_holders_are_not_counted(stack, limited):
    owner = stack.issuer.token(f"own-{uuid.uuid4().hex[:6]}")
    run_id = str(uuid.uuid4())
    async with token_channel(limited, owner) as channel:
        phone = Phone(channel, run_id)
        await phone.started()
        link = await create_link(channel, run_id)
        stub = tracking_pb2_grpc.TrackingServiceStub(channel)
        request = tracking_pb2.WatchRunRequest(run_id=run_id)
        mine = [stub.WatchRun(request) for _ in range(WATCHERS)]
        for call in mine:
            await seen(call, 1)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.WatchRun(request).read()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        reason, metadata, delay = refusal(refused.value)
        assert (reason, metadata, delay) == (
            "RATE_LIMITED",
            {"limit": "runner_watchers", "max_open": str(WATCHERS)},
            5.0,
        )
        # The link's holders have their own count: the owner's tabs do not use it up.
        async with token_channel(limited, link.token) as spectators:
            theirs = tracking_pb2_grpc.TrackingServiceStub(spectators).WatchRun(request)
            await seen(theirs, 1)
            seq = await phone.send()
            for call in [*mine, theirs]:
                await seen(call, seq)
            theirs.cancel()
        for call in mine:
            call.cancel()
        await phone.finish()
    report(stack, "runner_watchers_limit", most=WATCHERS, refused_reason=reason)


async def test_strangers_following_one_public_run_are_capped_per_replica_and_its_owner_is_not(stack, channel, run_id):
    """A PUBLIC run whose stop never reached the live state (the notice lost while the tracking
    replicas were away) stays open to watchers: strangers piling onto it are held to
    LIVE_MAX_SPECTATORS_PER_RUN on each replica, its owner is still served."""
    from cassandra.cluster import Cluster

    most = int(stack.spec.replica_settings["LIVE_MAX_SPECTATORS_PER_RUN"])
    replicas = len(stack.replica_ports()["tracking"])
    phone = Phone(channel, run_id)
    await phone.started()
    await phone.finish()
    await stop(channel, run_id, 1)
    await summary_pb2_grpc.SummaryServiceStub(channel).UpdateRun(
        summary_pb2.UpdateRunRequest(
            run=summary_pb2.Run(run_id=run_id, visibility=summary_pb2.PUBLIC),
            update_mask=FieldMask(paths=["visibility"]),
        )
    )
    cluster = Cluster([stack.scylla_hosts], port=stack.scylla_port)
    try:
        session = await asyncio.to_thread(cluster.connect)
        await asyncio.to_thread(
            session.execute,
            f"DELETE state, state_at, stopped_at FROM {stack.spec.keyspace}.run_live WHERE run_id = %s",
            (uuid.UUID(run_id),),
        )
    finally:
        await asyncio.to_thread(cluster.shutdown)
    request = tracking_pb2.WatchRunRequest(run_id=run_id)
    strangers = [stack.issuer.token(f"fan-{i}-{uuid.uuid4().hex[:6]}") for i in range(most * replicas + 2)]
    held, refused = [], []
    async with contextlib.AsyncExitStack() as exits:
        for token in strangers:
            ch = await exits.enter_async_context(token_channel(stack.envoy_address, token))
            call = tracking_pb2_grpc.TrackingServiceStub(ch).WatchRun(request)
            try:
                first = await asyncio.wait_for(call.read(), 10)
                assert first is not grpc.aio.EOF and first.HasField("state"), first
                held.append(call)
            except grpc.aio.AioRpcError as err:
                refused.append(err)
        assert most <= len(held) <= most * replicas, (len(held), most, replicas)
        assert len(refused) >= 2
        for err in refused:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
            assert refusal(err)[:2] == ("RATE_LIMITED", {"limit": "run_spectators", "max_open": str(most)})
        # The owner is not a spectator of their own run.
        mine = tracking_pb2_grpc.TrackingServiceStub(channel).WatchRun(request)
        first = await asyncio.wait_for(mine.read(), 10)
        assert first is not grpc.aio.EOF and first.HasField("state")
        mine.cancel()
        for call in held:
            call.cancel()
    report(stack, "run_spectators_limit", most=most, replicas=replicas, held=len(held), refused=len(refused))
