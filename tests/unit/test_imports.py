"""Reading activity files (no servers): each format back to the fixes its writer was given, the
refusals naming what and where, and fuzzing: whatever the bytes, the answer is a trail or an
InvalidArgument on `file`, never another exception."""

import dataclasses
import datetime as dt
import time

import polyline
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtrack_common.errors import InvalidArgument
from summary_service.imports import MAX_FILE_BYTES, FilePoint, prepare, read_file
from tests.activity_files import fit_file, gpx_file, synthetic_run, tcx_file

# fitdecode warns about each malformed definition the fuzzing makes; the answer is what is tested.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
NOW_US = int(time.time() * 1_000_000)
FIXES = synthetic_run(120)
FILES = {"gpx": gpx_file(FIXES), "tcx": tcx_file(FIXES, notes="Intervals"), "fit": fit_file(FIXES, pauses=2)}


@pytest.mark.parametrize("kind", sorted(FILES))
def test_each_format_reads_back_to_the_fixes_its_writer_was_given(kind):
    got = read_file(FILES[kind], now_us=NOW_US)
    assert got.format == kind
    assert got.skipped == (2 if kind == "fit" else 0)
    assert len(got.points) == len(FIXES)
    for p, f in zip(got.points, FIXES, strict=True):
        assert p.time_us == int(f.time.timestamp() * 1_000_000)
        assert p.latitude == pytest.approx(f.latitude, abs=1e-7) and p.longitude == pytest.approx(f.longitude, abs=1e-7)
        assert p.altitude_m == pytest.approx(f.altitude_m, abs=0.2)
        assert (p.heart_rate_bpm, p.cadence_spm) == (f.heart_rate_bpm, f.cadence_spm)
    assert got.name == {"gpx": "Bois de Boulogne loop", "tcx": "Intervals", "fit": None}[kind]


def test_a_name_keeps_no_control_characters_and_at_most_200_characters():
    got = read_file(gpx_file(FIXES, name="Tempo\t run\u2028" + "x" * 300), now_us=NOW_US)
    assert got.name is not None and got.name.startswith("Tempo run x") and len(got.name) == 200


def refusal(data: bytes, **kw) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        read_file(data, now_us=NOW_US, **kw)
    assert caught.value.field == "file"
    return caught.value


def test_entities_and_external_references_are_refused_before_anything_is_expanded_or_fetched():
    xxe = (
        b'<?xml version="1.0"?><!DOCTYPE gpx [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b'<gpx xmlns="http://www.topografix.com/GPX/1/1" version="1.1"><metadata><name>&x;</name></metadata></gpx>'
    )
    assert refusal(xxe).reason == "XML_DTD_FORBIDDEN"


def test_the_limits_are_named():
    assert refusal(FILES["gpx"], max_points=50).reason == "TOO_MANY_POINTS"
    assert refusal(FILES["fit"], max_points=50).reason == "TOO_MANY_POINTS"
    assert refusal(b"<" + b" " * MAX_FILE_BYTES).reason == "FILE_TOO_LARGE"


def test_a_time_outside_what_a_trail_accepts_names_the_point():
    future = synthetic_run(5, start=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    err = refusal(gpx_file(future))
    assert err.rule == "track 1, segment 1, point 1: time must not be more than 5 minutes in the future"
    err = refusal(tcx_file(synthetic_run(5, start=dt.datetime(1999, 12, 31, tzinfo=dt.UTC))))
    assert err.rule.startswith("activity 1, lap 1, trackpoint 1: time must not be before 2000")


def test_a_tcx_number_that_is_not_one_names_the_trackpoint():
    data = tcx_file(FIXES).replace(b"<AltitudeMeters>", b"<AltitudeMeters>high", 1)
    assert refusal(data).rule.startswith("activity 1, lap 1, trackpoint 1: AltitudeMeters must be a number")


def test_the_overview_is_what_a_phone_would_have_said():
    fixes = synthetic_run(300)
    prepared = prepare(gpx_file(fixes), now_us=NOW_US)
    o = prepared.overview
    assert o.point_count == 300 and o.end_us - o.start_us == 299_000_000
    assert o.moving_time_us == 299_000_000
    assert o.distance_m == pytest.approx(prepared.analysis["distance_m"])
    decoded = polyline.decode(o.polyline, 5)
    assert decoded[0] == pytest.approx((fixes[0].latitude, fixes[0].longitude), abs=1e-5)
    assert decoded[-1] == pytest.approx((fixes[-1].latitude, fixes[-1].longitude), abs=1e-5)


def test_standing_still_is_not_moving_time():
    fixes = synthetic_run(100)
    last = fixes[-1]
    still = [dataclasses.replace(last, time=last.time + dt.timedelta(seconds=k)) for k in range(1, 31)]
    prepared = prepare(gpx_file(fixes + still), now_us=NOW_US)
    assert prepared.overview.moving_time_us == 99_000_000


def _mutations():
    def truncate(data: bytes, at: int, _: int) -> bytes:
        return data[: at % len(data)]

    def flip(data: bytes, at: int, byte: int) -> bytes:
        i = at % len(data)
        return data[:i] + bytes([byte]) + data[i + 1 :]

    def insert(data: bytes, at: int, byte: int) -> bytes:
        i = at % len(data)
        return data[:i] + bytes([byte]) * 3 + data[i:]

    return st.sampled_from([truncate, flip, insert])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(sorted(FILES)),
    steps=st.lists(st.tuples(_mutations(), st.integers(0, 2**31), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_a_mutated_file_gives_a_trail_or_a_named_refusal_never_anything_else(kind, steps):
    data = FILES[kind]
    for mutate, at, byte in steps:
        if data:
            data = mutate(data, at, byte)
    try:
        got = read_file(data, now_us=NOW_US)
    except InvalidArgument as err:
        assert err.field == "file" and err.rule
        return
    assert len(got.points) >= 2 and all(isinstance(p, FilePoint) for p in got.points)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000) | st.text(max_size=500).map(lambda s: ("<?xml version='1.0'?>" + s).encode()))
def test_arbitrary_bytes_give_a_named_refusal(data):
    try:
        read_file(data, now_us=NOW_US)
    except InvalidArgument as err:
        assert err.field == "file"
