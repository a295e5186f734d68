"""TrackingService over gRPC: converts proto <-> domain and maps errors to status codes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import grpc
from google.api import httpbody_pb2
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import DecodeError

from runtrack.v1 import tracking_pb2, tracking_pb2_grpc
from runtrack_common import status
from runtrack_common.config import Settings
from runtrack_common.errors import (
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RunTrackError,
    Unavailable,
    Violations,
)
from runtrack_common.identity import Caller, LinkHolder
from runtrack_common.ids import parse_run_id, parse_time
from runtrack_common.status import maps_errors
from tracking_service import tracks
from tracking_service.convert import link_to_proto, point_from_proto, points_to_proto, zones_to_proto
from tracking_service.domain import StreamIdentity
from tracking_service.files import FORMATS, to_gpx, to_tcx
from tracking_service.hub import LiveHub, link_refused
from tracking_service.ingest import IngestStream
from tracking_service.links import LinkSigner
from tracking_service.live import DELETED, STOPPED, link_expiry
from tracking_service.live_links import LiveLinks
from tracking_service.open_limits import (
    MAX_LINK_WATCHERS_HEADER,
    MAX_RECORD_STREAMS_HEADER,
    MAX_RUNNER_WATCHERS_HEADER,
    OpenCounts,
    parse_limit,
)
from tracking_service.privacy import Zone
from tracking_service.store import TrackStore
from tracking_service.streams import SHUTDOWN_RETRY_S, StreamSupervisor
from tracking_service.tracks import Grant, RunVisibility
from tracking_service.webhooks import TargetPolicy, check_url
from tracking_service.writer import PointWriter

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext


class TrackingServicer(tracking_pb2_grpc.TrackingServiceServicer):
    def __init__(
        self, store: TrackStore, settings: Settings, visibility: RunVisibility, hub: LiveHub | None = None
    ) -> None:
        self.store = store
        self.hub = hub
        self.signer = LinkSigner(settings)
        self.settings = settings
        self.visibility = visibility
        self.links: LiveLinks | None = None
        self.writer = PointWriter(
            store,
            batch_points=settings.write_batch_points,
            linger_s=settings.write_linger_ms / 1000,
            max_inflight=settings.replica_inflight_writes,
            max_pending_points=settings.max_pending_points,
            retry_budget_s=settings.write_retry_budget_s,
            on_durable=hub.published if hub is not None else None,
        )
        self.streams = StreamSupervisor(settings)
        self._record_streams = OpenCounts("record_streams", "this runner", "RecordTrack streams")
        self._link_watchers = OpenCounts("link_watchers", "this live link", "WatchRun streams")
        self._runner_watchers = OpenCounts("runner_watchers", "this runner", "WatchRun streams")
        self._run_spectators = OpenCounts("run_spectators", "this run", "strangers following it")
        # Trail pages read and converted at once (GetTrack, ExportTrack, the visible summary): each is
        # tens of ms of work on the event loop in slices; more at once would queue every other call
        # (health answers among them) behind all their slices. The rest wait their turn.
        self._trail_reads = asyncio.Semaphore(settings.trail_reads_at_once) if settings.trail_reads_at_once else None
        self._jobs: set[asyncio.Task[None]] = set()

    def _turn(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """A turn among the trail reads (none to wait for when unbounded)."""
        return self._trail_reads if self._trail_reads is not None else contextlib.nullcontext()

    def _background(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(job)
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def _tell_if_stopped(self, run_id: uuid.UUID, contiguous_seq: int, caller: Caller) -> None:
        """Points stored after StopRun (a stream resumed late): the dashboard analyses the run again.
        One read per stream end; nothing per point."""
        try:
            row = await self._hub().store.live_row(run_id)
            if row.current == STOPPED:
                await self.visibility.trail_grew(run_id, contiguous_seq, caller)
                log.info("late points told run_id=%s contiguous_seq=%d", run_id, contiguous_seq)
        except RunTrackError as err:
            log.warning("late points not told run_id=%s: %s", run_id, err)

    async def drain(self) -> None:
        """Replica shutting down: every open stream is flushed, then ended with UNAVAILABLE."""
        self.streams.draining.set()
        if self.hub is not None:
            await self.hub.close()
        await self.streams.drain()

    async def RecordTrack(
        self,
        request_iterator: AsyncIterator[tracking_pb2.RecordTrackRequest],
        context: grpc.aio.ServicerContext[tracking_pb2.RecordTrackRequest, tracking_pb2.RecordTrackResponse],
    ) -> tracking_pb2.RecordTrackResponse:
        identity: StreamIdentity | None = None
        ingest: IngestStream | None = None
        me = asyncio.current_task()
        assert me is not None
        loop = asyncio.get_running_loop()
        stream = self.streams.open(me)
        messages = aiter(request_iterator)
        counted: str | None = None
        try:
            caller = status.caller_of(context)
            if self._record_streams.enter(
                caller.user_id, parse_limit(status.metadata(context, MAX_RECORD_STREAMS_HEADER))
            ):
                counted = caller.user_id
            if self.streams.draining.is_set():
                raise Unavailable(
                    "replica shutting down; retry on another replica",
                    reason="REPLICA_SHUTTING_DOWN",
                    retry_after_s=SHUTDOWN_RETRY_S,
                )
            try:
                while True:
                    if stream.end is not None:
                        raise self.streams.ended(stream, str(identity.run_id) if identity else "-")
                    stream.reading = True
                    try:
                        message = await anext(messages, None)  # the one await per message
                    except DecodeError:
                        raise InvalidArgument(
                            "request",
                            "is not a valid RecordTrackRequest (corrupt wire format)",
                            reason="MALFORMED_MESSAGE",
                        ) from None
                    finally:
                        stream.reading = False
                    if message is None:
                        # The end of the stream, or the phone cancelled it (or went away): a cancel reads as
                        # the end first, and is known once the loop has run its callbacks.
                        await asyncio.sleep(0)
                        if context.cancelled():
                            raise asyncio.CancelledError
                        break
                    stream.last_message = loop.time()
                    if identity is None or ingest is None:
                        identity = StreamIdentity.from_first(
                            message.run_id, message.user_id, len(message.points), caller
                        )
                        ingest = IngestStream(
                            self.store,
                            identity.run_id,
                            writer=self.writer,
                            max_pending=self.settings.stream_max_pending_points,
                            retry_budget_s=self.settings.write_retry_budget_s,
                        )
                        await ingest.claim(identity.user_id)
                    else:
                        identity.check_later(message.run_id, message.user_id, len(message.points))
                    await ingest.add([point_from_proto(p) for p in message.points])
            except asyncio.CancelledError:
                if stream.end is None:
                    raise  # the phone's own cancel
                me.uncancel()  # ours: the idle limit or the drain, answered with a status
                raise self.streams.ended(stream, str(identity.run_id) if identity else "-") from None
            if ingest is None:
                raise InvalidArgument("run_id", "is required in the first message (the stream sent none)")
            r = await ingest.finish()
        except Exception as err:  # noqa: BLE001 (every failure leaves with a status; cancellation passes)
            if ingest is not None:
                await ingest.drain()
            run_id = str(identity.run_id) if identity else "-"
            if isinstance(err, RunTrackError) and not isinstance(err, Internal):
                stored = ingest.result.points_stored if ingest else 0
                log.info("stream ended run_id=%s reason=%s stored=%d: %s", run_id, err.reason, stored, err.message)
            await status.abort(context, err, rpc="RecordTrack", run_id=run_id)
        except asyncio.CancelledError:  # the phone went away (or cancelled): logged like any other end
            if ingest is not None:
                await ingest.drain()
            so_far = ingest.result if ingest is not None else None
            log.info(
                "stream cancelled by the client run_id=%s received=%d stored=%d",
                identity.run_id if identity else "-",
                so_far.points_received if so_far else 0,
                so_far.points_stored if so_far else 0,
            )
            raise
        finally:
            if counted is not None:
                self._record_streams.leave(counted)
            if ingest is not None:
                await ingest.drain()
            self.streams.close(me)
        if r.points_stored and self.hub is not None:
            self._background(self._tell_if_stopped(r.run_id, r.contiguous_seq, caller))
        log.info(
            "stream done run_id=%s received=%d stored=%d rejected=%d contiguous_seq=%d",
            r.run_id,
            r.points_received,
            r.points_stored,
            r.points_rejected,
            r.contiguous_seq,
        )
        return tracking_pb2.RecordTrackResponse(
            run_id=str(r.run_id),
            points_received=r.points_received,
            points_stored=r.points_stored,
            points_rejected=r.points_rejected,
            rejections=[tracking_pb2.PointRejection(seq=x.seq, reason=x.reason) for x in r.rejections],
            contiguous_seq=r.contiguous_seq,
        )

    @maps_errors
    async def GetTrackCursor(
        self,
        request: tracking_pb2.GetTrackCursorRequest,
        context: Context[tracking_pb2.GetTrackCursorRequest, tracking_pb2.TrackCursor],
    ) -> tracking_pb2.TrackCursor:
        caller = status.caller_of(context)
        run_id = parse_run_id(request.run_id)
        c = await tracks.cursor(self.store, caller, run_id)
        return tracking_pb2.TrackCursor(
            run_id=str(run_id), contiguous_seq=c.contiguous_seq, max_seq=c.max_seq, point_count=c.point_count
        )

    @maps_errors
    async def GetTrack(
        self, request: tracking_pb2.GetTrackRequest, context: Context[tracking_pb2.GetTrackRequest, tracking_pb2.Track]
    ) -> tracking_pb2.Track:
        caller = status.caller_of(context)
        run_id = parse_run_id(request.run_id)
        async with self._turn():
            page = await tracks.track_page(
                self.store, self.visibility, caller, run_id, request.page_size, request.page_token
            )
            return tracking_pb2.Track(
                run_id=str(run_id), points=await points_to_proto(page.points), next_page_token=page.next_page_token
            )

    @maps_errors
    async def GetPrivacyZones(
        self,
        request: tracking_pb2.GetPrivacyZonesRequest,
        context: Context[tracking_pb2.GetPrivacyZonesRequest, tracking_pb2.PrivacyZones],
    ) -> tracking_pb2.PrivacyZones:
        user, zones = await tracks.privacy_zones(self.store, status.caller_of(context), request.user_id)
        return zones_to_proto(user, zones)

    @maps_errors
    async def SetPrivacyZones(
        self,
        request: tracking_pb2.SetPrivacyZonesRequest,
        context: Context[tracking_pb2.SetPrivacyZonesRequest, tracking_pb2.PrivacyZones],
    ) -> tracking_pb2.PrivacyZones:
        zones = [Zone(z.latitude, z.longitude, z.radius_m) for z in request.zones]
        user, stored = await tracks.set_privacy_zones(self.store, status.caller_of(context), request.user_id, zones)
        return zones_to_proto(user, stored)

    @maps_errors
    async def DeleteTrack(
        self,
        request: tracking_pb2.DeleteTrackRequest,
        context: Context[tracking_pb2.DeleteTrackRequest, tracking_pb2.DeleteTrackResponse],
    ) -> tracking_pb2.DeleteTrackResponse:
        caller = status.caller_of(context)
        run_id = parse_run_id(request.run_id)
        existed = await tracks.delete_track(self.store, caller, run_id)
        if self.hub is not None:
            # The run's watchers see DELETED; its links' webhooks are told, then the links go.
            row = await self.hub.store.live_row(run_id)
            if row.current != DELETED:
                now = dt.datetime.now(dt.UTC)
                self.hub.notify(run_id, row, DELETED, now, "deleted by its owner")
                await self.hub.store.mark_live_deleted(run_id, now, list(row.links))
                await self.hub.announce(run_id, DELETED)
        log.info("track deleted run_id=%s user_id=%s existed=%s", request.run_id, caller.user_id, existed)
        return tracking_pb2.DeleteTrackResponse(existed=existed)

    # ---- following a run live ------------------------------------------------------------------

    def _hub(self) -> LiveHub:
        if self.hub is None:
            raise Unavailable("live following is off on this replica", reason="LIVE_OFF")
        return self.hub

    def _links(self) -> LiveLinks:
        """The live-link use cases (made once: they hold nothing of a call)."""
        if self.links is None:
            self.links = LiveLinks(self.store, self._hub(), self.signer, self.settings)
        return self.links

    async def WatchRun(
        self,
        request: tracking_pb2.WatchRunRequest,
        context: Context[tracking_pb2.WatchRunRequest, tracking_pb2.RunEvent],
    ) -> AsyncIterator[tracking_pb2.RunEvent]:
        run_id_text = request.run_id or "-"
        counted: list[tuple[OpenCounts, str]] = []

        def enter(counts: OpenCounts, key: str, most: int | None) -> None:
            if counts.enter(key, most):
                counted.append((counts, key))

        try:
            hub = self._hub()
            viewer = status.viewer_of(context)
            run_id = parse_run_id(request.run_id)
            if isinstance(viewer, LinkHolder) and viewer.run_id != str(run_id):
                raise PermissionDenied(
                    f"run_id: this live link grants run {viewer.run_id} only, not {run_id}", reason="LINK_OTHER_RUN"
                )
            owner = await self.store.run_owner(run_id)
            if owner is None:
                raise NotFound(f"run_id: no track for run {run_id}", metadata={"run_id": str(run_id)})
            row = None
            if isinstance(viewer, LinkHolder):
                row = await hub.store.live_row(run_id)
                if (why := row.refusal(viewer.link_id, dt.datetime.now(dt.UTC))) is not None:
                    raise link_refused(why, run_id)
                owner_view, link_id = False, viewer.link_id
                enter(self._link_watchers, link_id, parse_limit(status.metadata(context, MAX_LINK_WATCHERS_HEADER)))
                grant = await self.visibility.visible(run_id, viewer)
                if grant is None:
                    raise NotFound(f"run_id: no run {run_id}", metadata={"run_id": str(run_id)})
            else:
                owner_view, link_id = owner == viewer.user_id, None
                grant = Grant(share_health=True) if owner_view else await self.visibility.visible(run_id, viewer)
                if grant is None:
                    raise NotFound(f"run_id: no track for run {run_id}", metadata={"run_id": str(run_id)})
                most = parse_limit(status.metadata(context, MAX_RUNNER_WATCHERS_HEADER))
                enter(self._runner_watchers, viewer.user_id, most)
                if not owner_view:
                    enter(self._run_spectators, str(run_id), self.settings.live_max_spectators_per_run or None)
            log.info("watch opened run_id=%s owner=%s link=%s", run_id, owner_view, link_id or "-")
            async for event in hub.watch(
                run_id,
                owner,
                owner_view=owner_view,
                link_id=link_id,
                after_seq=request.after_seq,
                row=row,
                share_health=grant.share_health,
            ):
                yield event
        except Exception as err:  # noqa: BLE001 (every failure leaves with a status; cancellation passes)
            if isinstance(err, RunTrackError) and not isinstance(err, Internal):
                log.info("watch ended run_id=%s reason=%s: %s", run_id_text, err.reason, err.message)
            await status.abort(context, err, rpc="WatchRun", run_id=run_id_text)
        finally:
            for counts, key in counted:
                counts.leave(key)

    @maps_errors
    async def CreateLiveLink(
        self,
        request: tracking_pb2.CreateLiveLinkRequest,
        context: Context[tracking_pb2.CreateLiveLinkRequest, tracking_pb2.LiveLink],
    ) -> tracking_pb2.LiveLink:
        caller = status.caller_of(context)
        found = Violations()
        run_id = found.check(lambda: parse_run_id(request.run_id))
        now = dt.datetime.now(dt.UTC)
        expire_at = None
        if request.HasField("expire_time"):
            requested = found.check(lambda: parse_time(request.expire_time, "expire_time"))
            try:
                expire_at = link_expiry(requested, now)
            except ValueError as err:
                found.add("expire_time", str(err))
        url = request.webhook_url.strip()
        if url and (rule := check_url(url, policy=TargetPolicy.of(self.settings))) is not None:
            found.add("webhook_url", rule)
        found.raise_if_any()
        assert run_id is not None
        made = await self._links().create(caller, run_id, expire_at, url, now)
        out = link_to_proto(str(run_id), made.row, made.link)
        out.url, out.token, out.webhook_secret = made.url, made.token, made.link.webhook_secret
        return out

    @maps_errors
    async def ListLiveLinks(
        self,
        request: tracking_pb2.ListLiveLinksRequest,
        context: Context[tracking_pb2.ListLiveLinksRequest, tracking_pb2.ListLiveLinksResponse],
    ) -> tracking_pb2.ListLiveLinksResponse:
        run_id = parse_run_id(request.run_id)
        row, links = await self._links().list(status.caller_of(context), run_id)
        return tracking_pb2.ListLiveLinksResponse(links=[link_to_proto(str(run_id), row, link) for link in links])

    @maps_errors
    async def DeleteLiveLink(
        self,
        request: tracking_pb2.DeleteLiveLinkRequest,
        context: Context[tracking_pb2.DeleteLiveLinkRequest, Empty],
    ) -> Empty:
        run_id = parse_run_id(request.run_id)
        await self._links().revoke(status.caller_of(context), run_id, request.link_id)
        return Empty()

    @maps_errors
    async def CheckLiveLink(
        self,
        request: tracking_pb2.CheckLiveLinkRequest,
        context: Context[tracking_pb2.CheckLiveLinkRequest, tracking_pb2.LiveLinkGrant],
    ) -> tracking_pb2.LiveLinkGrant:
        links = self._links()
        viewer = status.viewer_of(context)
        run_id = parse_run_id(request.run_id)
        if not isinstance(viewer, LinkHolder):
            raise PermissionDenied("only a live link's holder asks whether it grants a run", reason="NOT_A_LIVE_LINK")
        await links.stands(viewer, run_id)
        return tracking_pb2.LiveLinkGrant(link_id=viewer.link_id, run_id=str(run_id))

    @maps_errors
    async def ExportTrack(
        self,
        request: tracking_pb2.ExportTrackRequest,
        context: Context[tracking_pb2.ExportTrackRequest, httpbody_pb2.HttpBody],
    ) -> httpbody_pb2.HttpBody:
        caller = status.caller_of(context)
        run_id = parse_run_id(request.run_id)
        fmt = request.format.lower() or _format_from_path(context)
        if fmt not in FORMATS:
            raise InvalidArgument("format", f"must be one of {', '.join(sorted(FORMATS))}, got {request.format!r}")
        name = f"Run {run_id}"
        async with self._turn():
            points = await tracks.whole_track(self.store, self.visibility, caller, run_id)
            # Writing the file is one long piece of work: on a thread, off the event loop.
            data = await asyncio.to_thread(to_gpx if fmt == "gpx" else to_tcx, name, points)
        filename = f"runtrack-{run_id}.{fmt}"
        await context.send_initial_metadata((("content-disposition", f'attachment; filename="{filename}"'),))
        log.info("track exported run_id=%s format=%s points=%d bytes=%d", run_id, fmt, len(points), len(data))
        return httpbody_pb2.HttpBody(content_type=FORMATS[fmt], data=data)

    @maps_errors
    async def MarkRunStopped(
        self,
        request: tracking_pb2.MarkRunStoppedRequest,
        context: Context[tracking_pb2.MarkRunStoppedRequest, Empty],
    ) -> Empty:
        run_id = parse_run_id(request.run_id)
        at = parse_time(request.stop_time, "stop_time") if request.HasField("stop_time") else dt.datetime.now(dt.UTC)
        await self._links().mark_stopped(status.caller_of(context), run_id, at)
        return Empty()

    @maps_errors
    async def GetVisibleSummary(
        self,
        request: tracking_pb2.GetVisibleSummaryRequest,
        context: Context[tracking_pb2.GetVisibleSummaryRequest, tracking_pb2.VisibleSummary],
    ) -> tracking_pb2.VisibleSummary:
        viewer = status.viewer_of(context)
        run_id = parse_run_id(request.run_id)
        owner = await self.store.run_owner(run_id)
        if owner is None:
            raise NotFound(f"run_id: no track for run {run_id}", metadata={"run_id": str(run_id)})
        if isinstance(viewer, LinkHolder):
            await self._links().stands(viewer, run_id)
        elif owner == viewer.user_id:
            return tracking_pb2.VisibleSummary(trimmed=False)
        elif await self.visibility.visible(run_id, viewer) is None:
            raise NotFound(f"run_id: no track for run {run_id}", metadata={"run_id": str(run_id)})
        zones = await self.store.privacy_zones(owner)
        async with self._turn():
            summary = await tracks.visible_summary(self.store, run_id, zones)
        out = tracking_pb2.VisibleSummary(
            trimmed=summary.trimmed, point_count=summary.point_count, distance_m=summary.distance_m
        )
        if summary.point_count:
            out.start_time.FromMilliseconds(summary.start_ms)
            out.end_time.FromMilliseconds(summary.end_ms)
            out.moving_time.FromMilliseconds(summary.moving_time_ms)
        return out

    @maps_errors
    async def ClaimRun(
        self, request: tracking_pb2.ClaimRunRequest, context: Context[tracking_pb2.ClaimRunRequest, Empty]
    ) -> Empty:
        caller = status.caller_of(context)
        run_id = parse_run_id(request.run_id)
        await tracks.claim(self.store, caller, run_id)
        return Empty()


def _format_from_path(context: Context[Any, Any]) -> str:
    """The file type a JSON call's path asked for (.gpx or .tcx): Envoy's transcoder passes it on."""
    path = status.metadata(context, "x-envoy-original-path").split("?", 1)[0]
    return path.rsplit(".", 1)[-1] if path.endswith((".gpx", ".tcx")) else "gpx"
