"""The RecordTrack use case: validate points, write them in bounded concurrent batches, answer."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Sequence

from runtrack_common.errors import PermissionDenied, Unavailable
from tracking_service.domain import MAX_REJECTIONS_LISTED, Point, Rejection, rejection_reason
from tracking_service.store import TrackStore

log = logging.getLogger("tracking.ingest")


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

    Accepted points are written in batches of at most `batch_points`, at most `max_inflight`
    batches at once for this stream and `replica_slots` across the replica. `add` waits for a
    free slot, so a slow store stops the stream from being read: gRPC flow control then pushes
    back on the phone and memory stays bounded.
    """

    def __init__(
        self,
        store: TrackStore,
        run_id: uuid.UUID,
        *,
        max_inflight: int,
        batch_points: int,
        replica_slots: asyncio.Semaphore,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self.store = store
        self.result = IngestResult(run_id)
        self._stream_slots = asyncio.Semaphore(max_inflight)
        self._replica_slots = replica_slots
        self._batch_points = batch_points
        self._clock_ms = clock_ms
        self._inflight: set[asyncio.Task] = set()
        self._failure: BaseException | None = None

    async def claim(self, user_id: str) -> None:
        owner = await self.store.claim_run(self.result.run_id, user_id)
        if owner != user_id:
            raise PermissionDenied(f"run_id: run {self.result.run_id} belongs to another user")

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
        for start in range(0, len(accepted), self._batch_points):
            await self._submit(accepted[start : start + self._batch_points])

    async def _submit(self, batch: list[Point]) -> None:
        await self._stream_slots.acquire()
        try:
            await self._replica_slots.acquire()
        except BaseException:
            self._stream_slots.release()
            raise
        task = asyncio.create_task(self._write(batch))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _write(self, batch: list[Point]) -> None:
        try:
            await self.store.write_points(self.result.run_id, batch)
            self.result.points_stored += len(batch)
        except BaseException as err:
            if self._failure is None:
                self._failure = err
                log.warning("write failed run_id=%s points=%d error=%s", self.result.run_id, len(batch), err)
        finally:
            self._replica_slots.release()
            self._stream_slots.release()

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise Unavailable(f"CQL store unavailable; resume from GetTrackCursor (run_id {self.result.run_id})")

    async def drain(self) -> None:
        """Waits until every write already started has finished, stored or failed."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)

    async def finish(self) -> IngestResult:
        """Once every accepted point is durable: the result, with the run's contiguous_seq."""
        await self.drain()
        self._raise_if_failed()
        cursor = await self.store.cursor(self.result.run_id)
        self.result.contiguous_seq = cursor.contiguous_seq
        return self.result
