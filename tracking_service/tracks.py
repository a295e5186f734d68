"""The trail's read use cases: where to resume (the cursor) and the trail itself, paged."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from runtrack_common import page_tokens
from runtrack_common.errors import NotFound
from tracking_service.domain import Cursor, Point, page_size
from tracking_service.store import TrackStore

TRACK_TOKEN = "track"


@dataclass(frozen=True, slots=True)
class TrackPage:
    points: list[Point]
    next_page_token: str


async def known_run(store: TrackStore, run_id: uuid.UUID) -> None:
    if await store.run_owner(run_id) is None:
        raise NotFound(f"run_id: no track for run {run_id}", metadata={"run_id": str(run_id)})


async def cursor(store: TrackStore, run_id: uuid.UUID) -> Cursor:
    await known_run(store, run_id)
    return await store.cursor(run_id)


async def track_page(store: TrackStore, run_id: uuid.UUID, requested_size: int, page_token: str) -> TrackPage:
    """One page of the trail, oldest point first, after the point the token names."""
    await known_run(store, run_id)
    size = page_size(requested_size)
    after = 0
    if page_token:
        position = page_tokens.decode(page_token, TRACK_TOKEN, str(run_id))
        if len(position) != 1 or not isinstance(position[0], int) or position[0] < 0:
            raise page_tokens.invalid()
        after = position[0]
    points = await store.points_after(run_id, after, size + 1)
    token = ""
    if len(points) > size:
        points = points[:size]
        token = page_tokens.encode(TRACK_TOKEN, str(run_id), [points[-1].seq])
    return TrackPage(points, token)
