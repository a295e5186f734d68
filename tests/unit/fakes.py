"""In-memory stores (and the other service's API) for unit tests of the use cases."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import uuid
from collections.abc import Sequence

from runtrack_common.identity import Caller
from summary_service.domain import Overview, Run, UserTotals, Visibility, VisiblePart
from tracking_service.domain import Cursor, Point, cursor_from_seqs
from tracking_service.privacy import Zone
from tracking_service.tracks import Grant


class FakeTrackStore:
    def __init__(self, *, write_delay: float = 0.0) -> None:
        self.points: dict[uuid.UUID, dict[int, Point]] = {}
        self.owners: dict[uuid.UUID, str] = {}
        self.deleted: dict[uuid.UUID, str] = {}
        self.zones: dict[str, list[Zone]] = {}
        self.write_delay = write_delay
        # What a write raises instead of storing (an outage, a rejected statement, a bug).
        self.fail_with: Exception | None = None
        self.inflight = 0
        self.max_inflight = 0
        self.batches: list[int] = []

    async def ensure_ready(self) -> None: ...

    async def close(self) -> None: ...

    async def claim_run(self, run_id: uuid.UUID, user_id: str) -> str:
        return self.owners.setdefault(run_id, user_id)

    async def run_owner(self, run_id: uuid.UUID) -> str | None:
        return self.owners.get(run_id)

    async def write_points(self, run_id: uuid.UUID, points: Sequence[Point]) -> None:
        await self.write_rows([(run_id, points)])

    async def write_rows(self, rows: Sequence[tuple[uuid.UUID, Sequence[Point]]]) -> None:
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            await asyncio.sleep(self.write_delay)
            if self.fail_with is not None:
                raise self.fail_with
            self.batches.append(sum(len(points) for _, points in rows))
            for run_id, points in rows:
                if run_id in self.deleted:
                    continue  # shadowed by the deletion, as in the CQL store
                stored = self.points.setdefault(run_id, {})
                for p in points:
                    stored[p.seq] = p
        finally:
            self.inflight -= 1

    async def cursor(self, run_id: uuid.UUID) -> Cursor:
        return cursor_from_seqs(sorted(self.points.get(run_id, {})))

    async def points_after(self, run_id: uuid.UUID, after_seq: int, limit: int) -> list[Point]:
        stored = self.points.get(run_id, {})
        return [stored[s] for s in sorted(stored) if s > after_seq][:limit]

    async def points_before(self, run_id: uuid.UUID, before_seq: int, limit: int) -> list[Point]:
        stored = self.points.get(run_id, {})
        return [stored[s] for s in sorted(stored, reverse=True) if s < before_seq][:limit]

    async def deleted_by(self, run_id: uuid.UUID) -> str | None:
        return self.deleted.get(run_id)

    async def mark_deleted(self, run_id: uuid.UUID, user_id: str) -> None:
        self.deleted[run_id] = user_id

    async def delete_trail(self, run_id: uuid.UUID) -> None:
        self.points.pop(run_id, None)
        self.owners.pop(run_id, None)

    async def privacy_zones(self, user_id: str) -> list[Zone]:
        return list(self.zones.get(user_id, []))

    async def set_privacy_zones(self, user_id: str, zones: Sequence[Zone]) -> None:
        self.zones[user_id] = list(zones)


class FakeRunStore:
    def __init__(self) -> None:
        self.runs: dict[uuid.UUID, Run] = {}
        self.deleted: dict[uuid.UUID, str] = {}
        self.keys: dict[str, bytes] = {}

    async def ensure_ready(self) -> None: ...

    async def close(self) -> None: ...

    async def insert_run(
        self, run_id: uuid.UUID, user_id: str, overview: Overview, name: str = "", sport: str = ""
    ) -> tuple[Run | None, bool]:
        if run_id in self.deleted:
            return None, False
        if run_id in self.runs:
            return self.runs[run_id], False
        now_us = int(dt.datetime.now(dt.UTC).timestamp() * 1e6)
        self.runs[run_id] = Run(run_id, user_id, overview, now_us, stored_name=name, sport=sport)
        return self.runs[run_id], True

    async def get_run(self, run_id: uuid.UUID) -> Run | None:
        return self.runs.get(run_id)

    async def list_runs(
        self, user_id: str, after: tuple[int, uuid.UUID] | None, limit: int, *, public_only: bool = False
    ) -> list[Run]:
        mine = sorted(
            (
                r
                for r in self.runs.values()
                if r.user_id == user_id and (not public_only or r.visibility == Visibility.PUBLIC)
            ),
            key=lambda r: (r.overview.start_us, r.run_id),
            reverse=True,
        )
        if after is not None:
            mine = [r for r in mine if (r.overview.start_us, r.run_id) < after]
        return mine[:limit]

    async def set_analysis(self, run_id: uuid.UUID, analysis: dict) -> bool:
        if run_id not in self.runs:
            return False
        self.runs[run_id] = dataclasses.replace(self.runs[run_id], analysis=analysis)
        return True

    async def set_name(self, run_id: uuid.UUID, name: str) -> Run | None:
        if run_id not in self.runs:
            return None
        self.runs[run_id] = dataclasses.replace(self.runs[run_id], stored_name=name)
        return self.runs[run_id]

    async def set_share_health(self, run_id: uuid.UUID, share: bool) -> Run | None:
        if run_id not in self.runs:
            return None
        self.runs[run_id] = dataclasses.replace(self.runs[run_id], share_health=share)
        return self.runs[run_id]

    async def set_visibility(self, run_id: uuid.UUID, visibility: Visibility) -> Run | None:
        if run_id not in self.runs:
            return None
        self.runs[run_id] = dataclasses.replace(self.runs[run_id], visibility=visibility)
        return self.runs[run_id]

    async def delete_run(self, run_id: uuid.UUID, user_id: str) -> None:
        self.runs.pop(run_id, None)
        self.deleted.setdefault(run_id, user_id)

    async def deleted_by(self, run_id: uuid.UUID) -> str | None:
        return self.deleted.get(run_id)

    async def server_key(self, name: str) -> bytes:
        return self.keys.setdefault(name, os.urandom(32))

    async def user_stats(self, user_id: str, time_zone: str, weeks: int) -> UserTotals:
        raise NotImplementedError("computed by PostgreSQL; covered by the integration tests")


class FakeTracksApi:
    """The tracking service's DeleteTrack, over a FakeTrackStore; `fail_with` makes it fail."""

    def __init__(self, tracks: FakeTrackStore) -> None:
        self.tracks = tracks
        self.fail_with: Exception | None = None
        self.stopped: list[tuple[uuid.UUID, int]] = []

    async def delete_trail(self, run_id: uuid.UUID, caller: Caller) -> bool:
        from tracking_service import tracks

        if self.fail_with is not None:
            raise self.fail_with
        return await tracks.delete_track(self.tracks, caller, run_id)

    async def visible_part(self, run_id: uuid.UUID, viewer: object) -> VisiblePart:
        from tracking_service import tracks

        owner = await self.tracks.run_owner(run_id)
        s = await tracks.visible_summary(self.tracks, run_id, await self.tracks.privacy_zones(owner or ""))
        return VisiblePart(
            s.trimmed, s.point_count, s.start_ms * 1000, s.end_ms * 1000, s.distance_m, s.moving_time_ms * 1000
        )

    async def claim(self, run_id: uuid.UUID, caller: Caller) -> None:
        from tracking_service import tracks

        await tracks.claim(self.tracks, caller, run_id)

    async def mark_stopped(self, run_id: uuid.UUID, stop_us: int, caller: Caller) -> None:
        self.stopped.append((run_id, stop_us))

    async def check_link(self, run_id: uuid.UUID, holder: object) -> None:
        raise AssertionError("no live links in the unit tests' fakes")


class FakeRunsApi:
    """The dashboard's GetRun as the tracking service asks it: is this run visible to the caller?"""

    def __init__(self, runs: FakeRunStore) -> None:
        self.runs = runs

    async def visible(self, run_id: uuid.UUID, caller: Caller) -> Grant | None:
        run = self.runs.runs.get(run_id)
        if run is None or not run.readable_by(caller.user_id):
            return None
        return Grant(share_health=run.user_id == caller.user_id or run.share_health)

    async def trail_grew(self, run_id: uuid.UUID, point_count: int, caller: Caller) -> None:
        raise AssertionError("no stopped runs' late points in the unit tests' fakes")
