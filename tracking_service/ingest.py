"""The RecordTrack use case: validate points, write them in bounded concurrent batches, answer."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prometheus_client import Counter, Histogram

from runtrack_common.errors import FailedPrecondition, PermissionDenied, Unavailable
from tracking_service.domain import MAX_REJECTIONS_LISTED, Point, Rejection, rejection_reason
from tracking_service.store import TrackStore

log = logging.getLogger(__name__)

POINTS_STORED = Counter("runtrack_points_stored_total", "GPS points written to the CQL store.")
POINTS_REJECTED = Counter("runtrack_points_rejected_total", "GPS points rejected (listed in `rejections`).")
BATCH_WRITE = Histogram(
    "runtrack_batch_write_seconds",
    "One batch of points written to the CQL store (one round trip).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
WRITE_RETRIES = Counter(
    "runtrack_write_retries_total",
    "Batch writes sent again within the stream after the store did not answer (a write is idempotent).",
)
POINT_DURABLE = Histogram(
    "runtrack_point_durable_seconds",
    "A point's arrival at the replica to durable in the store (linger, slots and the write).",
    buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10),
)


@dataclass
class IngestResult:
    run_id: uuid.UUID
    points_received: int = 0
    points_stored: int = 0
    points_rejected: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    contiguous_seq: int = 0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class IngestStream:
    """One RecordTrack stream bound to one run.

    Accepted points wait in a buffer until it holds `batch_points` or the oldest has waited
    `linger_s`, then go to the store as one batch; at most `max_inflight` batches are written at
    once for this stream and `replica_slots` across the replica. `add` waits for a free slot, so
    a slow store stops the stream from being read: gRPC flow control then pushes back on the
    phone, and memory stays bounded (one partial buffer plus the batches in flight).
    """

    def __init__(
        self,
        store: TrackStore,
        run_id: uuid.UUID,
        *,
        max_inflight: int,
        batch_points: int,
        replica_slots: asyncio.Semaphore,
        linger_s: float = 0.1,
        clock_ms: Callable[[], int] = _now_ms,
        retry_budget_s: float = 3.0,
        retry_base_s: float = 0.1,
        retry_cap_s: float = 1.0,
    ) -> None:
        self.store = store
        self.result = IngestResult(run_id)
        self._stream_slots = asyncio.Semaphore(max_inflight)
        self._replica_slots = replica_slots
        self._batch_points = batch_points
        self._linger_s = linger_s
        self._clock_ms = clock_ms
        self._buffer: list[Point] = []
        # When each buffered point arrived (time.monotonic()), in the buffer's order.
        self._arrivals: list[float] = []
        self._timer: asyncio.TimerHandle | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._failure: Exception | None = None
        # A batch the store did not take (a node lost, a timeout) is sent again, jittered, for up to this
        # long, before the stream ends with UNAVAILABLE: a hiccup costs the phone nothing.
        self._retry_budget_s = retry_budget_s
        self._retry_base_s = retry_base_s
        self._retry_cap_s = retry_cap_s

    async def claim(self, user_id: str) -> None:
        """Binds the run to `user_id` (the first claim wins); refused for a deleted run."""
        run_id = self.result.run_id
        if await self.store.deleted_by(run_id) is not None:
            raise FailedPrecondition(
                f"run_id: run {run_id} was deleted; it takes no more points", metadata={"run_id": str(run_id)}
            )
        owner = await self.store.claim_run(run_id, user_id)
        if owner != user_id:
            raise PermissionDenied(
                f"run_id: run {self.result.run_id} belongs to another user",
                metadata={"run_id": str(self.result.run_id)},
            )

    async def add(self, points: Sequence[Point]) -> None:
        self._raise_if_failed()
        r = self.result
        now = self._clock_ms()
        accepted: list[Point] = []
        for p in points:
            reason = rejection_reason(p, now)
            if reason is None:
                accepted.append(p)
                continue
            r.points_rejected += 1
            if len(r.rejections) < MAX_REJECTIONS_LISTED:
                r.rejections.append(Rejection(p.seq, reason))
        r.points_received += len(points)
        if len(accepted) < len(points):
            POINTS_REJECTED.inc(len(points) - len(accepted))
        self._buffer.extend(accepted)
        self._arrivals.extend([time.monotonic()] * len(accepted))
        while len(self._buffer) >= self._batch_points:
            n = self._batch_points
            batch, self._buffer = self._buffer[:n], self._buffer[n:]
            arrivals, self._arrivals = self._arrivals[:n], self._arrivals[n:]
            await self._submit(batch, arrivals)
        if self._buffer and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._linger_s, self._flush_buffer)

    def _flush_buffer(self) -> None:
        """Sends what the buffer holds as one batch (when the linger time is up, or at the end)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._buffer:
            batch, self._buffer = self._buffer, []
            arrivals, self._arrivals = self._arrivals, []
            self._track(asyncio.create_task(self._submit(batch, arrivals)))

    def _track(self, task: asyncio.Task[None]) -> None:
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _submit(self, batch: list[Point], arrivals: list[float]) -> None:
        await self._stream_slots.acquire()
        try:
            await self._replica_slots.acquire()
        except BaseException:
            self._stream_slots.release()
            raise
        self._track(asyncio.create_task(self._write(batch, arrivals)))

    async def _write(self, batch: list[Point], arrivals: list[float]) -> None:
        try:
            start = time.monotonic()
            await self._write_with_retries(batch, start + self._retry_budget_s)
            durable = time.monotonic()
            self.result.points_stored += len(batch)
            POINTS_STORED.inc(len(batch))
            BATCH_WRITE.observe(durable - start)
            for arrived in arrivals:  # in memory, once per point: no I/O
                POINT_DURABLE.observe(durable - arrived)
        except Exception as err:  # noqa: BLE001 (kept, and raised where the stream ends)
            if self._failure is None:
                self._failure = err
                if isinstance(err, Unavailable):  # anything else is logged once, where the stream ends
                    log.warning("write failed run_id=%s points=%d error=%s", self.result.run_id, len(batch), err)
        finally:
            self._replica_slots.release()
            self._stream_slots.release()

    async def _write_with_retries(self, batch: list[Point], deadline: float) -> None:
        attempt = 0
        while True:
            try:
                await self.store.write_points(self.result.run_id, batch)
                return
            except Unavailable as err:
                delay = min(self._retry_cap_s, self._retry_base_s * 2**attempt) * random.uniform(0.5, 1.0)
                if time.monotonic() + delay > deadline:
                    raise
                attempt += 1
                WRITE_RETRIES.inc()
                log.info(
                    "write retry run_id=%s points=%d attempt=%d in=%.2fs error=%s",
                    self.result.run_id,
                    len(batch),
                    attempt,
                    delay,
                    err,
                )
                await asyncio.sleep(delay)

    def _raise_if_failed(self) -> None:
        """A failed write ends the stream: UNAVAILABLE (resume later) when a retry can fix it, the
        write's own error (INTERNAL) when it cannot."""
        failure = self._failure
        if failure is None:
            return
        if isinstance(failure, Unavailable):
            raise Unavailable(
                f"CQL store unavailable; resume from GetTrackCursor (run_id {self.result.run_id})",
                metadata={**failure.metadata, "run_id": str(self.result.run_id)},
                retry_after_s=failure.retry_after_s,
            ) from failure
        raise failure

    async def drain(self) -> None:
        """Writes what is buffered and waits until every write has finished, stored or failed."""
        self._flush_buffer()
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)

    async def finish(self) -> IngestResult:
        """Once every accepted point is durable: the result, with the run's contiguous_seq."""
        await self.drain()
        self._raise_if_failed()
        cursor = await self.store.cursor(self.result.run_id)
        self.result.contiguous_seq = cursor.contiguous_seq
        return self.result
