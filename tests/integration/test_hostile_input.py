"""Bad and hostile input: a clean status each time, accepted points kept, the replica SERVING."""

import asyncio
import math
import os
import socket
import uuid

import grpc
import pytest

from runtrack.v1 import tracking_pb2, tracking_pb2_grpc
from tests.helpers import point, token_channel
from tests.integration.faults import SERVICE, peak_rss_mb, replica_status, report, stored_trail

RECORD = "/runtrack.v1.TrackingService/RecordTrack"


def stub(channel):
    return tracking_pb2_grpc.TrackingServiceStub(channel)


async def record(channel, *messages):
    async def gen():
        for m in messages:
            yield m

    return await stub(channel).RecordTrack(gen())


async def expect_status(channel, code, *messages) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await record(channel, *messages)
    assert err.value.code() == code, err.value.details()
    return err.value.details()


async def all_tracking_serving(stack):
    for port in stack.replica_ports()["tracking"]:
        assert await replica_status(port, SERVICE["tracking"]) == "SERVING"


async def test_a_stream_level_error_keeps_the_points_already_accepted(channel, run_id, user_id):
    details = await expect_status(
        channel,
        grpc.StatusCode.INVALID_ARGUMENT,
        tracking_pb2.RecordTrackRequest(run_id=run_id, user_id=user_id, points=[point(1), point(2)]),
        tracking_pb2.RecordTrackRequest(points=[point(3)]),
        tracking_pb2.RecordTrackRequest(run_id=str(uuid.uuid4()), points=[point(4)]),
    )
    assert details == "run_id: must not change within a stream"
    assert [p.seq for p in await stored_trail(channel, run_id)] == [1, 2, 3]


async def test_a_user_id_that_changes_mid_stream_is_invalid_argument(channel, run_id, user_id):
    details = await expect_status(
        channel,
        grpc.StatusCode.INVALID_ARGUMENT,
        tracking_pb2.RecordTrackRequest(run_id=run_id, user_id=user_id, points=[point(1)]),
        tracking_pb2.RecordTrackRequest(user_id="mallory", points=[point(2)]),
    )
    assert details == "user_id: must not change within a stream"
    assert [p.seq for p in await stored_trail(channel, run_id)] == [1]


async def test_an_empty_stream_is_invalid_argument_and_a_missing_user_id_means_the_caller(channel, run_id, user_id):
    assert "run_id" in await expect_status(channel, grpc.StatusCode.INVALID_ARGUMENT)
    r = await record(channel, tracking_pb2.RecordTrackRequest(run_id=run_id, points=[point(1)]))
    assert r.points_stored == 1
    again = await record(channel, tracking_pb2.RecordTrackRequest(run_id=run_id, user_id=user_id, points=[point(2)]))
    assert again.contiguous_seq == 2, "the run was not bound to the caller"


async def test_more_than_1000_points_in_one_message_is_invalid_argument(channel, run_id, user_id):
    details = await expect_status(
        channel,
        grpc.StatusCode.INVALID_ARGUMENT,
        tracking_pb2.RecordTrackRequest(run_id=run_id, user_id=user_id, points=[point(1)]),
        tracking_pb2.RecordTrackRequest(points=[point(s) for s in range(2, 1003)]),
    )
    assert details == "points: at most 1000 points per message, got 1001"
    assert [p.seq for p in await stored_trail(channel, run_id)] == [1]


async def test_a_run_of_another_user_is_permission_denied_and_keeps_its_points(stack, channel, run_id, user_id):
    await record(channel, tracking_pb2.RecordTrackRequest(run_id=run_id, user_id=user_id, points=[point(1)]))
    async with token_channel(stack.envoy_address, stack.issuer.token("mallory")) as mallory:
        for claimed in ("", "mallory"):  # mallory writing into the run as herself
            details = await expect_status(
                mallory,
                grpc.StatusCode.PERMISSION_DENIED,
                tracking_pb2.RecordTrackRequest(run_id=run_id, user_id=claimed, points=[point(2)]),
            )
            assert "is taken" in details
        details = await expect_status(  # or naming the owner
            mallory,
            grpc.StatusCode.PERMISSION_DENIED,
            tracking_pb2.RecordTrackRequest(run_id=run_id, user_id=user_id, points=[point(2)]),
        )
        assert "is not the caller" in details
    assert [p.seq for p in await stored_trail(channel, run_id)] == [1]


async def test_nan_and_infinities_are_rejected_point_by_point(channel, run_id, user_id):
    r = await record(
        channel,
        tracking_pb2.RecordTrackRequest(
            run_id=run_id,
            user_id=user_id,
            points=[
                point(1),
                point(2, latitude=math.nan),
                point(3, longitude=math.inf),
                point(4, speed_mps=-math.inf),
                point(5, altitude_m=math.nan),
                point(6, horizontal_accuracy_m=math.nan),
                point(7),
            ],
        ),
    )
    assert (r.points_received, r.points_stored, r.points_rejected) == (7, 2, 5)
    assert [x.reason.split(":")[0] for x in r.rejections] == [
        "latitude",
        "longitude",
        "speed_mps",
        "altitude_m",
        "horizontal_accuracy_m",
    ]
    assert [p.seq for p in await stored_trail(channel, run_id)] == [1, 7]


async def test_duplicated_and_reordered_seqs_are_stored_once_each(channel, run_id, user_id):
    order = [5, 3, 1, 2, 3, 4, 5, 1, 2]
    r = await record(
        channel, *[tracking_pb2.RecordTrackRequest(run_id=run_id, user_id=user_id, points=[point(s)]) for s in order]
    )
    assert (r.points_received, r.points_stored, r.contiguous_seq) == (9, 9, 5)
    assert [p.seq for p in await stored_trail(channel, run_id)] == [1, 2, 3, 4, 5]


async def test_a_stream_silent_past_the_idle_limit_ends_and_keeps_its_points(stack, channel, run_id, user_id):
    call = stub(channel).RecordTrack()
    await call.write(tracking_pb2.RecordTrackRequest(run_id=run_id, user_id=user_id, points=[point(1), point(2)]))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(call, timeout=30)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "idle limit" in err.value.details()
    assert [p.seq for p in await stored_trail(channel, run_id)] == [1, 2]


async def test_a_message_over_the_size_limit_is_resource_exhausted(stack, channel, run_id):
    await expect_status(
        channel,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        tracking_pb2.RecordTrackRequest(run_id=run_id, user_id="u" * (2 * 1024 * 1024)),
    )
    await all_tracking_serving(stack)


async def test_bytes_that_are_not_a_message_get_a_status_and_the_replica_stays_serving(stack, channel):
    garbage = channel.stream_unary(RECORD, request_serializer=lambda b: b, response_deserializer=lambda b: b)

    async def gen():
        yield b"\xff\xff\xff\xff\x0f\x00garbage"

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await garbage(gen())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "request: is not a valid RecordTrackRequest (corrupt wire format)"
    await all_tracking_serving(stack)


@pytest.mark.parametrize("target", ["envoy", "replica"])
async def test_garbage_on_the_socket_is_dropped_and_everything_stays_serving(stack, channel, target):
    port = stack.spec.envoy_port if target == "envoy" else stack.replica_ports()["tracking"][0]
    for payload in [os.urandom(4096), b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(512), b"GET / HTTP/1.1\r\n"]:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            try:
                while s.recv(65536):
                    pass
            except OSError:
                pass
    await all_tracking_serving(stack)
    r = await record(channel, tracking_pb2.RecordTrackRequest(run_id=str(uuid.uuid4()), points=[point(1)]))
    assert r.points_stored == 1


async def test_a_thousand_streams_that_never_send_end_cleanly_with_bounded_memory(stack, channel):
    calls = [stub(channel).RecordTrack() for _ in range(1000)]
    for c in calls:  # the streams open with headers only
        await c.wait_for_connection()
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout=60)
    codes = {r.code() if isinstance(r, grpc.aio.AioRpcError) else "OK" for r in results}
    assert codes == {grpc.StatusCode.DEADLINE_EXCEEDED}
    await all_tracking_serving(stack)
    pids = [stack.replica_pid("tracking", p) for p in stack.replica_ports()["tracking"]]
    peaks = [round(peak_rss_mb(p), 1) for p in pids]
    assert max(peaks) < 400, f"replica peak memory {peaks} MiB"
    report(stack, "silent_streams", streams=1000, tracking_peak_rss_mb=peaks)


def _h2_frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _literal(name: str, value: str) -> bytes:
    """HPACK: a literal header field without indexing, new name, no Huffman coding."""
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


def _truncated_grpc_call(port: int) -> set[str]:
    """Sends a RecordTrack whose only gRPC frame announces 1000 bytes but carries 10, then ends
    the stream; returns how the server ended stream 1 ("trailers", "reset", "goaway")."""
    headers = b"".join(
        _literal(n, v)
        for n, v in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", RECORD),
            (":authority", f"127.0.0.1:{port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
    )
    data = b"\x00" + (1000).to_bytes(4, "big") + b"0123456789"
    ended: set[str] = set()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            + _h2_frame(4, 0, 0, b"")
            + _h2_frame(1, 0x4, 1, headers)
            + _h2_frame(0, 0x1, 1, data)
        )
        buf = b""
        while not ended:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                size, kind, flags = int.from_bytes(buf[:3], "big"), buf[3], buf[4]
                stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                buf = buf[9 + size :]
                if kind == 4 and not flags & 0x1:
                    s.sendall(_h2_frame(4, 0x1, 0, b""))  # acknowledge the server's settings
                elif kind == 1 and stream == 1 and flags & 0x1:
                    ended.add("trailers")
                elif kind == 3 and stream == 1:
                    ended.add("reset")
                elif kind == 7:
                    ended.add("goaway")
    return ended


@pytest.mark.parametrize("target", ["envoy", "replica"])
async def test_a_truncated_grpc_frame_ends_the_stream_and_everything_stays_serving(stack, channel, target):
    port = stack.spec.envoy_port if target == "envoy" else stack.replica_ports()["tracking"][0]
    ended = await asyncio.to_thread(_truncated_grpc_call, port)
    assert ended & {"trailers", "reset"}, f"stream 1 was not ended cleanly: {ended}"
    await all_tracking_serving(stack)
    r = await record(channel, tracking_pb2.RecordTrackRequest(run_id=str(uuid.uuid4()), points=[point(1)]))
    assert r.points_stored == 1
