"""The phones bench's own arithmetic: what a step that held is, the ceiling, CPU per point."""

from __future__ import annotations

from bench.phones import Step, ceiling
from bench.sampling import per_point_us


def step(phones: int, **kw: object) -> Step:
    s = Step(phones, 30.0, points_sent=phones * 30, points_durable=phones * 30, durable_p99_ms=200.0)
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def test_a_step_holds_only_with_no_failed_stream_every_point_durable_and_p99_within_a_second() -> None:
    assert step(1000).ok
    assert not step(1000, streams_failed=1).ok
    assert not step(1000, points_durable=29_999).ok
    assert not step(1000, durable_p99_ms=1000.1).ok
    assert not step(1000, durable_p99_ms=None).ok
    assert not step(1000, points_sent=0, points_durable=0).ok


def test_the_ceiling_is_the_most_phones_of_a_step_that_held() -> None:
    steps = [step(1000), step(2000), step(3000, durable_p99_ms=2500.0), step(4000, streams_failed=300)]
    assert ceiling(steps) == 2000
    assert ceiling([step(1000, streams_failed=1)]) == 0


def test_cpu_per_point_is_in_microseconds() -> None:
    assert per_point_us(1.5, 3000) == 500.0
    assert per_point_us(1.0, 0) == 0.0
