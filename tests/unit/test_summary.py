import datetime as dt
import math
import uuid
import zoneinfo

import pytest

from runtrack_common.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied
from runtrack_common.identity import Caller
from summary_service import runs
from summary_service.domain import Overview, default_name, list_page_size, stats_weeks, time_zone, validate_overview
from tests.unit.fakes import FakeRunStore, FakeTracksApi, FakeTrackStore

HOUR = 3_600_000_000


def overview(**changes) -> Overview:
    fields = dict(
        start_us=1_790_000_000_000_000,
        end_us=1_790_000_000_000_000 + HOUR,
        distance_m=10_000.0,
        moving_time_us=HOUR - 60_000_000,
        elevation_gain_m=50.0,
        point_count=3600,
        avg_heart_rate_bpm=150.0,
        polyline="_p~iF~ps|U",
    )
    fields.update(changes)
    return Overview(**fields)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"end_us": 1_790_000_000_000_000 - 1}, "overview.end_time: must not be before overview.start_time"),
        ({"distance_m": -1.0}, "overview.distance_m: must be a finite number >= 0"),
        ({"distance_m": math.nan}, "overview.distance_m: must be a finite number >= 0"),
        ({"moving_time_us": -1}, "overview.moving_time: must not be negative"),
        ({"moving_time_us": HOUR + 1}, "overview.moving_time: must not be longer than end_time - start_time"),
        ({"elevation_gain_m": -3.0}, "overview.elevation_gain_m: must be a finite number >= 0"),
        ({"avg_heart_rate_bpm": math.inf}, "overview.avg_heart_rate_bpm: must be a finite number >= 0"),
    ],
)
def test_an_invalid_overview_names_the_field_and_the_rule(changes, message):
    with pytest.raises(InvalidArgument) as err:
        validate_overview(overview(**changes))
    assert str(err.value) == message


def test_pace_is_moving_time_over_distance_and_zero_without_distance():
    assert overview().avg_pace_s_per_km == pytest.approx((3600 - 60) / 10)
    assert overview(distance_m=0.0).avg_pace_s_per_km == 0.0
    assert overview().elapsed_us == HOUR


def test_paging_and_stats_defaults_and_caps():
    assert (list_page_size(0), list_page_size(5), list_page_size(1000)) == (20, 5, 100)
    assert (stats_weeks(0), stats_weeks(3), stats_weeks(1000)) == (12, 3, 104)


def test_time_zone_defaults_to_utc_and_rejects_unknown_names():
    assert time_zone("") == "UTC"
    assert time_zone("Europe/Paris") == "Europe/Paris"
    with pytest.raises(InvalidArgument, match="time_zone: must be an IANA time zone name"):
        time_zone("Mars/Olympus_Mons")


async def test_stop_run_twice_with_same_overview_returns_same_run():
    store, trails = FakeRunStore(), FakeTracksApi(FakeTrackStore())
    rid = uuid.uuid4()
    first = await runs.stop_run(store, trails, Caller("u"), rid, "", overview())
    again = await runs.stop_run(store, trails, Caller("u"), rid, "", overview())
    assert first == again
    assert first.track_url == f"/v1/runs/{rid}/track"


async def test_stop_run_with_a_different_overview_already_exists():
    store, trails = FakeRunStore(), FakeTracksApi(FakeTrackStore())
    rid = uuid.uuid4()
    await runs.stop_run(store, trails, Caller("u"), rid, "", overview())
    with pytest.raises(AlreadyExists):
        await runs.stop_run(store, trails, Caller("u"), rid, "", overview(distance_m=9_999.0))


async def test_stop_run_of_someone_elses_run_is_denied():
    store, trails = FakeRunStore(), FakeTracksApi(FakeTrackStore())
    rid = uuid.uuid4()
    await runs.stop_run(store, trails, Caller("alice"), rid, "", overview())
    with pytest.raises(PermissionDenied):
        await runs.stop_run(store, trails, Caller("bob"), rid, "bob", overview())


async def test_get_run_of_an_unknown_run_is_not_found():
    with pytest.raises(NotFound):
        await runs.get_run(FakeRunStore(), FakeTracksApi(FakeTrackStore()), Caller("u"), uuid.uuid4())


async def test_list_runs_pages_newest_first_until_an_empty_token():
    store, trails = FakeRunStore(), FakeTracksApi(FakeTrackStore())
    for i in range(7):
        await runs.stop_run(
            store,
            trails,
            Caller("u"),
            uuid.uuid4(),
            "",
            overview(
                start_us=1_790_000_000_000_000 + i * HOUR * 24, end_us=1_790_000_000_000_000 + i * HOUR * 24 + HOUR
            ),
        )
    seen, token = [], ""
    while True:
        page, token = await runs.list_runs(store, trails, Caller("u"), "me", 3, token)
        seen += page
        if not token:
            break
    starts = [r.overview.start_us for r in seen]
    assert len(seen) == 7 and starts == sorted(starts, reverse=True)


@pytest.mark.parametrize("token", ["garbage!!", "eyJrIjoicnVucyJ9", "e30"])
async def test_a_garbled_list_token_is_invalid_argument(token):
    with pytest.raises(InvalidArgument, match="page_token"):
        await runs.list_runs(FakeRunStore(), FakeTracksApi(FakeTrackStore()), Caller("u"), "", 3, token)


async def test_a_list_token_of_another_user_is_invalid_argument():
    store, trails = FakeRunStore(), FakeTracksApi(FakeTrackStore())
    for _ in range(3):
        await runs.stop_run(store, trails, Caller("alice"), uuid.uuid4(), "", overview())
    _, token = await runs.list_runs(store, trails, Caller("alice"), "", 1, "")
    with pytest.raises(InvalidArgument, match="page_token"):
        await runs.list_runs(store, trails, Caller("bob"), "", 1, token)


@pytest.mark.parametrize(
    ("local", "zone", "name"),
    [
        ("2026-06-01T06:30:00", "Europe/Paris", "Morning run"),
        ("2026-06-01T12:15:00", "Europe/Paris", "Lunch run"),
        ("2026-06-01T15:00:00", "America/New_York", "Afternoon run"),
        ("2026-06-01T19:45:00", "Asia/Tokyo", "Evening run"),
        ("2026-06-01T23:30:00", "UTC", "Night run"),
        ("2026-06-01T04:59:00", "UTC", "Night run"),
    ],
)
def test_the_default_name_is_the_part_of_the_day_the_run_started_where_the_runner_is(local, zone, name):
    start = dt.datetime.fromisoformat(local).replace(tzinfo=zoneinfo.ZoneInfo(zone))
    assert default_name(int(start.timestamp() * 1_000_000), zone) == name


def test_the_declared_sport_is_shown_and_only_running_or_undeclared_runs_hold_records():
    from summary_service.activity_files import sport_of
    from summary_service.domain import RECORD_SPORTS, Run
    from summary_service.servicer import run_to_proto

    ride = Run(uuid.uuid4(), "ada", overview(), 0, sport="cycling")
    assert run_to_proto(ride).sport == "cycling"
    assert run_to_proto(Run(uuid.uuid4(), "ada", overview(), 0)).sport == ""
    assert [s for s in ("Running", "Biking", "driving", "Other", None, "Hiking") if sport_of(s) in RECORD_SPORTS] == [
        "Running",
        "Other",
        None,
    ]
