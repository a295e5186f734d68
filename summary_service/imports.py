"""A GPX, TCX or FIT file read into a trail, with the libraries made for each format.

Everything here is pure and bounded: the file's size and its number of points are capped, XML is
parsed with DTDs refused (no entity expansion, no external fetches: defusedxml), and every refusal
is an InvalidArgument on `file` that says what is wrong and where (line and column, the track
point, or the FIT record). Nothing is stored from a file that is refused.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import math
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from xml.parsers import expat

import defusedxml.ElementTree as SafeET
import fitdecode
import gpxpy
import gpxpy.gpx
import gpxpy.parser
import polyline
from defusedxml import DefusedXmlException

from runtrack_common.errors import InvalidArgument
from summary_service.analysis import Analysis, Sample, analyse, cumulative_distances
from summary_service.domain import MAX_NAME_CHARS, Overview

MAX_FILE_BYTES = 16 * 1024 * 1024
# A day at one fix per second, with room to spare.
MAX_POINTS = 100_000
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


@dataclass(frozen=True, slots=True)
class ImportedFile:
    format: str
    name: str | None  # the file's own name for the activity, when it has one
    points: list[FilePoint]  # oldest first
    sha256: str
    skipped: int  # fixes without a position (a paused watch, a tunnel): not a trail point


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


# What one XML file may hold, counted by the parser before anything is built from it: a 16 MiB file
# of empty elements is ~800,000 of them, and each would cost a tree node and an object.
MAX_XML_ELEMENTS = 1_000_000
MAX_ELEMENTS_BY_NAME = {"wpt": 10_000, "rte": 1_000, "rtept": 100_000, "trk": 1_000, "trkseg": 10_000}
MAX_XML_DEPTH = 64
GATE_CHUNK = 1024 * 1024


class Abandoned(Exception):
    """The caller went away: the parse stopped."""


def scan_xml(data: bytes, *, cancelled: Callable[[], bool] = lambda: False, max_points: int = MAX_POINTS) -> str:
    """One streaming pass of expat over the file, building nothing: a DTD or an entity declaration
    is refused where the parser meets it (whatever the encoding or where it hides), and every
    element is counted, with limits per kind and in all, before any tree is built. Stops between
    chunks when `cancelled()`. Returns the root element's name ({namespace}local)."""
    parser = expat.ParserCreate(namespace_separator="}")
    counts: dict[str, int] = {}
    total = depth = 0
    root: list[str] = []

    def forbidden(*_: object) -> None:
        raise bad("must not contain a DTD or entity declarations", "XML_DTD_FORBIDDEN")

    def start(name: str, _attrs: object) -> None:
        nonlocal total, depth
        total += 1
        depth += 1
        if not root:
            root.append("{" + name if "}" in name else name)
        local = name.rsplit("}", 1)[-1]
        seen = counts[local] = counts.get(local, 0) + 1
        if total > MAX_XML_ELEMENTS:
            raise bad(f"must hold at most {MAX_XML_ELEMENTS:,} XML elements", "FILE_TOO_COMPLEX")
        if depth > MAX_XML_DEPTH:
            raise bad(f"must nest elements at most {MAX_XML_DEPTH} deep", "FILE_TOO_COMPLEX")
        most = MAX_ELEMENTS_BY_NAME.get(local)
        if most is not None and seen > most:
            raise bad(f"must hold at most {most:,} <{local}> elements", "FILE_TOO_COMPLEX")
        if local in ("trkpt", "Trackpoint") and seen > max_points:
            raise _too_many(max_points)

    def end(_name: str) -> None:
        nonlocal depth
        depth -= 1

    # The handlers' signatures differ; each only raises.
    parser.StartDoctypeDeclHandler = forbidden
    parser.EntityDeclHandler = forbidden
    parser.UnparsedEntityDeclHandler = forbidden
    parser.ExternalEntityRefHandler = forbidden  # type: ignore[assignment]
    parser.StartElementHandler = start
    parser.EndElementHandler = end
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
    if not root:
        raise bad("is not XML with a root element")
    if counts.get("wpt") and not counts.get("trkpt") and not counts.get("Trackpoint"):
        raise bad(
            f"holds {counts['wpt']} waypoint(s) and no track: waypoints mark places, not a run's trail",
            "NO_TRACK",
        )
    return root[0]


def read_file(
    data: bytes, *, now_us: int, max_points: int = MAX_POINTS, cancelled: Callable[[], bool] = lambda: False
) -> ImportedFile:
    """The trail a file holds; InvalidArgument on `file` naming what is wrong and where."""
    check_size(data)
    kind = sniff(data)  # the content decides: a file's declared type or extension may be wrong
    if kind == FIT:
        name, raw, skipped = _read_fit(data, max_points)
    else:
        tag = scan_xml(data, cancelled=cancelled, max_points=max_points)
        if tag in {f"{{{ns}}}gpx" for ns in GPX_NAMESPACES} or tag == "gpx":
            kind = GPX
            name, raw, skipped = _read_gpx(data, max_points)
        elif tag == f"{{{TCX_NS}}}TrainingCenterDatabase":
            kind = TCX
            name, raw, skipped = _read_tcx(_parse_xml(data), max_points)
        else:
            raise bad(
                f"is XML but neither GPX 1.0/1.1 nor TCX v2: its root element is {tag[:120]!r}", "UNKNOWN_FILE_TYPE"
            )
    points = _checked(raw, now_us)
    return ImportedFile(kind, _clean_name(name), points, hashlib.sha256(data).hexdigest(), skipped)


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
    return sorted(points, key=lambda p: p.time_us)


def _too_many(max_points: int) -> InvalidArgument:
    return bad(f"must hold at most {max_points} track points", "TOO_MANY_POINTS")


def _parse_xml(data: bytes) -> ET.Element:
    """The document, parsed with DTDs (and so entities and external references) refused."""
    try:
        return SafeET.fromstring(data, forbid_dtd=True)
    except DefusedXmlException as err:
        raise bad(
            f"must not contain a DTD or entity declarations (refused: {type(err).__name__})", "XML_DTD_FORBIDDEN"
        ) from None
    except ET.ParseError as err:
        line, column = err.position
        raise bad(f"line {line}, column {column + 1}: not well-formed XML ({_message(err)})") from None
    except (LookupError, ValueError) as err:  # an encoding declaration Python does not know, for one
        raise bad(f"not readable XML: {type(err).__name__}: {str(err)[:200]}") from None


def _message(err: Exception) -> str:
    return str(err).split(": line")[0][:200]


def _us(t: datetime | None) -> int | None:
    if t is None:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1_000_000)


def _doubled(strides: int | None) -> int | None:
    """Running cadence in steps per minute from the strides (of one foot) per minute files hold."""
    return None if strides is None else int(strides) * 2


def _gpx_extension_int(point: gpxpy.gpx.GPXTrackPoint, local: str) -> int | None:
    """Garmin's TrackPointExtension (hr, cad) as gpxpy reads extensions: elements, any prefix."""
    for ext in point.extensions:
        for el in ext.iter():
            if el.tag.rsplit("}", 1)[-1] == local and el.text:
                try:
                    return int(float(el.text))
                except ValueError:
                    return None
    return None


class _HardenedEtree:
    """What gpxpy asks of an ElementTree module, backed by defusedxml: gpxpy reads the file with the
    same hardened expat parser as the rest (it would otherwise use lxml's own, with its defaults)."""

    XML = staticmethod(functools.partial(SafeET.XML, forbid_dtd=True))
    register_namespace = staticmethod(ET.register_namespace)
    ParseError = ET.ParseError

    def __getattr__(self, name: str) -> Any:
        return getattr(ET, name)


setattr(gpxpy.parser, "mod_etree", _HardenedEtree())  # noqa: B010 (gpxpy's module global, not exported)


def _read_gpx(data: bytes, max_points: int) -> tuple[str | None, list[FilePoint], int]:
    try:
        doc = gpxpy.parse(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise bad(f"byte {err.start}: GPX must be UTF-8") from None
    except Exception as err:  # noqa: BLE001 (a corrupt file may break gpxpy in other ways than GPXException)
        raise bad(f"GPX unreadable: {str(err)[:300]}") from None
    out: list[FilePoint] = []
    skipped = 0
    for t, track in enumerate(doc.tracks, 1):
        for s, segment in enumerate(track.segments, 1):
            for i, p in enumerate(segment.points, 1):
                where = f"track {t}, segment {s}, point {i}"
                time_us = _us(p.time)
                if time_us is None:  # a recorder's point without a time: no place in a timed trail
                    skipped += 1
                    continue
                if len(out) >= max_points:
                    raise _too_many(max_points)
                out.append(
                    FilePoint(
                        time_us,
                        p.latitude,
                        p.longitude,
                        p.elevation,
                        _gpx_extension_int(p, "hr"),
                        _doubled(_gpx_extension_int(p, "cad")),
                        p.speed,
                        where,
                    )
                )
    name = doc.name or next((t.name for t in doc.tracks if t.name), None)
    return name, out, skipped


def _tcx_children(el: ET.Element, path: str) -> Iterator[ET.Element]:
    return el.iterfind(path, {"t": TCX_NS, "x": TPX_NS})


def _tcx_number(el: ET.Element, path: str, where: str, convert: Callable[[str], Any] = float) -> Any:
    found = el.find(path, {"t": TCX_NS, "x": TPX_NS})
    if found is None or found.text is None:
        return None
    try:
        return convert(found.text.strip())
    except ValueError:
        raise bad(f"{where}: {path.split('/')[-1].split(':')[-1]} must be a number, got {found.text[:40]!r}") from None


def _read_tcx(root: ET.Element, max_points: int) -> tuple[str | None, list[FilePoint], int]:
    out: list[FilePoint] = []
    skipped = 0
    name: str | None = None
    for a, activity in enumerate(_tcx_children(root, "t:Activities/t:Activity"), 1):
        sport = activity.get("Sport")
        notes = activity.findtext("t:Notes", namespaces={"t": TCX_NS})
        name = (
            name or (notes.strip() if notes and notes.strip() else None) or (f"{sport} (imported)" if sport else None)
        )
        for lap_n, lap in enumerate(_tcx_children(activity, "t:Lap"), 1):
            for i, tp in enumerate(_tcx_children(lap, "t:Track/t:Trackpoint"), 1):
                where = f"activity {a}, lap {lap_n}, trackpoint {i}"
                raw_time = tp.findtext("t:Time", namespaces={"t": TCX_NS})
                if raw_time is None:  # skipped and counted, like a point without a position
                    skipped += 1
                    continue
                try:
                    when = datetime.fromisoformat(raw_time.strip().replace("Z", "+00:00"))
                except ValueError:
                    raise bad(f"{where}: Time must be an ISO 8601 time, got {raw_time[:40]!r}") from None
                lat = _tcx_number(tp, "t:Position/t:LatitudeDegrees", where)
                lon = _tcx_number(tp, "t:Position/t:LongitudeDegrees", where)
                if lat is None or lon is None:
                    skipped += 1
                    continue
                if len(out) >= max_points:
                    raise _too_many(max_points)
                time_us = _us(when)
                assert time_us is not None
                out.append(
                    FilePoint(
                        time_us,
                        lat,
                        lon,
                        _tcx_number(tp, "t:AltitudeMeters", where),
                        _tcx_number(tp, "t:HeartRateBpm/t:Value", where, lambda s: int(float(s))),
                        _doubled(_tcx_number(tp, "t:Extensions/x:TPX/x:RunCadence", where, lambda s: int(float(s)))),
                        _tcx_number(tp, "t:Extensions/x:TPX/x:Speed", where),
                        where,
                    )
                )
    return name, out, skipped


def _fit_value(frame: fitdecode.FitDataMessage, *names: str) -> Any:
    for n in names:
        if frame.has_field(n):
            value = frame.get_value(n)
            if value is not None:
                return value
    return None


def _read_fit(data: bytes, max_points: int) -> tuple[str | None, list[FilePoint], int]:
    out: list[FilePoint] = []
    skipped = 0
    records = 0
    name: str | None = None
    try:
        with fitdecode.FitReader(io.BytesIO(data), check_crc=fitdecode.CrcCheck.RAISE, keep_raw_chunks=False) as reader:
            for frame in reader:
                if not isinstance(frame, fitdecode.FitDataMessage):
                    continue
                if frame.name == "sport" and name is None:
                    name = _fit_value(frame, "name")
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
                    )
                )
    except InvalidArgument:
        raise
    except Exception as err:  # noqa: BLE001 (fitdecode raises more than FitError on a corrupt file: fuzzed)
        at = f"after record message {records}" if records else "before any record"
        kind = "" if isinstance(err, fitdecode.FitError) else f"{type(err).__name__}: "
        raise bad(f"FIT file unreadable {at}: {kind}{str(err)[:200]}") from None
    return (name if isinstance(name, str) else None), out, skipped


# A fix-to-fix stretch counts as moving at this speed or more (a walk is ~1.4 m/s).
MOVING_MPS = 0.5
# The overview's polyline keeps at most this many of the trail's points (evenly spaced).
POLYLINE_POINTS = 10_000


def samples_of(points: list[FilePoint]) -> list[Sample]:
    return [
        Sample(i, p.time_us / 1e6, p.latitude, p.longitude, p.altitude_m, p.heart_rate_bpm)
        for i, p in enumerate(points, 1)
    ]


def overview_of(points: list[FilePoint], cum: Sequence[float], analysis: Analysis) -> Overview:
    """What a phone would have computed at STOP RUN, from the file's points, the distance from the
    start at each, and their analysis."""
    moving_us = 0
    for i in range(1, len(points)):
        dt_us = points[i].time_us - points[i - 1].time_us
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
