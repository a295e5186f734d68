"""In-memory stores for unit tests of the use cases."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Sequence

from summary_service.domain import Overview, Run, UserTotals
from tracking_service.domain import Cursor, Point, cursor_from_seqs


class FakeTrackStore:
    def __init__(self, *, write_delay: float = 0.0) -> None:
        self.points: dict[uuid.UUID, dict[int, Point]] = {}
        self.owners: dict[uuid.UUID, str] = {}
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
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            await asyncio.sleep(self.write_delay)
            if self.fail_with is not None:
                raise self.fail_with
            self.batches.append(len(points))
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


class FakeRunStore:
    def __init__(self) -> None:
        self.runs: dict[uuid.UUID, Run] = {}

    async def ensure_ready(self) -> None: ...

    async def close(self) -> None: ...

    async def insert_run(self, run_id: uuid.UUID, user_id: str, overview: Overview) -> tuple[Run, bool]:
        if run_id in self.runs:
            return self.runs[run_id], False
        now_us = int(dt.datetime.now(dt.UTC).timestamp() * 1e6)
        self.runs[run_id] = Run(run_id, user_id, overview, now_us)
        return self.runs[run_id], True

    async def get_run(self, run_id: uuid.UUID) -> Run | None:
        return self.runs.get(run_id)

    async def list_runs(self, user_id: str, after, limit: int) -> list[Run]:
        mine = sorted(
            (r for r in self.runs.values() if r.user_id == user_id),
            key=lambda r: (r.overview.start_us, r.run_id),
            reverse=True,
        )
        if after is not None:
            mine = [r for r in mine if (r.overview.start_us, r.run_id) < after]
        return mine[:limit]

    async def user_stats(self, user_id: str, time_zone: str, weeks: int) -> UserTotals:
        raise NotImplementedError("computed by PostgreSQL; covered by the integration tests")
