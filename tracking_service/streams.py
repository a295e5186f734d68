"""The replica's open RecordTrack streams, watched by one task: each stream's idle limit and lifetime,
shedding the newest above the replica's limit, and the drain at shutdown. A stream is ended by
cancelling it while it waits for its phone's next message, or, busy writing, when it next comes back
for one; the stream then answers the status `ended` gives."""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge

from runtrack_common.config import Settings
from runtrack_common.errors import DeadlineExceeded, RunTrackError, Unavailable

log = logging.getLogger(__name__)

STREAMS_SHED = Counter(
    "runtrack_streams_shed_total", "RecordTrack streams ended because the replica held more than its limit."
)
STREAMS_OPEN = Gauge("runtrack_streams_open", "RecordTrack streams open on this replica (what the autoscaler reads).")
# Another replica is ready at once: a phone cut by a rollout may come back quickly.
SHUTDOWN_RETRY_S = 0.1


@dataclass(slots=True)
class OpenStream:
    """What the replica knows of one open RecordTrack stream, for the idle limit and the drain."""

    task: asyncio.Task[Any]
    last_message: float  # the event loop's clock
    ends_at: float  # the stream's lifetime runs out (the event loop's clock)
    reading: bool = False  # waiting for the phone's next message
    end: str | None = None  # why the replica ends it: "idle", "drain", "lifetime" or "shed"


class StreamSupervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.open_streams: dict[asyncio.Task[Any], OpenStream] = {}
        self.draining = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None

    def open(self, task: asyncio.Task[Any]) -> OpenStream:
        """Counts a stream that starts now (its task) and has the watch see to it."""
        now = asyncio.get_running_loop().time()
        stream = OpenStream(task, now, self._lifetime(now))
        self.open_streams[task] = stream
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep())
        STREAMS_OPEN.inc()
        return stream

    def close(self, task: asyncio.Task[Any]) -> None:
        self.open_streams.pop(task, None)
        STREAMS_OPEN.dec()

    async def drain(self) -> None:
        """Every open stream told to end (flushed, then UNAVAILABLE), waited for up to the grace time."""
        if self.open_streams:
            log.info("draining open_streams=%d", len(self.open_streams))
            for stream in list(self.open_streams.values()):
                self.end(stream, "drain")
            await asyncio.wait(list(self.open_streams), timeout=self.settings.shutdown_grace_s)

    # One task for the whole replica watches the idle limit (the stream loop itself awaits only the next
    # message): a stream is ended by cancelling it while it waits for a message, or, busy writing, when it
    # next comes back for one.
    def end(self, stream: OpenStream, why: str) -> None:
        if stream.end is None:
            stream.end = why
            if stream.reading:
                stream.task.cancel()

    async def _sweep(self) -> None:
        idle = self.settings.stream_idle_timeout_s
        loop = asyncio.get_running_loop()
        while self.open_streams:
            await asyncio.sleep(min(1.0, idle / 4))
            now = loop.time()
            for stream in list(self.open_streams.values()):
                if now - stream.last_message > idle:
                    self.end(stream, "idle")
                elif now >= stream.ends_at:
                    self.end(stream, "lifetime")
            self._shed()

    def _shed(self) -> None:
        """Over its stream limit, the replica ends its newest streams (a few a second) with the resumable
        status: the phones come back through Envoy, which sends them to the replica with the fewest."""
        limit = self.settings.stream_shed_above
        if not limit:
            return
        # Streams already told to end are on their way out: counting them would shed more than the excess.
        staying = [s for s in self.open_streams.values() if s.end is None]
        shed = min(len(staying) - limit, self.settings.stream_shed_per_s)
        if shed <= 0:
            return
        for stream in staying[-shed:]:  # the newest: the fewest points
            self.end(stream, "shed")
        STREAMS_SHED.inc(shed)
        log.info("shedding streams=%d open=%d limit=%d", shed, len(self.open_streams), limit)

    def _lifetime(self, now: float) -> float:
        """When a stream starting now ends: the lifetime, jittered by up to a fifth so that the streams of
        a burst do not all come back at once."""
        life = self.settings.stream_lifetime_s
        return now + life * (0.8 + 0.2 * random.random()) if life > 0 else float("inf")

    def ended(self, stream: OpenStream, run_id: str) -> RunTrackError:
        s = self.settings
        resumable = {  # why the replica ended a stream the phone resumes elsewhere: (reason, what happened)
            "drain": ("REPLICA_SHUTTING_DOWN", "replica shutting down"),
            "lifetime": ("STREAM_LIFETIME", f"stream reached its lifetime of about {s.stream_lifetime_s:g}s"),
            "shed": ("REPLICA_OVERLOADED", f"replica over its limit of {s.stream_shed_above} streams"),
        }
        if stream.end in resumable:
            reason, what = resumable[stream.end]
            return Unavailable(
                f"{what}; resume from GetTrackCursor (run_id {run_id})", reason=reason, retry_after_s=SHUTDOWN_RETRY_S
            )
        return DeadlineExceeded(
            f"points: no message for {self.settings.stream_idle_timeout_s:g}s (the idle limit); "
            f"resume from GetTrackCursor (run_id {run_id})"
        )
