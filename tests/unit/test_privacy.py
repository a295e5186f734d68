"""Privacy zones: validation, and what a non-owner sees of a trail (pure logic and the paged scan)."""

import asyncio
import math
import uuid

import pytest
from geographiclib.geodesic import Geodesic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtrack_common.errors import InvalidArgument
from tests.unit.fakes import FakeTrackStore
from tracking_service import tracks
from tracking_service.domain import Point
from tracking_service.privacy import Zone, ZoneSet, distance_m, inside_any, trim, validate_zones

HOME = Zone(48.8566, 2.3522, 200.0)
# One degree of latitude is ~111.2 km: 0.001 degree ~ 111 m.
DEG_PER_M = 1 / 111_195.0


def at(seq: int, metres_north: float) -> Point:
    return Point(
        seq=seq,
        time_ms=1_790_000_000_000 + seq * 1000,
        latitude=HOME.latitude + metres_north * DEG_PER_M,
        longitude=HOME.longitude,
    )


def test_distance_is_metres_on_the_wgs84_ellipsoid():
    assert distance_m(48.8566, 2.3522, 48.8566, 2.3522) == 0.0
    # A degree of latitude is 110,574 m at the equator and 111,694 m at the poles on WGS84 (a sphere gives
    # 111,195 m everywhere).
    assert distance_m(0.0, 0.0, 1.0, 0.0) == pytest.approx(110_574.4, abs=0.1)
    assert distance_m(89.0, 0.0, 90.0, 0.0) == pytest.approx(111_693.9, abs=0.1)
    # Paris to London, about 344 km.
    assert distance_m(48.8566, 2.3522, 51.5074, -0.1278) == pytest.approx(343_923, rel=1e-4)


@pytest.mark.parametrize(
    "zones, message",
    [
        ([Zone(91.0, 0.0, 200.0)], "zones[0].latitude: must be a finite number in [-90, 90]"),
        ([HOME, Zone(0.0, -181.0, 200.0)], "zones[1].longitude: must be a finite number in [-180, 180]"),
        ([Zone(0.0, 0.0, 99.9)], "zones[0].radius_m: must be between 100 and 5000 metres"),
        ([Zone(0.0, 0.0, 5000.1)], "zones[0].radius_m: must be between 100 and 5000 metres"),
        ([Zone(math.nan, 0.0, 200.0)], "zones[0].latitude: must be a finite number in [-90, 90]"),
        ([HOME] * 11, "zones: at most 10 zones, got 11"),
    ],
)
def test_a_bad_zone_names_its_index_and_rule(zones, message):
    with pytest.raises(InvalidArgument) as err:
        validate_zones(zones)
    assert str(err.value) == message


def test_ten_zones_at_the_edges_of_the_ranges_are_valid():
    validate_zones([Zone(90.0, 180.0, 100.0)] * 5 + [Zone(-90.0, -180.0, 5000.0)] * 5)
    validate_zones([])


def test_no_zone_trims_nothing():
    points = [at(s, 0.0) for s in range(1, 6)]
    assert trim(points, []) == points


def test_a_run_from_home_loses_its_start_and_end_inside_the_zone():
    # Out from the door, 1 km away, back to the door.
    metres = [0, 100, 190, 250, 1000, 600, 210, 150, 0]
    points = [at(s, m) for s, m in enumerate(metres, start=1)]
    assert [p.seq for p in trim(points, [HOME])] == [4, 5, 6, 7]


def test_a_run_crossing_a_zone_in_the_middle_keeps_the_middle():
    metres = [-1000, -500, -100, 0, 100, 500, 1000]
    points = [at(s, m) for s, m in enumerate(metres, start=1)]
    assert trim(points, [HOME]) == points


def test_a_run_wholly_inside_a_zone_shows_nothing():
    points = [at(s, m) for s, m in enumerate([0, 50, 120, 60], start=1)]
    assert trim(points, [HOME]) == []


coordinate = st.floats(min_value=-150.0, max_value=150.0)  # metres from HOME's centre, east or north


@st.composite
def tracks_and_zones(draw):
    n = draw(st.integers(min_value=0, max_value=40))
    points = [
        Point(
            seq=seq,
            time_ms=1_790_000_000_000 + seq * 1000,
            latitude=HOME.latitude + draw(st.floats(-1500, 1500)) * DEG_PER_M,
            longitude=HOME.longitude + draw(st.floats(-1500, 1500)) * DEG_PER_M * 1.5,
        )
        for seq in range(1, n + 1)
    ]
    zones = [
        Zone(
            HOME.latitude + draw(coordinate) * DEG_PER_M * 5,
            HOME.longitude + draw(coordinate) * DEG_PER_M * 5,
            draw(st.floats(100.0, 1000.0)),
        )
        for _ in range(draw(st.integers(min_value=0, max_value=3)))
    ]
    return points, zones, draw(st.integers(min_value=1, max_value=7))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tracks_and_zones())
def test_a_non_owner_never_sees_a_point_in_a_zone_before_the_first_or_after_the_last_point_outside(case):
    points, zones, scan_page = case
    store = FakeTrackStore()
    run_id = uuid.uuid4()
    asyncio.run(store.write_points(run_id, points))
    # Small scan pages: the scan from each end crosses page boundaries.
    first, last = asyncio.run(tracks.visible_seqs(store, run_id, zones, scan_page))
    seen = [p for p in points if first <= p.seq <= last]
    assert seen == trim(points, zones)
    outside = [p.seq for p in points if not inside_any(p, zones)]
    if not outside:
        assert seen == []
        return
    # Nothing seen lies in a zone before the first point outside every zone, or after the last one;
    # and everything between them is seen (the middle of a run stays whole).
    assert [p.seq for p in seen] == list(range(outside[0], outside[-1] + 1))
    assert not inside_any(seen[0], zones) and not inside_any(seen[-1], zones)


zone_st = st.builds(
    Zone,
    latitude=st.floats(-89.0, 89.0),
    longitude=st.floats(-180.0, 180.0),
    radius_m=st.floats(100.0, 5000.0),
)


@st.composite
def zones_and_points(draw):
    """Zones anywhere on Earth (poles, the antimeridian) and points placed about their edges: the
    places where a sphere and the ellipsoid disagree."""
    zones = draw(st.lists(zone_st, min_size=1, max_size=10))
    points = []
    for seq in range(1, draw(st.integers(1, 40)) + 1):
        z = draw(st.sampled_from(zones))
        bearing = draw(st.floats(0.0, 360.0))
        metres = z.radius_m * draw(st.floats(0.9, 1.1)) if draw(st.booleans()) else draw(st.floats(0.0, 20_000.0))
        there = Geodesic.WGS84.Direct(z.latitude, z.longitude, bearing, metres)
        points.append(Point(seq=seq, time_ms=seq * 1000, latitude=there["lat2"], longitude=there["lon2"]))
    return zones, points


@settings(max_examples=300, deadline=None)
@given(zones_and_points())
def test_the_cheap_zone_test_answers_as_the_geodesic_does_everywhere(case):
    zones, points = case
    assert list(ZoneSet(zones).inside(points)) == [inside_any(p, zones) for p in points]


def test_a_geodesic_is_computed_only_near_a_zones_edge():
    zones = [Zone(48.8566 + k * 0.05, 2.3522, 1000.0) for k in range(10)]
    # 2,000 points: half deep inside the first zone, half far from every zone.
    points = [at(s, 10.0 * (s % 50)) for s in range(1, 1001)] + [at(s, 100_000.0) for s in range(1001, 2001)]
    zone_set = ZoneSet(zones)
    inside = zone_set.inside(points)
    assert inside[:1000].all() and not inside[1000:].any()
    assert zone_set.geodesics == 0
    assert zone_set.first_outside(points) == 1000
