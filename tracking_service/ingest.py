"""The RecordTrack use case: validate points, hand them to the replica's writer, answer."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prometheus_client import Counter

from runtrack_common import tracing
from runtrack_common.errors import Unavailable
from tracking_service.domain import MAX_REJECTIONS_LISTED, Point, Rejection, rejection_reason
from tracking_service.retry import retry_unavailable
from tracking_service.store import TrackStore
from tracking_service.tracks import check_claim
from tracking_service.writer import PointWriter

log = logging.getLogger(__name__)

POINTS_REJECTED = Counter("runtrack_points_rejected_total", "GPS points rejected (listed in `rejections`).")


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

    Accepted points go to the replica's writer (`tracking_service/writer.py`), which writes the points of
    every open stream together; this stream only counts what it handed over and what came back durable.
    When the writer holds as many points as it may (the store slower than the phones), `add` waits:
    the stream is not read, gRPC flow control pushes back on the phone, and memory stays bounded.
    """

    def __init__(
        self,
        store: TrackStore,
        run_id: uuid.UUID,
        *,
        writer: PointWriter,
        max_pending: int = 800,
        retry_budget_s: float = 30.0,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self.store = store
        self.writer = writer
        self.result = IngestResult(run_id)
        self._clock_ms = clock_ms
        self._pending = 0  # points handed to the writer, not yet durable or failed
        # One stream holds at most this many of them (a backlog uploaded fast waits its turn; a 1 Hz
        # phone never gets near it): no phone fills the replica's writer alone.
        self._max_pending = max_pending
        self._retry_budget_s = retry_budget_s
        self._settled: asyncio.Event | None = None  # set when _pending falls to a waiter's mark
        self._wait_below = 0
        self._failure: Exception | None = None
        # Made inside the RecordTrack call: its span, when the call is traced (the writer's spans join it).
        self.trace = tracing.current()

    async def claim(self, user_id: str) -> None:
        """Binds the run to `user_id` (the first claim wins); refused for a deleted run."""
        run_id = self.result.run_id
        # Both are safe to send again (a read; a claim whose first answer was lost finds its own owner):
        # a store slow to answer at the stream's start costs the phone nothing either.
        deleted_by = await retry_unavailable(
            lambda: self.store.deleted_by(run_id),
            what="deleted_by",
            context=f"run_id={run_id}",
            budget_s=self._retry_budget_s,
        )
        owner = None
        if deleted_by is None:
            owner = await retry_unavailable(
                lambda: self.store.claim_run(run_id, user_id),
                what="claim",
                context=f"run_id={run_id}",
                budget_s=self._retry_budget_s,
            )
        check_claim(run_id, user_id, deleted_by, owner)

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
        if not accepted:
            return
        if self._pending >= self._max_pending:
            await self._until_pending_below(self._max_pending)
        if self.writer.full:
            await self.writer.room()
        self._pending += len(accepted)
        self.writer.submit(self, r.run_id, accepted)

    # The writer's calls back (Sink): in the event loop, once per batch this stream had points in.
    def written(self, n: int) -> None:
        self.result.points_stored += n
        self._settle(n)

    def failed(self, n: int, err: Exception) -> None:
        if self._failure is None:
            self._failure = err
            if not isinstance(err, Unavailable):  # an outage is logged by the writer, and where the stream ends
                log.warning("write failed run_id=%s points=%d error=%r", self.result.run_id, n, err)
        self._settle(n)

    def _settle(self, n: int) -> None:
        self._pending -= n
        if self._settled is not None and self._pending < self._wait_below:
            self._settled.set()

    async def _until_pending_below(self, mark: int) -> None:
        while self._pending >= mark:
            self._wait_below = mark
            self._settled = asyncio.Event()
            self.writer.flush_now()
            await self._settled.wait()
        self._settled = None

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
        """Waits until every point handed to the writer is durable or failed (written now, no linger)."""
        await self._until_pending_below(1)

    async def finish(self) -> IngestResult:
        """Once every accepted point is durable: the result, with the run's contiguous_seq."""
        await self.drain()
        self._raise_if_failed()
        run_id = self.result.run_id
        # Reads and an upsert of the mark, safe to send again: every point is stored by now, and a store
        # slow to answer (a node lost and not yet known to be) must not turn the stream's end into a
        # failure that makes the phone send them all again.
        cursor = await retry_unavailable(
            lambda: self.store.cursor(run_id),
            what="cursor",
            context=f"run_id={run_id}",
            budget_s=self._retry_budget_s,
        )
        self.result.contiguous_seq = cursor.contiguous_seq
        return self.result
