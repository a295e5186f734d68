"""The analysis of a whole trail: splits, best efforts, elevation and heart-rate zones, checked on
trails whose answers are known (built with geographiclib's direct problem) and property-tested."""

import math

import pytest
from geographiclib.geodesic import Geodesic
from hypothesis import given, settings
from hypothesis import strategies as st

from summary_service.analysis import (
    KM,
    MILE,
    Sample,
    analyse,
    best_effort,
    climbs,
    cumulative_distances,
    smoothed_altitudes,
)

WGS84 = Geodesic.WGS84


def trail(speeds_mps, *, every_s=1.0, azimuth=30.0, altitudes=None, heart_rates=None) -> list[Sample]:
    """Fixes every `every_s` seconds, each segment run at its speed, along one geodesic."""
    lat, lon, t = 45.0, 6.0, 0.0
    out = [Sample(1, t, lat, lon, altitudes[0] if altitudes else None, heart_rates[0] if heart_rates else None)]
    for k, v in enumerate(speeds_mps, start=1):
        step = WGS84.Direct(lat, lon, azimuth, v * every_s)
        lat, lon, t = step["lat2"], step["lon2"], t + every_s
        out.append(
            Sample(k + 1, t, lat, lon, altitudes[k] if altitudes else None, heart_rates[k] if heart_rates else None)
        )
    return out


def test_an_even_pace_gives_even_splits_and_the_known_best_efforts():
    run = trail([4.0] * 2625)  # 10.5 km at 4 m/s: 250 s a kilometre
    a = analyse(run)
    assert a.distance_m == pytest.approx(10_500, abs=0.01)
    assert [round(s.elapsed_s, 3) for s in a.splits_km] == [250.0] * 10 + [125.0]
    assert a.splits_km[-1].distance_m == pytest.approx(500, abs=0.01)
    assert all(s.pace_s_per_km == pytest.approx(250) for s in a.splits_km)
    assert [round(s.elapsed_s, 3) for s in a.splits_mile[:6]] == [round(MILE / 4, 3)] * 6
    efforts = {e.name: e.elapsed_s for e in a.best_efforts}
    assert efforts == pytest.approx({"400m": 100, "1k": 250, "1mile": MILE / 4, "5k": 1250, "10k": 2500})


def test_the_best_kilometre_is_found_where_the_runner_sped_up():
    run = trail([4.0] * 750 + [5.0] * 200 + [4.0] * 500)  # 3 km, then 1 km at 5 m/s, then 2 km
    effort = best_effort(run, cumulative_distances(run), "1k", KM)
    assert effort is not None
    assert effort.elapsed_s == pytest.approx(200)
    assert effort.start_m == pytest.approx(3000, abs=0.01)
    assert (effort.start_seq, effort.end_seq) == (751, 951)


def test_a_run_shorter_than_a_distance_has_no_effort_for_it():
    a = analyse(trail([3.0] * 100))  # 300 m
    assert a.best_efforts == []
    assert len(a.splits_km) == 1 and a.splits_km[0].distance_m == pytest.approx(300, abs=0.01)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=7.0), min_size=1, max_size=900))
def test_splits_add_up_to_the_run_and_no_effort_beats_the_fastest_segment(speeds):
    run = trail(speeds)
    a = analyse(run)
    if a.distance_m == 0:
        assert a.splits_km == [] and a.best_efforts == []
        return
    for splits in (a.splits_km, a.splits_mile):
        assert sum(s.distance_m for s in splits) == pytest.approx(a.distance_m, abs=1e-6)
        assert sum(s.elapsed_s for s in splits) == pytest.approx(a.elapsed_s, abs=1e-6)
    fastest = max(speeds)
    previous = 0.0
    for effort in a.best_efforts:
        assert effort.elapsed_s >= effort.distance_m / fastest - 1e-6, "faster than the fastest fix-to-fix pace"
        assert effort.elapsed_s >= previous, "a longer distance never takes less time"
        previous = effort.elapsed_s


def test_gps_altitude_noise_is_no_climb_and_a_real_climb_is_counted():
    flat = [100 + math.sin(k) * 1.2 for k in range(600)]
    a = analyse(trail([3.0] * 599, altitudes=flat))
    assert a.elevation_gain_m == 0 and a.elevation_loss_m == 0
    hill = [100 + min(k, 300) * (100 / 300) - max(0, k - 300) * (40 / 299) + math.sin(k) for k in range(600)]
    b = analyse(trail([3.0] * 599, altitudes=hill))
    assert b.elevation_gain_m == pytest.approx(100, abs=3)
    # The last metre or two of a descent stays under the hysteresis, and the smoothing rounds the top.
    assert b.elevation_loss_m == pytest.approx(40, abs=4)
    assert sum(s.elevation_gain_m for s in b.splits_km) == pytest.approx(b.elevation_gain_m)
    assert analyse(trail([3.0] * 10)).elevation_gain_m is None


def test_smoothing_skips_missing_altitudes_and_hysteresis_credits_each_turn_once():
    assert smoothed_altitudes(trail([1.0] * 2, altitudes=[None, 10.0, None]), half=1) == [10.0, 10.0, 10.0]
    assert climbs([0.0, 1.0, 2.5, 2.0, 0.4, 0.5]) == [0.0, 0.0, 2.5, 0.0, -2.1, 0.0]


def test_time_in_heart_rate_zones():
    a = analyse(trail([3.0] * 100, heart_rates=[150] * 50 + [175] * 51), max_hr=190)
    assert a.heart_rate_zones_s == [0.0, 0.0, 50.0, 0.0, 50.0]  # 79 % and 92 % of the maximum
    assert analyse(trail([3.0] * 10)).heart_rate_zones_s is None
    assert a.splits_km[0].avg_heart_rate_bpm == pytest.approx((150 * 49 + 175 * 51) / 100)
