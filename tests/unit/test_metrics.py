"""The grpc_server_* families and the tracking metrics, from a grpc.aio server in-process."""

import asyncio
import time
import uuid

import grpc
import pytest
from prometheus_client import REGISTRY

from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from runtrack_common.config import Settings
from runtrack_common.errors import Unavailable
from runtrack_common.metrics import ServerMetrics
from summary_service.servicer import SummaryServicer
from tests.helpers import caller_channel
from tests.unit.fakes import FakeRunsApi, FakeRunStore, FakeTracksApi, FakeTrackStore
from tests.unit.test_servicers import point
from tracking_service.servicer import TrackingServicer

SUMMARY = "runtrack.v1.SummaryService"
TRACKING = "runtrack.v1.TrackingService"


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def settled(name: str, expected: float, **labels: str) -> float:
    """The sample once the server has finished the call: an aborted call's status reaches the client
    (abort_with_status sends it) before the interceptor's `finally` counts it, and on a busy machine
    the client's await can resume first."""
    for _ in range(400):
        if value(name, **labels) == expected:
            break
        await asyncio.sleep(0.005)
    return value(name, **labels)


@pytest.fixture
async def channel():
    tracks, runs = FakeTrackStore(), FakeRunStore()
    server = grpc.aio.server(interceptors=[ServerMetrics()])
    tracking_pb2_grpc.add_TrackingServiceServicer_to_server(
        TrackingServicer(tracks, Settings(write_linger_ms=5), FakeRunsApi(runs)), server
    )
    summary_pb2_grpc.add_SummaryServiceServicer_to_server(SummaryServicer(runs, FakeTracksApi(tracks)), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with caller_channel(f"127.0.0.1:{port}", "ada") as ch:
        yield ch
    await server.stop(None)


async def test_unary_calls_are_counted_by_status_and_timed(channel):
    labels = {"grpc_type": "UNARY", "grpc_service": SUMMARY, "grpc_method": "GetRun"}
    started = value("grpc_server_started_total", **labels)
    not_found = value("grpc_server_handled_total", **labels, grpc_code="NOT_FOUND")
    invalid = value("grpc_server_handled_total", **labels, grpc_code="INVALID_ARGUMENT")
    timed = value("grpc_server_handling_seconds_count", **labels)
    stub = summary_pb2_grpc.SummaryServiceStub(channel)
    for run_id in (str(uuid.uuid4()), "not-a-uuid"):
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.GetRun(summary_pb2.GetRunRequest(run_id=run_id))
    assert value("grpc_server_started_total", **labels) == started + 2
    assert await settled("grpc_server_handled_total", not_found + 1, **labels, grpc_code="NOT_FOUND") == not_found + 1
    assert (
        await settled("grpc_server_handled_total", invalid + 1, **labels, grpc_code="INVALID_ARGUMENT") == invalid + 1
    )
    assert await settled("grpc_server_handling_seconds_count", timed + 2, **labels) == timed + 2


async def test_each_call_is_timed_under_its_status_with_buckets_at_the_objectives(channel):
    labels = {"grpc_type": "UNARY", "grpc_service": SUMMARY, "grpc_method": "GetRun"}
    name = "runtrack_grpc_server_handled_seconds"
    not_found = value(f"{name}_count", **labels, grpc_code="NOT_FOUND")
    fast = value(f"{name}_bucket", **labels, grpc_code="NOT_FOUND", le="0.2")
    with pytest.raises(grpc.aio.AioRpcError):
        await summary_pb2_grpc.SummaryServiceStub(channel).GetRun(summary_pb2.GetRunRequest(run_id=str(uuid.uuid4())))
    assert await settled(f"{name}_count", not_found + 1, **labels, grpc_code="NOT_FOUND") == not_found + 1
    assert value(f"{name}_bucket", **labels, grpc_code="NOT_FOUND", le="+Inf") == not_found + 1
    # In the 0.2 s bucket when it took less (a fake store: unless the machine is busy).
    assert value(f"{name}_bucket", **labels, grpc_code="NOT_FOUND", le="0.2") in (fast, fast + 1)
    assert REGISTRY.get_sample_value(f"{name}_bucket", {**labels, "grpc_code": "NOT_FOUND", "le": "0.3"}) is not None


class UnreachableRunStore(FakeRunStore):
    async def get_run(self, run_id: uuid.UUID) -> None:
        raise Unavailable("PostgreSQL unavailable: PoolTimeout", metadata={"store": "postgresql"})


async def test_a_call_a_store_did_not_answer_is_counted_under_that_store():
    tracks, runs = FakeTrackStore(), UnreachableRunStore()
    server = grpc.aio.server(interceptors=[ServerMetrics()])
    summary_pb2_grpc.add_SummaryServiceServicer_to_server(SummaryServicer(runs, FakeTracksApi(tracks)), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    before = value("runtrack_store_unavailable_total", store="postgresql")
    try:
        async with caller_channel(f"127.0.0.1:{port}", "ada") as ch:
            stub = summary_pb2_grpc.SummaryServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.GetRun(summary_pb2.GetRunRequest(run_id=str(uuid.uuid4())))
    finally:
        await server.stop(None)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert value("runtrack_store_unavailable_total", store="postgresql") == before + 1


async def test_a_stream_counts_its_points_and_how_long_each_took_to_be_durable(channel):
    labels = {"grpc_type": "CLIENT_STREAM", "grpc_service": TRACKING, "grpc_method": "RecordTrack"}
    ok = value("grpc_server_handled_total", **labels, grpc_code="OK")
    stored = value("runtrack_points_stored_total")
    rejected = value("runtrack_points_rejected_total")
    durable = value("runtrack_point_durable_seconds_count")
    batches = value("runtrack_batch_write_seconds_count")
    messages = [
        tracking_pb2.RecordTrackRequest(run_id=str(uuid.uuid4()), points=[point(1), point(2)]),
        tracking_pb2.RecordTrackRequest(points=[point(3), point(0)]),  # seq 0 is rejected
    ]
    reply = await tracking_pb2_grpc.TrackingServiceStub(channel).RecordTrack(iter(messages))
    assert reply.points_stored == 3
    assert value("grpc_server_handled_total", **labels, grpc_code="OK") == ok + 1
    assert value("runtrack_points_stored_total") == stored + 3
    assert value("runtrack_points_rejected_total") == rejected + 1
    assert value("runtrack_point_durable_seconds_count") == durable + 3
    assert value("runtrack_batch_write_seconds_count") > batches
    assert value("runtrack_streams_open") == 0


def test_every_counted_method_has_its_series_at_zero_before_its_first_call():
    from runtrack_common.metrics import initialize

    initialize(tracking_pb2.DESCRIPTOR.services_by_name["TrackingService"])
    initialize(summary_pb2.DESCRIPTOR.services_by_name["SummaryService"])
    handled = {"grpc_service": "runtrack.v1.SummaryService", "grpc_method": "GetRun", "grpc_code": "OK"}
    assert REGISTRY.get_sample_value("grpc_server_handled_total", {"grpc_type": "UNARY", **handled}) is not None
    stream = {"grpc_type": "CLIENT_STREAM", "grpc_service": "runtrack.v1.TrackingService", "grpc_method": "RecordTrack"}
    assert REGISTRY.get_sample_value("grpc_server_started_total", stream) is not None
    # A server-streaming method is not counted by the interceptor, so it gets no series either.
    watch = [m for m in tracking_pb2.DESCRIPTOR.services_by_name["TrackingService"].methods if m.server_streaming]
    for m in watch:
        labels = {"grpc_type": "UNARY", "grpc_service": "runtrack.v1.TrackingService", "grpc_method": m.name}
        assert REGISTRY.get_sample_value("grpc_server_started_total", labels) is None


class _Store:
    async def ensure_ready(self) -> None:
        return None

    async def close(self) -> None:
        return None


async def test_a_replicas_store_readiness_follows_its_health():
    """runtrack_store_ready: 0 until the first probe answers, then what the replica's health says (the
    store alerts read it when Envoy has taken NOT_SERVING replicas out and no call fails there)."""
    from runtrack_common.serving import STORES, Replica

    assert STORES == {"tracking_service": "cql", "summary_service": "postgresql"}
    replica = Replica(
        service_name=TRACKING, settings=Settings(), port=0, backend=_Store(), register=lambda _: None, store="cql"
    )
    assert REGISTRY.get_sample_value("runtrack_store_ready", {"store": "cql"}) == 0.0
    await replica._set_health(True)
    assert value("runtrack_store_ready", store="cql") == 1.0
    await replica._set_health(False)
    assert REGISTRY.get_sample_value("runtrack_store_ready", {"store": "cql"}) == 0.0


class _SilentStore:
    """A store whose probes never answer, and whose cancellation takes long (a connection to a stopped
    PostgreSQL: the driver's cancel request waits on it too)."""

    def __init__(self) -> None:
        self.probes = 0

    async def ensure_ready(self) -> None:
        self.probes += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.sleep(8))
            raise

    async def close(self) -> None:
        return None


async def test_a_store_that_never_answers_makes_the_replica_not_serving_within_two_probe_timeouts():
    from runtrack_common.serving import Replica

    store = _SilentStore()
    settings = Settings(health_probe_interval_s=0.2)  # a probe's timeout: max(2 s, 3 intervals) = 2 s
    replica = Replica(
        service_name=TRACKING, settings=settings, port=0, backend=store, register=lambda _: None, store="cql"
    )
    await replica._set_health(True)
    started = time.monotonic()
    probing = asyncio.create_task(replica._probe_forever())
    try:
        while replica.serving:
            assert time.monotonic() - started < 10, "still SERVING 10 s after the store went silent"
            await asyncio.sleep(0.05)
        assert time.monotonic() - started < 5.5  # two 2 s timeouts and an interval, not the 8 s cancellation
        assert store.probes == 1, "one probe in flight at a time"
        assert REGISTRY.get_sample_value("runtrack_store_ready", {"store": "cql"}) == 0.0
    finally:
        replica.request_stop()
        probing.cancel()
        await asyncio.gather(probing, return_exceptions=True)
