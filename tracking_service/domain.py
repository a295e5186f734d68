"""The pure rules of a GPS trail: point validation, stream rules, the resume cursor."""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from runtrack_common.errors import InvalidArgument, Violations
from runtrack_common.identity import ME, Caller, require_self
from runtrack_common.ids import parse_run_id

MAX_POINTS_PER_MESSAGE = 1000
MAX_REJECTIONS_LISTED = 100
EARLIEST_TIME_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
FUTURE_SLACK_MS = 5 * 60 * 1000
DEFAULT_TRACK_PAGE = 1000
MAX_TRACK_PAGE = 10_000


@dataclass(frozen=True, slots=True)
class Point:
    """One GPS fix. `time_ms` is None when the phone sent no time (the point is then rejected)."""

    seq: int
    time_ms: int | None
    latitude: float
    longitude: float
    altitude_m: float | None = None
    horizontal_accuracy_m: float | None = None
    speed_mps: float | None = None
    heart_rate_bpm: int | None = None
    cadence_spm: int | None = None
    # The first point after the runner paused: no distance or time counts from the point before.
    after_pause: bool = False


@dataclass(frozen=True, slots=True)
class Rejection:
    seq: int
    reason: str


@dataclass(frozen=True, slots=True)
class Cursor:
    """What is durable of a run: every seq in 1..contiguous_seq, the highest seq, the count."""

    contiguous_seq: int
    max_seq: int
    point_count: int


def rejection_reason(p: Point, now_ms: int) -> str | None:
    """Why this point cannot be stored, naming the field and the rule; None when it is valid."""
    if p.seq < 1:
        return "seq: must be >= 1"
    if p.time_ms is None:
        return "time: is required"
    if p.time_ms < EARLIEST_TIME_MS:
        return "time: must not be before 2000-01-01T00:00:00Z"
    if p.time_ms > now_ms + FUTURE_SLACK_MS:
        return "time: must not be more than 5 minutes in the future"
    if not (math.isfinite(p.latitude) and -90.0 <= p.latitude <= 90.0):
        return "latitude: must be a finite number in [-90, 90]"
    if not (math.isfinite(p.longitude) and -180.0 <= p.longitude <= 180.0):
        return "longitude: must be a finite number in [-180, 180]"
    if p.altitude_m is not None and not math.isfinite(p.altitude_m):
        return "altitude_m: must be a finite number"
    if p.horizontal_accuracy_m is not None and not (
        p.horizontal_accuracy_m >= 0 and math.isfinite(p.horizontal_accuracy_m)
    ):
        return "horizontal_accuracy_m: must be a finite number >= 0"
    if p.speed_mps is not None and not (p.speed_mps >= 0 and math.isfinite(p.speed_mps)):
        return "speed_mps: must be a finite number >= 0"
    return None


@dataclass
class StreamIdentity:
    """The run and user a RecordTrack stream is bound to by its first message."""

    run_id: uuid.UUID
    user_id: str

    @classmethod
    def from_first(cls, run_id: str, user_id: str, n_points: int, caller: Caller) -> StreamIdentity:
        """The first message binds the stream: its run_id, and the caller as the runner (a user_id,
        when sent, must be the caller's)."""
        found = Violations()
        found.check(lambda: check_point_count(n_points))
        parsed = found.check(lambda: parse_run_id(run_id))
        found.raise_if_any()
        assert parsed is not None
        return cls(parsed, require_self(user_id, caller))

    def check_later(self, run_id: str, user_id: str, n_points: int) -> None:
        """A later message may omit run_id and user_id, or repeat them, never change them."""
        check_point_count(n_points)
        if run_id and run_id != str(self.run_id):
            try:
                same = uuid.UUID(run_id) == self.run_id
            except ValueError:
                same = False
            if not same:
                raise InvalidArgument("run_id", "must not change within a stream")
        if user_id and user_id not in (self.user_id, ME):
            raise InvalidArgument("user_id", "must not change within a stream")


def check_point_count(n_points: int) -> None:
    if n_points > MAX_POINTS_PER_MESSAGE:
        raise InvalidArgument("points", f"at most {MAX_POINTS_PER_MESSAGE} points per message, got {n_points}")


def cursor_from_seqs(seqs: Iterable[int], known_contiguous: int = 0) -> Cursor:
    """The cursor of a run whose points 1..known_contiguous are stored and whose other stored
    seqs, all above known_contiguous, come in ascending order."""
    contiguous = max_seq = count = known_contiguous
    for seq in seqs:
        count += 1
        max_seq = seq
        if seq == contiguous + 1:
            contiguous = seq
    return Cursor(contiguous, max_seq, count)


def page_size(requested: int) -> int:
    if requested == 0:
        return DEFAULT_TRACK_PAGE
    return min(requested, MAX_TRACK_PAGE)


def without_health(points: Sequence[Point]) -> list[Point]:
    """The points without heart rate and cadence (what others get unless the owner shares them)."""
    return [
        dataclasses.replace(p, heart_rate_bpm=None, cadence_spm=None)
        if p.heart_rate_bpm is not None or p.cadence_spm is not None
        else p
        for p in points
    ]
