"""Fan-out of a run's new points to everyone following it, across replicas.

The replica holding a watcher is rarely the one ingesting the run. Polling each followed run from
each replica costs a read per run per replica per second (measured: 1,000 runs on two replicas did
not hold a 2 s p99 on two cores). Instead, the store carries a live feed: once a batch is durable,
the replica that wrote it copies the points of followed runs into the partitions of the current
second (`live_feed`, a few shards); each replica with watchers reads the last two seconds' partitions
once a second, a handful of reads whatever the number of runs, and sends each run's new points to
all of its watchers of the run, in seq order. Which runs are followed is itself in the store
(`live_watched`, marked by the followers, read by the writers every couple of seconds); until the
writers know, and when a gap in the feed stays, and every half minute, a follower reads the run
itself. Events (StopRun, deletion, a revoked link, a state change) go through the same feed and
make followers read the run's live row. The watch on the runner (STALLED/RESUMED) is computed by
each follower from the points; one replica wins each change with a conditional write and posts the
webhooks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import Counter, Gauge, Histogram

from runtrack.v1 import tracking_pb2
from runtrack_common.config import Settings
from runtrack_common.errors import RunTrackError, Unauthenticated, Unavailable
from tracking_service.convert import point_to_proto
from tracking_service.domain import Point
from tracking_service.live import ENDED, LIVE, DurablePoints, FeedRow, LiveRow, Movement, SeqSet, ZoneTrim, next_state
from tracking_service.privacy import Zone
from tracking_service.store import LiveStore, TrackStore
from tracking_service.webhooks import Delivery, Webhooks

log = logging.getLogger(__name__)
WATCHERS_OPEN = Gauge("runtrack_watchers_open", "WatchRun streams open on this replica.")
LIVE_RUNS = Gauge("runtrack_live_runs_watched", "Runs this replica polls for its watchers.")
LIVE_POLLS = Counter(
    "runtrack_live_polls_total", "Reads of one followed run's points (a new watch, a gap, a reconciling read)."
)
FEED_READS = Counter("runtrack_live_feed_reads_total", "Reads of the live feed (two a second while anyone follows).")
FEED_POINTS = Counter("runtrack_live_feed_points_total", "Points this replica copied to the live feed.")
WATCH_EVENTS = Counter("runtrack_watch_events_sent_total", "RunEvents sent to watchers.")
WATCH_POINTS = Counter("runtrack_watch_points_sent_total", "Points sent to watchers (a point to 10 watchers: 10).")
# The live-following objective's measure (docs/slos.md): observed once per point and replica holding its
# watchers, not per watcher (they are all handed it at the same moment). Only the points the feed brings
# carry their arrival (also when a direct read behind a gap hands them over); those only a direct read of
# the run finds (a watch's first seconds, seconds of the feed a late cycle no longer reads) do not.
WATCH_LAG = Histogram(
    "runtrack_live_point_lag_seconds",
    "A followed run's point: its arrival at the replica that took it to its hand-over to the watchers.",
    buckets=(0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0),
)
PAGE = 1000
# How many of a run's newest points a replica reads when it starts following it (the stall window).
RECENT = 600
# Reads of single runs in flight at once.
CONCURRENT_READS = 64
# Seconds of the feed a late cycle reads at most (older rows: the gap read finds them).
MAX_FEED_SECONDS = 5
# A gap in the feed (a seq missing while later ones came) waits this long before the run is read.
GAP_WAIT_S = 2.0
NO_SEQ_ABOVE = 2**32


def _ts(at: dt.datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(at)
    return t


def state_event(run_id: str, state: str, at: dt.datetime | None, reason: str) -> tracking_pb2.RunEvent:
    change = tracking_pb2.RunStateChange(state=tracking_pb2.LiveState.Value(state), reason=reason)
    change.time.CopyFrom(_ts(at or dt.datetime.now(dt.UTC)))
    return tracking_pb2.RunEvent(run_id=run_id, state=change)


def points_event(run_id: str, points: Sequence[Point]) -> tracking_pb2.RunEvent:
    return tracking_pb2.RunEvent(
        run_id=run_id, points=tracking_pb2.TrackPoints(points=[point_to_proto(p) for p in points])
    )


@dataclass(frozen=True, slots=True)
class PointsReleased:
    """Points of the run made durable, in a watcher's queue: the event built once for every view that
    sees them all, and the run's floor once they were released (every seq up to it was released
    before, or given up on)."""

    points: list[Point]
    event: tracking_pb2.RunEvent
    floor: int


@dataclass(frozen=True, slots=True)
class StateChanged:
    """The run's live state changed (the event built once for every watcher)."""

    state: str
    event: tracking_pb2.RunEvent


@dataclass(frozen=True, slots=True)
class WatchEnded:
    """The watcher is ended with this status (revoked, too slow, the replica closing)."""

    error: RunTrackError


# What a watcher's queue carries.
Item = PointsReleased | StateChanged | WatchEnded


@dataclass(eq=False, slots=True)
class Watch:
    """One WatchRun stream."""

    run: WatchedRun
    trim: ZoneTrim | None  # None: the owner, who sees every point
    link_id: str | None
    queue: asyncio.Queue[Item] = field(default_factory=asyncio.Queue)
    sent: SeqSet = field(default_factory=SeqSet)
    ended: bool = False

    def end(self, err: RunTrackError) -> None:
        if not self.ended:
            self.ended = True
            self.queue.put_nowait(WatchEnded(err))


@dataclass(eq=False, slots=True)
class WatchedRun:
    run_id: uuid.UUID
    owner: str
    zones: list[Zone]
    movement: Movement
    row: LiveRow = field(default_factory=LiveRow)
    state: str = LIVE
    state_at: dt.datetime | None = None
    # The seqs this replica has sent the run's watchers (or given up waiting for).
    sent: SeqSet = field(default_factory=SeqSet)
    watches: set[Watch] = field(default_factory=set)
    ready: asyncio.Future[None] | None = None
    # Points from the feed not yet sent (a lower seq still missing), and since when one is missing.
    pending: dict[int, FeedRow] = field(default_factory=dict)
    gap_since: float | None = None
    # Wall-clock seconds: read the run itself until (the writers learn it is followed), and next at.
    direct_until: float = 0.0
    reconcile_at: float = 0.0
    refresh_at: float = 0.0
    refresh: bool = False
    marked_at: float = 0.0


class LiveHub:
    def __init__(self, tracks: TrackStore, store: LiveStore, settings: Settings, webhooks: Webhooks) -> None:
        self.tracks = tracks  # the trail (points, zones)
        self.store = store  # the live rows, feed and followed runs
        self.settings = settings
        self.webhooks = webhooks
        self.runs: dict[uuid.UUID, WatchedRun] = {}
        self._poller: asyncio.Task[None] | None = None
        self._closing = False
        # Runs followed anywhere (as last read), whose durable points this replica copies to the feed.
        self.watched: frozenset[uuid.UUID] = frozenset()
        self._watched_task: asyncio.Task[None] | None = None
        self._feeding: set[asyncio.Task[None]] = set()
        self._feed_from = 0  # the first second the next cycle reads

    # ---- watchers -------------------------------------------------------------------------------

    async def watch(
        self,
        run_id: uuid.UUID,
        owner: str,
        *,
        owner_view: bool,
        link_id: str | None,
        after_seq: int,
        row: LiveRow | None = None,
        share_health: bool = True,
    ) -> AsyncIterator[tracking_pb2.RunEvent]:
        """The watcher's stream: the current state, the stored points after `after_seq`, then new
        points and state changes until the run ends (or the watcher is ended: revoked, too slow)."""
        if self._closing:
            raise Unavailable("replica shutting down; retry", reason="REPLICA_SHUTTING_DOWN", retry_after_s=0.1)
        run = await self._run(run_id, owner)
        if row is not None and link_id is not None and link_id not in run.row.links:
            run.row = dataclasses.replace(run.row, links=row.links)  # a link made since the run's row was read
        # Without zones a spectator sees what the owner sees: the events built once serve both.
        # Others get the zones' trim (applied to zones changed while they watch, too) and no heart rate
        # unless it is shared.
        trim = None if owner_view else ZoneTrim(run.zones, health=share_health)
        watch = Watch(run, trim, link_id)
        ended = run.state in ENDED
        if not ended:
            run.watches.add(watch)
            WATCHERS_OPEN.inc()
            self._start()
        key = str(run_id)
        try:
            if not ended:
                yield state_event(key, run.state, run.state_at, "")
            watch.sent = SeqSet(after_seq)
            cursor = after_seq
            while True:  # what is stored already; anything newer also reaches the queue
                page = await self.tracks.points_after(run_id, cursor, PAGE)
                if page:
                    cursor = page[-1].seq
                    for p in page:
                        watch.sent.add(p.seq)
                    visible = watch.trim.feed(page) if watch.trim is not None else page
                    if visible:
                        yield points_event(key, visible)
                if len(page) < PAGE:
                    break
            if ended:
                yield state_event(key, run.state, run.state_at, run.state.lower())
                return
            while True:
                item = await watch.queue.get()
                if isinstance(item, WatchEnded):
                    raise item.error
                if isinstance(item, StateChanged):
                    yield item.event
                    if item.state in ENDED:
                        return
                    continue
                released = item.points
                points = [p for p in released if p.seq not in watch.sent]
                for p in points:
                    watch.sent.add(p.seq)
                watch.sent.advance_to(item.floor)
                if not points:
                    continue
                if watch.trim is None and len(points) == len(released):
                    yield item.event  # built once for every watcher who sees all of them
                    continue
                if watch.trim is not None:
                    points = watch.trim.feed(points)
                    if not points:
                        continue
                yield points_event(key, points)
        finally:
            if watch in run.watches:
                run.watches.discard(watch)
                WATCHERS_OPEN.dec()
                if not run.watches and self.runs.get(run_id) is run:
                    del self.runs[run_id]
                    LIVE_RUNS.dec()

    async def _run(self, run_id: uuid.UUID, owner: str) -> WatchedRun:
        """The run as this replica follows it, read from the store the first time."""
        run = self.runs.get(run_id)
        if run is not None and run.ready is not None:
            await asyncio.shield(run.ready)
            return run
        s = self.settings
        run = WatchedRun(run_id, owner, [], Movement(s.live_stall_s, s.live_stall_m))
        run.ready = asyncio.get_running_loop().create_future()
        self.runs[run_id] = run
        LIVE_RUNS.inc()
        try:
            run.zones, run.row, recent = await asyncio.gather(
                self.tracks.privacy_zones(owner),
                self.store.live_row(run_id),
                self.tracks.points_before(run_id, NO_SEQ_ABOVE, RECENT),
            )
        except BaseException as err:
            del self.runs[run_id]
            LIVE_RUNS.dec()
            run.ready.set_exception(err if isinstance(err, Exception) else asyncio.CancelledError())
            run.ready.exception()  # retrieved: the waiters re-raise it
            raise
        recent.reverse()
        now = time.time()
        # Until every writer has read that the run is followed, its points are read from the run itself.
        run.direct_until = now + 2 * s.live_watched_refresh_s + s.live_poll_s
        run.reconcile_at = run.refresh_at = now + s.live_reconcile_s
        run.state, run.state_at = run.row.current, run.row.state_at
        run.sent = SeqSet(recent[-1].seq if recent else 0)
        if recent:
            newest = recent[-1].time_ms
            run.movement.add(recent, min(time.time(), newest / 1000) if newest is not None else time.time())
        run.ready.set_result(None)
        if run.state in ENDED:
            del self.runs[run_id]
            LIVE_RUNS.dec()
        return run

    def revoke(self, run_id: uuid.UUID, link_id: str) -> None:
        """Ends this replica's streams opened with `link_id` at once (the others' within a state poll)."""
        run = self.runs.get(run_id)
        for watch in list(run.watches) if run is not None else ():
            if watch.link_id == link_id:
                watch.end(link_refused("LINK_REVOKED", run_id))

    async def close(self) -> None:
        """The replica is shutting down: every watcher is told to reconnect (to another replica)."""
        self._closing = True
        for run in list(self.runs.values()):
            for watch in list(run.watches):
                watch.end(
                    Unavailable(
                        f"replica shutting down; reconnect with after_seq (run_id {run.run_id})",
                        reason="REPLICA_SHUTTING_DOWN",
                        retry_after_s=0.1,
                    )
                )
        for task in (self._poller, self._watched_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self.webhooks.close()

    # ---- the writers' side: copying followed runs' durable points to the feed ---------------------

    def published(self, rows: Sequence[DurablePoints]) -> None:
        """A batch is durable (the writer calls this, once per batch): the points of runs someone
        follows go to the feed, in the background."""
        if self._watched_task is None or self._watched_task.done():
            self._watched_task = asyncio.create_task(self._refresh_watched())
        if not self.watched:
            return
        followed = [row for row in rows if row.run_id in self.watched]
        if followed:
            task = asyncio.create_task(self._feed(followed))
            self._feeding.add(task)
            task.add_done_callback(self._feeding.discard)

    async def _feed(self, rows: Sequence[DurablePoints]) -> None:
        try:
            await self.store.feed_points(int(time.time()), rows)
            FEED_POINTS.inc(sum(len(row.points) for row in rows))
        except Exception as err:  # noqa: BLE001 (the followers' reconciling read brings the points)
            log.warning("live feed write failed runs=%d: %s", len(rows), err)

    async def _refresh_watched(self) -> None:
        """Which runs anyone follows, every few seconds, while this replica writes points."""
        while not self._closing:
            try:
                self.watched = frozenset(await self.store.watched_runs()) | frozenset(self.runs)
            except Exception as err:  # noqa: BLE001 (kept as it was until the store answers)
                log.warning("reading the followed runs failed: %s", err)
            await asyncio.sleep(self.settings.live_watched_refresh_s)

    async def announce(self, run_id: uuid.UUID, event: str) -> None:
        """Tells every replica following the run to read its live row again (stopped, deleted, a
        link revoked, a state change)."""
        await self.store.feed_event(int(time.time()), run_id, event)

    # ---- the followers' side: one read of the feed a second -------------------------------------

    def _start(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll_loop())

    async def _poll_loop(self) -> None:
        loop = asyncio.get_running_loop()
        s = self.settings
        next_check = loop.time() + s.live_state_poll_s
        while self.runs and not self._closing:
            started = loop.time()
            try:
                await self._cycle(check=started >= next_check)
            except RunTrackError as err:  # the store unavailable: the next cycle tries again
                log.warning("live poll failed: %s", err.message)
            except Exception:
                log.exception("live poll failed")
            if started >= next_check:
                next_check = started + s.live_state_poll_s
            await asyncio.sleep(max(0.0, s.live_poll_s - (loop.time() - started)))

    async def _cycle(self, *, check: bool) -> None:
        s = self.settings
        now = time.time()
        runs = [r for r in self.runs.values() if r.watches]
        # Tell the writers which runs are followed (new ones at once, the others before they expire).
        due = [r for r in runs if now - r.marked_at >= s.live_mark_s]
        if due:
            await self.store.mark_watched([r.run_id for r in due])
            for r in due:
                r.marked_at = now
            self.watched = self.watched | {r.run_id for r in due}
        # The feed: every second from the one before the last cycle's (a row becomes visible after its
        # second is over when its write is slow; a late cycle must not skip a second).
        bucket = int(now)
        first = max(self._feed_from, bucket - MAX_FEED_SECONDS) if self._feed_from else bucket - 1
        pages = await asyncio.gather(*(self.store.read_feed(b) for b in range(first, bucket + 1)))
        self._feed_from = bucket - 1
        FEED_READS.inc(len(pages))
        for row in (r for page in pages for r in page):
            run = self.runs.get(row.run_id)
            if run is None:
                continue
            if row.point is None:
                run.refresh = True
            elif row.point.seq not in run.sent:
                run.pending[row.point.seq] = row
        if check:  # every state poll: a zone set or removed reaches open watches within one
            await self._refresh_zones([r for r in runs if any(w.trim is not None for w in r.watches)])
        gate = asyncio.Semaphore(CONCURRENT_READS)
        await asyncio.gather(*(self._advance(r, now, check, gate) for r in runs))

    async def _refresh_zones(self, runs: list[WatchedRun]) -> None:
        """Reads the zones of the owners of runs that others watch (one read per owner) and applies
        any change to those watches from their next point."""
        owners = sorted({r.owner for r in runs})
        if not owners:
            return
        found = await asyncio.gather(*(self.tracks.privacy_zones(owner) for owner in owners))
        zones = dict(zip(owners, found, strict=True))
        for run in runs:
            new = list(zones[run.owner])
            if new != run.zones:
                run.zones = new
                for watch in run.watches:
                    if watch.trim is not None:
                        watch.trim.set_zones(new)
                log.info("zones changed run_id=%s zones=%d watchers=%d", run.run_id, len(new), len(run.watches))

    async def _advance(self, run: WatchedRun, now: float, check: bool, gate: asyncio.Semaphore) -> None:
        """Sends the run's watchers what the feed brought (in seq order, without gaps), reading the
        run itself only when the feed cannot be trusted alone: the first seconds of a watch (before
        the writers know it is followed), a gap that stays, and a reconciling read now and then."""
        s = self.settings
        try:
            released: list[Point] = []
            arrivals: list[float] = []
            for seq in [seq for seq in run.pending if seq in run.sent]:
                del run.pending[seq]
            while run.sent.floor + 1 in run.pending:  # in seq order, without a gap
                row = run.pending.pop(run.sent.floor + 1)
                assert row.point is not None, "only points wait in pending"
                released.append(row.point)
                run.sent.add(row.point.seq)
                if row.arrived_at is not None:
                    arrivals.append(row.arrived_at)
            if run.pending and run.gap_since is None:
                run.gap_since = now
            elif not run.pending:
                run.gap_since = None
            direct = (
                now < run.direct_until
                or now >= run.reconcile_at
                or (run.gap_since is not None and now - run.gap_since >= GAP_WAIT_S)
            )
            if direct:
                # The feed's rows this read releases (behind a gap: a stalled replica's late points)
                # keep their arrival: the objective sees how late they reached the watchers.
                waiting = {seq: row.arrived_at for seq, row in run.pending.items() if row.arrived_at is not None}
                async with gate:
                    read = await self._read_run(run)
                released += read
                arrivals += [waiting[p.seq] for p in read if p.seq in waiting]
                run.reconcile_at = now + s.live_reconcile_s
            if released:
                run.movement.add(released, now)
                self._fan_out(run, PointsReleased(released, points_event(str(run.run_id), released), run.sent.floor))
                if run.watches:
                    handed = time.time()
                    for arrived_at in arrivals:
                        WATCH_LAG.observe(max(0.0, handed - arrived_at))
            if run.refresh or now >= run.refresh_at:
                async with gate:
                    await self._refresh(run, now)
            elif check:
                await self._check(run)
        except RunTrackError as err:
            log.warning("live poll failed run_id=%s: %s", run.run_id, err.message)
        except Exception:
            log.exception("live poll failed run_id=%s", run.run_id)

    async def _read_run(self, run: WatchedRun) -> list[Point]:
        """Everything stored after the floor not sent yet (a late point included), with what the feed
        holds beyond a gap; then the floor moves up to the highest seq seen: a seq still missing is
        given up on (a point the phone never sent, or rejected)."""
        by_seq = {seq: row.point for seq, row in run.pending.items() if seq not in run.sent and row.point is not None}
        cursor = run.sent.floor
        while True:
            page = await self.tracks.points_after(run.run_id, cursor, PAGE)
            LIVE_POLLS.inc()
            for p in page:
                if p.seq not in run.sent:
                    by_seq[p.seq] = p
            if page:
                cursor = page[-1].seq
            if len(page) < PAGE:
                break
        out = [by_seq[seq] for seq in sorted(by_seq)]
        for p in out:
            run.sent.add(p.seq)
        run.sent.advance_to(run.sent.top)
        run.pending.clear()
        run.gap_since = None
        return out

    async def _refresh(self, run: WatchedRun, now: float) -> None:
        """Reads the run's live row again: stopped, deleted, a state another replica set, links."""
        run.refresh = False
        run.refresh_at = now + self.settings.live_reconcile_s
        row = await self.store.live_row(run.run_id)
        run.row = row
        stored = row.current
        if stored in ENDED:
            last = await self._read_run(run)  # the last points before the end
            if last:
                self._fan_out(run, PointsReleased(last, points_event(str(run.run_id), last), run.sent.floor))
            self._change(run, stored, row.state_at, stored.lower())
            if self.runs.get(run.run_id) is run:
                del self.runs[run.run_id]
                LIVE_RUNS.dec()
            return
        if stored != run.state:  # another replica saw the change first
            self._change(run, stored, row.state_at, "")
        await self._check(run)

    async def _check(self, run: WatchedRun) -> None:
        """The watch on the runner (no I/O unless the state changes) and the links' expiry."""
        row = run.row
        now = dt.datetime.now(dt.UTC)
        verdict = run.movement.verdict(time.time())
        target = next_state(run.state, verdict)
        if target is not None:
            won = await self.store.change_state(run.run_id, target, now, row.state)
            if won == target:
                reason = verdict or "moving again"
                run.row = dataclasses.replace(row, state=target, state_at=now)
                self._change(run, target, now, reason)
                self.notify(run.run_id, row, target, now, reason)
                await self.announce(run.run_id, "STATE")
            elif won is not None and won != run.state:
                run.row = dataclasses.replace(row, state=won, state_at=now)
                self._change(run, won, now, "")
        for watch in list(run.watches):
            if watch.link_id is not None and (why := run.row.refusal(watch.link_id, now)) is not None:
                watch.end(link_refused(why, run.run_id))

    def _change(self, run: WatchedRun, state: str, at: dt.datetime | None, reason: str) -> None:
        if state == run.state and state not in ENDED:
            return
        run.state, run.state_at = state, at
        log.info("live state run_id=%s state=%s watchers=%d %s", run.run_id, state, len(run.watches), reason)
        self._fan_out(run, StateChanged(state, state_event(str(run.run_id), state, at, reason)))

    def _fan_out(self, run: WatchedRun, item: Item) -> None:
        limit = self.settings.watch_queue_events
        # Counted once per fan-out, not per watcher (a spectator's own filter rarely drops an event).
        WATCH_EVENTS.inc(len(run.watches))
        if isinstance(item, PointsReleased):
            WATCH_POINTS.inc(len(item.points) * len(run.watches))
        for watch in list(run.watches):
            if watch.ended:
                continue
            if watch.queue.qsize() >= limit:
                watch.end(
                    Unavailable(
                        f"the watcher fell {limit} events behind; reconnect with after_seq (run_id {run.run_id})",
                        reason="WATCHER_TOO_SLOW",
                        retry_after_s=1.0,
                    )
                )
                continue
            watch.queue.put_nowait(item)

    def notify(self, run_id: uuid.UUID, row: LiveRow, state: str, at: dt.datetime, reason: str) -> None:
        """Posts the state change to every live link's webhook (those still valid)."""
        for link in row.links.values():
            if link.webhook_url and row.refusal(link.link_id, at) is None:
                self.webhooks.send(
                    Delivery(
                        str(run_id),
                        link.link_id,
                        link.webhook_url,
                        link.webhook_secret,
                        state,
                        at.isoformat().replace("+00:00", "Z"),
                        reason,
                    )
                )


def link_refused(why: str, run_id: uuid.UUID) -> Unauthenticated:
    what = "was revoked by the run's owner" if why == "LINK_REVOKED" else "has expired"
    return Unauthenticated(f"the live link {what} (run_id {run_id})", reason=why)
