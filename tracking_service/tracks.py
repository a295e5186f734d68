"""The trail's use cases besides ingest: where to resume, the trail itself (trimmed by privacy
zones for anyone but its owner), the owner's privacy zones, and deleting a trail for good."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from runtrack_common import page_tokens
from runtrack_common.errors import FailedPrecondition, NotFound, PermissionDenied
from runtrack_common.identity import Caller, LinkHolder, require_self
from tracking_service.domain import Cursor, Point, page_size, without_health
from tracking_service.privacy import Zone, ZoneSet, distance_m, first_outside, validate_zones
from tracking_service.store import TrackStore

TRACK_TOKEN = "track"
# Points read per round trip while looking for the first point outside the owner's zones.
SCAN_PAGE = 500
NO_SEQ_ABOVE = 2**32
MAX_PAGE = 10_000


@dataclass(frozen=True, slots=True)
class Grant:
    """A reader who is not the owner may see the run (trimmed by the owner's zones); heart rate and
    cadence too when the owner shares them."""

    share_health: bool = False


class RunVisibility(Protocol):
    """Whether the caller may see someone else's run: the dashboard's row (the owner of record's)
    says whether it is shared, and whether its heart rate is."""

    async def visible(self, run_id: uuid.UUID, caller: Caller | LinkHolder) -> Grant | None: ...

    async def trail_grew(self, run_id: uuid.UUID, point_count: int, caller: Caller) -> None:
        """A stopped run's trail now holds points 1..point_count: its analysis is computed again."""


@dataclass(frozen=True, slots=True)
class TrackPage:
    points: list[Point]
    next_page_token: str


def _no_track(run_id: uuid.UUID) -> NotFound:
    return NotFound(f"run_id: no track for run {run_id}", metadata={"run_id": str(run_id)})


async def _owner(store: TrackStore, run_id: uuid.UUID) -> str:
    owner = await store.run_owner(run_id)
    if owner is None:
        raise _no_track(run_id)
    return owner


def run_id_taken(run_id: uuid.UUID) -> PermissionDenied:
    """Another runner's run id, named by a method that would create the run: refused, and nothing is
    written. The message says no more than a never-used id would (whose it is stays unsaid)."""
    return PermissionDenied(
        f"run_id: run {run_id} is taken; a new run needs a new id",
        reason="RUN_ID_TAKEN",
        metadata={"run_id": str(run_id)},
    )


def run_deleted(run_id: uuid.UUID) -> FailedPrecondition:
    return FailedPrecondition(
        f"run_id: run {run_id} was deleted; it takes nothing more",
        reason="RUN_DELETED",
        metadata={"run_id": str(run_id)},
    )


def check_claim(run_id: uuid.UUID, user_id: str, deleted_by: str | None, owner: str | None) -> None:
    """The answer to a claim of `run_id` by `user_id`, from the tombstone and the owner of record."""
    if deleted_by is not None:
        raise run_deleted(run_id) if deleted_by == user_id else run_id_taken(run_id)
    if owner != user_id:
        raise run_id_taken(run_id)


async def claim(store: TrackStore, caller: Caller, run_id: uuid.UUID) -> None:
    """Makes the caller the run's owner of record unless someone else already is (one lightweight
    transaction: the first caller to name a run id wins, whichever service they called)."""
    deleted_by = await store.deleted_by(run_id)
    check_claim(
        run_id, caller.user_id, deleted_by, None if deleted_by else await store.claim_run(run_id, caller.user_id)
    )


async def cursor(store: TrackStore, caller: Caller, run_id: uuid.UUID) -> Cursor:
    """The owner's only: anyone else is told the run does not exist."""
    if await _owner(store, run_id) != caller.user_id:
        raise _no_track(run_id)
    return await store.cursor(run_id)


# A reader's pages each need the visible range: it is kept a few seconds per (run, zones). A range
# kept while points arrive can only be too narrow, never too wide: the first point outside every
# zone stays the first, and the last one can only move later; new zones make a new key.
_RANGES: OrderedDict[tuple[object, ...], tuple[float, tuple[int, int]]] = OrderedDict()
_RANGES_KEPT = 1000
RANGE_TTL_S = 2.0


async def visible_range(store: TrackStore, run_id: uuid.UUID, zones: Sequence[Zone]) -> tuple[int, int]:
    """visible_seqs, remembered for RANGE_TTL_S per run and zones."""
    if not zones:
        return 1, NO_SEQ_ABOVE
    key = (run_id, tuple(zones))
    now = time.monotonic()
    known = _RANGES.get(key)
    if known is not None and now - known[0] < RANGE_TTL_S:
        return known[1]
    found = await visible_seqs(store, run_id, zones)
    _RANGES[key] = (now, found)
    _RANGES.move_to_end(key)
    while len(_RANGES) > _RANGES_KEPT:
        _RANGES.popitem(last=False)
    return found


async def visible_seqs(
    store: TrackStore, run_id: uuid.UUID, zones: Sequence[Zone], scan_page: int = SCAN_PAGE
) -> tuple[int, int]:
    """The seqs [first, last] a non-owner may see: from the first point outside every zone to the
    last one. (1, 0) when every point is inside a zone. Each end is scanned in pages that double
    (a run that leaves home at once costs one small read) and decided a chunk at a time with cheap
    arithmetic (ZoneSet): the scan stops at the first point outside every zone."""
    if not zones:
        return 1, NO_SEQ_ABOVE
    zone_set = ZoneSet(zones)
    first = last = None
    after, size = 0, scan_page
    while first is None:
        page = await store.points_after(run_id, after, size)
        if not page:
            return 1, 0
        first = first_outside(page, zone_set)
        after, size = page[-1].seq, min(size * 2, MAX_PAGE)
    before, size = NO_SEQ_ABOVE, scan_page
    while last is None:
        page = await store.points_before(run_id, before, size)
        if not page:  # only when points vanished meanwhile (the run was deleted)
            return first.seq, first.seq
        last = first_outside(page, zone_set)  # there is one: `first` at the latest
        before, size = page[-1].seq, min(size * 2, MAX_PAGE)
    return first.seq, last.seq


async def track_page(
    store: TrackStore,
    visibility: RunVisibility,
    caller: Caller,
    run_id: uuid.UUID,
    requested_size: int,
    page_token: str,
) -> TrackPage:
    """One page of the trail, oldest point first. The owner sees every point; anyone else sees a
    shared run only, without its start and end inside the owner's privacy zones."""
    owner = await _owner(store, run_id)
    first, last = 1, NO_SEQ_ABOVE
    grant = None
    if owner != caller.user_id:
        grant = await visibility.visible(run_id, caller)
        if grant is None:
            raise _no_track(run_id)
        first, last = await visible_range(store, run_id, await store.privacy_zones(owner))
    size = page_size(requested_size)
    after = first - 1
    if page_token:
        position = page_tokens.decode(page_token, TRACK_TOKEN, str(run_id))
        if len(position) != 1 or not isinstance(position[0], int) or position[0] < 0:
            raise page_tokens.invalid()
        after = max(after, position[0])
    points = [p for p in await store.points_after(run_id, after, size + 1) if p.seq <= last] if after < last else []
    token = ""
    if len(points) > size:
        points = points[:size]
        token = page_tokens.encode(TRACK_TOKEN, str(run_id), [points[-1].seq])
    if grant is not None and not grant.share_health:
        points = await _without_health(points)
    return TrackPage(points, token)


# Points copied without heart rate between two yields to the event loop (~2 ms of work).
HEALTH_CHUNK = 1000


async def _without_health(points: list[Point]) -> list[Point]:
    out: list[Point] = []
    for start in range(0, len(points), HEALTH_CHUNK):
        if start:
            await asyncio.sleep(0)
        out += without_health(points[start : start + HEALTH_CHUNK])
    return out


# A stretch between two points counts as moving at this speed or more (as an imported file's).
MOVING_MPS = 0.5


@dataclass(frozen=True, slots=True)
class VisibleSummary:
    trimmed: bool
    point_count: int = 0
    start_ms: int = 0
    end_ms: int = 0
    distance_m: float = 0.0
    moving_time_ms: int = 0


def summarise(points: Sequence[Point]) -> tuple[float, int]:
    """Metres along the geodesics between the points, and the milliseconds spent moving; nothing
    from a point to the next when the next is the first after a pause."""
    distance, moving = 0.0, 0
    for a, b in itertools.pairwise(points):
        if b.after_pause:
            continue
        d = distance_m(a.latitude, a.longitude, b.latitude, b.longitude)
        distance += d
        dt_ms = (b.time_ms or 0) - (a.time_ms or 0)
        if dt_ms > 0 and d / (dt_ms / 1000) >= MOVING_MPS:
            moving += dt_ms
    return distance, moving


# What others are told of a trail, by (run, zones, visible seqs): computed once per change of either.
_SUMMARIES: OrderedDict[tuple[object, ...], VisibleSummary] = OrderedDict()
_SUMMARIES_KEPT = 1000
# One summary computed at a time per replica (a thread: the event loop keeps answering).
_SUMMARISING = asyncio.Semaphore(1)


async def visible_summary(store: TrackStore, run_id: uuid.UUID, zones: Sequence[Zone]) -> VisibleSummary:
    """The trail as others see it (after the owner's zones), summed up; `trimmed` False when no zone
    hides any of it (others are then shown the owner's overview, less heart rate unless shared)."""
    if not zones:
        return VisibleSummary(trimmed=False)
    first, last = await visible_range(store, run_id, zones)  # the range a reader's pages use too
    cursor = await store.cursor(run_id)
    if first <= 1 and last >= cursor.max_seq:
        return VisibleSummary(trimmed=False)
    if last < first:
        return VisibleSummary(trimmed=True)
    key = (run_id, tuple(zones), first, last)
    if (known := _SUMMARIES.get(key)) is not None:
        _SUMMARIES.move_to_end(key)
        return known
    points: list[Point] = []
    after = first - 1
    while after < last:
        page = [p for p in await store.points_after(run_id, after, MAX_PAGE) if p.seq <= last]
        if not page:
            break
        points += page
        after = page[-1].seq
    async with _SUMMARISING:
        distance, moving = await asyncio.to_thread(summarise, points)
    out = VisibleSummary(
        trimmed=True,
        point_count=len(points),
        start_ms=points[0].time_ms or 0 if points else 0,
        end_ms=points[-1].time_ms or 0 if points else 0,
        distance_m=distance,
        moving_time_ms=moving,
    )
    _SUMMARIES[key] = out
    while len(_SUMMARIES) > _SUMMARIES_KEPT:
        _SUMMARIES.popitem(last=False)
    return out


async def whole_track(
    store: TrackStore, visibility: RunVisibility, caller: Caller, run_id: uuid.UUID, max_points: int = 200_000
) -> list[Point]:
    """Every point the caller may see, oldest first (GetTrack's pages, all of them)."""
    points: list[Point] = []
    token = ""
    while True:
        page = await track_page(store, visibility, caller, run_id, MAX_PAGE, token)
        points += page.points
        token = page.next_page_token
        if not token or len(points) >= max_points:
            return points


async def privacy_zones(store: TrackStore, caller: Caller, user_id: str) -> tuple[str, list[Zone]]:
    user = require_self(user_id, caller)
    return user, await store.privacy_zones(user)


async def set_privacy_zones(
    store: TrackStore, caller: Caller, user_id: str, zones: Sequence[Zone]
) -> tuple[str, list[Zone]]:
    user = require_self(user_id, caller)
    validate_zones(zones)
    await store.set_privacy_zones(user, zones)
    return user, list(zones)


async def delete_track(store: TrackStore, caller: Caller, run_id: uuid.UUID) -> bool:
    """Deletes the run's trail for good; True when the run had one. Safe to repeat: a repeat (or a
    retry after a partial failure) finishes the job. The run is claimed for the caller first, so
    that nobody deletes someone else's run, and a later stream for it is refused."""
    deleted_by = await store.deleted_by(run_id)
    if deleted_by is not None:
        if deleted_by != caller.user_id:
            raise _no_track(run_id)
        await store.delete_trail(run_id)
        return True
    existed = await store.run_owner(run_id) is not None
    if await store.claim_run(run_id, caller.user_id) != caller.user_id:
        raise _no_track(run_id)  # someone else's trail: as for the cursor, its existence is not revealed
    await store.mark_deleted(run_id, caller.user_id)
    await store.delete_trail(run_id)
    return existed
