"""The dashboard's rules against the real PostgreSQL, through Envoy (gRPC and JSON)."""

import asyncio
import datetime as dt
import itertools
import uuid

import grpc
import psycopg
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from runtrack.v1 import summary_pb2, summary_pb2_grpc
from summary_service.migrate import apply_migrations
from tests.helpers import http_json, token_channel


def ts(value: dt.datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(value)
    return t


def overview(start: dt.datetime, minutes: int = 30, distance: float = 5000.0, **extra) -> summary_pb2.RunOverview:
    return summary_pb2.RunOverview(
        start_time=ts(start),
        end_time=ts(start + dt.timedelta(minutes=minutes)),
        distance_m=distance,
        moving_time=Duration(seconds=minutes * 60 - 30),
        elevation_gain_m=12.5,
        point_count=minutes * 60,
        **extra,
    )


def stub(channel):
    return summary_pb2_grpc.SummaryServiceStub(channel)


async def stop(channel, run_id, user_id, ov):
    return await stub(channel).StopRun(summary_pb2.StopRunRequest(run_id=run_id, user_id=user_id, overview=ov))


async def test_twenty_racing_identical_stop_runs_return_the_same_run(channel, run_id, user_id):
    ov = overview(dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC), avg_heart_rate_bpm=151.5, polyline="_p~iF~ps|U")
    runs = await asyncio.gather(*(stop(channel, run_id, user_id, ov) for _ in range(20)))
    assert all(r == runs[0] for r in runs)
    assert runs[0].overview == ov
    got = await stub(channel).GetRun(summary_pb2.GetRunRequest(run_id=run_id))
    assert got == runs[0]


async def test_stop_run_of_someone_elses_run_is_permission_denied(stack, channel, run_id, user_id):
    ov = overview(dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.UTC))
    await stop(channel, run_id, user_id, ov)
    async with token_channel(stack.envoy_address, stack.issuer.token("mallory")) as mallory:
        for claimed in ("", "mallory", user_id):  # as herself, or claiming to be the owner
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stop(mallory, run_id, claimed, ov)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("endTime", "2026-03-01T07:00:00Z", "overview.end_time: must not be before overview.start_time"),
        ("distanceM", -5, "overview.distance_m: must be a finite number >= 0"),
        ("movingTime", "-1s", "overview.moving_time: must not be negative"),
        ("movingTime", "7200s", "overview.moving_time: must not be longer than end_time - start_time"),
    ],
)
def test_an_invalid_overview_is_400_naming_the_field(stack, run_id, user_id, field, value, message, token):
    ov = {
        "startTime": "2026-03-01T08:00:00Z",
        "endTime": "2026-03-01T08:30:00Z",
        "distanceM": 5000,
        "movingTime": "1700s",
    }
    ov[field] = value
    status, body = http_json(
        stack.envoy_address, "POST", f"/v1/runs/{run_id}:stop", {"userId": user_id, "overview": ov}, token=token
    )
    assert (status, body["message"]) == (400, message)
    assert http_json(stack.envoy_address, "GET", f"/v1/runs/{run_id}", token=token)[0] == 404


async def test_list_runs_pages_newest_first_with_ties_broken_by_run_id(stack, channel, user_id, token):
    base = dt.datetime(2026, 1, 1, 7, 0, tzinfo=dt.UTC)
    starts = [base + dt.timedelta(days=i // 3) for i in range(45)]  # three runs share each start time
    ids = [str(uuid.uuid4()) for _ in starts]
    await asyncio.gather(*(stop(channel, rid, user_id, overview(s)) for rid, s in zip(ids, starts, strict=True)))
    expected = [
        rid for _, rid in sorted(zip(starts, ids, strict=True), key=lambda p: (p[0], uuid.UUID(p[1])), reverse=True)
    ]

    seen, next_token, pages = [], "", 0
    while True:
        status, page = http_json(
            stack.envoy_address,
            "GET",
            f"/v1/users/{user_id}/runs?pageSize=20" + (f"&pageToken={next_token}" if next_token else ""),
            token=token,
        )
        assert status == 200
        pages += 1
        seen += [r["runId"] for r in page["runs"]]
        next_token = page["nextPageToken"]
        if not next_token:
            break
    assert seen == expected and pages == 3
    status, page = http_json(stack.envoy_address, "GET", f"/v1/users/{user_id}/runs", token=token)
    assert len(page["runs"]) == 20  # the default page


@pytest.mark.parametrize(
    "page_token", ["not-a-token", "eyJrIjoicnVucyIsInMiOiJ4IiwicCI6WzEsMl19", "AAAA", "eyJrIjoidHJhY2sifQ"]
)
def test_a_forged_or_garbled_page_token_is_400(stack, user_id, token, page_token):
    status, body = http_json(
        stack.envoy_address, "GET", f"/v1/users/{user_id}/runs?pageToken={page_token}", token=token
    )
    assert status == 400
    assert body["message"].startswith("page_token:")


def local(zone: str, *args) -> dt.datetime:
    from zoneinfo import ZoneInfo

    return dt.datetime(*args, tzinfo=ZoneInfo(zone))


def dst_sundays(zone: str, days_back: int) -> tuple[dt.date, dt.date]:
    """The latest spring-forward and fall-back Sundays of `zone` in the last `days_back` days."""
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(zone)
    today = dt.datetime.now(tz).date()
    spring = fall = None
    for back in range(1, days_back):
        day = today - dt.timedelta(days=back)
        before = dt.datetime(day.year, day.month, day.day, 0, 30, tzinfo=tz).utcoffset()
        after = dt.datetime(day.year, day.month, day.day, 23, 30, tzinfo=tz).utcoffset()
        if after > before and spring is None:
            spring = day
        if after < before and fall is None:
            fall = day
    assert spring and fall and spring.weekday() == fall.weekday() == 6
    return spring, fall


async def test_weekly_stats_bucket_runs_by_monday_in_the_runners_zone_across_dst(stack, channel, user_id):
    paris = "Europe/Paris"
    spring, fall = dst_sundays(paris, 7 * 100)
    day = dt.timedelta(days=1)
    runs = {
        # Monday 00:30 just after the spring-forward Sunday: Sunday 22:30 in UTC.
        (spring + day).isoformat(): local(paris, *(spring + day).timetuple()[:3], 0, 30),
        # Sunday 23:30 on the fall-back day: still that week.
        (fall - 6 * day).isoformat(): local(paris, *fall.timetuple()[:3], 23, 30),
        # Monday 00:30 after the fall-back: Sunday 23:30 in UTC.
        (fall + day).isoformat(): local(paris, *(fall + day).timetuple()[:3], 0, 30),
    }
    for start in runs.values():
        await stop(channel, str(uuid.uuid4()), user_id, overview(start, distance=1000.0))
    # A run this week (in Paris: on a Sunday evening in UTC, Paris's week has already begun), so that the
    # current week is not empty.
    today = dt.datetime.now(dt.UTC).astimezone(local(paris, 2026, 1, 1).tzinfo).date()
    monday = today - dt.timedelta(days=today.weekday())
    await stop(channel, str(uuid.uuid4()), user_id, overview(local(paris, *monday.timetuple()[:3], 0, 1)))

    stats = await stub(channel).GetUserStats(
        summary_pb2.GetUserStatsRequest(user_id=user_id, time_zone=paris, weeks=104)
    )
    weeks = [w.week_start for w in stats.weeks]
    assert len(weeks) == 104
    mondays = [dt.date.fromisoformat(w) for w in weeks]
    assert all(d.weekday() == 0 for d in mondays)
    assert all((b - a).days == 7 for a, b in itertools.pairwise(mondays))
    assert mondays[-1] == today - dt.timedelta(days=today.weekday())
    by_week = {w.week_start: w for w in stats.weeks}
    for week in runs:
        assert by_week[week].run_count == 1, week
        assert by_week[week].distance_m == 1000.0
        assert by_week[week].moving_time.seconds == 1770
    spring_week = (spring - 6 * day).isoformat()
    assert by_week[spring_week].run_count == 0  # the UTC-bucketed week would hold the first run
    assert stats.weeks[-1].run_count == 1
    assert (stats.total_runs, stats.total_distance_m) == (4, 8000.0)

    utc = await stub(channel).GetUserStats(summary_pb2.GetUserStatsRequest(user_id=user_id, weeks=104))
    utc_weeks = {w.week_start: w.run_count for w in utc.weeks}
    assert utc_weeks[spring_week] == 1 and utc_weeks[(spring + day).isoformat()] == 0


async def test_stats_weeks_default_to_12_and_cap_at_104(channel, user_id):
    s = stub(channel)
    assert len((await s.GetUserStats(summary_pb2.GetUserStatsRequest(user_id=user_id))).weeks) == 12
    assert len((await s.GetUserStats(summary_pb2.GetUserStatsRequest(user_id=user_id, weeks=5000))).weeks) == 104


async def test_migrations_applied_concurrently_run_once(stack):
    async def apply():
        async with await psycopg.AsyncConnection.connect(stack.database_url, autocommit=True) as conn:
            return await apply_migrations(conn)

    results = await asyncio.gather(*(apply() for _ in range(5)))
    assert results == [[]] * 5  # the replicas applied them already; nobody applies twice
    with psycopg.connect(stack.database_url) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == sorted(set(versions)) and versions[0] == "0001_runs"


async def test_a_statement_over_the_timeout_is_cut_and_answers_unavailable(stack):
    from runtrack_common.config import Settings
    from runtrack_common.errors import Unavailable
    from summary_service.pg_store import PgRunStore

    store = PgRunStore(
        Settings.from_env(
            {
                "DATABASE_URL": stack.database_url,
                "PG_STATEMENT_TIMEOUT_MS": "200",
                "PG_POOL_MIN": "1",
                "PG_POOL_MAX": "2",
            }
        )
    )
    await store.ensure_ready()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(Unavailable, match="PostgreSQL unavailable: QueryCanceled"):
            async with store._conn() as conn:
                await conn.execute("SELECT pg_sleep(5)")
        assert loop.time() - started < 2
        await store.ensure_ready()  # the pool is fine afterwards
    finally:
        await store.close()


async def test_a_run_is_named_by_its_local_start_and_the_owner_renames_it(stack, channel, run_id, token):
    start = dt.datetime(2026, 7, 1, 16, 40, tzinfo=dt.UTC)  # 18:40 in Paris
    summary = summary_pb2_grpc.SummaryServiceStub(channel)
    run = await summary.StopRun(
        summary_pb2.StopRunRequest(run_id=run_id, overview=overview(start), time_zone="Europe/Paris")
    )
    assert run.name == "Evening run"
    path = f"/v1/runs/{run_id}"
    status, body = http_json(
        stack.envoy_address, "PATCH", f"{path}?updateMask=name", {"name": "Canal loop"}, token=token
    )
    assert status == 200 and body["name"] == "Canal loop" and body["visibility"] == "PRIVATE"
    listed = await summary.ListRuns(summary_pb2.ListRunsRequest(user_id="me"))
    assert [r.name for r in listed.runs if r.run_id == run_id] == ["Canal loop"]
    for bad, rule in (("x" * 201, "at most 200"), ("tab\there", "control"), ("   ", "must not be empty")):
        status, body = http_json(stack.envoy_address, "PATCH", f"{path}?updateMask=name", {"name": bad}, token=token)
        assert status == 400, body
        violation = body["details"][1]["fieldViolations"][0]
        assert violation["field"] == "run.name" and rule in violation["description"], body
    status, body = http_json(
        stack.envoy_address,
        "POST",
        f"/v1/runs/{uuid.uuid4()}:stop",
        {
            "overview": {"startTime": "2026-03-01T08:00:00Z", "endTime": "2026-03-01T08:30:00Z"},
            "timeZone": "Mars/Olympus",
        },
        token=token,
    )
    assert status == 400 and body["details"][1]["fieldViolations"][0]["field"] == "time_zone", body
