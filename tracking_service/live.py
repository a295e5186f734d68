"""Following a run: its live state, its links, the watch on a runner who stops moving, and what a
watcher who is not the owner may see of points still arriving. Pure logic; the hub does the I/O."""

from __future__ import annotations

import datetime as dt
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from runtrack_common.api_rules import EXPIRE_IN_FUTURE, EXPIRE_WITHIN, MAX_LINK_LIFETIME
from tracking_service.domain import Point, without_health
from tracking_service.privacy import Zone, ZoneSet, distance_m

LIVE, STALLED, RESUMED, STOPPED, DELETED = "LIVE", "STALLED", "RESUMED", "STOPPED", "DELETED"
ENDED = frozenset({STOPPED, DELETED})
# A link without its own expiry works until this long after the run stops.
DEFAULT_AFTER_STOP = dt.timedelta(hours=1)


# The live feed's partitions per second: spread over the store's nodes, each read once a second.
FEED_SHARDS = 4


def feed_shard(run_id: uuid.UUID) -> int:
    return run_id.int % FEED_SHARDS


@dataclass(frozen=True, slots=True)
class FeedRow:
    """One row of the live feed: a durable point of a followed run, or an event (StopRun, deletion,
    a revoked link, a state change) telling its followers to read the run's live row again."""

    run_id: uuid.UUID
    event: str
    point: Point | None
    # When the point reached the replica that took it (wall-clock seconds; None for an event, or a row
    # written before the column existed): what the watchers' lag is measured from.
    arrived_at: float | None = None


@dataclass(frozen=True, slots=True)
class DurablePoints:
    """A run's points made durable by one write, and when the first of them reached the replica
    (wall-clock seconds): what the writer tells the hub, and the hub copies to the feed."""

    run_id: uuid.UUID
    points: Sequence[Point]
    arrived_at: float


@dataclass(frozen=True, slots=True)
class LinkRecord:
    link_id: str
    created_at: dt.datetime
    expire_at: dt.datetime | None = None
    webhook_url: str = ""
    webhook_secret: str = ""


@dataclass(frozen=True, slots=True)
class LiveRow:
    """What the store holds of a run being followed."""

    state: str | None = None
    state_at: dt.datetime | None = None
    stopped_at: dt.datetime | None = None
    links: dict[str, LinkRecord] = field(default_factory=dict)

    def expiry(self, link: LinkRecord) -> dt.datetime | None:
        """When `link` stops working: its own expiry, else an hour after the run stopped (unknown while live)."""
        if link.expire_at is not None:
            return link.expire_at
        return self.stopped_at + DEFAULT_AFTER_STOP if self.stopped_at is not None else None

    def refusal(self, link_id: str, now: dt.datetime) -> str | None:
        """Why `link_id` no longer grants the run ("LINK_REVOKED", "LINK_EXPIRED"), or None."""
        link = self.links.get(link_id)
        if link is None:
            return "LINK_REVOKED"
        expiry = self.expiry(link)
        if expiry is not None and now >= expiry:
            return "LINK_EXPIRED"
        return None

    @property
    def current(self) -> str:
        return self.state or LIVE


def link_expiry(requested: dt.datetime | None, now: dt.datetime) -> dt.datetime | None:
    """The expiry a new link gets; ValueError with the rule when `requested` breaks it."""
    if requested is None:
        return None
    if requested <= now:
        raise ValueError(EXPIRE_IN_FUTURE)
    if requested > now + MAX_LINK_LIFETIME:
        raise ValueError(EXPIRE_WITHIN)
    return requested


class SeqSet:
    """The seqs already sent: all up to `floor`, and those above it (few: a late point or a gap
    keeps them apart until the floor passes them)."""

    __slots__ = ("above", "floor")

    def __init__(self, floor: int = 0) -> None:
        self.floor = floor
        self.above: set[int] = set()

    def __contains__(self, seq: int) -> bool:
        return seq <= self.floor or seq in self.above

    def add(self, seq: int) -> None:
        if seq <= self.floor:
            return
        self.above.add(seq)
        while self.floor + 1 in self.above:
            self.floor += 1
            self.above.discard(self.floor)

    def advance_to(self, floor: int) -> None:
        """Everything up to `floor` counts as sent (given up on, or known sent elsewhere)."""
        if floor > self.floor:
            self.floor = floor
            self.above = {seq for seq in self.above if seq > floor}
            while self.floor + 1 in self.above:
                self.floor += 1
                self.above.discard(self.floor)

    @property
    def top(self) -> int:
        return max(self.above, default=self.floor)


class Movement:
    """Whether a runner being followed has stalled: no point has arrived for `stall_s`, or every
    point of the last `stall_s` (by the phone's clock, once that much has been seen) lies within
    `stall_m`. The spread is the diagonal of the window's bounding box (one geodesic, however many
    points): at most 1.42 times the farthest two points' distance, never less."""

    def __init__(self, stall_s: float, stall_m: float) -> None:
        self.stall_s = stall_s
        self.stall_m = stall_m
        self.window: deque[tuple[int, float, float]] = deque()  # (time_ms, lat, lon), oldest first
        self.last_arrival: float | None = None  # wall-clock seconds when the newest point was seen

    def add(self, points: Sequence[Point], seen_at: float) -> None:
        """Points newly seen (seq order), at `seen_at`."""
        if not points:
            return
        self.last_arrival = seen_at
        for p in points:
            if p.time_ms is not None:
                self.window.append((p.time_ms, p.latitude, p.longitude))
        if self.window:
            newest = self.window[-1][0]
            # Keep one point at or before the window's start: it proves the window is covered.
            start = newest - self.stall_s * 1000
            while len(self.window) > 1 and self.window[1][0] <= start:
                self.window.popleft()

    def verdict(self, now: float) -> str | None:
        """The reason the runner counts as stalled at `now` (wall-clock seconds), or None."""
        if self.last_arrival is None:
            return None
        quiet = now - self.last_arrival
        if quiet >= self.stall_s:
            return f"no point for {quiet:.0f}s"
        if len(self.window) < 2:
            return None
        newest = self.window[-1][0]
        if newest - self.window[0][0] < self.stall_s * 1000:
            return None  # not followed for long enough to tell
        lats = [lat for _, lat, _ in self.window]
        lons = [lon for _, _, lon in self.window]
        spread = distance_m(min(lats), min(lons), max(lats), max(lons))
        if spread < self.stall_m:
            return f"moved {spread:.0f} m in {self.stall_s:.0f}s"
        return None


def next_state(current: str, stalled_reason: str | None) -> str | None:
    """The state to move to (or None to stay) given the watch's verdict."""
    if current in ENDED:
        return None
    if stalled_reason is not None:
        return STALLED if current != STALLED else None
    return RESUMED if current == STALLED else None


class ZoneTrim:
    """What a watcher who is not the owner may see of a trail arriving in seq order, exactly as
    GetTrack would show it at that moment: nothing before the first point outside every zone, and
    points inside a zone held back until a later point outside releases them (the runner may be
    arriving home: if the trail ends there, they stay hidden)."""

    def __init__(self, zones: Sequence[Zone], *, health: bool = True) -> None:
        self.health = health
        self.started = False
        self.held: list[Point] = []
        self.set_zones(zones)

    def set_zones(self, zones: Sequence[Zone]) -> None:
        """The owner changed their zones: they apply from the next point on (nothing sent is unsent)."""
        self.zones = list(zones)
        self.zone_set = ZoneSet(self.zones)

    def feed(self, points: Sequence[Point]) -> list[Point]:
        out = self._trimmed(points)
        return out if self.health else without_health(out)

    def _trimmed(self, points: Sequence[Point]) -> list[Point]:
        if not self.zones:
            released = list(self.held) + list(points)
            self.held.clear()
            self.started = self.started or bool(released)
            return released
        out: list[Point] = []
        for p, inside in zip(points, self.zone_set.inside(points), strict=True):
            if inside:
                if self.started:
                    self.held.append(p)
                continue
            self.started = True
            out.extend(self.held)
            self.held.clear()
            out.append(p)
        return out
