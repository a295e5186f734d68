"""scripts/phone's Python side: the fixes it hands the Kotlin phone, from a file or a generated route."""

import itertools

from devstack.activity_files import fit_file, gpx_file, synthetic_run
from devstack.phone import PhoneFix, fixes_of_file, fixes_of_route, main


def test_a_generated_route_is_the_same_each_time_one_fix_a_second():
    first, again = fixes_of_route(1.5), fixes_of_route(1.5)
    assert first == again and len(first) == 90
    assert {b.time_us - a.time_us for a, b in itertools.pairwise(first)} == {1_000_000}
    assert all(f.heart_rate_bpm and f.altitude_m is not None and not f.after_pause for f in first)


def test_a_gpx_file_gives_its_fixes_with_its_pauses_and_a_fit_file_the_same_trail(tmp_path):
    fixes = synthetic_run(120)
    gpx, fit = tmp_path / "run.gpx", tmp_path / "run.fit"
    gpx.write_bytes(gpx_file(fixes, pauses=[60]))
    fit.write_bytes(fit_file(fixes))
    from_gpx, from_fit = fixes_of_file(gpx), fixes_of_file(fit)
    assert len(from_gpx) == len(from_fit) == 120
    assert [i for i, f in enumerate(from_gpx) if f.after_pause] == [60]
    assert from_gpx[0].heart_rate_bpm == fixes[0].heart_rate_bpm
    assert abs(from_fit[5].latitude - fixes[5].latitude) < 1e-6


def test_each_fix_is_one_line_of_eight_fields_with_nothing_for_what_was_not_measured():
    full = PhoneFix(1_776_493_800_000_000, 48.85, 2.29, 35.5, 142, 170, 3.25, after_pause=True)
    assert full.line() == "1776493800000000\t48.85\t2.29\t35.5\t142\t170\t3.25\t1"
    assert PhoneFix(1, 0.1, 0.2).line().split("\t") == ["1", "0.1", "0.2", "", "", "", "", "0"]


def test_a_file_that_is_not_a_trail_is_refused_with_the_reader_s_reason(tmp_path):
    bad = tmp_path / "notes.gpx"
    bad.write_text("hello")
    try:
        main(["record", "--file", str(bad)])
    except SystemExit as stop:
        assert "is not a GPX, TCX or FIT file" in str(stop.code)
    else:
        raise AssertionError("a file that is no trail was taken")
