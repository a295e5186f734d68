"""SummaryService over gRPC: converts proto <-> domain and maps errors to status codes."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from google.api import httpbody_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.empty_pb2 import Empty
from google.protobuf.timestamp_pb2 import Timestamp

from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from runtrack_common import status
from runtrack_common.api import PublicApi
from runtrack_common.errors import Internal, InvalidArgument, ResourceExhausted, RunTrackError, Violations
from runtrack_common.identity import Caller, LinkHolder
from runtrack_common.ids import parse_run_id
from runtrack_common.status import maps_errors
from summary_service import activity_files, runs
from summary_service.activity_files import FilePoint
from summary_service.analyser import Analyser
from summary_service.analysis import Sample
from summary_service.domain import Overview, Run, VisiblePart, check_user_id, time_zone
from summary_service.runs import TrailDeleter
from summary_service.store import RunStore


def _ts_to_us(ts: Timestamp) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def _us_to_ts(us: int) -> Timestamp:
    return Timestamp(seconds=us // 1_000_000, nanos=(us % 1_000_000) * 1000)


def _duration_to_us(d: Duration) -> int:
    return d.seconds * 1_000_000 + int(d.nanos / 1000)


def _us_to_duration(us: int) -> Duration:
    seconds, rest = divmod(us, 1_000_000)
    return Duration(seconds=seconds, nanos=rest * 1000)


def overview_from_proto(o: summary_pb2.RunOverview) -> Overview:
    missing = Violations()
    for name in ("start_time", "end_time"):
        if not o.HasField(name):
            missing.add(f"overview.{name}", "is required")
    missing.raise_if_any()
    return Overview(
        start_us=_ts_to_us(o.start_time),
        end_us=_ts_to_us(o.end_time),
        distance_m=o.distance_m,
        moving_time_us=_duration_to_us(o.moving_time),
        elevation_gain_m=o.elevation_gain_m,
        point_count=o.point_count,
        avg_heart_rate_bpm=o.avg_heart_rate_bpm if o.HasField("avg_heart_rate_bpm") else None,
        polyline=o.polyline,
    )


def run_to_proto(run: Run) -> summary_pb2.Run:
    o = run.overview
    overview = summary_pb2.RunOverview(
        start_time=_us_to_ts(o.start_us),
        end_time=_us_to_ts(o.end_us),
        distance_m=o.distance_m,
        moving_time=_us_to_duration(o.moving_time_us),
        elevation_gain_m=o.elevation_gain_m,
        point_count=o.point_count,
        polyline=o.polyline,
    )
    if o.avg_heart_rate_bpm is not None:
        overview.avg_heart_rate_bpm = o.avg_heart_rate_bpm
    out = summary_pb2.Run(
        run_id=str(run.run_id),
        user_id=run.user_id,
        overview=overview,
        elapsed_time=_us_to_duration(o.elapsed_us),
        avg_pace_s_per_km=o.avg_pace_s_per_km,
        stopped_at=_us_to_ts(run.stopped_at_us),
        track_url=run.track_url,
        visibility=summary_pb2.Visibility.ValueType(int(run.visibility)),
        name=run.name,
        share_health=run.share_health,
        sport=run.sport,
    )
    if run.analysis is not None:
        out.analysis.CopyFrom(analysis_to_proto(run.analysis))
    return out


def _seconds(s: float) -> Duration:
    return _us_to_duration(round(s * 1_000_000))


def _split(d: dict[str, Any]) -> summary_pb2.Split:
    split = summary_pb2.Split(
        index=d["index"],
        distance_m=d["distance_m"],
        elapsed_time=_seconds(d["elapsed_s"]),
        pace_s_per_km=d["pace_s_per_km"],
        elevation_gain_m=d["elevation_gain_m"],
    )
    if d.get("avg_heart_rate_bpm") is not None:
        split.avg_heart_rate_bpm = d["avg_heart_rate_bpm"]
    return split


def analysis_to_proto(a: dict[str, Any]) -> summary_pb2.RunAnalysis:
    out = summary_pb2.RunAnalysis(
        distance_m=a["distance_m"],
        splits_km=[_split(x) for x in a["splits_km"]],
        splits_mile=[_split(x) for x in a["splits_mile"]],
        best_efforts=[
            summary_pb2.BestEffort(
                name=e["name"],
                distance_m=e["distance_m"],
                elapsed_time=_seconds(e["elapsed_s"]),
                start_m=e["start_m"],
                start_seq=e["start_seq"],
                end_seq=e["end_seq"],
            )
            for e in a["best_efforts"]
        ],
        heart_rate_zones=[_seconds(z) for z in a.get("heart_rate_zones_s") or []],
        point_count=a.get("point_count", 0),
    )
    if a.get("elevation_gain_m") is not None:
        out.elevation_gain_m = a["elevation_gain_m"]
    if a.get("elevation_loss_m") is not None:
        out.elevation_loss_m = a["elevation_loss_m"]
    return out


def _track_point(seq: int, p: FilePoint) -> tracking_pb2.TrackPoint:
    out = tracking_pb2.TrackPoint(seq=seq, time=_us_to_ts(p.time_us), latitude=p.latitude, longitude=p.longitude)
    if p.altitude_m is not None:
        out.altitude_m = p.altitude_m
    if p.speed_mps is not None:
        out.speed_mps = p.speed_mps
    if p.heart_rate_bpm is not None:
        out.heart_rate_bpm = p.heart_rate_bpm
    if p.cadence_spm is not None:
        out.cadence_spm = p.cadence_spm
    if p.after_pause:
        out.after_pause = True
    return out


# Files read at once per replica, the rest waiting their turn up to IMPORT_WAIT_S. Memory is no longer
# what bounds it: an import takes at most activity_files.MAX_MEMORY_MULTIPLE times its file (a 16 MiB GPX
# +52 MiB), and four at once stay under 360 MiB of the pod's 512 MiB (scripts/bench imports); two
# keep the pod's one core for the other calls (a 16 MiB import is seconds of CPU).
IMPORTS_AT_ONCE = 2
IMPORT_WAIT_S = 30.0
IMPORT_THREADS = ThreadPoolExecutor(max_workers=IMPORTS_AT_ONCE, thread_name_prefix="import")
POINTS_PER_MESSAGE = 1000
# Storing an imported trail (up to activity_files.MAX_POINTS points) may take longer than a unary call.
IMPORT_STORE_TIMEOUT_S = 60.0
TIME_ZONE_HEADER = "x-runtrack-time-zone"
Context = grpc.aio.ServicerContext
log = logging.getLogger(__name__)


class SummaryServicer(summary_pb2_grpc.SummaryServiceServicer):
    def __init__(self, store: RunStore, trails: TrailDeleter, analyser: Analyser | None = None) -> None:
        self.store = store
        self.trails = trails
        self.analyser = analyser
        self._importing = asyncio.Semaphore(IMPORTS_AT_ONCE)

    @maps_errors
    async def StopRun(
        self, request: summary_pb2.StopRunRequest, context: Context[summary_pb2.StopRunRequest, summary_pb2.Run]
    ) -> summary_pb2.Run:
        caller = status.caller_of(context)
        found = Violations()
        run_id = found.check(lambda: parse_run_id(request.run_id))
        user_id = found.check(lambda: check_user_id(request.user_id))
        overview = None
        if request.HasField("overview"):
            overview = found.check(lambda: overview_from_proto(request.overview))
        else:
            found.add("overview", "is required")
        zone = found.check(lambda: time_zone(request.time_zone))
        found.raise_if_any()
        assert run_id is not None and user_id is not None and overview is not None and zone is not None
        run = await runs.stop_run(self.store, self.trails, caller, run_id, user_id, overview, zone)
        try:  # the run's live watchers see STOPPED; the run is stored whatever happens here
            await self.trails.mark_stopped(run_id, run.stopped_at_us, caller)
        except RunTrackError as err:
            log.warning("live stop not marked run_id=%s reason=%s: %s", run_id, err.reason, err.message)
        if self.analyser is not None:
            self.analyser.schedule(run, caller)  # after this answer: StopRun does not wait for it
        return run_to_proto(run)

    @maps_errors
    async def GetRun(
        self, request: summary_pb2.GetRunRequest, context: Context[summary_pb2.GetRunRequest, summary_pb2.Run]
    ) -> summary_pb2.Run:
        viewer = status.viewer_of(context)
        run_id = parse_run_id(request.run_id)
        if isinstance(viewer, LinkHolder):
            return run_to_proto(await runs.get_run_by_link(self.store, self.trails, viewer, run_id))
        return run_to_proto(await runs.get_run(self.store, self.trails, viewer, run_id))

    @maps_errors
    async def ListRuns(
        self,
        request: summary_pb2.ListRunsRequest,
        context: Context[summary_pb2.ListRunsRequest, summary_pb2.ListRunsResponse],
    ) -> summary_pb2.ListRunsResponse:
        caller = status.caller_of(context)
        user_id = check_user_id(request.user_id)
        page, token = await runs.list_runs(
            self.store, self.trails, caller, user_id, request.page_size, request.page_token
        )
        return summary_pb2.ListRunsResponse(runs=[run_to_proto(r) for r in page], next_page_token=token)

    @maps_errors
    async def GetUserStats(
        self,
        request: summary_pb2.GetUserStatsRequest,
        context: Context[summary_pb2.GetUserStatsRequest, summary_pb2.UserStats],
    ) -> summary_pb2.UserStats:
        caller = status.caller_of(context)
        user_id, totals = await runs.user_stats(
            self.store, caller, check_user_id(request.user_id), request.time_zone, request.weeks
        )
        return summary_pb2.UserStats(
            user_id=user_id,
            weeks=[
                summary_pb2.WeekStats(
                    week_start=w.week_start.isoformat(),
                    run_count=w.run_count,
                    distance_m=w.distance_m,
                    moving_time=_us_to_duration(w.moving_time_us),
                    elevation_gain_m=w.elevation_gain_m,
                )
                for w in totals.weeks
            ],
            total_runs=totals.total_runs,
            total_distance_m=totals.total_distance_m,
        )

    @maps_errors
    async def UpdateRun(
        self, request: summary_pb2.UpdateRunRequest, context: Context[summary_pb2.UpdateRunRequest, summary_pb2.Run]
    ) -> summary_pb2.Run:
        caller = status.caller_of(context)
        run_id = parse_run_id(request.run.run_id, field="run.run_id")
        mask = list(request.update_mask.paths)
        run = await runs.update_run(
            self.store,
            caller,
            run_id,
            int(request.run.visibility),
            mask,
            request.run.name,
            share_health=request.run.share_health,
        )
        return run_to_proto(run)

    @maps_errors
    async def ListRecords(
        self,
        request: summary_pb2.ListRecordsRequest,
        context: Context[summary_pb2.ListRecordsRequest, summary_pb2.ListRecordsResponse],
    ) -> summary_pb2.ListRecordsResponse:
        user, improvements = await runs.records(self.store, status.caller_of(context), request.user_id)
        out = summary_pb2.ListRecordsResponse(user_id=user)
        by_name: dict[str, summary_pb2.PersonalRecord] = {}
        for i in improvements:  # shortest distance first, oldest first
            record = by_name.get(i.name)
            if record is None:
                record = by_name[i.name] = out.records.add(name=i.name, distance_m=i.distance_m)
            step = summary_pb2.RecordImprovement(
                run_id=str(i.run_id), elapsed_time=_seconds(i.elapsed_s), achieved_time=_us_to_ts(i.start_us)
            )
            record.history.append(step)
            record.best.CopyFrom(step)
        return out

    @maps_errors
    async def ImportRun(
        self, request: httpbody_pb2.HttpBody, context: Context[httpbody_pb2.HttpBody, summary_pb2.Run]
    ) -> summary_pb2.Run:
        caller = status.caller_of(context)
        try:
            zone = time_zone(status.metadata(context, TIME_ZONE_HEADER))
        except InvalidArgument as err:
            raise InvalidArgument(TIME_ZONE_HEADER, err.rule, reason=err.reason) from None
        now_us = time.time_ns() // 1000
        activity_files.check_size(request.data)
        sha256 = await asyncio.to_thread(activity_files.sha256_of, request.data)
        run_id, existing = await runs.imported_run(self.store, caller, sha256)
        if existing is not None:  # the same file again: answered from its hash, not parsed again
            return run_to_proto(existing)
        gone = threading.Event()  # the caller went away: the parse stops at its next chunk
        context.add_done_callback(lambda _: gone.set())  # type: ignore[arg-type]  # the stubs' callback type
        try:  # a few files parsed at once, each on the imports' own threads: memory stays bounded
            await asyncio.wait_for(self._importing.acquire(), IMPORT_WAIT_S)
        except TimeoutError:
            raise ResourceExhausted(
                f"file: {IMPORTS_AT_ONCE} files are being read on this replica; retry shortly",
                reason="IMPORTS_BUSY",
                metadata={"limit": "imports_at_once"},
                retry_after_s=2.0,
            ) from None
        try:
            prepared = await asyncio.get_running_loop().run_in_executor(
                IMPORT_THREADS,
                functools.partial(activity_files.prepare, request.data, now_us=now_us, cancelled=gone.is_set),
            )
        finally:
            self._importing.release()
        return run_to_proto(await runs.import_run(self.store, self.trails, caller, run_id, prepared, zone))

    @maps_errors
    async def AnalyseRun(
        self, request: summary_pb2.AnalyseRunRequest, context: Context[summary_pb2.AnalyseRunRequest, Empty]
    ) -> Empty:
        caller = status.caller_of(context)
        run = await runs.owned_run(self.store, caller, parse_run_id(request.run_id))
        if self.analyser is not None and self.analyser.trail_grew(run, caller, request.point_count):
            log.info("analysis again run_id=%s point_count=%d", run.run_id, request.point_count)
        return Empty()

    @maps_errors
    async def CheckRunVisible(
        self,
        request: summary_pb2.CheckRunVisibleRequest,
        context: Context[summary_pb2.CheckRunVisibleRequest, summary_pb2.RunVisibilityGrant],
    ) -> summary_pb2.RunVisibilityGrant:
        viewer = status.viewer_of(context)
        run = await runs.check_visible(self.store, self.trails, viewer, parse_run_id(request.run_id))
        if run is None:  # a live link's run in progress
            return summary_pb2.RunVisibilityGrant(owner=False, share_health=False)
        owner = isinstance(viewer, Caller) and viewer.user_id == run.user_id
        return summary_pb2.RunVisibilityGrant(owner=owner, share_health=run.share_health)

    @maps_errors
    async def DeleteRun(
        self, request: summary_pb2.DeleteRunRequest, context: Context[summary_pb2.DeleteRunRequest, Empty]
    ) -> Empty:
        caller = status.caller_of(context)
        await runs.delete_run(self.store, self.trails, caller, parse_run_id(request.run_id))
        return Empty()


class TrackingApi(PublicApi):
    """TrailDeleter through the tracking service's public API (DeleteTrack), as the caller."""

    async def delete_trail(self, run_id: uuid.UUID, caller: Caller) -> bool:
        stub = tracking_pb2_grpc.TrackingServiceStub(self.channel)
        reply = await self.call(stub.DeleteTrack, tracking_pb2.DeleteTrackRequest(run_id=str(run_id)), caller)
        return reply.existed

    async def claim(self, run_id: uuid.UUID, caller: Caller) -> None:
        stub = tracking_pb2_grpc.TrackingServiceStub(self.channel)
        await self.call(stub.ClaimRun, tracking_pb2.ClaimRunRequest(run_id=str(run_id)), caller)

    async def mark_stopped(self, run_id: uuid.UUID, stop_us: int, caller: Caller) -> None:
        stub = tracking_pb2_grpc.TrackingServiceStub(self.channel)
        request = tracking_pb2.MarkRunStoppedRequest(run_id=str(run_id), stop_time=_us_to_ts(stop_us))
        await self.call(stub.MarkRunStopped, request, caller)

    async def trail(self, run_id: uuid.UUID, caller: Caller) -> list[Sample]:
        """TrailReader: every page of GetTrack, as the owner."""
        stub = tracking_pb2_grpc.TrackingServiceStub(self.channel)
        out: list[Sample] = []
        token = ""
        while True:
            page = await self.call(
                stub.GetTrack,
                tracking_pb2.GetTrackRequest(run_id=str(run_id), page_size=10_000, page_token=token),
                caller,
            )
            out += [
                Sample(
                    seq=p.seq,
                    t_s=p.time.seconds + p.time.nanos / 1e9,
                    latitude=p.latitude,
                    longitude=p.longitude,
                    altitude_m=p.altitude_m if p.HasField("altitude_m") else None,
                    heart_rate_bpm=p.heart_rate_bpm if p.HasField("heart_rate_bpm") else None,
                    after_pause=p.after_pause,
                )
                for p in page.points
            ]
            token = page.next_page_token
            if not token:
                return out

    async def store_points(self, run_id: uuid.UUID, points: Sequence[FilePoint], caller: Caller) -> None:
        """One RecordTrack stream, as the owner's phone would send it, in messages of 1,000 points."""
        stub = tracking_pb2_grpc.TrackingServiceStub(self.channel)

        def messages() -> Iterator[tracking_pb2.RecordTrackRequest]:
            for start in range(0, len(points), POINTS_PER_MESSAGE):
                chunk = points[start : start + POINTS_PER_MESSAGE]
                yield tracking_pb2.RecordTrackRequest(
                    run_id=str(run_id) if start == 0 else "",
                    points=[_track_point(seq, p) for seq, p in enumerate(chunk, start + 1)],
                )

        reply = await self.call(stub.RecordTrack, messages(), caller, timeout_s=IMPORT_STORE_TIMEOUT_S)
        if reply.points_rejected or reply.contiguous_seq < len(points):
            first = reply.rejections[0].reason if reply.rejections else ""
            raise Internal(
                f"run {run_id}: the trail kept {reply.contiguous_seq} of {len(points)} points "
                f"({reply.points_rejected} rejected{': ' + first if first else ''})",
                reason="TRAIL_INCOMPLETE",
            )

    async def visible_part(self, run_id: uuid.UUID, viewer: Caller | LinkHolder) -> VisiblePart:
        stub = tracking_pb2_grpc.TrackingServiceStub(self.channel)
        reply = await self.call(
            stub.GetVisibleSummary, tracking_pb2.GetVisibleSummaryRequest(run_id=str(run_id)), viewer
        )
        return VisiblePart(
            trimmed=reply.trimmed,
            point_count=reply.point_count,
            start_us=_ts_to_us(reply.start_time),
            end_us=_ts_to_us(reply.end_time),
            distance_m=reply.distance_m,
            moving_time_us=_duration_to_us(reply.moving_time),
        )

    async def check_link(self, run_id: uuid.UUID, holder: LinkHolder) -> None:
        stub = tracking_pb2_grpc.TrackingServiceStub(self.channel)
        await self.call(stub.CheckLiveLink, tracking_pb2.CheckLiveLinkRequest(run_id=str(run_id)), holder)
