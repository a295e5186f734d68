"""The tracking service's protobuf forms of its domain: points (both ways, a page in slices), live links,
privacy zones."""

from __future__ import annotations

import asyncio

from google.protobuf.timestamp_pb2 import Timestamp

from runtrack.v1 import tracking_pb2
from tracking_service.domain import Point
from tracking_service.live import LinkRecord, LiveRow
from tracking_service.privacy import Zone


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
    )
    if p.after_pause:  # present only where it is true
        out.after_pause = True
    for name in ("altitude_m", "horizontal_accuracy_m", "speed_mps", "heart_rate_bpm", "cadence_spm"):
        value = getattr(p, name)
        if value is not None:
            setattr(out, name, value)
    return out


# Points converted between two yields to the event loop: a page of 10,000 is ~50 ms of work, and
# other calls (health answers, other readers) get their turn in between.
CONVERT_CHUNK = 1000


async def points_to_proto(points: list[Point]) -> list[tracking_pb2.TrackPoint]:
    out: list[tracking_pb2.TrackPoint] = []
    for start in range(0, len(points), CONVERT_CHUNK):
        if start:
            await asyncio.sleep(0)
        out += [point_to_proto(p) for p in points[start : start + CONVERT_CHUNK]]
    return out


def link_to_proto(run_id: str, row: LiveRow, link: LinkRecord) -> tracking_pb2.LiveLink:
    out = tracking_pb2.LiveLink(link_id=link.link_id, run_id=run_id, webhook_url=link.webhook_url)
    out.create_time.FromDatetime(link.created_at)
    expiry = row.expiry(link)
    if expiry is not None:
        out.expire_time.FromDatetime(expiry)
    return out


def zones_to_proto(user_id: str, zones: list[Zone]) -> tracking_pb2.PrivacyZones:
    return tracking_pb2.PrivacyZones(
        user_id=user_id,
        zones=[
            tracking_pb2.PrivacyZone(latitude=z.latitude, longitude=z.longitude, radius_m=z.radius_m) for z in zones
        ],
    )
