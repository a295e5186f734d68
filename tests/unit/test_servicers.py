"""Both servicers in-process: a grpc.aio server on a free port over the in-memory stores.

Covers what the store adapters cannot reach: the proto converters, the RecordTrack stream loop,
drain, and the one error edge (status, details, one log line) for every method.
"""

import asyncio
import logging
import time
import uuid

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from runtrack_client import Backoff, RunRecorder, error_status
from runtrack_common.config import Settings
from runtrack_common.errors import Internal, Unavailable
from runtrack_common.serving import API_SERVICE_NAMES, add_reflection
from summary_service.servicer import SummaryServicer
from tests.helpers import caller_channel
from tests.unit.fakes import FakeRunsApi, FakeRunStore, FakeTracksApi, FakeTrackStore
from tracking_service.servicer import TrackingServicer


class Replica:
    def __init__(self) -> None:
        self.tracks = FakeTrackStore()
        self.runs = FakeRunStore()
        self.tracking = TrackingServicer(
            self.tracks, Settings(write_linger_ms=5, write_retry_budget_s=1.0), FakeRunsApi(self.runs)
        )
        self.summary = SummaryServicer(self.runs, FakeTracksApi(self.tracks))
        self.server = grpc.aio.server()
        tracking_pb2_grpc.add_TrackingServiceServicer_to_server(self.tracking, self.server)
        summary_pb2_grpc.add_SummaryServiceServicer_to_server(self.summary, self.server)
        add_reflection(self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"


@pytest.fixture
async def replica():
    r = Replica()
    await r.server.start()
    yield r
    await r.server.stop(None)


@pytest.fixture
async def channel(replica):
    async with caller_channel(replica.address, "ada") as ch:
        yield ch


def point(seq: int, **extra) -> tracking_pb2.TrackPoint:
    ms = (int(time.time()) - 600) * 1000 + seq * 1000
    return tracking_pb2.TrackPoint(
        seq=seq,
        time=Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000),
        latitude=48.85,
        longitude=2.35,
        **extra,
    )


def logged_errors(caplog) -> list[logging.LogRecord]:
    """The error lines our code logged (asyncio may log a task of an earlier test, collected late)."""
    ours = ("runtrack_common", "tracking_service", "summary_service")
    return [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith(ours)]


def detail(err: grpc.aio.AioRpcError, kind):
    s = error_status(err)
    assert s is not None, "no google.rpc.Status in the trailers"
    for any_detail in s.details:
        msg = kind()
        if any_detail.Unpack(msg):
            return msg
    return None


async def record(channel, *messages):
    async def gen():
        for m in messages:
            yield m

    return await tracking_pb2_grpc.TrackingServiceStub(channel).RecordTrack(gen())


async def test_every_point_field_survives_the_round_trip_through_both_converters(channel):
    run_id = str(uuid.uuid4())
    sent = [
        point(1),
        point(2, altitude_m=35.5, horizontal_accuracy_m=4.5, speed_mps=3.25, heart_rate_bpm=151, cadence_spm=172),
        point(3, altitude_m=0.0, heart_rate_bpm=0),
    ]
    r = await record(channel, tracking_pb2.RecordTrackRequest(run_id=run_id, user_id="ada", points=sent))
    assert (r.points_stored, r.contiguous_seq) == (3, 3)
    track = await tracking_pb2_grpc.TrackingServiceStub(channel).GetTrack(tracking_pb2.GetTrackRequest(run_id=run_id))
    assert list(track.points) == sent
    assert not track.points[0].HasField("altitude_m") and track.points[2].HasField("altitude_m")


async def test_a_first_message_without_run_id_is_invalid_argument_naming_it(channel):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await record(channel, tracking_pb2.RecordTrackRequest(points=[point(1)]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = detail(err.value, error_details_pb2.BadRequest)
    assert [v.field for v in bad.field_violations] == ["run_id"]


async def test_a_store_outage_ends_the_stream_unavailable_with_retry_info(replica, channel):
    run_id = str(uuid.uuid4())
    replica.tracks.fail_with = Unavailable("CQL store unavailable: NoHostAvailable", retry_after_s=1.0)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await record(channel, tracking_pb2.RecordTrackRequest(run_id=run_id, user_id="ada", points=[point(1)]))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert detail(err.value, error_details_pb2.RetryInfo).retry_delay.seconds == 1
    info = detail(err.value, error_details_pb2.ErrorInfo)
    assert (info.reason, info.metadata["run_id"]) == ("STORE_UNAVAILABLE", run_id)


@pytest.mark.parametrize(
    "failure, reason",
    [
        (Internal("CQL store rejected the request: InvalidRequest"), "STORE_REJECTED"),
        (RuntimeError("a bug"), "INTERNAL_ERROR"),
    ],
)
async def test_a_failure_no_retry_can_fix_is_internal_logged_once_and_not_retried(
    replica, channel, caplog, failure, reason
):
    replica.tracks.fail_with = failure
    recorder = RunRecorder(channel, str(uuid.uuid4()), "ada", backoff=Backoff(0.01, 0.05, 5))
    recorder.record([point(1), point(2)])
    with caplog.at_level(logging.INFO), pytest.raises(grpc.aio.AioRpcError) as err:
        await recorder.upload()
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert detail(err.value, error_details_pb2.ErrorInfo).reason == reason
    assert (recorder.stats.streams, recorder.stats.retries) == (1, 0)
    errors = logged_errors(caplog)
    assert len(errors) == 1 and f"run_id={recorder.run_id}" in errors[0].getMessage()


async def test_drain_flushes_open_streams_and_ends_them_unavailable(replica, channel):
    run_id = str(uuid.uuid4())
    call = tracking_pb2_grpc.TrackingServiceStub(channel).RecordTrack()
    await call.write(tracking_pb2.RecordTrackRequest(run_id=run_id, user_id="ada", points=[point(1), point(2)]))
    await asyncio.sleep(0.05)
    await replica.tracking.drain()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert detail(err.value, error_details_pb2.ErrorInfo).reason == "REPLICA_SHUTTING_DOWN"
    assert sorted(replica.tracks.points[uuid.UUID(run_id)]) == [1, 2]


@pytest.mark.parametrize("seconds, nanos", [(2**62, 0), (-(2**62), 0), (0, -1), (253_402_300_800, 0)])
async def test_a_time_a_timestamp_cannot_hold_is_invalid_argument_naming_its_field(channel, seconds, nanos):
    stub = tracking_pb2_grpc.TrackingServiceStub(channel)
    bad_time = Timestamp(seconds=seconds, nanos=nanos)
    calls = {
        "stop_time": stub.MarkRunStopped(
            tracking_pb2.MarkRunStoppedRequest(run_id=str(uuid.uuid4()), stop_time=bad_time)
        ),
        "expire_time": stub.CreateLiveLink(
            tracking_pb2.CreateLiveLinkRequest(run_id=str(uuid.uuid4()), expire_time=bad_time)
        ),
    }
    for field, call in calls.items():
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        bad = detail(err.value, error_details_pb2.BadRequest)
        assert [v.field for v in bad.field_violations] == [field]
        assert "between 0001-01-01" in bad.field_violations[0].description


async def test_stop_run_names_every_broken_rule_of_the_request(channel):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await summary_pb2_grpc.SummaryServiceStub(channel).StopRun(summary_pb2.StopRunRequest(run_id="nope"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = detail(err.value, error_details_pb2.BadRequest)
    assert [v.field for v in bad.field_violations] == ["run_id", "overview"]


async def test_an_unexpected_error_in_a_unary_method_is_internal_and_logged_once(replica, channel, caplog, monkeypatch):
    async def broken(run_id):
        raise KeyError("a bug")

    monkeypatch.setattr(replica.runs, "get_run", broken)
    run_id = str(uuid.uuid4())
    with caplog.at_level(logging.INFO), pytest.raises(grpc.aio.AioRpcError) as err:
        await summary_pb2_grpc.SummaryServiceStub(channel).GetRun(summary_pb2.GetRunRequest(run_id=run_id))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert detail(err.value, error_details_pb2.ErrorInfo).reason == "INTERNAL_ERROR"
    errors = logged_errors(caplog)
    assert len(errors) == 1 and f"run_id={run_id}" in errors[0].getMessage() and "GetRun" in errors[0].getMessage()


async def test_reflection_answers_for_methods_as_grpcurl_and_ghz_ask(replica):
    def describe() -> list[str]:
        with grpc.insecure_channel(replica.address) as ch:
            db = ProtoReflectionDescriptorDatabase(ch)
            services = db.get_services()
            files = [
                db.FindFileContainingSymbol(s).name
                for s in (
                    "runtrack.v1.SummaryService.GetRun",
                    "runtrack.v1.TrackingService.RecordTrack",
                    "google.rpc.BadRequest",
                )
            ]
            return [*services, *files]

    answers = await asyncio.to_thread(describe)
    assert set(API_SERVICE_NAMES) <= set(answers)
    assert answers[-3:] == ["runtrack/v1/summary.proto", "runtrack/v1/tracking.proto", "google/rpc/error_details.proto"]


async def test_a_stream_the_client_cancels_is_logged_with_its_run_id_and_what_was_stored(replica, channel, caplog):
    run_id = str(uuid.uuid4())
    stub = tracking_pb2_grpc.TrackingServiceStub(channel)
    sent = asyncio.Event()

    async def messages():
        yield tracking_pb2.RecordTrackRequest(run_id=run_id, user_id="ada", points=[point(1), point(2)])
        sent.set()
        await asyncio.sleep(3600)  # the phone goes quiet, then cancels

    with caplog.at_level(logging.INFO, logger="tracking_service"):
        call = stub.RecordTrack(messages())
        await sent.wait()
        deadline = time.monotonic() + 5
        while len(replica.tracks.points.get(uuid.UUID(run_id), {})) < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        call.cancel()
        deadline = time.monotonic() + 5
        while not any("stream cancelled by the client" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
            await asyncio.sleep(0.01)
    line = next(r.getMessage() for r in caplog.records if "stream cancelled by the client" in r.getMessage())
    assert f"run_id={run_id}" in line and "received=2" in line and "stored=2" in line
