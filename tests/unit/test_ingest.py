import asyncio
import uuid

import pytest
from prometheus_client import REGISTRY

from runtrack_common import tracing
from runtrack_common.errors import PermissionDenied, Unavailable
from tests.unit.fakes import FakeTrackStore
from tracking_service.domain import Point
from tracking_service.ingest import IngestStream
from tracking_service.retry import STORE_RETRIES
from tracking_service.writer import PointWriter

NOW = 1_790_000_000_000


def pts(seqs, **changes):
    return [
        Point(**{"seq": s, "time_ms": NOW - 10_000 + s, "latitude": 1.0, "longitude": 2.0, **changes}) for s in seqs
    ]


def writer(store, *, batch=100, inflight=64, linger=0.01, pending=50_000, budget=0.0, base=0.01, cap=0.05):
    # retry_budget_s 0: a failed write fails at once (the retries have tests of their own).
    return PointWriter(
        store,
        batch_points=batch,
        linger_s=linger,
        max_inflight=inflight,
        max_pending_points=pending,
        retry_budget_s=budget,
        retry_base_s=base,
        retry_cap_s=cap,
    )


def stream(store, run_id=None, *, w=None):
    return IngestStream(store, run_id or uuid.uuid4(), writer=w or writer(store), clock_ms=lambda: NOW)


async def test_valid_points_are_stored_and_bad_ones_listed():
    store = FakeTrackStore()
    s = stream(store)
    await s.claim("u")
    await s.add(pts([1, 2]) + pts([3], latitude=99.0) + pts([4]))
    r = await s.finish()
    assert (r.points_received, r.points_stored, r.points_rejected) == (4, 3, 1)
    assert [(x.seq, x.reason) for x in r.rejections] == [(3, "latitude: must be a finite number in [-90, 90]")]
    assert r.contiguous_seq == 2


async def test_rejections_listed_are_capped_at_100_but_all_are_counted():
    s = stream(FakeTrackStore())
    await s.claim("u")
    await s.add(pts(range(1, 251), speed_mps=-1.0))
    r = await s.finish()
    assert r.points_rejected == 250 and len(r.rejections) == 100


async def test_one_point_from_each_of_many_streams_goes_to_the_store_in_one_write():
    """The 1 Hz case: fifty phones' points arriving within the linger cost one request, not fifty."""
    store = FakeTrackStore()
    w = writer(store, batch=100, linger=0.05)
    streams = [stream(store, w=w) for _ in range(50)]
    for s in streams:
        await s.claim("u")
    for s in streams:
        await s.add(pts([1]))
    results = await asyncio.gather(*(s.finish() for s in streams))
    assert all(r.points_stored == 1 and r.contiguous_seq == 1 for r in results)
    assert store.batches == [50]


async def test_writes_hold_at_most_the_configured_points_and_split_a_large_message():
    store = FakeTrackStore()
    s = stream(store, w=writer(store, batch=100))
    await s.claim("u")
    await s.add(pts(range(1, 1001)))
    r = await s.finish()
    assert r.points_stored == 1000 and r.contiguous_seq == 1000
    assert sorted(store.batches) == [100] * 10


async def test_writes_in_flight_never_exceed_the_replica_bound_across_streams():
    store = FakeTrackStore(write_delay=0.01)
    w = writer(store, batch=10, inflight=5)
    streams = [stream(store, w=w) for _ in range(4)]

    async def feed(s):
        await s.claim("u")
        await s.add(pts(range(1, 201)))
        return await s.finish()

    results = await asyncio.gather(*(feed(s) for s in streams))
    assert all(r.points_stored == 200 for r in results)
    assert store.max_inflight == 5


async def test_a_stream_waits_while_the_writer_holds_all_it_may_and_loses_nothing():
    store = FakeTrackStore(write_delay=0.05)
    w = writer(store, batch=10, inflight=1, pending=30)
    s = stream(store, w=w)
    await s.claim("u")
    for start in range(1, 200, 10):
        await s.add(pts(range(start, start + 10)))
        assert w._pending_points <= 30 + 10  # bounded: a stream waits before it hands over more
    r = await s.finish()
    assert r.points_stored == 200 and r.contiguous_seq == 200


async def test_a_failed_write_ends_the_stream_with_unavailable():
    store = FakeTrackStore()
    s = stream(store)
    await s.claim("u")
    store.fail_with = Unavailable("store down")
    await s.add(pts([1]))
    await s.drain()
    with pytest.raises(Unavailable, match="resume from GetTrackCursor"):
        await s.add(pts([2]))


async def test_points_whose_write_failed_are_counted_as_never_durable():
    store = FakeTrackStore()
    s = stream(store)
    await s.claim("u")
    before = REGISTRY.get_sample_value("runtrack_points_not_durable_total") or 0.0
    store.fail_with = Unavailable("store down")
    await s.add(pts([1, 2, 3]))
    await s.drain()
    assert REGISTRY.get_sample_value("runtrack_points_not_durable_total") == before + 3


async def test_a_run_claimed_by_someone_else_is_denied():
    store = FakeTrackStore()
    rid = uuid.uuid4()
    await stream(store, rid).claim("alice")
    with pytest.raises(PermissionDenied, match="is taken"):
        await stream(store, rid).claim("bob")


async def test_contiguous_seq_counts_points_from_other_streams_of_the_run():
    store = FakeTrackStore()
    rid = uuid.uuid4()
    first = stream(store, rid)
    await first.claim("u")
    await first.add(pts([1, 2, 4]))
    assert (await first.finish()).contiguous_seq == 2
    second = stream(store, rid)
    await second.claim("u")
    await second.add(pts([3]))
    assert (await second.finish()).contiguous_seq == 4


class FlakyStore(FakeTrackStore):
    """Refuses the first `failures` writes as a store losing a node would, then takes them."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.attempts = 0

    async def write_rows(self, rows):
        self.attempts += 1
        if self.attempts <= self.failures:
            raise Unavailable("CQL store unavailable: WriteTimeout")
        await super().write_rows(rows)


async def test_a_write_the_store_did_not_take_is_sent_again_and_the_stream_goes_on():
    store = FlakyStore(failures=3)
    s = stream(store, w=writer(store, batch=10, budget=2.0))
    retried = STORE_RETRIES.labels("write")._value.get()
    await s.claim("u")
    await s.add(pts(range(1, 11)))
    r = await s.finish()
    assert r.points_stored == 10 and sorted(store.points[s.result.run_id]) == list(range(1, 11))
    assert store.attempts == 4
    assert STORE_RETRIES.labels("write")._value.get() - retried == 3


async def test_a_store_down_past_the_retry_budget_ends_the_stream_with_unavailable():
    store = FlakyStore(failures=10_000)
    s = stream(store, w=writer(store, batch=10, budget=0.2))
    await s.claim("u")
    await s.add(pts(range(1, 11)))
    with pytest.raises(Unavailable, match="resume from GetTrackCursor"):
        await s.finish()
    assert 2 <= store.attempts < 50  # retried, within a bounded budget


async def test_one_stream_holds_at_most_its_share_of_points_waiting_for_the_store():
    store = FakeTrackStore(write_delay=0.02)
    w = writer(store, batch=100, inflight=64)
    s = IngestStream(store, uuid.uuid4(), writer=w, max_pending=300, clock_ms=lambda: NOW)
    await s.claim("u")
    most = 0
    for start in range(1, 2001, 100):
        await s.add(pts(range(start, start + 100)))
        most = max(most, s._pending)
    assert most <= 300 + 100  # its mark, plus the message that took it there
    r = await s.finish()
    assert r.points_stored == 2000 and r.contiguous_seq == 2000


class SlowToClaim(FakeTrackStore):
    """The claim's lightweight transaction times out twice under load, then answers."""

    def __init__(self) -> None:
        super().__init__()
        self.claims = 0

    async def claim_run(self, run_id, user_id):
        self.claims += 1
        if self.claims <= 2:
            raise Unavailable("CQL store unavailable: WriteTimeout")
        return await super().claim_run(run_id, user_id)


async def test_a_claim_the_store_did_not_answer_is_sent_again():
    store = SlowToClaim()
    s = IngestStream(store, uuid.uuid4(), writer=writer(store), retry_budget_s=2.0, clock_ms=lambda: NOW)
    await s.claim("u")
    assert store.claims == 3 and store.owners[s.result.run_id] == "u"


class SlowCursorAtTheEnd(FakeTrackStore):
    """The read of the cursor at the stream's end times out twice (a node lost, not yet known to be)."""

    def __init__(self) -> None:
        super().__init__()
        self.cursor_reads = 0

    async def cursor(self, run_id):
        self.cursor_reads += 1
        if self.cursor_reads <= 2:
            raise Unavailable("CQL store unavailable: OperationTimedOut")
        return await super().cursor(run_id)


async def test_the_cursor_the_store_did_not_answer_at_the_end_is_read_again():
    store = SlowCursorAtTheEnd()
    s = IngestStream(store, uuid.uuid4(), writer=writer(store), retry_budget_s=2.0, clock_ms=lambda: NOW)
    await s.claim("u")
    await s.add(pts(range(1, 11)))
    retried = STORE_RETRIES.labels("cursor")._value.get()
    r = await s.finish()
    assert r.points_stored == 10 and r.contiguous_seq == 10  # every point stored: the stream ends OK
    assert STORE_RETRIES.labels("cursor")._value.get() - retried == 2


@pytest.fixture
def spans():
    """Spans recorded in memory by the SDK, as a replica with traces on records them."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield provider.get_tracer("test"), exporter
    tracing.uninstall()


async def test_a_batch_holding_traced_streams_points_is_one_span_in_the_first_linked_to_the_others(spans):
    tracer, exporter = spans
    store = FakeTrackStore()
    w = writer(store, batch=100, linger=0.05)
    with tracer.start_as_current_span("stream a") as a:
        traced_a = stream(store, w=w)
    with tracer.start_as_current_span("stream b") as b:
        traced_b = stream(store, w=w)
    plain = stream(store, w=w)  # made outside any traced call
    assert plain.trace is None
    for s in (traced_a, traced_b, plain):
        await s.claim("u")
    await traced_a.add(pts([1]))
    await traced_a.add(pts([2]))
    await traced_b.add(pts([1]))
    await plain.add(pts([1]))
    await asyncio.gather(*(s.finish() for s in (traced_a, traced_b, plain)))
    assert store.batches == [4]
    writes = [s for s in exporter.get_finished_spans() if s.name == "write points"]
    assert len(writes) == 1
    assert writes[0].parent.span_id == a.get_span_context().span_id
    assert [link.context.span_id for link in writes[0].links] == [b.get_span_context().span_id]
    assert writes[0].attributes["runtrack.points"] == 4 and writes[0].attributes["runtrack.runs"] == 3


async def test_a_batch_of_untraced_streams_records_no_span(spans):
    _tracer, exporter = spans
    store = FakeTrackStore()
    s = stream(store)
    await s.claim("u")
    await s.add(pts([1, 2]))
    await s.finish()
    assert exporter.get_finished_spans() == ()
