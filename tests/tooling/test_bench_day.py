"""The day's shape and the histogram quantiles the day's report is read from (pure logic)."""

import math

import pytest

from bench.day import NIGHT_FLOOR, arrival_share, phase_of
from bench.sampling import histogram_increase, quantile_from_buckets


def test_the_day_has_a_morning_and_an_evening_peak_over_a_night_trough():
    shares = {h / 4: arrival_share(h / 4) for h in range(96)}
    assert max(shares, key=lambda h: shares[h]) == 7.0
    evening = max((h for h in shares if h >= 12), key=lambda h: shares[h])
    assert 18.0 <= evening <= 19.0 and shares[evening] == pytest.approx(0.9 * (1 - NIGHT_FLOOR) + NIGHT_FLOOR, rel=0.01)
    assert shares[1.0] == pytest.approx(NIGHT_FLOOR, abs=0.001) and shares[3.0] < 0.035
    assert shares[13.0] < 0.2


def test_each_hour_belongs_to_one_phase():
    assert [phase_of(h) for h in (0, 4.99, 5, 8.5, 12, 18, 23.9)] == [
        "night",
        "night",
        "morning peak",
        "morning peak",
        "day",
        "evening peak",
        "late",
    ]


def test_quantiles_are_interpolated_within_cumulative_buckets():
    buckets = {0.01: 0.0, 0.05: 50.0, 0.1: 90.0, 0.5: 100.0, math.inf: 100.0}
    assert quantile_from_buckets(buckets, 0.5) == pytest.approx(0.05)
    assert quantile_from_buckets(buckets, 0.25) == pytest.approx(0.03)
    assert quantile_from_buckets(buckets, 0.99) == pytest.approx(0.1 + 0.4 * 0.9)
    assert quantile_from_buckets({0.01: 0.0, math.inf: 0.0}, 0.5) is None
    assert quantile_from_buckets({}, 0.5) is None


def test_both_days_replay_one_arrival_schedule_drawn_before_the_day():
    from bench.day import DayConfig, arrival_schedule

    config = DayConfig(minutes=6, peak_arrivals_per_s=1.2, seed=7)
    first, again = arrival_schedule(config), arrival_schedule(config)
    assert first == again and len(first) > 50
    assert first == sorted(first) and first[0] >= 0 and first[-1] < config.day_s
    # More runs start in the morning peak's hour than in a night hour.
    hour = config.day_s / 24
    morning = sum(1 for t in first if 6.5 * hour <= t < 7.5 * hour)
    night = sum(1 for t in first if 2 * hour <= t < 3 * hour)
    assert morning > 3 * max(1, night)
    assert arrival_schedule(DayConfig(minutes=6, seed=8)) != first


def test_a_histogram_that_counts_from_zero_again_is_a_reset_not_a_fall():
    before = {0.1: 80.0, 1.0: 95.0, math.inf: 100.0}
    assert histogram_increase(before, {0.1: 90.0, 1.0: 110.0, math.inf: 120.0}) == {
        0.1: 10.0,
        1.0: 15.0,
        math.inf: 20.0,
    }
    # A new replica on the port of a retired one: its own counts are the growth.
    assert histogram_increase(before, {0.1: 3.0, 1.0: 4.0, math.inf: 5.0}) == {0.1: 3.0, 1.0: 4.0, math.inf: 5.0}
    assert histogram_increase({}, {0.1: 1.0, math.inf: 2.0}) == {0.1: 1.0, math.inf: 2.0}
