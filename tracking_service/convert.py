"""Points between their protobuf form and the domain's."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from runtrack.v1 import tracking_pb2
from tracking_service.domain import Point


def point_from_proto(p: tracking_pb2.TrackPoint) -> Point:
    return Point(
        seq=p.seq,
        time_ms=p.time.seconds * 1000 + p.time.nanos // 1_000_000 if p.HasField("time") else None,
        latitude=p.latitude,
        longitude=p.longitude,
        altitude_m=p.altitude_m if p.HasField("altitude_m") else None,
        horizontal_accuracy_m=p.horizontal_accuracy_m if p.HasField("horizontal_accuracy_m") else None,
        speed_mps=p.speed_mps if p.HasField("speed_mps") else None,
        heart_rate_bpm=p.heart_rate_bpm if p.HasField("heart_rate_bpm") else None,
        cadence_spm=p.cadence_spm if p.HasField("cadence_spm") else None,
        after_pause=p.after_pause,
    )


def point_to_proto(p: Point) -> tracking_pb2.TrackPoint:
    ms = p.time_ms or 0
    out = tracking_pb2.TrackPoint(
        seq=p.seq,
        time=Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000),
        latitude=p.latitude,
        longitude=p.longitude,
        after_pause=p.after_pause,
    )
    for name in ("altitude_m", "horizontal_accuracy_m", "speed_mps", "heart_rate_bpm", "cadence_spm"):
        value = getattr(p, name)
        if value is not None:
            setattr(out, name, value)
    return out
