"""A GPX, TCX or FIT file read into a trail: FIT with fitdecode, GPX and TCX in one streaming pass of
expat that builds only the points (no tree of the file: memory is the points, a few times the file).

Everything here is pure and bounded: the file's size and its number of points are capped, XML is
read with DTDs refused by the parser itself (no entity expansion, no external fetches), and every refusal
is an InvalidArgument on `file` that says what is wrong and where (line and column, the track
point, or the FIT record). Nothing is stored from a file that is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from xml.parsers import expat

import fitdecode
import polyline

from runtrack_common.errors import InvalidArgument
from summary_service.analysis import Analysis, Sample, analyse, cumulative_distances
from summary_service.domain import MAX_NAME_CHARS, Overview

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


# What one XML file may hold, counted by the parser as it reads: a 16 MiB file of empty elements is
# ~800,000 of them.
MAX_XML_ELEMENTS = 1_000_000
MAX_ELEMENTS_BY_NAME = {"wpt": 10_000, "rte": 1_000, "rtept": 100_000, "trk": 1_000, "trkseg": 10_000}
MAX_XML_DEPTH = 64
GATE_CHUNK = 1024 * 1024
# A TCX Lap whose timer (StartTime + TotalTimeSeconds, plus the pauses between its own Tracks) ended
# more than this before the next Lap starts: the watch's timer was stopped between them.
LAP_PAUSE_SLACK_US = 2_000_000
GPX_POINT_TEXTS = frozenset({"ele", "time", "speed", "hr", "cad"})
TCX_POINT_TEXTS = frozenset({"Time", "LatitudeDegrees", "LongitudeDegrees", "AltitudeMeters", "RunCadence", "Speed"})


class Abandoned(Exception):
    """The caller went away: the parse stopped."""


class _XmlTrail:
    """The handlers of the one expat pass over a GPX or TCX file. Nothing is built but the points:
    a DTD or an entity declaration is refused where the parser meets it (whatever the encoding or
    where it hides), every element is counted with limits per kind and in all, and each track point
    becomes a FilePoint when its element ends (memory: the points, not a tree of the file).

    Pauses, as recorders write them: in GPX, each track and each segment after the first starts
    after a pause; in TCX, each Track after the first within a Lap, a new Activity, and a new Lap
    when the previous Lap's own timer had stopped before it (a Lap boundary alone is a watch's
    auto-lap, not a pause)."""

    def __init__(self, max_points: int) -> None:
        self.max_points = max_points
        self.counts: dict[str, int] = {}
        self.total = 0
        self.stack: list[str] = []  # local names of the open elements
        self.kind = ""
        self.root = ""
        self.points: list[FilePoint] = []
        self.skipped = 0
        self.name: str | None = None
        self.sport: str | None = None
        self.pause_pending = False
        # The text being read (of a leaf element the trail needs), and where it goes.
        self.capture = ""
        self.capture_depth = 0
        self.text: list[str] = []
        self.fields: dict[str, str] = {}  # the open point's texts by element name
        self.point_attrs: dict[str, str] = {}  # the open GPX point's lat and lon
        self.point_open = False  # a TCX Trackpoint is open
        # Where a point is, for error messages.
        self.track = self.segment = self.point = 0
        self.activity = self.lap = self.track_in_lap = 0
        self.notes: str | None = None
        self.activity_sport: str | None = None
        # TCX laps' timers: (StartTime, TotalTimeSeconds, paused inside) of this lap and the one before.
        self.lap_timer: tuple[int | None, float | None, int] = (None, None, 0)
        self.previous_lap_timer: tuple[int | None, float | None, int] = (None, None, 0)

    # ---- expat's handlers ---------------------------------------------------------------------

    def start(self, name: str, attrs: dict[str, str]) -> None:
        self.total += 1
        local = name.rsplit("}", 1)[-1]
        seen = self.counts[local] = self.counts.get(local, 0) + 1
        if self.total > MAX_XML_ELEMENTS:
            raise bad(f"must hold at most {MAX_XML_ELEMENTS:,} XML elements", "FILE_TOO_COMPLEX")
        if len(self.stack) >= MAX_XML_DEPTH:
            raise bad(f"must nest elements at most {MAX_XML_DEPTH} deep", "FILE_TOO_COMPLEX")
        most = MAX_ELEMENTS_BY_NAME.get(local)
        if most is not None and seen > most:
            raise bad(f"must hold at most {most:,} <{local}> elements", "FILE_TOO_COMPLEX")
        if local in ("trkpt", "Trackpoint") and seen > self.max_points:
            raise _too_many(self.max_points)
        if not self.stack:
            self._root(name)
        self.stack.append(local)
        if self.kind == GPX:
            self._gpx_start(local, attrs)
        else:
            self._tcx_start(local, attrs)

    def characters(self, data: str) -> None:
        if self.capture:
            self.text.append(data)

    def end(self, _name: str) -> None:
        if self.capture and len(self.stack) == self.capture_depth:
            self._captured(self.capture, "".join(self.text).strip())
            self.capture = ""
        local = self.stack.pop()
        if local == "trkpt" and self.kind == GPX:
            self._gpx_point()
        elif local == "Trackpoint" and self.kind == TCX:
            self._tcx_point()
        elif local == "Activity" and self.kind == TCX:
            sport = self.activity_sport
            self.name = self.name or self.notes or (f"{sport} (imported)" if sport else None)

    # ---- what is read -------------------------------------------------------------------------

    def _root(self, name: str) -> None:
        tag = "{" + name if "}" in name else name
        if tag in {f"{{{ns}}}gpx" for ns in GPX_NAMESPACES} or tag == "gpx":
            self.kind = GPX
        elif tag == f"{{{TCX_NS}}}TrainingCenterDatabase":
            self.kind = TCX
        else:
            raise bad(
                f"is XML but neither GPX 1.0/1.1 nor TCX v2: its root element is {tag[:120]!r}", "UNKNOWN_FILE_TYPE"
            )
        self.root = tag

    def _read_text(self, key: str) -> None:
        self.capture, self.capture_depth, self.text = key, len(self.stack), []

    def _captured(self, key: str, text: str) -> None:
        if key == "name":
            self.name = self.name or text or None
        elif key == "type":
            self.sport = self.sport or text or None
        elif key == "notes":
            self.notes = self.notes or text or None
        elif key == "lap_total":
            start, _, paused = self.lap_timer
            try:
                self.lap_timer = (start, float(text), paused)
            except ValueError:
                pass  # the timer only tells pauses apart from auto-laps: without it, no pause
        elif text:  # an empty element (<ele/>) says nothing
            self.fields.setdefault(key, text)

    def _gpx_start(self, local: str, attrs: dict[str, str]) -> None:
        depth = len(self.stack)
        if self.point_attrs:  # inside a trkpt
            if local in GPX_POINT_TEXTS:
                self._read_text(local)
        elif local == "trkpt":
            self.point += 1
            self.point_attrs = {"lat": attrs.get("lat", ""), "lon": attrs.get("lon", "")}
            self.fields = {}
        elif local == "trkseg":
            self.segment += 1
            self.point = 0
            self.pause_pending = True
        elif local == "trk":
            self.track += 1
            self.segment = 0
            self.pause_pending = True
        elif local == "name" and (
            (depth == 2 or (depth == 3 and self.stack[1] in ("metadata", "trk"))) and self.track <= 1
        ):
            self._read_text("name")
        elif local == "type" and depth == 3 and self.stack[1] == "trk":
            self._read_text("type")

    def _gpx_point(self) -> None:
        attrs, fields = self.point_attrs, self.fields
        self.point_attrs, self.fields = {}, {}
        where = f"track {self.track}, segment {self.segment}, point {self.point}"
        time_us = _iso_us(fields.get("time"), where, "time")
        if time_us is None:  # a recorder's point without a time: no place in a timed trail
            self.skipped += 1
            return
        speed = fields.get("speed")
        self._add(
            FilePoint(
                time_us,
                _number(attrs["lat"], where, "lat"),
                _number(attrs["lon"], where, "lon"),
                None if fields.get("ele") is None else _number(fields["ele"], where, "ele"),
                _lenient_int(fields.get("hr")),
                _doubled(_lenient_int(fields.get("cad"))),
                None if speed is None else _number(speed, where, "speed"),
                where,
            )
        )

    def _tcx_start(self, local: str, attrs: dict[str, str]) -> None:
        parent = self.stack[-2] if len(self.stack) > 1 else ""
        if self.point_open:
            if local in TCX_POINT_TEXTS or (local == "Value" and parent == "HeartRateBpm"):
                self._read_text(local)
        elif local == "Trackpoint":
            self.point += 1
            self.fields, self.point_open = {}, True
        elif local == "Track":
            self.track_in_lap += 1
            if self.track_in_lap > 1 or self._timer_stopped_between_laps():
                self.pause_pending = True
        elif local == "Lap":
            self.lap += 1
            self.point = self.track_in_lap = 0
            self.previous_lap_timer = self.lap_timer
            self.lap_timer = (_iso_us(attrs.get("StartTime"), "", "", strict=False), None, 0)
        elif local == "Activity":
            self.activity += 1
            self.lap = 0
            self.lap_timer = (None, None, 0)
            self.activity_sport, self.notes = attrs.get("Sport"), None
            self.sport = self.sport or self.activity_sport
            self.pause_pending = True
        elif local == "Notes" and parent == "Activity":
            self._read_text("notes")
        elif local == "TotalTimeSeconds" and parent == "Lap":
            self._read_text("lap_total")

    def _timer_stopped_between_laps(self) -> bool:
        """The first Track of a Lap after the first: a pause when the Lap before stopped its timer
        (its StartTime + TotalTimeSeconds + its own pauses) well before this Lap started."""
        before_start, before_total, before_paused = self.previous_lap_timer
        start = self.lap_timer[0]
        if self.lap <= 1 or before_start is None or before_total is None or start is None:
            return False
        return start - (before_start + round(before_total * 1e6) + before_paused) > LAP_PAUSE_SLACK_US

    def _tcx_point(self) -> None:
        fields = self.fields
        self.fields, self.point_open = {}, False
        where = f"activity {self.activity}, lap {self.lap}, trackpoint {self.point}"
        if fields.get("Time") is None:  # skipped and counted, like a point without a position
            self.skipped += 1
            return
        time_us = _iso_us(fields["Time"], where, "Time")
        lat, lon = fields.get("LatitudeDegrees"), fields.get("LongitudeDegrees")
        if time_us is None or lat is None or lon is None:
            self.skipped += 1
            return

        def number(key: str) -> float | None:
            return None if fields.get(key) is None else _number(fields[key], where, key)

        heart, cadence = number("Value"), number("RunCadence")
        point = FilePoint(
            time_us,
            _number(lat, where, "LatitudeDegrees"),
            _number(lon, where, "LongitudeDegrees"),
            number("AltitudeMeters"),
            None if heart is None else int(heart),
            _doubled(None if cadence is None else int(cadence)),
            number("Speed"),
            where,
        )
        last = self.points[-1].time_us if self.points else None
        added = self._add(point)
        if added.after_pause and self.point > 1 and last is not None:  # a pause inside this lap
            start, total, paused = self.lap_timer
            self.lap_timer = (start, total, paused + max(0, added.time_us - last))

    def _add(self, point: FilePoint) -> FilePoint:
        if len(self.points) >= self.max_points:
            raise _too_many(self.max_points)
        if self.pause_pending:
            self.pause_pending = False
            if self.points:
                point = dataclasses.replace(point, after_pause=True)
        self.points.append(point)
        return point


def _number(text: str, where: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise bad(f"{where}: {name} must be a number, got {text[:40]!r}") from None


def _lenient_int(text: str | None) -> int | None:
    """Garmin's extension values (hr, cad) as gpxpy read them: a value that is not a number is none."""
    if text is None:
        return None
    try:
        return int(float(text))
    except ValueError:
        return None


def _iso_us(text: str | None, where: str, name: str, *, strict: bool = True) -> int | None:
    """An ISO 8601 time in microseconds (UTC when it names no zone); None when empty."""
    if not text or not text.strip():
        return None
    try:
        return _us(datetime.fromisoformat(text.strip().replace("Z", "+00:00")))
    except ValueError:
        if not strict:
            return None
        raise bad(f"{where}: {name} must be an ISO 8601 time, got {text[:40]!r}") from None


def read_xml(
    data: bytes, *, cancelled: Callable[[], bool] = lambda: False, max_points: int = MAX_POINTS
) -> tuple[str, str | None, str | None, list[FilePoint], int]:
    """One streaming pass of expat over a GPX or TCX file: (format, name, declared sport, points in
    file order, points skipped). Stops between chunks when `cancelled()`."""
    parser = expat.ParserCreate(namespace_separator="}")
    parser.buffer_text = True
    trail = _XmlTrail(max_points)

    def forbidden(*_: object) -> None:
        raise bad("must not contain a DTD or entity declarations", "XML_DTD_FORBIDDEN")

    # The handlers' signatures differ; each only raises.
    parser.StartDoctypeDeclHandler = forbidden
    parser.EntityDeclHandler = forbidden
    parser.UnparsedEntityDeclHandler = forbidden
    parser.ExternalEntityRefHandler = forbidden  # type: ignore[assignment]
    parser.StartElementHandler = trail.start
    parser.EndElementHandler = trail.end
    parser.CharacterDataHandler = trail.characters
    try:
        for at in range(0, len(data), GATE_CHUNK):
            if cancelled():
                raise Abandoned
            parser.Parse(data[at : at + GATE_CHUNK], False)
        parser.Parse(b"", True)
    except expat.ExpatError as err:
        raise bad(
            f"line {err.lineno}, column {err.offset + 1}: not well-formed XML ({expat.ErrorString(err.code)})"
        ) from None
    except (LookupError, ValueError) as err:  # an encoding Python does not know, for one
        raise bad(f"not readable XML: {type(err).__name__}: {str(err)[:200]}") from None
    if not trail.root:
        raise bad("is not XML with a root element")
    counts = trail.counts
    if counts.get("wpt") and not counts.get("trkpt") and not counts.get("Trackpoint"):
        raise bad(
            f"holds {counts['wpt']} waypoint(s) and no track: waypoints mark places, not a run's trail",
            "NO_TRACK",
        )
    return trail.kind, trail.name, trail.sport, trail.points, trail.skipped


def read_file(
    data: bytes, *, now_us: int, max_points: int = MAX_POINTS, cancelled: Callable[[], bool] = lambda: False
) -> ImportedFile:
    """The trail a file holds; InvalidArgument on `file` naming what is wrong and where."""
    check_size(data)
    kind = sniff(data)  # the content decides: a file's declared type or extension may be wrong
    if kind == FIT:
        name, sport, raw, skipped = _read_fit(data, max_points)
    else:
        kind, name, sport, raw, skipped = read_xml(data, cancelled=cancelled, max_points=max_points)
    points = _checked(raw, now_us)
    return ImportedFile(kind, _clean_name(name), points, hashlib.sha256(data).hexdigest(), skipped, sport_of(sport))


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


def _clean_name(name: str | None) -> str | None:
    """The file's activity name as a run name can hold it: no control characters, at most 200."""
    if not name:
        return None
    cleaned = " ".join("".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in name).split())
    return cleaned[:MAX_NAME_CHARS] or None


def _checked(points: list[FilePoint], now_us: int) -> list[FilePoint]:
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


def _too_many(max_points: int) -> InvalidArgument:
    return bad(f"must hold at most {max_points} track points", "TOO_MANY_POINTS")


def _us(t: datetime | None) -> int | None:
    if t is None:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1_000_000)


def _doubled(strides: int | None) -> int | None:
    """Running cadence in steps per minute from the strides (of one foot) per minute files hold."""
    return None if strides is None else int(strides) * 2


def _fit_value(frame: fitdecode.FitDataMessage, *names: str) -> Any:
    for n in names:
        if frame.has_field(n):
            value = frame.get_value(n)
            if value is not None:
                return value
    return None


def _read_fit(data: bytes, max_points: int) -> tuple[str | None, str | None, list[FilePoint], int]:
    """(name, declared sport, points, skipped). A timer stopped (event `timer`, type stop or stop_all)
    makes the next record with a position the first after a pause."""
    out: list[FilePoint] = []
    skipped = 0
    records = 0
    name: str | None = None
    session_sport: Any = None
    sport_sport: Any = None
    paused = False
    try:
        with fitdecode.FitReader(io.BytesIO(data), check_crc=fitdecode.CrcCheck.RAISE, keep_raw_chunks=False) as reader:
            for frame in reader:
                if not isinstance(frame, fitdecode.FitDataMessage):
                    continue
                if frame.name == "event":
                    kind = _fit_value(frame, "event_type")
                    if _fit_value(frame, "event") == "timer" and isinstance(kind, str) and kind.startswith("stop"):
                        paused = True
                    continue
                if frame.name == "session" and session_sport is None:
                    session_sport = _fit_value(frame, "sport")
                if frame.name == "sport":
                    name = name if name is not None else _fit_value(frame, "name")
                    sport_sport = sport_sport if sport_sport is not None else _fit_value(frame, "sport")
                if frame.name != "record":
                    continue
                records += 1
                where = f"record message {records}"
                lat, lon = _fit_value(frame, "position_lat"), _fit_value(frame, "position_long")
                when = _fit_value(frame, "timestamp")
                if lat is None or lon is None:
                    skipped += 1
                    continue
                if not isinstance(when, datetime):
                    raise bad(f"FIT {where}: a record with a position needs a timestamp")
                if len(out) >= max_points:
                    raise _too_many(max_points)
                time_us = _us(when)
                assert time_us is not None
                hr, cad = _fit_value(frame, "heart_rate"), _fit_value(frame, "cadence")
                altitude = _fit_value(frame, "enhanced_altitude", "altitude")
                speed = _fit_value(frame, "enhanced_speed", "speed")
                out.append(
                    FilePoint(
                        time_us,
                        lat * SEMICIRCLE_DEG,
                        lon * SEMICIRCLE_DEG,
                        None if altitude is None else float(altitude),
                        None if hr is None else int(hr),
                        _doubled(cad),
                        None if speed is None else float(speed),
                        where,
                        after_pause=paused and bool(out),
                    )
                )
                paused = False
    except InvalidArgument:
        raise
    except Exception as err:  # noqa: BLE001 (fitdecode raises more than FitError on a corrupt file: fuzzed)
        at = f"after record message {records}" if records else "before any record"
        kind = "" if isinstance(err, fitdecode.FitError) else f"{type(err).__name__}: "
        raise bad(f"FIT file unreadable {at}: {kind}{str(err)[:200]}") from None
    declared = session_sport if session_sport is not None else sport_sport
    return (name if isinstance(name, str) else None), (None if declared is None else str(declared)), out, skipped


# A fix-to-fix stretch counts as moving at this speed or more (a walk is ~1.4 m/s).
MOVING_MPS = 0.5
# The overview's polyline keeps at most this many of the trail's points (evenly spaced).
POLYLINE_POINTS = 10_000


def samples_of(points: list[FilePoint]) -> list[Sample]:
    return [
        Sample(i, p.time_us / 1e6, p.latitude, p.longitude, p.altitude_m, p.heart_rate_bpm, p.after_pause)
        for i, p in enumerate(points, 1)
    ]


def overview_of(points: list[FilePoint], cum: Sequence[float], analysis: Analysis) -> Overview:
    """What a phone would have computed at STOP RUN, from the file's points, the distance from the
    start at each, and their analysis."""
    moving_us = 0
    for i in range(1, len(points)):
        dt_us = points[i].time_us - points[i - 1].time_us
        if points[i].after_pause:  # the recorder was stopped: neither time nor distance counts
            continue
        if dt_us > 0 and (cum[i] - cum[i - 1]) / (dt_us / 1e6) >= MOVING_MPS:
            moving_us += dt_us
    heart = [p.heart_rate_bpm for p in points if p.heart_rate_bpm is not None]
    step = max(1, math.ceil(len(points) / POLYLINE_POINTS))
    kept = [*range(0, len(points), step)]
    if kept[-1] != len(points) - 1:
        kept.append(len(points) - 1)
    return Overview(
        start_us=points[0].time_us,
        end_us=points[-1].time_us,
        distance_m=analysis.distance_m,
        moving_time_us=moving_us,
        elevation_gain_m=analysis.elevation_gain_m or 0.0,
        point_count=len(points),
        avg_heart_rate_bpm=sum(heart) / len(heart) if heart else None,
        polyline=polyline.encode([(points[i].latitude, points[i].longitude) for i in kept], 5),
    )


@dataclass(frozen=True, slots=True)
class PreparedRun:
    """A file read and computed, ready to store: nothing of it is stored yet."""

    file: ImportedFile
    overview: Overview
    analysis: dict[str, Any]


def prepare(data: bytes, *, now_us: int, cancelled: Callable[[], bool] = lambda: False) -> PreparedRun:
    """The CPU part of an import (parse, geodesics, analysis), run off the event loop; abandoned
    (Abandoned) at the next step once `cancelled()` says the caller went away."""
    file = read_file(data, now_us=now_us, cancelled=cancelled)
    if cancelled():
        raise Abandoned
    samples = samples_of(file.points)
    cum = cumulative_distances(samples)
    analysis = analyse(samples, cum=cum)
    document = dataclasses.asdict(analysis) | {"point_count": len(samples)}
    return PreparedRun(file, overview_of(file.points, cum, analysis), document)
