"""The pure rules of a run's overview and of the dashboard's reads. Times are in microseconds."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import math
import re
import unicodedata
import uuid
import zoneinfo
from dataclasses import dataclass
from typing import Any

from runtrack_common.api_rules import (
    END_AFTER_START,
    MAX_NAME_CHARS,
    MAX_POLYLINE_CHARS,
    MAX_USER_ID_CHARS,
    MOVING_WITHIN_ELAPSED,
    POLYLINE_PATTERN,
    POLYLINE_RULE,
    USER_ID_PATTERN,
    USER_ID_RULE,
)
from runtrack_common.errors import InvalidArgument, Violations

DEFAULT_LIST_PAGE = 20
MAX_LIST_PAGE = 100
DEFAULT_WEEKS = 12
MAX_WEEKS = 104
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# The sports whose runs hold personal records: running, and undeclared (a phone's run, a file that
# names no sport or a generic one), whose efforts still count only at a runner's speeds
# (analysis.MAX_RUNNING_MPS). A ride or a drive declared as such sets no running record.
RECORD_SPORTS = ("", "running")


@dataclass(frozen=True, slots=True)
class Overview:
    """What the phone computed at STOP RUN, kept to the microsecond."""

    start_us: int
    end_us: int
    distance_m: float
    moving_time_us: int
    elevation_gain_m: float
    point_count: int
    avg_heart_rate_bpm: float | None
    polyline: str

    @property
    def elapsed_us(self) -> int:
        return self.end_us - self.start_us

    @property
    def avg_pace_s_per_km(self) -> float:
        km = self.distance_m / 1000.0
        if km <= 0:  # a distance so small it is 0 km in a float, too
            return 0.0
        pace = (self.moving_time_us / 1e6) / km
        return pace if math.isfinite(pace) else 0.0


class Visibility(enum.IntEnum):
    """Who besides the owner sees a run (the numbers are the API's)."""

    UNSPECIFIED = 0
    PRIVATE = 1
    PUBLIC = 2


@dataclass(frozen=True, slots=True)
class Run:
    run_id: uuid.UUID
    user_id: str
    overview: Overview
    stopped_at_us: int
    visibility: Visibility = Visibility.PRIVATE
    # What the server computed from the trail (summary_service.analysis.Analysis as JSON), once complete.
    analysis: dict[str, Any] | None = None
    # As the runner named it; empty: the default from the start time in UTC (runs stored before names).
    stored_name: str = ""
    # Heart rate and cadence shown to others (strangers on a PUBLIC run, live-link holders).
    share_health: bool = False
    # The sport an imported file declared (activity_files.sport_of); "" when none.
    sport: str = ""

    @property
    def name(self) -> str:
        return self.stored_name or default_name(self.overview.start_us, "UTC")

    @property
    def track_url(self) -> str:
        return f"/v1/runs/{self.run_id}/track"

    def readable_by(self, user_id: str) -> bool:
        return user_id == self.user_id or self.visibility == Visibility.PUBLIC

    def as_seen_by(self, user_id: str, visible: VisiblePart | None = None) -> Run:
        """What `user_id` may see of the run: everything when it is theirs. Anyone else gets no
        polyline (it starts and ends at the owner's door), no analysis (computed on the whole trail:
        its splits and efforts would measure the hidden stretch), heart rate only when the owner
        shares it, and, when privacy zones trim the trail (`visible`), the times, distance and
        moving time of the part left."""
        if user_id == self.user_id:
            return self
        o = self.overview
        overview = dataclasses.replace(
            o, polyline="", avg_heart_rate_bpm=o.avg_heart_rate_bpm if self.share_health else None
        )
        if visible is not None and visible.trimmed:
            overview = dataclasses.replace(
                overview,
                start_us=visible.start_us,
                end_us=visible.end_us,
                distance_m=visible.distance_m,
                moving_time_us=visible.moving_time_us,
                point_count=visible.point_count,
                elevation_gain_m=0.0,
                avg_heart_rate_bpm=None,
            )
        return dataclasses.replace(self, overview=overview, analysis=None)


@dataclass(frozen=True, slots=True)
class VisiblePart:
    """The trail as others see it (after the owner's privacy zones), summed up by the tracking service."""

    trimmed: bool
    point_count: int = 0
    start_us: int = 0
    end_us: int = 0
    distance_m: float = 0.0
    moving_time_us: int = 0


@dataclass(frozen=True, slots=True)
class WeekTotals:
    week_start: dt.date
    run_count: int
    distance_m: float
    moving_time_us: int
    elevation_gain_m: float


@dataclass(frozen=True, slots=True)
class UserTotals:
    weeks: list[WeekTotals]
    total_runs: int
    total_distance_m: float


def check_user_id(value: str) -> str:
    """A user_id as a request names it: empty or "me" (the caller), or a user's id."""
    if len(value) > MAX_USER_ID_CHARS:
        raise InvalidArgument("user_id", f"at most {MAX_USER_ID_CHARS} characters")
    if value and re.fullmatch(USER_ID_PATTERN, value) is None:
        raise InvalidArgument("user_id", USER_ID_RULE)
    return value


def validate_overview(o: Overview) -> None:
    """Raises InvalidArgument naming every field and rule the overview breaks."""
    found = Violations()

    def finite_non_negative(name: str, value: float) -> None:
        if not (math.isfinite(value) and value >= 0):
            found.add(f"overview.{name}", "must be a finite number >= 0")

    if o.end_us < o.start_us:
        found.add("overview.end_time", END_AFTER_START)
    finite_non_negative("distance_m", o.distance_m)
    if o.moving_time_us < 0:
        found.add("overview.moving_time", "must not be negative")
    elif o.end_us >= o.start_us and o.moving_time_us > o.elapsed_us:
        found.add("overview.moving_time", MOVING_WITHIN_ELAPSED)
    finite_non_negative("elevation_gain_m", o.elevation_gain_m)
    if o.avg_heart_rate_bpm is not None:
        finite_non_negative("avg_heart_rate_bpm", o.avg_heart_rate_bpm)
    if len(o.polyline) > MAX_POLYLINE_CHARS:
        found.add("overview.polyline", f"at most {MAX_POLYLINE_CHARS} characters")
    elif re.fullmatch(POLYLINE_PATTERN, o.polyline) is None:
        found.add("overview.polyline", POLYLINE_RULE)
    found.raise_if_any()


def list_page_size(requested: int) -> int:
    return DEFAULT_LIST_PAGE if requested == 0 else min(requested, MAX_LIST_PAGE)


def stats_weeks(requested: int) -> int:
    return DEFAULT_WEEKS if requested == 0 else min(requested, MAX_WEEKS)


def time_zone(name: str) -> str:
    """The IANA zone to bucket weeks in; InvalidArgument for a name the tz database lacks."""
    if not name:
        return "UTC"
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidArgument(
            "time_zone",
            f"must be an IANA time zone name such as Europe/Paris, got {name[:64]!r}",
            reason="UNKNOWN_TIME_ZONE",
        ) from None
    return name


def us_to_datetime(us: int) -> dt.datetime:
    return EPOCH + dt.timedelta(microseconds=us)


def datetime_to_us(value: dt.datetime) -> int:
    return (value - EPOCH) // dt.timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Improvement:
    """A best effort that beat every earlier one of its distance (a personal record when it was set)."""

    name: str
    distance_m: float
    elapsed_s: float
    run_id: uuid.UUID
    start_us: int


def default_name(start_us: int, zone: str) -> str:
    """What a run is called until its runner names it: the part of the day it started, locally."""
    start = us_to_datetime(start_us)
    try:
        hour = start.astimezone(zoneinfo.ZoneInfo(zone)).hour
    except OverflowError:  # the first or last hours of year 1 or 9999, local time out of range
        hour = start.hour
    if 5 <= hour < 11:
        part = "Morning"
    elif 11 <= hour < 14:
        part = "Lunch"
    elif 14 <= hour < 18:
        part = "Afternoon"
    elif 18 <= hour < 22:
        part = "Evening"
    else:
        part = "Night"
    return f"{part} run"


def check_name(raw: str, field: str = "run.name") -> str:
    """The name, trimmed; InvalidArgument naming the rule it breaks."""
    name = raw.strip()
    if not name:
        raise InvalidArgument(field, "must not be empty")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidArgument(field, f"must be at most {MAX_NAME_CHARS} characters, got {len(name)}")
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in name):
        raise InvalidArgument(field, "must not contain control characters or line breaks")
    return name
