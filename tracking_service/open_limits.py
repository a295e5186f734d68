"""Streams open at once per runner (RecordTrack, WatchRun), per live link (WatchRun), and per run
(WatchRun by strangers on a PUBLIC run).

The numbers per runner and per link come from the edge: an Envoy that enforces the limits
(edge/limits.yaml, the chart's `limits`) sends them on each stream in a header, and sends all of a
runner's streams of one method, and all of a link's WatchRun streams, to the same replica
(consistent hashing on the verified runner or link). So a replica's own count is the runner's (or
link's) count. A stream without the header is not counted: the local stacks, whose tests and
benchmarks open many streams under one token on purpose.

Strangers following one PUBLIC run are many runners, spread over the replicas by their own hash, so
their cap (`LIVE_MAX_SPECTATORS_PER_RUN`) is each replica's: the fleet holds at most that many per
run per replica. The run's owner and its links' holders are not counted there.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from runtrack_common.errors import ResourceExhausted

# What Envoy sends (and strips from what clients send).
MAX_RECORD_STREAMS_HEADER = "x-runtrack-max-record-streams"
MAX_LINK_WATCHERS_HEADER = "x-runtrack-max-link-watchers"
MAX_RUNNER_WATCHERS_HEADER = "x-runtrack-max-runner-watchers"
# A phone's stream that is still open is usually one whose network just changed: the replica ends
# it within the stream idle time, or the phone cancels it; a few seconds is enough to try again.
RETRY_AFTER_S = 5.0


def parse_limit(text: str) -> int | None:
    """The header's number; None when absent or not a positive integer (no limit)."""
    text = text.strip()
    if not text.isdigit():
        return None
    value = int(text)
    return value if value > 0 else None


@dataclass
class OpenCounts:
    """How many streams of one family are open per key on this replica."""

    family: str  # the limit's name in ErrorInfo's metadata
    what: str  # what the key is, in the refusal's words
    noun: str  # what is counted, in the refusal's words

    def __post_init__(self) -> None:
        self._open: Counter[str] = Counter()

    def enter(self, key: str, limit: int | None) -> bool:
        """Counts a new stream for `key`; RESOURCE_EXHAUSTED when `limit` are open already. False
        (nothing counted, nothing to `leave`) when there is no limit."""
        if limit is None:
            return False
        if self._open[key] >= limit:
            raise ResourceExhausted(
                f"{self.what} has {limit} {self.noun} open, the most allowed at once; end one, or retry later",
                reason="RATE_LIMITED",
                metadata={"limit": self.family, "max_open": str(limit)},
                retry_after_s=RETRY_AFTER_S,
            )
        self._open[key] += 1
        return True

    def leave(self, key: str) -> None:
        self._open[key] -= 1
        if self._open[key] <= 0:
            del self._open[key]

    def open(self, key: str) -> int:
        return self._open[key]
