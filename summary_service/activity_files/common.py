"""What every file format shares: the limits, the typed result of reading a file (`Parsed`, then
`ImportedFile`), the refusal on `file`, the checks every point passes, and the sport in one vocabulary."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime

from runtrack_common.api_rules import MAX_NAME_CHARS
from runtrack_common.errors import InvalidArgument

MAX_FILE_BYTES = 16 * 1024 * 1024
# A day at one fix per second, with room to spare.
MAX_POINTS = 100_000
# An import's memory (its body, the points, the analysis) is at most this many times its file, and
# any import at most this many times MAX_FILE_BYTES. Measured (scripts/bench imports): a 16 MiB GPX
# of a watch's points +52 MiB (3.3x), TCX +38 MiB (2.4x), the densest GPX (100,000 bare points)
# +70 MiB (4.4x), a FIT file of 100,000 records (1.8 MiB) +72 MiB; four 16 MiB imports at once peak
# under 360 MiB, within the summary pod's 512 MiB (tests/integration/test_import_memory.py).
MAX_MEMORY_MULTIPLE = 5
EARLIEST_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z, as the trail accepts
FUTURE_SLACK_US = 5 * 60 * 1_000_000
FIELD = "file"
MAX_HEART_RATE = 300
MAX_CADENCE = 1000  # steps per minute
# FIT positions are in semicircles: 2^31 of them make 180 degrees.
SEMICIRCLE_DEG = 180.0 / 2**31

GPX = "gpx"
TCX = "tcx"
FIT = "fit"
CONTENT_TYPES = {
    GPX: "application/gpx+xml",
    TCX: "application/vnd.garmin.tcx+xml",
    FIT: "application/vnd.ant.fit",
}
TCX_NS = "http://www.garmin.com/xmlschemas/TrainingCenterDatabase/v2"
TPX_NS = "http://www.garmin.com/xmlschemas/ActivityExtension/v2"
GPX_NAMESPACES = ("http://www.topografix.com/GPX/1/1", "http://www.topografix.com/GPX/1/0")
# The sport a file declares (FIT's session sport, GPX's trk type, TCX's Activity Sport) in one
# vocabulary; "" is undeclared (or generic). Personal records count "running" and "" (domain.py).
MAX_SPORT_CHARS = 40
UNDECLARED_SPORTS = frozenset({"", "other", "generic", "all", "unknown", "none", "invalid"})
SPORT_SYNONYMS = {
    **dict.fromkeys(
        ("run", "running", "trail_running", "treadmill_running", "street_running", "track_running",
         "indoor_running", "virtual_run", "virtualrun", "ultra_run", "trailrun"),
        "running",
    ),
    **dict.fromkeys(
        ("biking", "bike", "cycling", "ride", "road_biking", "mountain_biking", "mountainbikeride", "e_biking",
         "ebikeride", "virtual_ride", "virtualride", "gravel_cycling", "cyclocross", "indoor_cycling"),
        "cycling",
    ),
    **dict.fromkeys(("driving", "drive", "car", "motorcycling", "motor_sports", "motorsports"), "driving"),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class FilePoint:
    """One fix read from a file; `where` names it in the file for an error message."""

    time_us: int
    latitude: float
    longitude: float
    altitude_m: float | None
    heart_rate_bpm: int | None
    cadence_spm: int | None
    speed_mps: float | None
    where: str
    # The first point after a pause (a new track or segment, a new TCX Track, a FIT timer restarted).
    after_pause: bool = False


@dataclass(frozen=True, slots=True)
class ImportedFile:
    format: str
    name: str | None  # the file's own name for the activity, when it has one
    points: list[FilePoint]  # oldest first
    sha256: str
    skipped: int  # fixes without a position (a paused watch, a tunnel): not a trail point
    sport: str = ""  # as sport_of() names the file's declared sport; "" when it declares none


def bad(rule: str, reason: str = "BAD_FILE") -> InvalidArgument:
    return InvalidArgument(FIELD, rule, reason=reason)


def sniff(data: bytes) -> str:
    """FIT or XML, from the content (a FIT header says .FIT at byte 8)."""
    if len(data) >= 12 and data[8:12] == b".FIT":
        return FIT
    if data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
        return "xml"
    raise bad(
        "is not a GPX, TCX or FIT file (GPX and TCX are XML; a FIT file says .FIT in its header)",
        "UNKNOWN_FILE_TYPE",
    )


def check_size(data: bytes) -> None:
    if not data:
        raise bad("is empty")
    if len(data) > MAX_FILE_BYTES:
        raise bad(f"must be at most {MAX_FILE_BYTES} bytes, got {len(data)}", "FILE_TOO_LARGE")


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class Parsed:
    """What one reader found in a file, before the checks every point passes."""

    format: str
    name: str | None  # the file's own name for the activity
    sport: str | None  # the sport as the file declares it
    points: list[FilePoint]  # in file order
    skipped: int  # fixes without a position or a time


class Abandoned(Exception):
    """The caller went away: the parse stopped."""


def sport_of(declared: str | None) -> str:
    """The sport a file declares, in one vocabulary: "running", "cycling", "driving", another
    sport's own name (lower case, words joined by _), or "" when the file declares none or only a
    generic one ("Other", "generic", a number)."""
    if not declared:
        return ""
    words = "_".join(re.findall(r"[a-z0-9]+", declared.lower()))[:MAX_SPORT_CHARS]
    if words in UNDECLARED_SPORTS or words.isdigit():
        return ""
    return SPORT_SYNONYMS.get(words, words)


def clean_name(name: str | None) -> str | None:
    """The file's activity name as a run name can hold it: no control characters, at most 200."""
    if not name:
        return None
    cleaned = " ".join("".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in name).split())
    return cleaned[:MAX_NAME_CHARS] or None


def checked(points: list[FilePoint], now_us: int) -> list[FilePoint]:
    """The points in time order, each within the rules a phone's point must keep."""
    for p in points:
        if p.time_us < EARLIEST_US:
            raise bad(f"{p.where}: time must not be before 2000-01-01T00:00:00Z")
        if p.time_us > now_us + FUTURE_SLACK_US:
            raise bad(f"{p.where}: time must not be more than 5 minutes in the future")
        if not (math.isfinite(p.latitude) and -90.0 <= p.latitude <= 90.0):
            raise bad(f"{p.where}: latitude must be a finite number in [-90, 90]")
        if not (math.isfinite(p.longitude) and -180.0 <= p.longitude <= 180.0):
            raise bad(f"{p.where}: longitude must be a finite number in [-180, 180]")
        if p.altitude_m is not None and not math.isfinite(p.altitude_m):
            raise bad(f"{p.where}: elevation must be a finite number")
        if p.heart_rate_bpm is not None and not 0 <= p.heart_rate_bpm <= MAX_HEART_RATE:
            raise bad(f"{p.where}: heart rate must be in [0, {MAX_HEART_RATE}] bpm, got {p.heart_rate_bpm}")
        if p.cadence_spm is not None and not 0 <= p.cadence_spm <= MAX_CADENCE:
            raise bad(f"{p.where}: cadence must be in [0, {MAX_CADENCE // 2}] strides per minute")
        if p.speed_mps is not None and not (math.isfinite(p.speed_mps) and p.speed_mps >= 0):
            raise bad(f"{p.where}: speed must be a finite number >= 0")
    if len(points) < 2:
        raise bad(f"has {len(points)} track point(s) with a time and a position; a run needs at least 2", "EMPTY_TRACK")
    if any(a.time_us > b.time_us for a, b in itertools.pairwise(points)):
        points = sorted(points, key=lambda p: p.time_us)
    if points[0].after_pause:  # (a file's parts out of time order) nothing pauses before the first
        points[0] = dataclasses.replace(points[0], after_pause=False)
    return points


def too_many(max_points: int) -> InvalidArgument:
    return bad(f"must hold at most {max_points} track points", "TOO_MANY_POINTS")


def to_us(t: datetime | None) -> int | None:
    if t is None:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1_000_000)


def doubled(strides: int | None) -> int | None:
    """Running cadence in steps per minute from the strides (of one foot) per minute files hold."""
    return None if strides is None else int(strides) * 2
