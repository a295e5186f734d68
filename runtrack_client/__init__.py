"""The reference client: how a phone records a run with RunTrack and never loses a point.

The model for the mobile app, and the engine of the tests and the load generator.

Protocol:
1. The phone keeps every recorded point in a local buffer until the server says it is durable.
2. It streams points on one RecordTrack stream (first message: run_id, user_id); a clean end
   of the stream means every point sent on it was stored or rejected for good.
3. On a failure a retry can fix (see `retry_delay`), it waits an exponential backoff with full
   jitter, at least the server's RetryInfo delay, asks GetTrackCursor, drops every point with
   seq <= contiguous_seq and resends the rest on a new stream. Re-sent points overwrite
   themselves, so nothing is stored twice. Any other error is final and raised.
4. STOP RUN is retried the same way: StopRun is idempotent, so a retry returns the same Run. So are
   UpdateRun and ImportRun, with `retried` (a failover of PostgreSQL answers UNAVAILABLE a while).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias, TypeVar, cast

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc

log = logging.getLogger(__name__)

DOMAIN = "runtrack"
# A retry can fix these: the server, its store, Envoy or the network failed, not the request.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)
# Also retried, but only when no RunTrack server said so: these then come from the transport (a
# stream reset by a proxy, a connection lost mid-call), not from a verdict on the request.
TRANSPORT = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED})
T = TypeVar("T")


def error_status(err: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    """The `google.rpc.Status` the server attached to `err`, if any."""
    try:
        # AioRpcError answers from_call's three questions (code, details, trailing metadata) at once.
        status: status_pb2.Status | None = rpc_status.from_call(cast(grpc.Call, err))
    except ValueError:  # details that contradict the status: not ours
        return None
    return status


def error_details(err: grpc.aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo | None, float | None]:
    """The ErrorInfo of a RunTrack error and its RetryInfo delay in seconds, where present."""
    status = error_status(err)
    info: error_details_pb2.ErrorInfo | None = None
    delay: float | None = None
    for detail in status.details if status is not None else ():
        error_info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
        if detail.Unpack(error_info):
            info = error_info
        elif detail.Unpack(retry):
            delay = retry.retry_delay.ToTimedelta().total_seconds()
    return info, delay


def retry_delay(err: BaseException) -> float | None:
    """None when a retry cannot help; else the least time to wait (0 when the server named none)."""
    if isinstance(err, grpc.aio.AioRpcError):
        info, delay = error_details(err)
        if err.code() in RETRYABLE:
            return delay or 0.0
        if err.code() in TRANSPORT and (info is None or info.domain != DOMAIN):
            return 0.0
        return None
    if isinstance(err, asyncio.CancelledError):
        # grpc.aio may end a call whose connection broke with CancelledError; only a cancel of
        # our own task is a real cancel.
        task = asyncio.current_task()
        return 0.0 if task is not None and task.cancelling() == 0 else None
    return None


@dataclass
class Backoff:
    """Exponential backoff with full jitter, bounded in attempts."""

    base_s: float = 0.1
    cap_s: float = 5.0
    max_attempts: int = 50

    def delay(self, attempt: int, at_least_s: float = 0.0) -> float:
        return max(at_least_s, random.uniform(0, min(self.cap_s, self.base_s * 2**attempt)))


async def retried(
    call: Callable[[], Awaitable[T]], backoff: Backoff | None = None, *, on_retry: Callable[[], None] | None = None
) -> T:
    """`call()` again after each failure a retry can fix (see `retry_delay`: UNAVAILABLE, e.g. while
    PostgreSQL fails over to its standby), no sooner than the server's RetryInfo says, until it
    answers; any other error is raised. For the unary calls a second try cannot do twice: StopRun
    (idempotent), UpdateRun (its field mask sets values, it adds none), ImportRun (the same file from
    the same caller answers the same run), and every read."""
    backoff = backoff or Backoff()
    attempt = 0
    while True:
        try:
            return await call()
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as err:
            wait = retry_delay(err)
            if wait is None or attempt >= backoff.max_attempts:
                raise
            attempt += 1
            if on_retry is not None:
                on_retry()
            await asyncio.sleep(backoff.delay(attempt, wait))


# What a live source yields: one point, or several recorded together (one message either way).
Live: TypeAlias = "tracking_pb2.TrackPoint | Sequence[tracking_pb2.TrackPoint]"


@dataclass
class UploadStats:
    streams: int = 0
    retries: int = 0
    points_sent: int = 0
    rejected: list[tracking_pb2.PointRejection] = field(default_factory=list)
    last_response: tracking_pb2.RecordTrackResponse | None = None


class RunRecorder:
    """Records one run: buffers its points, streams them, resumes after failures."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        run_id: str,
        user_id: str,
        *,
        points_per_message: int = 50,
        backoff: Backoff | None = None,
    ) -> None:
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

    async def _requests(
        self, live: AsyncIterator[Live] | None, sent: list[int]
    ) -> AsyncIterator[tracking_pb2.RecordTrackRequest]:
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
            async for item in live:  # a point, or the points recorded since the last message
                for p in [item] if isinstance(item, tracking_pb2.TrackPoint) else item:
                    self.pending[p.seq] = p  # kept until known durable
                    batch.append(p)
                yield message()

    async def upload(self, live: AsyncIterator[Live] | None = None) -> tracking_pb2.RecordTrackResponse:
        """Streams what is pending, then `live` points as they come (one message per item: a point,
        or the points recorded since the last message), until all are durable."""
        attempt = 0
        while True:
            sent: list[int] = []
            self.stats.streams += 1
            try:
                response = await self.tracking.RecordTrack(self._requests(live, sent))
            except (grpc.aio.AioRpcError, asyncio.CancelledError) as err:
                wait = retry_delay(err)
                if wait is None or attempt >= self.backoff.max_attempts:
                    raise
                attempt += 1
                self.stats.retries += 1
                code = err.code().name if isinstance(err, grpc.aio.AioRpcError) else "connection lost"
                log.info("stream failed run_id=%s code=%s; resuming", self.run_id, code)
                await asyncio.sleep(self.backoff.delay(attempt, wait))
                await self._resume_from_cursor()
                continue
            # A clean end: every point sent on this stream is stored, or rejected for good.
            for seq in sent:
                self.pending.pop(seq, None)
            self.stats.rejected.extend(response.rejections)
            self.stats.last_response = response
            if not self.pending:
                return response

    async def _cursor(self) -> int:
        """The run's contiguous_seq; 0 while the server knows no point of it."""
        try:
            cursor = await self.tracking.GetTrackCursor(tracking_pb2.GetTrackCursorRequest(run_id=self.run_id))
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return 0
            raise
        return cursor.contiguous_seq

    async def _resume_from_cursor(self) -> None:
        contiguous = await self._retry(self._cursor)
        for seq in [s for s in self.pending if s <= contiguous]:
            del self.pending[seq]

    async def stop(self, overview: summary_pb2.RunOverview) -> summary_pb2.Run:
        """STOP RUN, retried until it answers: safe, because StopRun is idempotent."""
        request = summary_pb2.StopRunRequest(run_id=self.run_id, user_id=self.user_id, overview=overview)
        return await self._retry(lambda: self.summary.StopRun(request))

    async def _retry(self, call: Callable[[], Awaitable[T]]) -> T:
        def count() -> None:
            self.stats.retries += 1

        return await retried(call, self.backoff, on_retry=count)
