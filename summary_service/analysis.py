"""What the server computes from a run's whole trail: splits per kilometre and per mile, best efforts
over the standard distances, elevation gain and loss from smoothed altitudes, and time in heart-rate
zones. Pure functions over the points in seq order; distances are geodesics on the WGS84 ellipsoid
(geographiclib), one per pair of consecutive points.

Times inside a segment are interpolated linearly: a split ends, and a best effort starts, where the
runner crossed the distance, not at the nearest fix.

Pauses: a fix marked `after_pause` is the first after the recorder's timer was stopped (a new GPX track
or segment, a new TCX Track, a FIT timer stop then start, or a phone's pause). Nothing between it and
the fix before counts: no distance, no time in a split (a split's time is the time the recorder ran),
no time in a heart-rate zone, no climb. A best effort may not span a pause: it lies within one stretch
of the recorder running, so a record cannot be set by resting in the middle of it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from geographiclib.geodesic import Geodesic

WGS84 = Geodesic.WGS84
KM = 1000.0
MILE = 1609.344
# Strava's best-effort distances: 400 m, 1 km, 1 mile, 5 km, 10 km, half marathon, marathon.
BEST_EFFORTS = (
    ("400m", 400.0),
    ("1k", 1000.0),
    ("1mile", MILE),
    ("5k", 5000.0),
    ("10k", 10000.0),
    ("half_marathon", 21097.5),
    ("marathon", 42195.0),
)
# The fastest a runner has ever covered each distance (the world records, rounded up by about 5 %):
# an effort faster than this was not run (a drive, a ride, a GPS jump) and holds no personal record.
MAX_RUNNING_MPS = {
    "400m": 9.8,  # 43.03 s
    "1k": 8.0,  # 2:11.96
    "1mile": 7.6,  # 3:43.13
    "5k": 7.0,  # 12:35.36
    "10k": 6.7,  # 26:11.00
    "half_marathon": 6.5,  # 56:42
    "marathon": 6.15,  # 2:00:35
}
# Altitudes are averaged over this many fixes either side, then a climb or a descent counts once it
# exceeds the hysteresis (GPS altitude wanders by metres while standing still).
SMOOTH_HALF_WINDOW = 5
HYSTERESIS_M = 2.0
# Heart-rate zones as fractions of the maximum heart rate (the five-zone model).
ZONE_BOUNDS = (0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True, slots=True)
class Sample:
    """One fix as the analysis needs it: seconds since any fixed origin, WGS84 degrees."""

    seq: int
    t_s: float
    latitude: float
    longitude: float
    altitude_m: float | None = None
    heart_rate_bpm: int | None = None
    # The first fix after a pause: nothing between the previous fix and this one counts.
    after_pause: bool = False


@dataclass(frozen=True, slots=True)
class Split:
    index: int  # 1, 2, 3...
    distance_m: float  # the unit, or less for the last one
    elapsed_s: float
    pace_s_per_km: float
    elevation_gain_m: float
    avg_heart_rate_bpm: float | None


@dataclass(frozen=True, slots=True)
class BestEffort:
    name: str
    distance_m: float
    elapsed_s: float
    start_m: float  # where in the run it started (metres from the start)
    start_seq: int  # the fix at or before its start, and at its end
    end_seq: int


@dataclass(frozen=True, slots=True)
class Analysis:
    distance_m: float
    elapsed_s: float
    splits_km: list[Split]
    splits_mile: list[Split]
    best_efforts: list[BestEffort]
    elevation_gain_m: float | None
    elevation_loss_m: float | None
    # Seconds in each zone (below 50 % of the maximum counts in none); None without heart rate.
    heart_rate_zones_s: list[float] | None


def cumulative_distances(samples: Sequence[Sample]) -> list[float]:
    """Metres from the first fix to each fix along the trail (none across a pause)."""
    out = [0.0]
    total = 0.0
    inverse, mask = WGS84.Inverse, Geodesic.DISTANCE
    for a, b in itertools.pairwise(samples):
        if not b.after_pause:
            total += inverse(a.latitude, a.longitude, b.latitude, b.longitude, mask)["s12"]
        out.append(total)
    return out


def running_times(samples: Sequence[Sample]) -> list[float]:
    """Seconds of the recorder running from the first fix to each fix: a pause's time left out."""
    if not samples:
        return []
    out = [0.0]
    for a, b in itertools.pairwise(samples):
        out.append(out[-1] if b.after_pause else out[-1] + (b.t_s - a.t_s))
    return out


def stretches(samples: Sequence[Sample]) -> list[range]:
    """The index ranges of the fixes between pauses (one range when the recorder never paused)."""
    starts = [0] + [i for i in range(1, len(samples)) if samples[i].after_pause]
    return [range(a, b) for a, b in zip(starts, [*starts[1:], len(samples)], strict=True)]


def _time_at(d: float, cum: Sequence[float], times: Sequence[float], i: int) -> float:
    """The time at distance `d`, which lies in segment i (cum[i] <= d <= cum[i+1])."""
    span = cum[i + 1] - cum[i]
    if span <= 0:
        return times[i + 1]
    return times[i] + (times[i + 1] - times[i]) * (d - cum[i]) / span


def smoothed_altitudes(samples: Sequence[Sample], half: int = SMOOTH_HALF_WINDOW) -> list[float | None]:
    """Each altitude averaged with those of the `half` fixes either side that have one, within its
    stretch between pauses (a lift taken while paused is not smoothed into a slope)."""
    parts = stretches(samples)
    if len(parts) > 1:
        return [a for part in parts for a in smoothed_altitudes(samples[part.start : part.stop], half)]
    alts = [s.altitude_m for s in samples]
    known = [(i, a) for i, a in enumerate(alts) if a is not None and math.isfinite(a)]
    if not known:
        return [None] * len(alts)
    prefix = [0.0]
    for _, a in known:
        prefix.append(prefix[-1] + a)
    positions = [i for i, _ in known]
    out: list[float | None] = []
    lo = hi = 0
    for i in range(len(alts)):
        while lo < len(positions) and positions[lo] < i - half:
            lo += 1
        while hi < len(positions) and positions[hi] <= i + half:
            hi += 1
        out.append((prefix[hi] - prefix[lo]) / (hi - lo) if hi > lo else None)
    return out


def climbs(
    altitudes: Sequence[float | None], hysteresis: float = HYSTERESIS_M, pauses: Sequence[bool] = ()
) -> list[float]:
    """The climb (+) or descent (-) credited at each fix: a change counts once it passes `hysteresis`
    from the last turning point, and is credited where it does. After a pause (`pauses[i]`), the
    climb starts again from the altitude there."""
    out = [0.0] * len(altitudes)
    anchor: float | None = None
    for i, a in enumerate(altitudes):
        if a is None:
            continue
        if anchor is None or (i < len(pauses) and pauses[i]):
            anchor = a
        elif abs(a - anchor) >= hysteresis:
            out[i] = a - anchor
            anchor = a
    return out


def splits(samples: Sequence[Sample], cum: Sequence[float], unit: float, credited: Sequence[float]) -> list[Split]:
    """Consecutive stretches of `unit` metres (the last one shorter), with the time the recorder ran
    over each (a pause inside a split adds nothing to it)."""
    if len(samples) < 2 or cum[-1] <= 0:
        return []
    times = running_times(samples)
    out: list[Split] = []
    start_t, start_d = times[0], 0.0
    hr_sum = hr_n = 0.0
    gain = 0.0
    boundary = unit
    for j in range(1, len(samples)):
        while cum[j] >= boundary:
            # Crossed a boundary inside segment j-1 -> j.
            t = _time_at(boundary, cum, times, j - 1)
            out.append(_split(len(out) + 1, unit, t - start_t, gain, hr_sum, hr_n))
            start_t, start_d = t, boundary
            gain, hr_sum, hr_n = 0.0, 0.0, 0.0
            boundary += unit
        hr = samples[j].heart_rate_bpm
        if hr is not None:
            hr_sum += hr
            hr_n += 1
        if credited[j] > 0:
            gain += credited[j]
    rest = cum[-1] - start_d
    if rest > 1e-6 or not out:  # (a run of a few millimetres is still one split)
        out.append(_split(len(out) + 1, rest, times[-1] - start_t, gain, hr_sum, hr_n))
    elif out and times[-1] > start_t:  # ended on a boundary, then stood still: that time is the last split's
        last = out.pop()
        elapsed = last.elapsed_s + times[-1] - start_t
        out.append(replace(last, elapsed_s=elapsed, pace_s_per_km=elapsed / last.distance_m * KM))
    return out


def _split(index: int, distance: float, elapsed: float, gain: float, hr_sum: float, hr_n: float) -> Split:
    pace = elapsed / distance * KM if distance > 0 else 0.0
    return Split(index, distance, elapsed, pace, gain, hr_sum / hr_n if hr_n else None)


def best_effort(samples: Sequence[Sample], cum: Sequence[float], name: str, distance: float) -> BestEffort | None:
    """The fastest stretch of exactly `distance` metres, in one pass: for each fix as the end, the
    start is `distance` back along the trail (interpolated in its segment); both only move forward.
    An effort never spans a pause: its start lies in the same stretch of the recorder running."""
    if len(samples) < 2 or cum[-1] < distance:
        return None
    times = [s.t_s for s in samples]
    best: tuple[float, float, int, int] | None = None  # (elapsed, start_m, start_i, end_j)
    i = 0
    stretch = 0  # the first fix of the stretch j is in
    for j in range(1, len(samples)):
        if samples[j].after_pause:
            stretch = j
        start = cum[j] - distance
        if start < 0:
            continue
        while cum[i + 1] <= start + 1e-6:  # the fix at (or just before) the start
            i += 1
        if i < stretch:  # the start lies before the last pause
            continue
        elapsed = times[j] - _time_at(start, cum, times, i)
        if best is None or elapsed < best[0]:
            best = (elapsed, start, i, j)
    if best is None:
        return None
    elapsed, start, i, j = best
    return BestEffort(name, distance, elapsed, start, samples[i].seq, samples[j].seq)


def heart_rate_zones(samples: Sequence[Sample], max_hr: float) -> list[float] | None:
    """Seconds spent in each zone, each segment's time given to its starting fix's heart rate."""
    if not any(s.heart_rate_bpm is not None for s in samples):
        return None
    zones = [0.0] * len(ZONE_BOUNDS)
    for a, b in itertools.pairwise(samples):
        if a.heart_rate_bpm is None or b.after_pause:
            continue
        share = a.heart_rate_bpm / max_hr
        zone = sum(1 for bound in ZONE_BOUNDS if share >= bound) - 1
        if zone >= 0:
            zones[zone] += max(0.0, b.t_s - a.t_s)
    return zones


def analyse(samples: Sequence[Sample], *, max_hr: float = 190.0, cum: Sequence[float] | None = None) -> Analysis:
    """Everything at once, for points in seq order (`cum`: their cumulative_distances, if known)."""
    cum = cumulative_distances(samples) if cum is None else cum
    smoothed = smoothed_altitudes(samples)
    credited = climbs(smoothed, pauses=[s.after_pause for s in samples])
    has_altitude = any(a is not None for a in smoothed)
    efforts = [e for name, d in BEST_EFFORTS if (e := best_effort(samples, cum, name, d)) is not None]
    return Analysis(
        distance_m=cum[-1],
        elapsed_s=samples[-1].t_s - samples[0].t_s if samples else 0.0,
        splits_km=splits(samples, cum, KM, credited),
        splits_mile=splits(samples, cum, MILE, credited),
        best_efforts=efforts,
        elevation_gain_m=sum(c for c in credited if c > 0) if has_altitude else None,
        elevation_loss_m=-sum(c for c in credited if c < 0) if has_altitude else None,
        heart_rate_zones_s=heart_rate_zones(samples, max_hr),
    )
