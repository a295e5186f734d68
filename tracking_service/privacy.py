"""Privacy zones: circles around places a runner keeps private, and the trimming they imply.

When anyone but the owner reads a trail, the points from the start up to the first point outside
every zone are left out, and likewise at the end; the points in between stay, even where the run
crosses a zone. Distances are geodesics on the WGS84 ellipsoid (geographiclib, Karney's algorithm).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from geographiclib.geodesic import Geodesic

from runtrack_common.api_rules import MAX_RADIUS_M, MAX_ZONES, MIN_RADIUS_M, WGS84_LATITUDE, WGS84_LONGITUDE
from runtrack_common.errors import Violations
from tracking_service.domain import Point

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
        if not (math.isfinite(z.latitude) and WGS84_LATITUDE["minimum"] <= z.latitude <= WGS84_LATITUDE["maximum"]):
            found.add(f"zones[{i}].latitude", "must be a finite number in [-90, 90]")
        if not (math.isfinite(z.longitude) and WGS84_LONGITUDE["minimum"] <= z.longitude <= WGS84_LONGITUDE["maximum"]):
            found.add(f"zones[{i}].longitude", "must be a finite number in [-180, 180]")
        if not (math.isfinite(z.radius_m) and MIN_RADIUS_M <= z.radius_m <= MAX_RADIUS_M):
            found.add(f"zones[{i}].radius_m", f"must be between {MIN_RADIUS_M:g} and {MAX_RADIUS_M:g} metres")
    found.raise_if_any()


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Metres along the geodesic between two points (WGS84, as GPS positions are)."""
    return float(WGS84.Inverse(lat1, lon1, lat2, lon2, Geodesic.DISTANCE)["s12"])


def inside_any(p: Point, zones: Sequence[Zone]) -> bool:
    """The reference rule: within a zone's radius along the geodesic (one point, every zone)."""
    return any(distance_m(p.latitude, p.longitude, z.latitude, z.longitude) <= z.radius_m for z in zones)


# The great-circle distance on a sphere of the mean radius is within 0.56 % of the WGS84 geodesic
# (the meridian's radius of curvature is 6,335 km at the equator, the prime vertical's 6,400 km at
# the poles); with 1 % and a metre of slack the sphere decides every point clearly in or out, and the
# geodesic is computed only for points near a zone's edge.
MEAN_EARTH_RADIUS_M = 6_371_008.8
SPHERE_ERROR = 0.01
SLACK_M = 1.0
# Points decided at once: a scan stops at the first chunk holding a point outside every zone.
CHUNK = 512


class ZoneSet:
    """The zones made ready for deciding many points: cheap arithmetic for all (numpy, every zone
    at once), a geodesic only near a boundary. Same answers as `inside_any`."""

    def __init__(self, zones: Sequence[Zone]) -> None:
        self.zones = list(zones)
        self._lat = np.radians(np.array([z.latitude for z in self.zones], dtype=np.float64))
        self._lon = np.radians(np.array([z.longitude for z in self.zones], dtype=np.float64))
        self._cos_lat = np.cos(self._lat)
        self._radius = np.array([z.radius_m for z in self.zones], dtype=np.float64)
        self.geodesics = 0  # how many the cheap test could not spare (for tests and benchmarks)

    def __bool__(self) -> bool:
        return bool(self.zones)

    def inside(self, points: Sequence[Point]) -> np.ndarray:
        """For each point, whether it lies in any zone."""
        n = len(points)
        if not self.zones or n == 0:
            return np.zeros(n, dtype=bool)
        lat = np.radians(np.fromiter((p.latitude for p in points), dtype=np.float64, count=n))[:, None]
        lon = np.radians(np.fromiter((p.longitude for p in points), dtype=np.float64, count=n))[:, None]
        h = np.sin((lat - self._lat) / 2) ** 2 + np.cos(lat) * self._cos_lat * np.sin((lon - self._lon) / 2) ** 2
        sphere = 2 * MEAN_EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))
        surely_in = sphere * (1 + SPHERE_ERROR) + SLACK_M <= self._radius
        surely_out = sphere * (1 - SPHERE_ERROR) - SLACK_M > self._radius
        out: np.ndarray = surely_in.any(axis=1)
        near = ~(surely_in | surely_out)
        for i in np.flatnonzero(~out & near.any(axis=1)):
            p = points[int(i)]
            for j in np.flatnonzero(near[i]):
                self.geodesics += 1
                z = self.zones[int(j)]
                if distance_m(p.latitude, p.longitude, z.latitude, z.longitude) <= z.radius_m:
                    out[i] = True
                    break
        return out

    def first_outside(self, points: Sequence[Point]) -> int | None:
        """The index of the first point outside every zone, deciding a chunk at a time."""
        for start in range(0, len(points), CHUNK):
            chunk = points[start : start + CHUNK]
            outside = np.flatnonzero(~self.inside(chunk))
            if outside.size:
                return start + int(outside[0])
        return None


def first_outside(points: Sequence[Point], zones: Sequence[Zone] | ZoneSet) -> Point | None:
    """The first point, in the order given, outside every zone."""
    zone_set = zones if isinstance(zones, ZoneSet) else ZoneSet(zones)
    i = zone_set.first_outside(points)
    return None if i is None else points[i]


def trim(points: Sequence[Point], zones: Sequence[Zone] | ZoneSet) -> list[Point]:
    """What a non-owner sees of a whole trail (points in seq order)."""
    zone_set = zones if isinstance(zones, ZoneSet) else ZoneSet(zones)
    first = first_outside(points, zone_set)
    last = first_outside(points[::-1], zone_set)
    if first is None or last is None:
        return []
    return [p for p in points if first.seq <= p.seq <= last.seq]
