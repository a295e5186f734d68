"""Activity files as devices write them, for the tests and `scripts/bench files`, made with each
format's own writer: GPX with gpxpy, FIT with Garmin's FIT SDK (its Encoder), TCX with lxml following
Garmin's Training Center database v2 (no TCX writer ships in a package). The trail is a synthetic run
laid out with geodesics."""

from __future__ import annotations

import datetime as dt
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import garmin_fit_sdk
import gpxpy.gpx
from geographiclib.geodesic import Geodesic
from lxml import etree

GPXTPX = "http://www.garmin.com/xmlschemas/TrackPointExtension/v1"
TCX_NS = "http://www.garmin.com/xmlschemas/TrainingCenterDatabase/v2"
ACTX_NS = "http://www.garmin.com/xmlschemas/ActivityExtension/v2"
START = dt.datetime(2026, 4, 18, 6, 30, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Fix:
    time: dt.datetime
    latitude: float
    longitude: float
    altitude_m: float
    heart_rate_bpm: int
    cadence_spm: int  # steps per minute (files hold strides: half)


def synthetic_run(
    n: int = 900, *, start: dt.datetime = START, lat: float = 48.85, lon: float = 2.29, seed: int = 0
) -> list[Fix]:
    """n fixes one second apart: pace varying around 5 min/km, heading turning slowly, hills."""
    out = []
    for i in range(n):
        speed = 3.3 + 0.5 * math.sin(i / 40 + seed)
        heading = (i * 0.4 + seed * 37) % 360
        out.append(
            Fix(
                start + dt.timedelta(seconds=i),
                round(lat, 7),
                round(lon, 7),
                round(35 + 12 * math.sin(i / 120), 1),
                int(130 + 30 * (i / max(n - 1, 1)) + 5 * math.sin(i / 17)),
                2 * int(85 + 3 * math.sin(i / 23)),
            )
        )
        step = Geodesic.WGS84.Direct(lat, lon, heading, speed)
        lat, lon = step["lat2"], step["lon2"]
    return out


def gpx_file(
    fixes: list[Fix],
    name: str | None = "Bois de Boulogne loop",
    *,
    pauses: Collection[int] = (),
    new_tracks: Collection[int] = (),
    sport: str | None = None,
) -> bytes:
    """One track of one segment; a new segment starts at each index in `pauses` and a new track at
    each in `new_tracks` (as recorders write a stopped timer); `sport` goes in the track's <type>."""
    gpx = gpxpy.gpx.GPX()
    gpx.creator = "Forerunner 265"
    gpx.nsmap["gpxtpx"] = GPXTPX
    track = gpxpy.gpx.GPXTrack(name=name)
    track.type = sport  # type: ignore[assignment]  # gpxpy annotates it as always None
    gpx.tracks.append(track)
    segment = gpxpy.gpx.GPXTrackSegment()
    track.segments.append(segment)
    for i, f in enumerate(fixes):
        if i in new_tracks:
            track = gpxpy.gpx.GPXTrack(name=name)
            gpx.tracks.append(track)
        if i in new_tracks or i in pauses:
            segment = gpxpy.gpx.GPXTrackSegment()
            track.segments.append(segment)
        p = gpxpy.gpx.GPXTrackPoint(f.latitude, f.longitude, elevation=f.altitude_m, time=f.time)
        ext = ET.Element(f"{{{GPXTPX}}}TrackPointExtension")
        ET.SubElement(ext, f"{{{GPXTPX}}}hr").text = str(f.heart_rate_bpm)
        ET.SubElement(ext, f"{{{GPXTPX}}}cad").text = str(f.cadence_spm // 2)
        p.extensions.append(ext)
        segment.points.append(p)
    return gpx.to_xml(version="1.1").encode()


def tcx_file(
    fixes: list[Fix],
    notes: str | None = None,
    *,
    laps: Collection[int] = (),
    pauses: Collection[int] = (),
    sport: str = "Running",
) -> bytes:
    """One activity; a new Lap starts at each index in `laps` (an auto-lap: the timer runs on) and a
    new Track at each in `pauses` (a stopped timer). Each Lap's TotalTimeSeconds is its timer's time:
    its elapsed time less its pauses."""
    root = etree.Element(f"{{{TCX_NS}}}TrainingCenterDatabase", nsmap={None: TCX_NS, "ns3": ACTX_NS})

    def sub(parent: Any, tag: str, text: str | None = None, ns: str = TCX_NS) -> Any:
        el = etree.SubElement(parent, f"{{{ns}}}{tag}")
        if text is not None:
            el.text = text
        return el

    def iso(t: dt.datetime) -> str:
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")

    activity = sub(sub(root, "Activities"), "Activity")
    activity.set("Sport", sport)
    sub(activity, "Id", iso(fixes[0].time))
    starts = sorted({0, *laps})
    for first, end in zip(starts, [*starts[1:], len(fixes)], strict=True):
        lap_fixes = fixes[first:end]
        paused = sum((fixes[i].time - fixes[i - 1].time).total_seconds() for i in range(first + 1, end) if i in pauses)
        lap = sub(activity, "Lap")
        lap.set("StartTime", iso(lap_fixes[0].time))
        # A lap's timer runs to the next lap's start (or the last fix), less its own pauses.
        lap_end = fixes[end].time if end < len(fixes) and end not in pauses else lap_fixes[-1].time
        sub(lap, "TotalTimeSeconds", str((lap_end - lap_fixes[0].time).total_seconds() - paused))
        sub(lap, "DistanceMeters", "0")
        sub(lap, "Calories", "0")
        sub(lap, "Intensity", "Active")
        sub(lap, "TriggerMethod", "Manual")
        track = sub(lap, "Track")
        for i in range(first, end):
            if i in pauses and i != first:
                track = sub(lap, "Track")
            _trackpoint(sub(track, "Trackpoint"), fixes[i], sub, iso)
    if notes is not None:
        sub(activity, "Notes", notes)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))


def _trackpoint(tp: Any, f: Fix, sub: Callable[..., Any], iso: Callable[[dt.datetime], str]) -> None:
    sub(tp, "Time", iso(f.time))
    pos = sub(tp, "Position")
    sub(pos, "LatitudeDegrees", repr(f.latitude))
    sub(pos, "LongitudeDegrees", repr(f.longitude))
    sub(tp, "AltitudeMeters", repr(f.altitude_m))
    sub(sub(tp, "HeartRateBpm"), "Value", str(f.heart_rate_bpm))
    sub(sub(sub(tp, "Extensions"), "TPX", ns=ACTX_NS), "RunCadence", str(f.cadence_spm // 2), ns=ACTX_NS)


def fit_file(
    fixes: list[Fix], *, pauses: int = 0, timer_stops: Collection[int] = (), sport: str | None = None
) -> bytes:
    """An activity FIT file: file_id, one record message per fix (positions in semicircles), and
    `pauses` records without a position after the first fix (a watch that lost the sky). Before
    each index in `timer_stops`, the timer is stopped (event timer stop_all at the fix before) and
    started again; `sport` goes in a session message at the end."""
    mesgs = garmin_fit_sdk.Profile["mesg_num"]
    encoder = garmin_fit_sdk.Encoder()
    encoder.on_mesg(
        mesgs["FILE_ID"],
        {
            "type": "activity",
            "manufacturer": "garmin",
            "product": 1,
            "serial_number": 1234,
            "time_created": fixes[0].time,
        },
    )

    def semicircles(deg: float) -> int:
        return round(deg * 2**31 / 180)

    for i, f in enumerate(fixes):
        if i in timer_stops and i > 0:
            stop = {"timestamp": fixes[i - 1].time, "event": "timer", "event_type": "stop_all"}
            encoder.on_mesg(mesgs["EVENT"], stop)
            encoder.on_mesg(mesgs["EVENT"], {"timestamp": f.time, "event": "timer", "event_type": "start"})
        encoder.on_mesg(
            mesgs["RECORD"],
            {
                "timestamp": f.time,
                "position_lat": semicircles(f.latitude),
                "position_long": semicircles(f.longitude),
                "enhanced_altitude": f.altitude_m,
                "heart_rate": f.heart_rate_bpm,
                "cadence": f.cadence_spm // 2,
            },
        )
        if i == 0:
            for k in range(pauses):
                encoder.on_mesg(
                    mesgs["RECORD"], {"timestamp": f.time + dt.timedelta(milliseconds=10 * (k + 1)), "heart_rate": 120}
                )
    if sport is not None:
        encoder.on_mesg(
            mesgs["SESSION"],
            {"timestamp": fixes[-1].time, "start_time": fixes[0].time, "sport": sport, "event": "session"},
        )
    return bytes(encoder.close())
