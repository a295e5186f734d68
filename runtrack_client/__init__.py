"""The reference client: how a phone records a run with RunTrack and never loses a point.

The model for the mobile app, and the engine of the tests and the load generator.

Protocol:
1. The phone keeps every recorded point in a local buffer until the server says it is durable.
2. It streams points on one RecordTrack stream (first message: run_id, user_id); a clean end
   of the stream means every point sent on it was stored or rejected for good.
3. On any failure (UNAVAILABLE, a reset, a replica shutting down, an idle cut), it waits an
   exponential backoff with full jitter, asks GetTrackCursor, drops every point with
   seq <= contiguous_seq and resends the rest on a new stream. Re-sent points overwrite
   themselves, so nothing is stored twice.
4. STOP RUN is retried the same way: StopRun is idempotent, so a retry returns the same Run.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from typing import AsyncIterator, Iterable

import grpc

from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc

log = logging.getLogger("runtrack.client")

# Worth another try: the server, Envoy or the network failed, not the request.
RETRYABLE = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
})


def _retryable(err: BaseException) -> bool:
    if isinstance(err, grpc.aio.AioRpcError):
        return err.code() in RETRYABLE
    if isinstance(err, asyncio.CancelledError):
        # grpc.aio may end a call whose connection broke with CancelledError; only a cancel of
        # our own task is a real cancel.
        task = asyncio.current_task()
        return task is not None and task.cancelling() == 0
    return False


@dataclass
class Backoff:
    """Exponential backoff with full jitter, bounded in attempts."""

    base_s: float = 0.1
    cap_s: float = 5.0
    max_attempts: int = 50

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap_s, self.base_s * 2 ** attempt))


@dataclass
class UploadStats:
    streams: int = 0
    retries: int = 0
    points_sent: int = 0
    rejected: list[tracking_pb2.PointRejection] = field(default_factory=list)
    last_response: tracking_pb2.RecordTrackResponse | None = None


class RunRecorder:
    """Records one run: buffers its points, streams them, resumes after failures."""

    def __init__(self, channel: grpc.aio.Channel, run_id: str, user_id: str, *,
                 points_per_message: int = 50, backoff: Backoff | None = None) -> None:
        self.run_id, self.user_id = run_id, user_id
        self.tracking = tracking_pb2_grpc.TrackingServiceStub(channel)
        self.summary = summary_pb2_grpc.SummaryServiceStub(channel)
        self.points_per_message = points_per_message
        self.backoff = backoff or Backoff()
        self.pending: dict[int, tracking_pb2.TrackPoint] = {}  # recorded, not yet known durable
        self.stats = UploadStats()

    def record(self, points: Iterable[tracking_pb2.TrackPoint]) -> None:
        for p in points:
            self.pending[p.seq] = p

    async def _requests(self, live: AsyncIterator[tracking_pb2.TrackPoint] | None, sent: list[int]):
        first = True
        batch: list[tracking_pb2.TrackPoint] = []

        def message() -> tracking_pb2.RecordTrackRequest:
            nonlocal first, batch
            req = tracking_pb2.RecordTrackRequest(points=batch)
            if first:
                req.run_id, req.user_id, first = self.run_id, self.user_id, False
            sent.extend(p.seq for p in batch)
            self.stats.points_sent += len(batch)
            batch = []
            return req

        for seq in sorted(self.pending):
            batch.append(self.pending[seq])
            if len(batch) >= self.points_per_message:
                yield message()
        if batch or first:
            yield message()
        if live is not None:
            async for p in live:
                self.pending[p.seq] = p  # kept until known durable
                batch.append(p)
                yield message()

    async def upload(self, live: AsyncIterator[tracking_pb2.TrackPoint] | None = None) -> tracking_pb2.RecordTrackResponse:
        """Streams what is pending, then `live` points as they come, until all are durable."""
        attempt = 0
        while True:
            sent: list[int] = []
            self.stats.streams += 1
            try:
                response = await self.tracking.RecordTrack(self._requests(live, sent))
            except (grpc.aio.AioRpcError, asyncio.CancelledError) as err:
                if not _retryable(err) or attempt >= self.backoff.max_attempts:
                    raise
                attempt += 1
                self.stats.retries += 1
                code = err.code().name if isinstance(err, grpc.aio.AioRpcError) else "connection lost"
                log.info("stream failed run_id=%s code=%s; resuming", self.run_id, code)
                await asyncio.sleep(self.backoff.delay(attempt))
                await self._resume_from_cursor()
                continue
            # A clean end: every point sent on this stream is stored, or rejected for good.
            for seq in sent:
                self.pending.pop(seq, None)
            self.stats.rejected.extend(response.rejections)
            self.stats.last_response = response
            if not self.pending:
                return response

    async def _resume_from_cursor(self) -> None:
        cursor = await self._retry(lambda: self.tracking.GetTrackCursor(
            tracking_pb2.GetTrackCursorRequest(run_id=self.run_id)), not_found_ok=True)
        contiguous = cursor.contiguous_seq if cursor is not None else 0
        for seq in [s for s in self.pending if s <= contiguous]:
            del self.pending[seq]

    async def stop(self, overview: summary_pb2.RunOverview) -> summary_pb2.Run:
        """STOP RUN, retried until it answers: safe, because StopRun is idempotent."""
        request = summary_pb2.StopRunRequest(run_id=self.run_id, user_id=self.user_id, overview=overview)
        return await self._retry(lambda: self.summary.StopRun(request))

    async def _retry(self, call, *, not_found_ok: bool = False):
        attempt = 0
        while True:
            try:
                return await call()
            except (grpc.aio.AioRpcError, asyncio.CancelledError) as err:
                if not_found_ok and isinstance(err, grpc.aio.AioRpcError) and err.code() == grpc.StatusCode.NOT_FOUND:
                    return None
                if not _retryable(err) or attempt >= self.backoff.max_attempts:
                    raise
                attempt += 1
                self.stats.retries += 1
                await asyncio.sleep(self.backoff.delay(attempt))
