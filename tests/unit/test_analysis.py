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
    running_times,
    smoothed_altitudes,
)

WGS84 = Geodesic.WGS84


def trail(
    speeds_mps, *, every_s=1.0, azimuth=30.0, altitudes=None, heart_rates=None, start=(45.0, 6.0, 0.0), seq=1
) -> list[Sample]:
    """Fixes every `every_s` seconds, each segment run at its speed, along one geodesic."""
    lat, lon, t = start
    out = [Sample(seq, t, lat, lon, altitudes[0] if altitudes else None, heart_rates[0] if heart_rates else None)]
    for k, v in enumerate(speeds_mps, start=1):
        step = WGS84.Direct(lat, lon, azimuth, v * every_s)
        lat, lon, t = step["lat2"], step["lon2"], t + every_s
        out.append(
            Sample(seq + k, t, lat, lon, altitudes[k] if altitudes else None, heart_rates[k] if heart_rates else None)
        )
    return out


def after_a_pause(before: list[Sample], speeds_mps, *, pause_s=600.0, moved_m=3000.0, **kw) -> list[Sample]:
    """`before`, then the recorder stopped for `pause_s` while the runner went `moved_m` (a bus, a
    car), then a new stretch at `speeds_mps` whose first fix is marked after the pause."""
    last = before[-1]
    away = WGS84.Direct(last.latitude, last.longitude, 120.0, moved_m)
    after = trail(speeds_mps, start=(away["lat2"], away["lon2"], last.t_s + pause_s), seq=last.seq + 1, **kw)
    return [*before, Sample(**{**_fields(after[0]), "after_pause": True}), *after[1:]]


def _fields(s: Sample) -> dict:
    return {name: getattr(s, name) for name in Sample.__slots__}


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


def test_a_pause_adds_no_distance_no_split_time_and_no_zone_time():
    run = after_a_pause(trail([4.0] * 250, heart_rates=[150] * 251), [4.0] * 250, heart_rates=[150] * 251)
    a = analyse(run, max_hr=190)
    assert a.distance_m == pytest.approx(2000, abs=0.01), "the 3 km ridden while paused are not run"
    assert a.elapsed_s == pytest.approx(1100)
    assert [round(s.elapsed_s, 6) for s in a.splits_km] == [250.0, 250.0]
    assert a.splits_km[1].pace_s_per_km == pytest.approx(250)
    assert running_times(run)[-1] == pytest.approx(500)
    assert a.heart_rate_zones_s == [0.0, 0.0, 500.0, 0.0, 0.0]


def test_a_best_effort_never_spans_a_pause():
    run = after_a_pause(trail([5.0] * 120), [5.0] * 120, pause_s=5.0, moved_m=0.0)  # 600 m, a stop, 600 m
    a = analyse(run)
    assert a.distance_m == pytest.approx(1200, abs=0.01)
    efforts = {e.name: e for e in a.best_efforts}
    assert set(efforts) == {"400m"}, "no kilometre was run without stopping"
    assert efforts["400m"].elapsed_s == pytest.approx(80)
    fast_after = after_a_pause(trail([3.0] * 200), [6.0] * 200, pause_s=30.0, moved_m=50.0)
    best = best_effort(fast_after, cumulative_distances(fast_after), "1k", KM)
    assert best is not None and best.start_seq >= 202 and best.elapsed_s == pytest.approx(1000 / 6)


def test_a_lift_taken_while_paused_is_no_climb():
    before = trail([3.0] * 100, altitudes=[100.0] * 101)
    run = after_a_pause(before, [3.0] * 100, altitudes=[400.0] * 101, moved_m=500.0)
    a = analyse(run)
    assert a.elevation_gain_m == 0 and a.elevation_loss_m == 0


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(min_value=0.0, max_value=7.0), min_size=1, max_size=400),
    st.lists(st.floats(min_value=0.0, max_value=7.0), min_size=1, max_size=400),
    st.floats(min_value=1.0, max_value=3600.0),
    st.floats(min_value=0.0, max_value=20_000.0),
)
def test_with_a_pause_splits_add_up_to_the_running_time_and_efforts_stay_in_one_stretch(first, second, pause, moved):
    run = after_a_pause(trail(first), second, pause_s=pause, moved_m=moved)
    a = analyse(run)
    resumed = len(first) + 2  # the seq of the first fix after the pause
    assert a.distance_m == pytest.approx(sum(first) + sum(second), abs=1e-3)
    if a.distance_m == 0:
        return
    for splits in (a.splits_km, a.splits_mile):
        assert sum(s.elapsed_s for s in splits) == pytest.approx(a.elapsed_s - pause, abs=1e-6)
    for effort in a.best_efforts:
        assert (effort.start_seq >= resumed) == (effort.end_seq >= resumed), effort
