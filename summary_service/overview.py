"""The overview of a trail as a phone computes it at STOP RUN (times, moving time, distance, climb,
heart rate, the polyline), from its points and their analysis: what an imported file's run gets."""

from __future__ import annotations

import math
from collections.abc import Sequence

import polyline

from summary_service.activity_files.common import FilePoint
from summary_service.analysis import Analysis, Sample
from summary_service.domain import Overview

# A fix-to-fix stretch counts as moving at this speed or more (a walk is ~1.4 m/s).
MOVING_MPS = 0.5
# The overview's polyline keeps at most this many of the trail's points (evenly spaced).
POLYLINE_POINTS = 10_000


def samples_of(points: list[FilePoint]) -> list[Sample]:
    return [
        Sample(i, p.time_us / 1e6, p.latitude, p.longitude, p.altitude_m, p.heart_rate_bpm, p.after_pause)
        for i, p in enumerate(points, 1)
    ]


def overview_of(points: list[FilePoint], cum: Sequence[float], analysis: Analysis) -> Overview:
    """What a phone would have computed at STOP RUN, from the file's points, the distance from the
    start at each, and their analysis."""
    moving_us = 0
    for i in range(1, len(points)):
        dt_us = points[i].time_us - points[i - 1].time_us
        if points[i].after_pause:  # the recorder was stopped: neither time nor distance counts
            continue
        if dt_us > 0 and (cum[i] - cum[i - 1]) / (dt_us / 1e6) >= MOVING_MPS:
            moving_us += dt_us
    heart = [p.heart_rate_bpm for p in points if p.heart_rate_bpm is not None]
    step = max(1, math.ceil(len(points) / POLYLINE_POINTS))
    kept = [*range(0, len(points), step)]
    if kept[-1] != len(points) - 1:
        kept.append(len(points) - 1)
    return Overview(
        start_us=points[0].time_us,
        end_us=points[-1].time_us,
        distance_m=analysis.distance_m,
        moving_time_us=moving_us,
        elevation_gain_m=analysis.elevation_gain_m or 0.0,
        point_count=len(points),
        avg_heart_rate_bpm=sum(heart) / len(heart) if heart else None,
        polyline=polyline.encode([(points[i].latitude, points[i].longitude) for i in kept], 5),
    )
