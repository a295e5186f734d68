"""A pause on the stored trail (TrackPoint.after_pause): what others are told of a trimmed trail
leaves it out, the exports write it as recorders do (a new GPX segment, a new TCX Track), and a file
exported and imported again keeps it, with the same distance and moving time."""

import time

import pytest

from runtrack.v1 import tracking_pb2
from summary_service.activity_files import prepare, read_file
from tracking_service.convert import point_from_proto, point_to_proto
from tracking_service.domain import Point
from tracking_service.files import to_gpx, to_tcx
from tracking_service.tracks import summarise

NOW_US = int(time.time() * 1_000_000)
T0_MS = 1_776_000_000_000  # 2026-04-12


def walk(n: int, *, paused_at: int, pause_ms: int = 600_000, jump_deg: float = 0.01) -> list[Point]:
    """n points a second apart, 3.3 m north each (~0.00003 deg); from `paused_at` on, later by
    `pause_ms` and `jump_deg` further north, the first of them marked after the pause."""
    out = []
    for i in range(n):
        after = i >= paused_at
        out.append(
            Point(
                seq=i + 1,
                time_ms=T0_MS + i * 1000 + (pause_ms if after else 0),
                latitude=48.85 + i * 0.00003 + (jump_deg if after else 0.0),
                longitude=2.29,
                altitude_m=35.0,
                heart_rate_bpm=140,
                cadence_spm=170,
                after_pause=i == paused_at,
            )
        )
    return out


def test_the_mark_goes_through_the_wire_both_ways():
    p = walk(3, paused_at=1)[1]
    wire = point_to_proto(p)
    assert wire.after_pause and tracking_pb2.TrackPoint.FromString(wire.SerializeToString()).after_pause
    assert point_from_proto(wire) == p
    assert not point_to_proto(walk(3, paused_at=1)[0]).after_pause


def test_the_visible_summary_has_no_distance_or_moving_time_across_a_pause():
    points = walk(200, paused_at=100)
    distance, moving_ms = summarise(points)
    unpaused, unpaused_moving = summarise([Point(**{**_fields(p), "after_pause": False}) for p in points])
    assert unpaused - distance == pytest.approx(1112, rel=0.01), "the ~1.1 km jump is not run"
    assert moving_ms == 198_000 and unpaused_moving == 198_000 + 600_000 + 1000


@pytest.mark.parametrize("fmt", ["gpx", "tcx"])
def test_an_exported_trail_keeps_its_pause_when_imported_again(fmt):
    points = walk(300, paused_at=120)
    data = to_gpx("Lunch run", points) if fmt == "gpx" else to_tcx("Lunch run", points)
    got = read_file(data, now_us=NOW_US)
    assert [i for i, p in enumerate(got.points) if p.after_pause] == [120]
    prepared = prepare(data, now_us=NOW_US)
    distance, moving_ms = summarise(points)
    assert prepared.overview.distance_m == pytest.approx(distance, rel=1e-6)
    assert prepared.overview.moving_time_us == moving_ms * 1000


def test_a_gpx_export_writes_a_segment_per_stretch_and_a_tcx_export_a_track():
    points = walk(10, paused_at=4)
    assert to_gpx("x", points).count(b"<trkseg>") == 2
    tcx = to_tcx("x", points)  # the lap's timer: 9 s elapsed less the step across the pause
    assert tcx.count(b"<Track>") == 2 and b"<TotalTimeSeconds>8.000</TotalTimeSeconds>" in tcx


def _fields(p: Point) -> dict:
    return {name: getattr(p, name) for name in Point.__slots__}


@pytest.mark.parametrize(
    "answer",
    [
        "Column with name 'after_pause' already exists",  # Cassandra 5
        "Invalid column name after_pause because it conflicts with an existing column",  # ScyllaDB, Cassandra 3-4
    ],
)
def test_the_migration_skips_a_column_already_added_and_raises_anything_else(answer):
    from cassandra import InvalidRequest

    from tracking_service.migrate import apply

    class Session:
        def __init__(self, error: str) -> None:
            self.error = error

        def execute(self, cql: str, timeout: float) -> None:
            raise InvalidRequest(self.error)

    apply(Session(answer), "ALTER TABLE ks.track_points ADD after_pause boolean")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        apply(Session("unconfigured table track_points"), "ALTER TABLE ks.track_points ADD x boolean")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        apply(Session(answer), "CREATE TABLE IF NOT EXISTS ks.t (a int PRIMARY KEY)")  # type: ignore[arg-type]
