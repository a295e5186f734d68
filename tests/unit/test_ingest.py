import asyncio
import uuid

import pytest

from runtrack_common.errors import PermissionDenied, Unavailable
from tests.unit.fakes import FakeTrackStore
from tracking_service.domain import Point
from tracking_service.ingest import IngestStream

NOW = 1_790_000_000_000


def pts(seqs, **changes):
    return [
        Point(**{"seq": s, "time_ms": NOW - 10_000 + s, "latitude": 1.0, "longitude": 2.0, **changes}) for s in seqs
    ]


def stream(store, run_id=None, *, inflight=4, batch=100, replica=64):
    return IngestStream(
        store,
        run_id or uuid.uuid4(),
        max_inflight=inflight,
        batch_points=batch,
        replica_slots=asyncio.Semaphore(replica),
        clock_ms=lambda: NOW,
        retry_budget_s=0.0,  # a failed write fails at once here (the retries have tests of their own)
    )


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


async def test_points_are_written_in_batches_of_the_configured_size():
    store = FakeTrackStore()
    s = stream(store, batch=100)
    await s.claim("u")
    await s.add(pts(range(1, 1001)))
    await s.finish()
    assert sorted(store.batches) == [100] * 10


async def test_in_flight_writes_never_exceed_the_stream_bound():
    store = FakeTrackStore(write_delay=0.01)
    s = stream(store, inflight=3, batch=10)
    await s.claim("u")
    for start in range(1, 500, 50):
        await s.add(pts(range(start, start + 50)))
    r = await s.finish()
    assert r.points_stored == 500
    assert store.max_inflight == 3


async def test_in_flight_writes_never_exceed_the_replica_bound_across_streams():
    store = FakeTrackStore(write_delay=0.01)
    shared = asyncio.Semaphore(5)
    streams = [
        IngestStream(store, uuid.uuid4(), max_inflight=4, batch_points=10, replica_slots=shared, clock_ms=lambda: NOW)
        for _ in range(4)
    ]

    async def feed(s):
        await s.claim("u")
        await s.add(pts(range(1, 201)))
        return await s.finish()

    results = await asyncio.gather(*(feed(s) for s in streams))
    assert all(r.points_stored == 200 for r in results)
    assert store.max_inflight == 5


async def test_a_failed_write_ends_the_stream_with_unavailable():
    store = FakeTrackStore()
    s = stream(store)
    await s.claim("u")
    store.fail_with = Unavailable("store down")
    await s.add(pts([1]))
    await s.drain()
    with pytest.raises(Unavailable, match="resume from GetTrackCursor"):
        await s.add(pts([2]))


async def test_a_run_claimed_by_someone_else_is_denied():
    store = FakeTrackStore()
    rid = uuid.uuid4()
    await stream(store, rid).claim("alice")
    with pytest.raises(PermissionDenied, match="belongs to another user"):
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

    async def write_points(self, run_id, points):
        self.attempts += 1
        if self.attempts <= self.failures:
            raise Unavailable("CQL store unavailable: WriteTimeout")
        await super().write_points(run_id, points)


async def test_a_write_the_store_did_not_take_is_sent_again_and_the_stream_goes_on():
    from tracking_service.ingest import WRITE_RETRIES

    store = FlakyStore(failures=3)
    s = IngestStream(
        store,
        uuid.uuid4(),
        max_inflight=4,
        batch_points=10,
        replica_slots=asyncio.Semaphore(8),
        clock_ms=lambda: NOW,
        retry_budget_s=2.0,
        retry_base_s=0.01,
        retry_cap_s=0.05,
    )
    retried = WRITE_RETRIES._value.get()
    await s.claim("u")
    await s.add(pts(range(1, 11)))
    r = await s.finish()
    assert r.points_stored == 10 and sorted(store.points[s.result.run_id]) == list(range(1, 11))
    assert store.attempts == 4
    assert WRITE_RETRIES._value.get() - retried == 3


async def test_a_store_down_past_the_retry_budget_ends_the_stream_with_unavailable():
    store = FlakyStore(failures=10_000)
    s = IngestStream(
        store,
        uuid.uuid4(),
        max_inflight=4,
        batch_points=10,
        replica_slots=asyncio.Semaphore(8),
        clock_ms=lambda: NOW,
        retry_budget_s=0.2,
        retry_base_s=0.01,
        retry_cap_s=0.05,
    )
    await s.claim("u")
    await s.add(pts(range(1, 11)))
    with pytest.raises(Unavailable, match="resume from GetTrackCursor"):
        await s.finish()
    assert 2 <= store.attempts < 50  # retried, within a bounded budget
