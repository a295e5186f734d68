"""TrackingService over gRPC: converts proto <-> domain and maps errors to status codes."""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from runtrack.v1 import tracking_pb2, tracking_pb2_grpc
from runtrack_common import page_tokens
from runtrack_common.config import Settings
from runtrack_common.errors import DeadlineExceeded, InvalidArgument, NotFound, ServiceError, Unavailable, maps_errors
from runtrack_common.ids import parse_run_id
from tracking_service.domain import Point, StreamIdentity, page_size
from tracking_service.ingest import IngestStream
from tracking_service.store import TrackStore

log = logging.getLogger("tracking.rpc")
TRACK_TOKEN = "track"


def point_from_proto(p: tracking_pb2.TrackPoint) -> Point:
    return Point(
        seq=p.seq,
        time_ms=p.time.seconds * 1000 + p.time.nanos // 1_000_000 if p.HasField("time") else None,
        latitude=p.latitude,
        longitude=p.longitude,
        altitude_m=p.altitude_m if p.HasField("altitude_m") else None,
        horizontal_accuracy_m=p.horizontal_accuracy_m if p.HasField("horizontal_accuracy_m") else None,
        speed_mps=p.speed_mps if p.HasField("speed_mps") else None,
        heart_rate_bpm=p.heart_rate_bpm if p.HasField("heart_rate_bpm") else None,
        cadence_spm=p.cadence_spm if p.HasField("cadence_spm") else None,
    )


def point_to_proto(p: Point) -> tracking_pb2.TrackPoint:
    ms = p.time_ms or 0
    out = tracking_pb2.TrackPoint(
        seq=p.seq,
        time=Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000),
        latitude=p.latitude,
        longitude=p.longitude,
    )
    for name in ("altitude_m", "horizontal_accuracy_m", "speed_mps", "heart_rate_bpm", "cadence_spm"):
        value = getattr(p, name)
        if value is not None:
            setattr(out, name, value)
    return out


class TrackingServicer(tracking_pb2_grpc.TrackingServiceServicer):
    def __init__(self, store: TrackStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.replica_slots = asyncio.Semaphore(settings.replica_inflight_writes)
        self._draining = asyncio.Event()
        self._open_streams: set[asyncio.Task] = set()

    async def drain(self) -> None:
        """Replica shutting down: every open stream is flushed, then ended with UNAVAILABLE."""
        self._draining.set()
        if self._open_streams:
            log.info("draining open_streams=%d", len(self._open_streams))
            await asyncio.wait(list(self._open_streams), timeout=self.settings.shutdown_grace_s)

    async def _next_message(self, messages: AsyncIterator, run_id: object):
        """The next message, None at the end; ends the stream when idle too long or draining."""
        read = asyncio.ensure_future(anext(messages, None))
        stop = asyncio.ensure_future(self._draining.wait())
        try:
            done, _ = await asyncio.wait(
                {read, stop}, timeout=self.settings.stream_idle_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stop.cancel()
        if read in done:
            try:
                return read.result()
            except DecodeError:
                raise InvalidArgument("request", "is not a valid RecordTrackRequest (corrupt wire format)") from None
        read.cancel()
        if self._draining.is_set():
            raise Unavailable(f"replica shutting down; resume from GetTrackCursor (run_id {run_id})")
        raise DeadlineExceeded(
            f"points: no message for {self.settings.stream_idle_timeout_s:g}s (the idle limit); "
            f"resume from GetTrackCursor (run_id {run_id})"
        )

    async def RecordTrack(
        self, request_iterator: AsyncIterator[tracking_pb2.RecordTrackRequest], context: grpc.aio.ServicerContext
    ) -> tracking_pb2.RecordTrackResponse:
        identity: StreamIdentity | None = None
        ingest: IngestStream | None = None
        me = asyncio.current_task()
        self._open_streams.add(me)
        messages = aiter(request_iterator)
        try:
            if self._draining.is_set():
                raise Unavailable("replica shutting down; retry on another replica")
            while (message := await self._next_message(messages, identity.run_id if identity else "-")) is not None:
                if identity is None:
                    identity = StreamIdentity.from_first(message.run_id, message.user_id, len(message.points))
                    ingest = IngestStream(
                        self.store,
                        identity.run_id,
                        max_inflight=self.settings.stream_inflight_writes,
                        batch_points=self.settings.write_batch_points,
                        replica_slots=self.replica_slots,
                        linger_s=self.settings.write_linger_ms / 1000,
                    )
                    await ingest.claim(identity.user_id)
                else:
                    identity.check_later(message.run_id, message.user_id, len(message.points))
                await ingest.add([point_from_proto(p) for p in message.points])
            if ingest is None:
                raise InvalidArgument("run_id", "is required in the first message (the stream sent none)")
            r = await ingest.finish()
        except ServiceError as err:
            if ingest is not None:
                await ingest.drain()
            run_id = identity.run_id if identity else "-"
            stored = ingest.result.points_stored if ingest else 0
            log.info("stream ended run_id=%s status=%s stored=%d reason=%s", run_id, err.code.name, stored, err)
            await context.abort(err.code, str(err))
        finally:
            if ingest is not None:
                await ingest.drain()
            self._open_streams.discard(me)
        log.info(
            "stream done run_id=%s received=%d stored=%d rejected=%d contiguous_seq=%d",
            r.run_id, r.points_received, r.points_stored, r.points_rejected, r.contiguous_seq,
        )
        return tracking_pb2.RecordTrackResponse(
            run_id=str(r.run_id),
            points_received=r.points_received,
            points_stored=r.points_stored,
            points_rejected=r.points_rejected,
            rejections=[tracking_pb2.PointRejection(seq=x.seq, reason=x.reason) for x in r.rejections],
            contiguous_seq=r.contiguous_seq,
        )

    async def _known_run(self, run_id: str):
        rid = parse_run_id(run_id)
        if await self.store.run_owner(rid) is None:
            raise NotFound(f"run_id: no track for run {rid}")
        return rid

    @maps_errors
    async def GetTrackCursor(self, request, context) -> tracking_pb2.TrackCursor:
        rid = await self._known_run(request.run_id)
        c = await self.store.cursor(rid)
        return tracking_pb2.TrackCursor(
            run_id=str(rid), contiguous_seq=c.contiguous_seq, max_seq=c.max_seq, point_count=c.point_count
        )

    @maps_errors
    async def GetTrack(self, request, context) -> tracking_pb2.Track:
        rid = await self._known_run(request.run_id)
        size = page_size(request.page_size)
        after = 0
        if request.page_token:
            position = page_tokens.decode(request.page_token, TRACK_TOKEN, str(rid))
            if len(position) != 1 or not isinstance(position[0], int) or position[0] < 0:
                raise InvalidArgument("page_token", "must be a next_page_token returned by this method for this request")
            after = position[0]
        points = await self.store.points_after(rid, after, size + 1)
        token = ""
        if len(points) > size:
            points = points[:size]
            token = page_tokens.encode(TRACK_TOKEN, str(rid), [points[-1].seq])
        return tracking_pb2.Track(run_id=str(rid), points=[point_to_proto(p) for p in points], next_page_token=token)
