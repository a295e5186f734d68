"""GPX and TCX in one streaming pass of expat that builds only the points (no tree of the file: memory
is the points, a few times the file). The parser itself refuses a DTD or an entity declaration where
it meets it; every element is counted, with limits per kind and in all."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime
from xml.parsers import expat

from summary_service.activity_files.common import (
    GPX,
    GPX_NAMESPACES,
    MAX_POINTS,
    TCX,
    TCX_NS,
    Abandoned,
    FilePoint,
    Parsed,
    bad,
    doubled,
    to_us,
    too_many,
)

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
            raise too_many(self.max_points)
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
        time_us = _isoto_us(fields.get("time"), where, "time")
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
                doubled(_lenient_int(fields.get("cad"))),
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
            self.lap_timer = (_isoto_us(attrs.get("StartTime"), "", "", strict=False), None, 0)
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
        time_us = _isoto_us(fields["Time"], where, "Time")
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
            doubled(None if cadence is None else int(cadence)),
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
            raise too_many(self.max_points)
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


def _isoto_us(text: str | None, where: str, name: str, *, strict: bool = True) -> int | None:
    """An ISO 8601 time in microseconds (UTC when it names no zone); None when empty."""
    if not text or not text.strip():
        return None
    try:
        return to_us(datetime.fromisoformat(text.strip().replace("Z", "+00:00")))
    except ValueError:
        if not strict:
            return None
        raise bad(f"{where}: {name} must be an ISO 8601 time, got {text[:40]!r}") from None


def read_xml(data: bytes, *, cancelled: Callable[[], bool] = lambda: False, max_points: int = MAX_POINTS) -> Parsed:
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
    return Parsed(trail.kind, trail.name, trail.sport, trail.points, trail.skipped)
