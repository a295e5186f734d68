"""One writer per replica: the points of every open stream, coalesced into few store writes.

A phone sends one point a second; written one by one, every point would cost the replica a CQL round
trip (and the driver's CPU for one request). Streams hand their accepted points to this writer without
awaiting anything; it gathers what arrives within `linger_s` (or `batch_points` points, whichever comes
first) from all streams into one unlogged batch (rows of many runs' partitions), writes at most
`max_inflight` such batches at once, and settles each stream's points when its batch is durable.

A point waits in memory for at most `linger_s` plus the write. It is acknowledged to the phone only
when it is durable (the stream's answer, or GetTrackCursor read from the store); a replica that dies
with points in memory has acknowledged none of them, and the phone re-sends from the cursor.

A batch the store did not take (a node lost, a timeout) is sent again, jittered, for up to
`retry_budget_s` (a write is idempotent: the same rows again); after that the streams whose points it
held end with UNAVAILABLE and resume.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from opentelemetry.trace import SpanContext
from prometheus_client import Counter, Histogram

from runtrack_common import tracing
from runtrack_common.errors import Unavailable
from tracking_service.domain import Point
from tracking_service.live import DurablePoints
from tracking_service.retry import retry_unavailable
from tracking_service.store import TrackStore

log = logging.getLogger(__name__)

POINTS_STORED = Counter("runtrack_points_stored_total", "GPS points written to the CQL store.")
# Never durable: not in POINT_DURABLE, yet each a point the durability objective missed (docs/slos.md).
POINTS_NOT_DURABLE = Counter(
    "runtrack_points_not_durable_total",
    "GPS points whose write failed after its retries (the stream ends; the phone re-sends them).",
)
BATCH_WRITE = Histogram(
    "runtrack_batch_write_seconds",
    "One batch of points written to the CQL store (one round trip).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
BATCH_POINTS = Histogram(
    "runtrack_batch_points",
    "Points in one store write (from every stream the writer gathered).",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
)
POINT_DURABLE = Histogram(
    "runtrack_point_durable_seconds",
    "A point's arrival at the replica to durable in the store (linger, slots and the write).",
    buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10),
)


class Sink(Protocol):
    """A stream's side of its points: told when they are durable, or that they could not be. `trace` is
    its call's span context when that call is traced: its batches' writes show in its trace."""

    trace: SpanContext | None

    def written(self, n: int) -> None: ...

    def failed(self, n: int, err: Exception) -> None: ...


class _Item:
    __slots__ = ("arrived", "points", "run_id", "sink")

    def __init__(self, sink: Sink, run_id: uuid.UUID, points: list[Point], arrived: float) -> None:
        self.sink, self.run_id, self.points, self.arrived = sink, run_id, points, arrived


class PointWriter:
    def __init__(
        self,
        store: TrackStore,
        *,
        batch_points: int = 100,
        linger_s: float = 0.05,
        max_inflight: int = 64,
        max_pending_points: int = 50_000,
        retry_budget_s: float = 30.0,
        retry_base_s: float = 0.1,
        retry_cap_s: float = 1.0,
        on_durable: Callable[[Sequence[DurablePoints]], None] | None = None,
    ) -> None:
        self.store = store
        # Told of each batch once durable (the live feed), without waiting.
        self.on_durable = on_durable
        self.batch_points = batch_points
        self.linger_s = linger_s
        self.max_inflight = max_inflight
        self.max_pending_points = max_pending_points
        self.retry_budget_s, self.retry_base_s, self.retry_cap_s = retry_budget_s, retry_base_s, retry_cap_s
        self._pending: deque[_Item] = deque()
        self._pending_points = 0
        self._inflight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._room: asyncio.Event | None = None

    @property
    def full(self) -> bool:
        return self._pending_points >= self.max_pending_points

    async def room(self) -> None:
        """Waits while the writer holds as many points as it may (the store is slower than the phones)."""
        while self.full:
            if self._room is None:
                self._room = asyncio.Event()
            await self._room.wait()

    def submit(self, sink: Sink, run_id: uuid.UUID, points: list[Point]) -> None:
        """Queues a stream's points (no await: nothing per point but this append)."""
        self._pending.append(_Item(sink, run_id, points, time.monotonic()))
        self._pending_points += len(points)
        if self._pending_points >= self.batch_points:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.linger_s, self._flush)

    def flush_now(self) -> None:
        """Writes what is queued without waiting for the linger (a stream ending, a drain)."""
        self._flush()

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pending and self._inflight < self.max_inflight:
            batch: list[_Item] = []
            n = 0
            while self._pending and n < self.batch_points:
                item = self._pending[0]
                room = self.batch_points - n
                if len(item.points) > room and n > 0:
                    break
                if len(item.points) > room:  # one stream's message larger than a batch: split it
                    head = _Item(item.sink, item.run_id, item.points[:room], item.arrived)
                    item.points = item.points[room:]
                    batch.append(head)
                    n += room
                    break
                batch.append(self._pending.popleft())
                n += len(item.points)
            self._pending_points -= n
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(self._write(batch, n))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self._room is not None and not self.full:
            self._room.set()
            self._room = None
        if self._pending and self._timer is None and self._inflight < self.max_inflight:
            self._timer = asyncio.get_running_loop().call_later(self.linger_s, self._flush)

    async def _write(self, batch: list[_Item], n: int) -> None:
        rows: dict[uuid.UUID, list[Point]] = {}
        arrived: dict[uuid.UUID, float] = {}  # each run's first arrival in the batch
        for item in batch:
            rows.setdefault(item.run_id, []).extend(item.points)
            arrived.setdefault(item.run_id, item.arrived)
        start = time.monotonic()
        try:
            # The traced streams among them (few: one in a hundred by default): the write shows in their traces.
            traced = list({t.span_id: t for item in batch if (t := item.sink.trace) is not None}.values())
            with tracing.span_for(traced, "write points", {"runtrack.points": n, "runtrack.runs": len(rows)}):
                await self._write_with_retries(list(rows.items()), n)
        except Exception as err:  # noqa: BLE001 (every stream whose points it held is told)
            POINTS_NOT_DURABLE.inc(n)
            for item in batch:
                item.sink.failed(len(item.points), err)
        else:
            durable = time.monotonic()
            POINTS_STORED.inc(n)
            BATCH_WRITE.observe(durable - start)
            BATCH_POINTS.observe(n)
            for item in batch:
                for _ in item.points:  # in memory, once per point: no I/O
                    POINT_DURABLE.observe(durable - item.arrived)
                item.sink.written(len(item.points))
            if self.on_durable is not None:
                wall = time.time() - durable  # the monotonic clock's reading on the wall clock
                self.on_durable([DurablePoints(r, points, arrived[r] + wall) for r, points in rows.items()])
        finally:
            self._inflight -= 1
            if self._pending:
                self._flush()

    async def _write_with_retries(self, rows: Sequence[tuple[uuid.UUID, Sequence[Point]]], n: int) -> None:
        """The budget runs from the first failure: one attempt may itself take seconds (a timeout)."""
        try:
            await retry_unavailable(
                lambda: self.store.write_rows(rows),
                what="write",
                context=f"runs={len(rows)} points={n}",
                budget_s=self.retry_budget_s,
                base_s=self.retry_base_s,
                cap_s=self.retry_cap_s,
            )
        except Unavailable as err:
            log.warning("write failed runs=%d points=%d error=%s", len(rows), n, err)
            raise
