"""A refused call's error, and the handler frames its traceback holds, are freed when the call ends,
not left to the cycle collector: both servicers in-process behind the replica's own interceptors, each
kind of handler failing (unary, client stream, server stream, a corrupt unary request) with the
collector off, then the errors still alive counted. The same calls without ReleaseAborts are the
control: every error is kept, in a cycle through gRPC's AbortError and the servicer context."""

import gc
import uuid

import grpc
import pytest

from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from runtrack_common.aborts import ReleaseAborts
from runtrack_common.config import Settings
from runtrack_common.serving import interceptors
from summary_service.servicer import SummaryServicer
from tests.helpers import caller_channel
from tests.unit.fakes import FakeRunsApi, FakeRunStore, FakeTracksApi, FakeTrackStore
from tracking_service.servicer import TrackingServicer

CALLS = 20


ERRORS = {"NotFound", "InvalidArgument", "Unavailable"}


def alive(kinds: set[str]) -> int:
    return sum(type(o).__name__ in kinds for o in gc.get_objects())


async def refused_calls(chain: list[grpc.aio.ServerInterceptor]) -> int:
    """How many of the errors the failed calls raised are still alive, the collector off; checks each
    call failed with its documented status."""
    tracks, runs = FakeTrackStore(), FakeRunStore()
    server = grpc.aio.server(interceptors=chain)
    tracking_pb2_grpc.add_TrackingServiceServicer_to_server(
        TrackingServicer(tracks, Settings(write_linger_ms=5), FakeRunsApi(runs)), server
    )
    summary_pb2_grpc.add_SummaryServiceServicer_to_server(SummaryServicer(runs, FakeTracksApi(tracks)), server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    gc.collect()
    gc.disable()
    before = alive(ERRORS)
    try:
        async with caller_channel(address, "ada") as channel:
            summary = summary_pb2_grpc.SummaryServiceStub(channel)
            tracking = tracking_pb2_grpc.TrackingServiceStub(channel)
            get_run = channel.unary_unary("/runtrack.v1.SummaryService/GetRun")
            for _ in range(CALLS):
                with pytest.raises(grpc.aio.AioRpcError) as unary:
                    await summary.GetRun(summary_pb2.GetRunRequest(run_id=str(uuid.uuid4())))
                assert unary.value.code() == grpc.StatusCode.NOT_FOUND

                async def no_run_id():
                    yield tracking_pb2.RecordTrackRequest()

                with pytest.raises(grpc.aio.AioRpcError) as stream:
                    await tracking.RecordTrack(no_run_id())
                assert stream.value.code() == grpc.StatusCode.INVALID_ARGUMENT

                with pytest.raises(grpc.aio.AioRpcError) as watch:
                    async for _ in tracking.WatchRun(tracking_pb2.WatchRunRequest(run_id=str(uuid.uuid4()))):
                        pass
                assert watch.value.code() == grpc.StatusCode.UNAVAILABLE  # no live hub in this replica

                with pytest.raises(grpc.aio.AioRpcError) as corrupt:
                    await get_run(b"\xff\xff\xff")
                assert corrupt.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        await server.stop(None)
        return alive(ERRORS) - before
    finally:
        await server.stop(None)
        gc.enable()


async def test_failed_calls_of_every_kind_free_their_errors_without_the_cycle_collector():
    assert await refused_calls(interceptors()) == 0


async def test_without_releasing_them_every_failed_call_keeps_its_error_until_a_collection():
    chain = [i for i in interceptors() if not isinstance(i, ReleaseAborts)]
    assert await refused_calls(chain) == 4 * CALLS
