"""Ownership, sharing and deletion as use cases over the in-memory stores (no servers)."""

import dataclasses
import uuid

import pytest

from runtrack_common.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Unavailable
from runtrack_common.identity import Caller, require_self, resolve_user
from summary_service import runs
from summary_service.domain import Visibility
from tests.unit.fakes import FakeRunsApi, FakeRunStore, FakeTracksApi, FakeTrackStore
from tests.unit.test_summary import overview
from tracking_service import tracks
from tracking_service.domain import Point
from tracking_service.privacy import Zone

ADA, BOB = Caller("ada"), Caller("bob")


def pt(seq: int, lat: float = 48.8566) -> Point:
    return Point(seq=seq, time_ms=1_790_000_000_000 + seq * 1000, latitude=lat, longitude=2.3522)


class World:
    def __init__(self) -> None:
        self.tracks = FakeTrackStore()
        self.runs = FakeRunStore()
        self.trails = FakeTracksApi(self.tracks)
        self.visibility = FakeRunsApi(self.runs)

    async def run(self, owner: Caller = ADA, points: int = 3, stopped: bool = True) -> uuid.UUID:
        run_id = uuid.uuid4()
        if points:
            assert await self.tracks.claim_run(run_id, owner.user_id) == owner.user_id
            await self.tracks.write_points(run_id, [pt(s) for s in range(1, points + 1)])
        if stopped:
            await runs.stop_run(self.runs, self.trails, owner, run_id, "", overview())
        return run_id


@pytest.fixture
def world() -> World:
    return World()


def test_me_and_empty_are_the_caller_and_anyone_else_is_not():
    assert resolve_user("", ADA) == resolve_user("me", ADA) == "ada"
    assert resolve_user("bob", ADA) == "bob"
    assert require_self("me", ADA) == "ada"
    with pytest.raises(PermissionDenied) as err:
        require_self("bob", ADA)
    assert err.value.reason == "NOT_THE_CALLER"


async def test_a_run_is_private_until_shared_and_others_never_see_its_polyline(world):
    run_id = await world.run()
    assert (await runs.get_run(world.runs, world.trails, ADA, run_id)).visibility == Visibility.PRIVATE
    with pytest.raises(NotFound):
        await runs.get_run(world.runs, world.trails, BOB, run_id)
    shared = await runs.update_run(world.runs, ADA, run_id, Visibility.PUBLIC, ["visibility"])
    assert shared.visibility == Visibility.PUBLIC and shared.overview.polyline
    seen = await runs.get_run(world.runs, world.trails, BOB, run_id)
    # No polyline, and no heart rate: the owner has not shared it (no zones here: nothing else changes).
    assert seen.overview == dataclasses.replace(shared.overview, polyline="", avg_heart_rate_bpm=None)
    shared = await runs.update_run(world.runs, ADA, run_id, 0, ["share_health"], share_health=True)
    seen = await runs.get_run(world.runs, world.trails, BOB, run_id)
    assert seen.overview.avg_heart_rate_bpm == 150.0 and seen.share_health
    listed, _ = await runs.list_runs(world.runs, world.trails, BOB, "ada", 0, "")
    assert [r.run_id for r in listed] == [run_id] and listed[0].overview.polyline == ""


@pytest.mark.parametrize(
    "visibility, mask, field, message",
    [
        (
            Visibility.PUBLIC,
            ["overview.distance_m"],
            "update_mask",
            "only visibility, name, share_health can be updated",
        ),
        (Visibility.PUBLIC, ["name"], "run.name", "must not be empty"),
        (Visibility.UNSPECIFIED, ["visibility"], "run.visibility", "must be PRIVATE or PUBLIC"),
        (7, [], "run.visibility", "must be PRIVATE or PUBLIC"),
    ],
)
async def test_update_run_names_the_field_it_refuses(world, visibility, mask, field, message):
    run_id = await world.run()
    with pytest.raises(InvalidArgument) as err:
        await runs.update_run(world.runs, ADA, run_id, visibility, mask)
    assert err.value.violations[0].field == field and message in err.value.violations[0].rule


async def test_update_run_without_a_mask_changes_the_populated_visibility_and_nothing_else(world):
    run_id = await world.run()
    assert (await runs.update_run(world.runs, ADA, run_id, Visibility.PUBLIC, [])).visibility == Visibility.PUBLIC
    with pytest.raises(InvalidArgument) as err:  # no mask and nothing set (a PATCH without a body)
        await runs.update_run(world.runs, ADA, run_id, Visibility.UNSPECIFIED, [])
    assert err.value.field == "update_mask" and "nothing to update" in err.value.rule
    assert (await runs.get_run(world.runs, world.trails, ADA, run_id)).visibility == Visibility.PUBLIC


async def test_only_the_owner_changes_or_deletes_a_run_and_stats_are_the_owners_only(world):
    run_id = await world.run()
    with pytest.raises(NotFound):  # private: not revealed
        await runs.update_run(world.runs, BOB, run_id, Visibility.PUBLIC, [])
    with pytest.raises(NotFound):
        await runs.delete_run(world.runs, world.trails, BOB, run_id)
    await runs.update_run(world.runs, ADA, run_id, Visibility.PUBLIC, [])
    with pytest.raises(PermissionDenied):  # public: seen, not hers to change
        await runs.update_run(world.runs, BOB, run_id, Visibility.PRIVATE, [])
    with pytest.raises(PermissionDenied):
        await runs.delete_run(world.runs, world.trails, BOB, run_id)
    with pytest.raises(PermissionDenied):
        await runs.user_stats(world.runs, BOB, "ada", "UTC", 4)
    assert await world.tracks.points_after(run_id, 0, 10), "bob deleted ada's trail"


async def test_delete_removes_row_and_trail_and_a_second_delete_is_not_found(world):
    run_id = await world.run()
    await runs.delete_run(world.runs, world.trails, ADA, run_id)
    assert await world.runs.get_run(run_id) is None
    assert await world.tracks.points_after(run_id, 0, 10) == [] and await world.tracks.run_owner(run_id) is None
    with pytest.raises(NotFound):
        await runs.delete_run(world.runs, world.trails, ADA, run_id)


async def test_a_run_never_stopped_is_deleted_and_a_run_that_never_was_is_not_found(world):
    run_id = await world.run(stopped=False)
    await runs.delete_run(world.runs, world.trails, ADA, run_id)
    assert await world.tracks.points_after(run_id, 0, 10) == []
    with pytest.raises(NotFound):
        await runs.delete_run(world.runs, world.trails, ADA, uuid.uuid4())


async def test_someone_elses_unstopped_trail_is_not_found_and_stays(world):
    run_id = await world.run(stopped=False)
    with pytest.raises(NotFound):
        await runs.delete_run(world.runs, world.trails, BOB, run_id)
    assert len(await world.tracks.points_after(run_id, 0, 10)) == 3


async def test_a_delete_whose_trail_step_fails_changes_nothing_and_a_retry_finishes_it(world):
    run_id = await world.run()
    world.trails.fail_with = Unavailable("the tracking service is unavailable")
    with pytest.raises(Unavailable):
        await runs.delete_run(world.runs, world.trails, ADA, run_id)
    assert await world.runs.get_run(run_id) is not None
    world.trails.fail_with = None
    await runs.delete_run(world.runs, world.trails, ADA, run_id)
    assert await world.runs.get_run(run_id) is None


async def test_after_a_delete_stop_run_is_failed_precondition(world):
    run_id = await world.run()
    await runs.delete_run(world.runs, world.trails, ADA, run_id)
    with pytest.raises(FailedPrecondition) as err:
        await runs.stop_run(world.runs, world.trails, ADA, run_id, "", overview())
    assert err.value.reason == "RUN_DELETED"


async def test_a_non_owner_reads_a_shared_trail_trimmed_by_the_owners_zones(world):
    run_id = uuid.uuid4()
    await world.tracks.claim_run(run_id, "ada")
    # 0.001 degree of latitude is ~111 m: points 1-2 and 6 lie within 150 m of the zone's centre.
    lats = [48.8566, 48.8570, 48.8600, 48.8650, 48.8600, 48.8567]
    await world.tracks.write_points(run_id, [pt(s, lat) for s, lat in enumerate(lats, start=1)])
    await runs.stop_run(world.runs, world.trails, ADA, run_id, "", overview())
    await tracks.set_privacy_zones(world.tracks, ADA, "me", [Zone(48.8566, 2.3522, 150.0)])
    with pytest.raises(NotFound):  # private
        await tracks.track_page(world.tracks, world.visibility, BOB, run_id, 0, "")
    await runs.update_run(world.runs, ADA, run_id, Visibility.PUBLIC, [])
    page = await tracks.track_page(world.tracks, world.visibility, BOB, run_id, 0, "")
    assert [p.seq for p in page.points] == [3, 4, 5]
    page = await tracks.track_page(world.tracks, world.visibility, ADA, run_id, 0, "")
    assert [p.seq for p in page.points] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(NotFound):  # the cursor stays the owner's
        await tracks.cursor(world.tracks, BOB, run_id)
    with pytest.raises(PermissionDenied):
        await tracks.set_privacy_zones(world.tracks, BOB, "ada", [])


async def test_a_run_is_named_by_its_local_start_and_renamed_by_its_owner_only(world):
    run_id = await world.run()
    run = await runs.get_run(world.runs, world.trails, ADA, run_id)
    assert run.name.endswith(" run")
    renamed = await runs.update_run(world.runs, ADA, run_id, Visibility.UNSPECIFIED, ["name"], "  Lakeside 10k  ")
    assert renamed.name == "Lakeside 10k" and renamed.visibility == run.visibility
    assert (await runs.update_run(world.runs, ADA, run_id, Visibility.UNSPECIFIED, [], "Tempo")).name == "Tempo"
    for bad, rule in (("x" * 201, "at most 200 characters"), ("a\u0007b", "control characters"), ("a\nb", "control")):
        with pytest.raises(InvalidArgument) as err:
            await runs.update_run(world.runs, ADA, run_id, Visibility.UNSPECIFIED, ["name"], bad)
        assert err.value.violations[0].field == "run.name" and rule in err.value.violations[0].rule
    with pytest.raises(Exception) as err:
        await runs.update_run(world.runs, BOB, run_id, Visibility.UNSPECIFIED, ["name"], "Mine now")
    assert type(err.value).__name__ in ("PermissionDenied", "NotFound")


async def test_a_run_in_progress_cannot_be_taken_over_through_stop_run(world):
    run_id = await world.run(stopped=False)  # ada's phone is streaming it
    with pytest.raises(PermissionDenied) as err:
        await runs.stop_run(world.runs, world.trails, BOB, run_id, "", overview())
    assert err.value.reason == "RUN_ID_TAKEN"
    assert await world.runs.get_run(run_id) is None  # nothing written
    stopped = await runs.stop_run(world.runs, world.trails, ADA, run_id, "", overview())
    assert stopped.user_id == "ada"


async def test_a_stop_run_first_makes_the_caller_the_owner_of_record_for_the_trail_too(world):
    run_id = uuid.uuid4()
    await runs.stop_run(world.runs, world.trails, ADA, run_id, "", overview())
    assert await world.tracks.run_owner(run_id) == "ada"
    with pytest.raises(PermissionDenied) as err:
        await tracks.claim(world.tracks, BOB, run_id)
    assert err.value.reason == "RUN_ID_TAKEN"


async def test_a_deleted_run_is_deleted_for_its_owner_and_taken_for_anyone_else(world):
    run_id = await world.run()
    await runs.delete_run(world.runs, world.trails, ADA, run_id)
    with pytest.raises(FailedPrecondition):
        await tracks.claim(world.tracks, ADA, run_id)
    with pytest.raises(PermissionDenied) as err:
        await tracks.claim(world.tracks, BOB, run_id)
    assert err.value.reason == "RUN_ID_TAKEN"


async def test_others_see_the_times_and_distance_of_the_trimmed_trail_and_no_analysis(world):
    run_id = uuid.uuid4()
    await world.tracks.claim_run(run_id, "ada")
    # 0.001 degree of latitude is ~111 m: points 1-2 and 6 lie within 150 m of the zone's centre.
    lats = [48.8566, 48.8570, 48.8600, 48.8650, 48.8600, 48.8567]
    await world.tracks.write_points(run_id, [pt(s, lat) for s, lat in enumerate(lats, start=1)])
    await runs.stop_run(world.runs, world.trails, ADA, run_id, "", overview())
    await world.runs.set_analysis(run_id, {"distance_m": 1234.0, "splits_km": [], "best_efforts": []})
    await runs.update_run(world.runs, ADA, run_id, Visibility.PUBLIC, ["visibility"])
    await tracks.set_privacy_zones(world.tracks, ADA, "me", [Zone(48.8566, 2.3522, 150.0)])
    mine = await runs.get_run(world.runs, world.trails, ADA, run_id)
    assert mine.analysis is not None and mine.overview == overview()
    seen = await runs.get_run(world.runs, world.trails, BOB, run_id)
    o = seen.overview
    assert seen.analysis is None
    assert (o.start_us, o.end_us, o.point_count) == (pt(3).time_ms * 1000, pt(5).time_ms * 1000, 3)
    # 48.8600 -> 48.8650 -> 48.8600: two legs of ~556 m along the meridian.
    assert o.distance_m == pytest.approx(2 * 555.9, abs=1.0)
    assert o.moving_time_us == 2_000_000 and o.avg_heart_rate_bpm is None and o.elevation_gain_m == 0.0
    listed, _ = await runs.list_runs(world.runs, world.trails, BOB, "ada", 0, "")
    assert listed[0].overview == o


async def test_a_non_owner_gets_heart_rate_and_cadence_only_when_the_owner_shares_them(world):
    run_id = uuid.uuid4()
    await world.tracks.claim_run(run_id, "ada")
    beats = [dataclasses.replace(pt(s), heart_rate_bpm=150, cadence_spm=170) for s in (1, 2)]
    await world.tracks.write_points(run_id, beats)
    await runs.stop_run(world.runs, world.trails, ADA, run_id, "", overview())
    await runs.update_run(world.runs, ADA, run_id, Visibility.PUBLIC, ["visibility"])
    page = await tracks.track_page(world.tracks, world.visibility, BOB, run_id, 0, "")
    assert [(p.heart_rate_bpm, p.cadence_spm) for p in page.points] == [(None, None)] * 2
    own = await tracks.track_page(world.tracks, world.visibility, ADA, run_id, 0, "")
    assert [(p.heart_rate_bpm, p.cadence_spm) for p in own.points] == [(150, 170)] * 2
    await runs.update_run(world.runs, ADA, run_id, 0, [], share_health=True)  # no mask: the populated field
    page = await tracks.track_page(world.tracks, world.visibility, BOB, run_id, 0, "")
    assert [(p.heart_rate_bpm, p.cadence_spm) for p in page.points] == [(150, 170)] * 2
