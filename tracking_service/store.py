"""The port the use cases talk to: where a run's points and its owner are kept."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Protocol

from tracking_service.domain import Cursor, Point
from tracking_service.live import DurablePoints, FeedRow, LinkRecord, LiveRow
from tracking_service.privacy import Zone


class TrackStore(Protocol):
    async def ensure_ready(self) -> None:
        """Connects if needed and proves the store answers; raises Unavailable when it does not."""

    async def close(self) -> None: ...

    async def claim_run(self, run_id: uuid.UUID, user_id: str) -> str:
        """Records `user_id` as the owner unless the run has one; returns the owner."""

    async def run_owner(self, run_id: uuid.UUID) -> str | None: ...

    async def write_points(self, run_id: uuid.UUID, points: Sequence[Point]) -> None:
        """Returns once every point is durable; raises Unavailable when it cannot be."""

    async def write_rows(self, rows: Sequence[tuple[uuid.UUID, Sequence[Point]]]) -> None:
        """The points of several runs in one write (one request to the store); durable when it returns."""

    async def cursor(self, run_id: uuid.UUID) -> Cursor: ...

    async def points_after(self, run_id: uuid.UUID, after_seq: int, limit: int) -> list[Point]:
        """Up to `limit` points with seq > after_seq, oldest first."""

    async def points_before(self, run_id: uuid.UUID, before_seq: int, limit: int) -> list[Point]:
        """Up to `limit` points with seq < before_seq, newest first."""

    async def deleted_by(self, run_id: uuid.UUID) -> str | None:
        """Who deleted the run, if it was deleted."""

    async def mark_deleted(self, run_id: uuid.UUID, user_id: str) -> None: ...

    async def delete_trail(self, run_id: uuid.UUID) -> None:
        """Removes the run's points, cursor and owner so that no later write brings them back."""

    async def privacy_zones(self, user_id: str) -> list[Zone]: ...

    async def set_privacy_zones(self, user_id: str, zones: Sequence[Zone]) -> None: ...


class LiveStore(Protocol):
    """A run's live state and live links (one partition per run)."""

    async def live_row(self, run_id: uuid.UUID) -> LiveRow: ...

    async def add_link(self, run_id: uuid.UUID, link: LinkRecord) -> None: ...

    async def delete_link(self, run_id: uuid.UUID, link_id: str) -> None: ...

    async def change_state(self, run_id: uuid.UUID, new: str, at: dt.datetime, expected: str | None) -> str | None:
        """Moves the state from `expected` to `new` unless someone did first; returns the state now
        stored (`new` when this call won)."""

    async def mark_stopped(self, run_id: uuid.UUID, at: dt.datetime) -> None: ...

    async def mark_live_deleted(self, run_id: uuid.UUID, at: dt.datetime, link_ids: Sequence[str]) -> None:
        """State DELETED, and the links gone."""

    async def feed_points(self, bucket: int, rows: Sequence[DurablePoints]) -> None:
        """Copies durable points of followed runs (with when they arrived) to the feed's partitions
        of second `bucket`."""

    async def feed_event(self, bucket: int, run_id: uuid.UUID, event: str) -> None: ...

    async def read_feed(self, bucket: int) -> list[FeedRow]:
        """Every row of second `bucket`, all shards."""

    async def mark_watched(self, run_ids: Sequence[uuid.UUID]) -> None: ...

    async def watched_runs(self) -> set[uuid.UUID]: ...
