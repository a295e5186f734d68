"""Privacy zones: circles around places a runner keeps private, and the trimming they imply.

When anyone but the owner reads a trail, the points from the start up to the first point outside
every zone are left out, and likewise at the end; the points in between stay, even where the run
crosses a zone. Distances are geodesics on the WGS84 ellipsoid (geographiclib, Karney's algorithm).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from geographiclib.geodesic import Geodesic

from runtrack_common.errors import Violations
from tracking_service.domain import Point

MAX_ZONES = 10
MIN_RADIUS_M = 100.0
MAX_RADIUS_M = 5000.0
WGS84 = Geodesic.WGS84


@dataclass(frozen=True, slots=True)
class Zone:
    latitude: float
    longitude: float
    radius_m: float


def validate_zones(zones: Sequence[Zone]) -> None:
    """Raises InvalidArgument naming every broken rule, with the zone's index in the field path."""
    found = Violations()
    if len(zones) > MAX_ZONES:
        found.add("zones", f"at most {MAX_ZONES} zones, got {len(zones)}")
    for i, z in enumerate(zones):
        if not (math.isfinite(z.latitude) and -90.0 <= z.latitude <= 90.0):
            found.add(f"zones[{i}].latitude", "must be a finite number in [-90, 90]")
        if not (math.isfinite(z.longitude) and -180.0 <= z.longitude <= 180.0):
            found.add(f"zones[{i}].longitude", "must be a finite number in [-180, 180]")
        if not (math.isfinite(z.radius_m) and MIN_RADIUS_M <= z.radius_m <= MAX_RADIUS_M):
            found.add(f"zones[{i}].radius_m", f"must be between {MIN_RADIUS_M:g} and {MAX_RADIUS_M:g} metres")
    found.raise_if_any()


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Metres along the geodesic between two points (WGS84, as GPS positions are)."""
    return float(WGS84.Inverse(lat1, lon1, lat2, lon2, Geodesic.DISTANCE)["s12"])


def inside_any(p: Point, zones: Sequence[Zone]) -> bool:
    return any(distance_m(p.latitude, p.longitude, z.latitude, z.longitude) <= z.radius_m for z in zones)


def first_outside(points: Iterable[Point], zones: Sequence[Zone]) -> Point | None:
    """The first point, in the order given, outside every zone."""
    return next((p for p in points if not inside_any(p, zones)), None)


def trim(points: Sequence[Point], zones: Sequence[Zone]) -> list[Point]:
    """What a non-owner sees of a whole trail (points in seq order)."""
    first = first_outside(points, zones)
    last = first_outside(reversed(points), zones)
    if first is None or last is None:
        return []
    return [p for p in points if first.seq <= p.seq <= last.seq]
