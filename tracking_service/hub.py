"""Fan-out of a run's new points to everyone following it.

The replica holding a watcher is rarely the one ingesting the run, so each replica reads, once per
`live_poll_s`, the points stored after the last seq it has seen for each run its watchers follow:
one read per watched run per replica, shared by all of that replica's watchers of the run, however
many. Every `live_state_poll_s` it also reads the run's live row (state, stop, links): the watch on
the runner (STALLED/RESUMED, one replica wins each change with a conditional write and sends its
webhooks), StopRun's and DeleteRun's marks, and revoked or expired links (their open streams end).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import Counter, Gauge

from runtrack.v1 import tracking_pb2
from runtrack_common.config import Settings
from runtrack_common.errors import RunTrackError, Unauthenticated, Unavailable
from tracking_service.convert import point_to_proto
from tracking_service.domain import Point
from tracking_service.live import ENDED, LIVE, LiveRow, Movement, ZoneTrim, next_state
from tracking_service.privacy import Zone
from tracking_service.store import LiveStore, TrackStore
from tracking_service.webhooks import Delivery, Webhooks

log = logging.getLogger(__name__)
WATCHERS_OPEN = Gauge("runtrack_watchers_open", "WatchRun streams open on this replica.")
LIVE_RUNS = Gauge("runtrack_live_runs_watched", "Runs this replica polls for its watchers.")
LIVE_POLLS = Counter("runtrack_live_polls_total", "Reads of watched runs' new points (one per run per poll).")
WATCH_EVENTS = Counter("runtrack_watch_events_sent_total", "RunEvents sent to watchers.")
WATCH_POINTS = Counter("runtrack_watch_points_sent_total", "Points sent to watchers (a point to 10 watchers: 10).")
PAGE = 1000
# How many of a run's newest points a replica reads when it starts following it (the stall window).
RECENT = 600
# Reads of watched runs in flight at once.
CONCURRENT_POLLS = 64
NO_SEQ_ABOVE = 2**32


class Store(TrackStore, LiveStore, Protocol):
    """The tracking store, with its live rows."""


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


@dataclass(eq=False, slots=True)
class Watch:
    """One WatchRun stream."""

    run: WatchedRun
    trim: ZoneTrim | None  # None: the owner, who sees every point
    link_id: str | None
    queue: asyncio.Queue[tuple[str, object, object]] = field(default_factory=asyncio.Queue)
    sent_seq: int = 0
    ended: bool = False

    def end(self, err: RunTrackError) -> None:
        if not self.ended:
            self.ended = True
            self.queue.put_nowait(("end", err, None))


@dataclass(eq=False, slots=True)
class WatchedRun:
    run_id: uuid.UUID
    owner: str
    zones: list[Zone]
    movement: Movement
    row: LiveRow = field(default_factory=LiveRow)
    state: str = LIVE
    state_at: dt.datetime | None = None
    last_seq: int = 0
    watches: set[Watch] = field(default_factory=set)
    ready: asyncio.Future[None] | None = None


class LiveHub:
    def __init__(self, store: Store, settings: Settings, webhooks: Webhooks) -> None:
        self.store = store
        self.settings = settings
        self.webhooks = webhooks
        self.runs: dict[uuid.UUID, WatchedRun] = {}
        self._poller: asyncio.Task[None] | None = None
        self._closing = False

    # ---- watchers -------------------------------------------------------------------------------

    async def watch(
        self, run_id: uuid.UUID, owner: str, *, owner_view: bool, link_id: str | None, after_seq: int
    ) -> AsyncIterator[tracking_pb2.RunEvent]:
        """The watcher's stream: the current state, the stored points after `after_seq`, then new
        points and state changes until the run ends (or the watcher is ended: revoked, too slow)."""
        if self._closing:
            raise Unavailable("replica shutting down; retry", reason="REPLICA_SHUTTING_DOWN", retry_after_s=0.1)
        run = await self._run(run_id, owner)
        watch = Watch(run, None if owner_view else ZoneTrim(run.zones), link_id)
        ended = run.state in ENDED
        if not ended:
            run.watches.add(watch)
            WATCHERS_OPEN.inc()
            self._start()
        key = str(run_id)
        try:
            if not ended:
                yield state_event(key, run.state, run.state_at, "")
            sent = after_seq
            while True:  # what is stored already; anything newer also reaches the queue
                page = await self.store.points_after(run_id, sent, PAGE)
                if page:
                    sent = page[-1].seq
                    visible = watch.trim.feed(page) if watch.trim is not None else page
                    if visible:
                        yield points_event(key, visible)
                if len(page) < PAGE:
                    break
            watch.sent_seq = sent
            if ended:
                yield state_event(key, run.state, run.state_at, run.state.lower())
                return
            while True:
                kind, payload, prebuilt = await watch.queue.get()
                if kind == "end":
                    assert isinstance(payload, RunTrackError)
                    raise payload
                if kind == "state":
                    assert isinstance(payload, str) and isinstance(prebuilt, tracking_pb2.RunEvent)
                    WATCH_EVENTS.inc()
                    yield prebuilt
                    if payload in ENDED:
                        return
                    continue
                points: list[Point] = payload  # type: ignore[assignment]
                if points[-1].seq <= watch.sent_seq:
                    continue
                event = prebuilt if watch.trim is None and points[0].seq > watch.sent_seq else None
                points = [p for p in points if p.seq > watch.sent_seq]
                watch.sent_seq = points[-1].seq
                if watch.trim is not None:
                    points = watch.trim.feed(points)
                    if not points:
                        continue
                WATCH_EVENTS.inc()
                WATCH_POINTS.inc(len(points))
                yield event if isinstance(event, tracking_pb2.RunEvent) else points_event(key, points)
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
                self.store.privacy_zones(owner),
                self.store.live_row(run_id),
                self.store.points_before(run_id, NO_SEQ_ABOVE, RECENT),
            )
        except BaseException as err:
            del self.runs[run_id]
            LIVE_RUNS.dec()
            run.ready.set_exception(err if isinstance(err, Exception) else asyncio.CancelledError())
            run.ready.exception()  # retrieved: the waiters re-raise it
            raise
        recent.reverse()
        run.state, run.state_at = run.row.current, run.row.state_at
        run.last_seq = recent[-1].seq if recent else 0
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
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        await self.webhooks.close()

    # ---- the poll -------------------------------------------------------------------------------

    def _start(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll_loop())

    async def _poll_loop(self) -> None:
        loop = asyncio.get_running_loop()
        s = self.settings
        next_state_poll = loop.time() + s.live_state_poll_s
        gate = asyncio.Semaphore(CONCURRENT_POLLS)
        while self.runs and not self._closing:
            started = loop.time()
            with_state = started >= next_state_poll
            if with_state:
                next_state_poll = started + s.live_state_poll_s
            runs = [r for r in self.runs.values() if r.watches]
            await asyncio.gather(*(self._poll_guarded(r, with_state, gate) for r in runs))
            await asyncio.sleep(max(0.0, s.live_poll_s - (loop.time() - started)))

    async def _poll_guarded(self, run: WatchedRun, with_state: bool, gate: asyncio.Semaphore) -> None:
        async with gate:
            try:
                await self._poll(run, with_state)
            except RunTrackError as err:  # the store unavailable: the next poll tries again
                log.warning("live poll failed run_id=%s: %s", run.run_id, err.message)
            except Exception:
                log.exception("live poll failed run_id=%s", run.run_id)

    async def _poll_points(self, run: WatchedRun) -> None:
        while True:
            new = await self.store.points_after(run.run_id, run.last_seq, PAGE)
            LIVE_POLLS.inc()
            if not new:
                return
            run.last_seq = new[-1].seq
            run.movement.add(new, time.time())
            self._fan_out(run, ("points", new, points_event(str(run.run_id), new)))
            if len(new) < PAGE:
                return

    async def _poll(self, run: WatchedRun, with_state: bool) -> None:
        await self._poll_points(run)
        if not with_state:
            return
        row = await self.store.live_row(run.run_id)
        run.row = row
        now = dt.datetime.now(dt.UTC)
        stored = row.current
        if stored in ENDED:
            await self._poll_points(run)  # the last points before the end
            self._change(run, stored, row.state_at, stored.lower())
            if self.runs.get(run.run_id) is run:
                del self.runs[run.run_id]
                LIVE_RUNS.dec()
            return
        if stored != run.state:  # another replica saw the change first
            self._change(run, stored, row.state_at, "")
        else:
            verdict = run.movement.verdict(time.time())
            target = next_state(run.state, verdict)
            if target is not None:
                won = await self.store.change_state(run.run_id, target, now, row.state)
                if won == target:
                    reason = verdict or "moving again"
                    self._change(run, target, now, reason)
                    self.notify(run.run_id, row, target, now, reason)
                elif won is not None and won != run.state:
                    self._change(run, won, now, "")
        for watch in list(run.watches):
            if watch.link_id is not None and (why := row.refusal(watch.link_id, now)) is not None:
                watch.end(link_refused(why, run.run_id))

    def _change(self, run: WatchedRun, state: str, at: dt.datetime | None, reason: str) -> None:
        if state == run.state and state not in ENDED:
            return
        run.state, run.state_at = state, at
        log.info("live state run_id=%s state=%s watchers=%d %s", run.run_id, state, len(run.watches), reason)
        self._fan_out(run, ("state", state, state_event(str(run.run_id), state, at, reason)))

    def _fan_out(self, run: WatchedRun, item: tuple[str, object, object]) -> None:
        limit = self.settings.watch_queue_events
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
