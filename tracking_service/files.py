"""A run's trail as a file: GPX 1.1 (written by gpxpy) and TCX (Garmin's Training Center database v2,
built with lxml). Heart rate and cadence go in Garmin's extensions where recorded; cadence is stored
in steps per minute and written as Garmin's running cadence, strides (of one foot) per minute.
A pause (a point marked after_pause) starts a new track segment (GPX) or a new Track in the lap (TCX),
as recorders write them, so a file exported and imported again keeps its pauses."""

from __future__ import annotations

import datetime as dt
import itertools
import xml.etree.ElementTree as ET
from collections.abc import Sequence

import gpxpy.gpx
from lxml import etree

from tracking_service.domain import Point
from tracking_service.privacy import distance_m

GPX_TYPE = "application/gpx+xml"
TCX_TYPE = "application/vnd.garmin.tcx+xml"
FORMATS = {"gpx": GPX_TYPE, "tcx": TCX_TYPE}
GPXTPX = "http://www.garmin.com/xmlschemas/TrackPointExtension/v1"
TCX_NS = "http://www.garmin.com/xmlschemas/TrainingCenterDatabase/v2"
ACTX_NS = "http://www.garmin.com/xmlschemas/ActivityExtension/v2"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
TCX_SCHEMA = f"{TCX_NS} http://www.garmin.com/xmlschemas/TrainingCenterDatabasev2.xsd"
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _when(p: Point) -> dt.datetime:
    return EPOCH + dt.timedelta(milliseconds=p.time_ms or 0)


def _strides(spm: int) -> int:
    return round(spm / 2)


def to_gpx(name: str, points: Sequence[Point]) -> bytes:
    gpx = gpxpy.gpx.GPX()
    gpx.creator = "RunTrack"
    gpx.nsmap["gpxtpx"] = GPXTPX
    track = gpxpy.gpx.GPXTrack(name=name)
    gpx.tracks.append(track)
    segment = gpxpy.gpx.GPXTrackSegment()
    track.segments.append(segment)
    for p in points:
        fix = gpxpy.gpx.GPXTrackPoint(p.latitude, p.longitude, elevation=p.altitude_m, time=_when(p))
        if p.heart_rate_bpm is not None or p.cadence_spm is not None:
            extension = ET.Element(f"{{{GPXTPX}}}TrackPointExtension")
            if p.heart_rate_bpm is not None:
                ET.SubElement(extension, f"{{{GPXTPX}}}hr").text = str(p.heart_rate_bpm)
            if p.cadence_spm is not None:
                ET.SubElement(extension, f"{{{GPXTPX}}}cad").text = str(_strides(p.cadence_spm))
            fix.extensions.append(extension)
        if p.after_pause and segment.points:
            segment = gpxpy.gpx.GPXTrackSegment()
            track.segments.append(segment)
        segment.points.append(fix)
    return gpx.to_xml(version="1.1").encode()


def to_tcx(name: str, points: Sequence[Point]) -> bytes:
    """One activity, one lap over the whole trail (a Track per stretch between pauses), with each
    point's distance from the start (the same geodesics as everywhere else, none across a pause)."""
    distances_m = list(
        itertools.accumulate(
            (
                0.0 if b.after_pause else distance_m(a.latitude, a.longitude, b.latitude, b.longitude)
                for a, b in itertools.pairwise(points)
            ),
            initial=0.0,
        )
    )[: len(points)]
    nsmap = {None: TCX_NS, "ns3": ACTX_NS, "xsi": XSI}
    root = etree.Element(f"{{{TCX_NS}}}TrainingCenterDatabase", nsmap=nsmap)
    root.set(f"{{{XSI}}}schemaLocation", TCX_SCHEMA)

    def sub(parent: etree._Element, tag: str, text: str | None = None, ns: str = TCX_NS) -> etree._Element:
        element = etree.SubElement(parent, f"{{{ns}}}{tag}")
        if text is not None:
            element.text = text
        return element

    activity = sub(sub(root, "Activities"), "Activity")
    activity.set("Sport", "Running")
    start = _when(points[0]) if points else EPOCH
    sub(activity, "Id", _iso(start))
    lap = sub(activity, "Lap")
    lap.set("StartTime", _iso(start))
    # The lap's timer: its elapsed time less its pauses.
    paused = sum(((b.time_ms or 0) - (a.time_ms or 0)) / 1000 for a, b in itertools.pairwise(points) if b.after_pause)
    seconds = (_when(points[-1]) - start).total_seconds() - paused if points else 0.0
    sub(lap, "TotalTimeSeconds", f"{seconds:.3f}")
    sub(lap, "DistanceMeters", f"{(distances_m[-1] if distances_m else 0.0):.2f}")
    sub(lap, "Calories", "0")
    heart = [p.heart_rate_bpm for p in points if p.heart_rate_bpm is not None]
    if heart:
        sub(sub(lap, "AverageHeartRateBpm"), "Value", str(round(sum(heart) / len(heart))))
        sub(sub(lap, "MaximumHeartRateBpm"), "Value", str(max(heart)))
    sub(lap, "Intensity", "Active")
    sub(lap, "TriggerMethod", "Manual")
    track = sub(lap, "Track")
    for k, (p, distance) in enumerate(zip(points, distances_m, strict=True)):
        if p.after_pause and k:
            track = sub(lap, "Track")
        tp = sub(track, "Trackpoint")
        sub(tp, "Time", _iso(_when(p)))
        position = sub(tp, "Position")
        sub(position, "LatitudeDegrees", repr(p.latitude))
        sub(position, "LongitudeDegrees", repr(p.longitude))
        if p.altitude_m is not None:
            sub(tp, "AltitudeMeters", repr(p.altitude_m))
        sub(tp, "DistanceMeters", f"{distance:.2f}")
        if p.heart_rate_bpm is not None:
            sub(sub(tp, "HeartRateBpm"), "Value", str(p.heart_rate_bpm))
        if p.cadence_spm is not None or p.speed_mps is not None:
            tpx = sub(sub(tp, "Extensions"), "TPX", ns=ACTX_NS)
            if p.speed_mps is not None:
                sub(tpx, "Speed", repr(float(p.speed_mps)), ns=ACTX_NS)
            if p.cadence_spm is not None:
                sub(tpx, "RunCadence", str(_strides(p.cadence_spm)), ns=ACTX_NS)
    sub(activity, "Notes", name)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))


def _iso(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
