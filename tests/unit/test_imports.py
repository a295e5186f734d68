"""Reading activity files (no servers): each format back to the fixes its writer was given, the
refusals naming what and where, and fuzzing: whatever the bytes, the answer is a trail or an
InvalidArgument on `file`, never another exception."""

import dataclasses
import datetime as dt
import time
import tracemalloc

import polyline
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack.activity_files import fit_file, gpx_file, synthetic_run, tcx_file
from runtrack_common.errors import InvalidArgument
from summary_service.activity_files import MAX_FILE_BYTES, Abandoned, FilePoint, prepare, read_file, sport_of

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


# ---- one hardened parse, bounded ----------------------------------------------------------------


def waypoint_bomb(size: int = MAX_FILE_BYTES - 1024) -> bytes:
    """The file that took 1 GiB: a GPX of empty waypoints up to the size limit, and two track points."""
    head = b'<?xml version="1.0"?><gpx version="1.1" xmlns="http://www.topografix.com/GPX/1/1">'
    track = b'<trk><trkseg><trkpt lat="1" lon="1"><time>2026-01-01T00:00:00Z</time></trkpt>'
    track += b'<trkpt lat="1.001" lon="1"><time>2026-01-01T00:00:10Z</time></trkpt></trkseg></trk></gpx>'
    wpt = b'<wpt lat="0" lon="0"/>'
    return head + wpt * ((size - len(head) - len(track)) // len(wpt)) + track


def test_a_file_of_countless_elements_is_refused_while_it_is_read_in_little_memory():
    data = waypoint_bomb()
    tracemalloc.start()
    try:
        with pytest.raises(InvalidArgument) as err:
            read_file(data, now_us=NOW_US)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.reason == "FILE_TOO_COMPLEX" and "at most 10,000 <wpt> elements" in err.value.rule
    assert peak < 4 * 1024 * 1024, f"the scan held {peak:,} bytes"  # a chunk of 1 MiB and its copy


@pytest.mark.parametrize(
    "doc",
    [
        b'<?xml version="1.0"?><!DOCTYPE gpx [<!ENTITY a "aaaa">]><gpx version="1.1"><trk/></gpx>',
        b'<?xml version="1.0"?>\n<!-- a comment first -->\n<!DOCTYPE gpx SYSTEM "http://example.org/x.dtd"><gpx/>',
        # After a byte-order mark and a long comment: past any look at the file's first bytes.
        b"\xef\xbb\xbf<!--" + b"x" * 4096 + b'--><!DOCTYPE gpx [<!ENTITY a "b">]><gpx>&a;</gpx>',
    ],
)
def test_a_dtd_is_refused_by_the_parser_wherever_and_however_it_is_written(doc):
    with pytest.raises(InvalidArgument) as err:
        read_file(doc, now_us=NOW_US)
    assert err.value.reason == "XML_DTD_FORBIDDEN"


def test_a_gpx_without_version_or_namespace_reads_as_gpx():
    data = gpx_file(FIXES).replace(b' xmlns="http://www.topografix.com/GPX/1/1"', b"").replace(b' version="1.1"', b"")
    assert b'topografix.com/GPX/1/1"' not in data
    got = read_file(data, now_us=NOW_US)
    assert got.format == "gpx" and len(got.points) == len(FIXES)


def test_a_file_of_waypoints_only_says_so():
    data = b'<?xml version="1.0"?><gpx version="1.1" xmlns="http://www.topografix.com/GPX/1/1">'
    data += b'<wpt lat="48.85" lon="2.35"><name>Start</name></wpt><wpt lat="48.86" lon="2.35"/></gpx>'
    with pytest.raises(InvalidArgument) as err:
        read_file(data, now_us=NOW_US)
    assert err.value.reason == "NO_TRACK" and "2 waypoint(s) and no track" in err.value.rule


def test_a_parse_is_abandoned_once_the_caller_has_gone():
    asked = []

    def gone() -> bool:
        asked.append(1)
        return len(asked) > 2

    with pytest.raises(Abandoned):
        prepare(
            gpx_file(FIXES).replace(b"<trk>", b"<!--" + b"x" * (8 * 1024 * 1024) + b"--><trk>"),
            now_us=NOW_US,
            cancelled=gone,
        )
    assert len(asked) == 3  # stopped at its third chunk of 1 MiB, not after reading all eight


# ---- real recorders' pauses and the sport they declare ------------------------------------------


def paused_for(fixes, at: int, seconds: float, north_deg: float = 0.01):
    """The fixes from `at` on later by `seconds` and moved `north_deg` (~1.1 km a 0.01): the runner
    stopped the watch and went on elsewhere (a bus, a car)."""
    return fixes[:at] + [
        dataclasses.replace(f, time=f.time + dt.timedelta(seconds=seconds), latitude=f.latitude + north_deg)
        for f in fixes[at:]
    ]


def pauses_of(data: bytes) -> list[int]:
    return [i for i, p in enumerate(read_file(data, now_us=NOW_US).points) if p.after_pause]


def test_a_gpx_segment_or_track_boundary_is_a_pause_with_no_distance_and_no_moving_time_across_it():
    fixes = paused_for(paused_for(synthetic_run(300), 100, 600), 200, 300)
    whole = prepare(gpx_file(fixes), now_us=NOW_US)
    data = gpx_file(fixes, pauses=[100], new_tracks=[200], sport="running")
    assert pauses_of(data) == [100, 200]
    paused = prepare(data, now_us=NOW_US)
    assert paused.file.sport == "running"
    jumps = whole.overview.distance_m - paused.overview.distance_m
    assert jumps == pytest.approx(2 * 1112, rel=0.01), "the two jumps of ~1.1 km are not run"
    assert paused.analysis["distance_m"] == pytest.approx(paused.overview.distance_m)
    assert paused.overview.moving_time_us == 297_000_000, "the 300 fixes' 297 one-second steps, no gap"
    assert paused.overview.end_us - paused.overview.start_us == 1_199_000_000
    splits = paused.analysis["splits_km"]
    assert sum(s["elapsed_s"] for s in splits) == pytest.approx(297), "no split holds the 15 minutes paused"


def test_tcx_tracks_within_a_lap_are_pauses_and_laps_are_pauses_only_when_the_timer_stopped():
    fixes = paused_for(paused_for(synthetic_run(400), 100, 120), 300, 240)
    # Laps of one Track each, their timers running on from one to the next: auto-laps, whatever the gaps.
    assert pauses_of(tcx_file(fixes, laps=[200, 300])) == [], "a lap boundary alone is an auto-lap"
    assert pauses_of(tcx_file(fixes, laps=[200], pauses=[100, 300])) == [100, 300]
    # The timer stopped between two laps: each its own Track, the first lap's timer ends before the gap.
    assert pauses_of(tcx_file(fixes, laps=[100, 300], pauses=[100, 300])) == [100, 300]
    # A pause inside a lap does not make the next (continuous) lap boundary a pause.
    assert pauses_of(tcx_file(fixes, laps=[200], pauses=[100])) == [100]
    got = read_file(tcx_file(fixes, laps=[200], pauses=[100, 300], sport="Biking"), now_us=NOW_US)
    assert got.sport == "cycling" and got.name == "Biking (imported)"
    assert got.points[100].where == "activity 1, lap 1, trackpoint 101"


def test_a_fit_timer_stopped_and_started_is_a_pause_and_the_session_names_the_sport():
    fixes = paused_for(synthetic_run(300), 150, 900)
    data = fit_file(fixes, timer_stops=[150], sport="cycling", pauses=2)
    assert pauses_of(data) == [150]
    prepared = prepare(data, now_us=NOW_US)
    assert prepared.file.sport == "cycling"
    assert prepared.overview.moving_time_us == 298_000_000
    assert prepared.overview.end_us - prepared.overview.start_us == 1_199_000_000
    assert pauses_of(fit_file(fixes)) == [], "without the timer's events, a gap is only a gap"


@pytest.mark.parametrize(
    ("declared", "sport"),
    [
        ("Running", "running"),
        ("trail_running", "running"),
        ("Biking", "cycling"),
        ("Road Biking", "cycling"),
        ("driving", "driving"),
        ("Other", ""),
        ("generic", ""),
        ("9", ""),
        ("  Hiking ", "hiking"),
        (None, ""),
    ],
)
def test_a_declared_sport_reads_in_one_vocabulary(declared, sport):
    assert sport_of(declared) == sport


def test_each_format_declares_its_sport_where_its_recorders_write_it():
    assert read_file(gpx_file(FIXES, sport="Ride"), now_us=NOW_US).sport == "cycling"
    assert read_file(gpx_file(FIXES), now_us=NOW_US).sport == ""
    assert read_file(tcx_file(FIXES), now_us=NOW_US).sport == "running"
    assert read_file(tcx_file(FIXES, sport="Other"), now_us=NOW_US).sport == ""
    assert read_file(fit_file(FIXES, sport="running"), now_us=NOW_US).sport == "running"
    assert read_file(fit_file(FIXES), now_us=NOW_US).sport == ""


def test_an_empty_element_of_a_point_is_no_value_and_a_word_where_a_number_goes_names_the_point():
    data = gpx_file(FIXES).replace(b"<ele>35.0</ele>", b"<ele></ele>", 1)
    assert data != gpx_file(FIXES)
    assert read_file(data, now_us=NOW_US).points[0].altitude_m is None
    err = refusal(gpx_file(FIXES).replace(b"<ele>35.0</ele>", b"<ele>high</ele>", 1))
    assert err.rule == "track 1, segment 1, point 1: ele must be a number, got 'high'"
