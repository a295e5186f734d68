import math
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtrack_common.errors import InvalidArgument, PermissionDenied
from runtrack_common.identity import Caller
from tracking_service.domain import (
    EARLIEST_TIME_MS,
    FUTURE_SLACK_MS,
    MAX_TRACK_PAGE,
    Point,
    StreamIdentity,
    cursor_from_seqs,
    page_size,
    rejection_reason,
)

NOW = 1_790_000_000_000


def valid(**changes) -> Point:
    fields = dict(seq=1, time_ms=NOW - 1000, latitude=48.85, longitude=2.35)
    fields.update(changes)
    return Point(**fields)


def test_a_plain_point_is_valid():
    assert rejection_reason(valid(), NOW) is None


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"seq": 0}, "seq: must be >= 1"),
        ({"time_ms": None}, "time: is required"),
        ({"time_ms": EARLIEST_TIME_MS - 1}, "time: must not be before 2000-01-01T00:00:00Z"),
        ({"time_ms": NOW + FUTURE_SLACK_MS + 1}, "time: must not be more than 5 minutes in the future"),
        ({"latitude": 90.0001}, "latitude: must be a finite number in [-90, 90]"),
        ({"latitude": math.nan}, "latitude: must be a finite number in [-90, 90]"),
        ({"longitude": -180.5}, "longitude: must be a finite number in [-180, 180]"),
        ({"longitude": math.inf}, "longitude: must be a finite number in [-180, 180]"),
        ({"altitude_m": math.inf}, "altitude_m: must be a finite number"),
        ({"horizontal_accuracy_m": -0.1}, "horizontal_accuracy_m: must be a finite number >= 0"),
        ({"speed_mps": -1.0}, "speed_mps: must be a finite number >= 0"),
        ({"speed_mps": math.nan}, "speed_mps: must be a finite number >= 0"),
    ],
)
def test_each_bad_point_is_rejected_with_its_field_and_rule(changes, reason):
    assert rejection_reason(valid(**changes), NOW) == reason


def test_the_edges_of_the_ranges_are_valid():
    for lat, lon in [(-90, -180), (90, 180), (0, 0)]:
        assert rejection_reason(valid(latitude=lat, longitude=lon), NOW) is None
    assert rejection_reason(valid(time_ms=NOW + FUTURE_SLACK_MS), NOW) is None
    assert rejection_reason(valid(time_ms=EARLIEST_TIME_MS), NOW) is None


@given(
    lat=st.floats(allow_nan=True, allow_infinity=True),
    lon=st.floats(allow_nan=True, allow_infinity=True),
    seq=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_a_point_is_accepted_exactly_when_its_coordinates_and_seq_are_in_range(lat, lon, seq):
    ok = seq >= 1 and math.isfinite(lat) and -90 <= lat <= 90 and math.isfinite(lon) and -180 <= lon <= 180
    assert (rejection_reason(valid(latitude=lat, longitude=lon, seq=seq), NOW) is None) == ok


def test_the_first_message_needs_a_uuid_run_id_and_binds_the_stream_to_the_caller():
    rid = str(uuid.uuid4())
    u = Caller("u")
    assert StreamIdentity.from_first(rid, "u", 0, u) == StreamIdentity(uuid.UUID(rid), "u")
    assert StreamIdentity.from_first(rid, "", 0, u).user_id == "u"
    assert StreamIdentity.from_first(rid, "me", 0, u).user_id == "u"
    with pytest.raises(InvalidArgument, match="run_id: is required"):
        StreamIdentity.from_first("", "u", 0, u)
    with pytest.raises(InvalidArgument, match="run_id: must be a UUID"):
        StreamIdentity.from_first("run-1", "u", 0, u)
    with pytest.raises(PermissionDenied, match="user_id: 'v' is not the caller"):
        StreamIdentity.from_first(rid, "v", 0, u)
    with pytest.raises(InvalidArgument, match="points: at most 1000 points per message"):
        StreamIdentity.from_first(rid, "u", 1001, u)


def test_later_messages_may_omit_or_repeat_the_identity_but_never_change_it():
    rid = uuid.uuid4()
    ident = StreamIdentity(rid, "u")
    ident.check_later("", "", 1000)
    ident.check_later(str(rid), "u", 0)
    ident.check_later(str(rid).upper(), "u", 0)
    with pytest.raises(InvalidArgument, match="run_id: must not change"):
        ident.check_later(str(uuid.uuid4()), "", 0)
    with pytest.raises(InvalidArgument, match="user_id: must not change"):
        ident.check_later("", "v", 0)


@pytest.mark.parametrize(
    "seqs, expected",
    [([], (0, 0, 0)), ([1, 2, 3], (3, 3, 3)), ([2, 3], (0, 3, 2)), ([1, 2, 4, 5], (2, 5, 4)), ([1], (1, 1, 1))],
)
def test_the_cursor_stops_at_the_first_gap(seqs, expected):
    c = cursor_from_seqs(seqs)
    assert (c.contiguous_seq, c.max_seq, c.point_count) == expected


def test_track_page_size_defaults_and_caps():
    assert page_size(0) == 1000
    assert page_size(7) == 7
    assert page_size(10**6) == MAX_TRACK_PAGE


@pytest.mark.parametrize("known, seqs, expected", [(3, [], (3, 3, 3)), (3, [4, 5], (5, 5, 5)), (3, [5, 6], (3, 6, 5))])
def test_the_cursor_continues_from_a_known_contiguous_prefix(known, seqs, expected):
    c = cursor_from_seqs(seqs, known)
    assert (c.contiguous_seq, c.max_seq, c.point_count) == expected


@given(st.sets(st.integers(min_value=1, max_value=60)), st.integers(min_value=0, max_value=60))
def test_a_cursor_from_any_true_prefix_equals_the_full_scan(stored, cut):
    full = cursor_from_seqs(sorted(stored))
    known = min(cut, full.contiguous_seq)  # any value once computed is a true prefix
    assert cursor_from_seqs(sorted(s for s in stored if s > known), known) == full
