"""A stateful fuzz with two runners on the real stack through Envoy (Hypothesis's rule-based state
machine): Ada records, stops, shares, unshares, zones and deletes runs in any order; Mallory, who
learns every one of Ada's run ids, tries every method on them in between. After each step Ada's runs
are exactly what she made of them, and Mallory has read only what Ada shared (the trimmed trail, no
heart rate) and changed nothing. The seed is printed by Hypothesis on a failure."""

from __future__ import annotations

import datetime as dt
import uuid

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, rule

from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from tests.helpers import point
from tests.integration.faults import report
from tests.integration.test_dashboard import overview

START = dt.datetime(2026, 8, 1, 7, 0, tzinfo=dt.UTC)
HOME = (48.8566, 2.3522)
DEG_PER_M = 1 / 111_195.0
ATTEMPTS: dict[str, int] = {}


def at_metres(seq: int, metres: float) -> tracking_pb2.TrackPoint:
    return point(seq, latitude=HOME[0] + metres * DEG_PER_M, longitude=HOME[1], heart_rate_bpm=150)


class Runner:
    def __init__(self, address: str, token: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.tracking = tracking_pb2_grpc.TrackingServiceStub(self.channel)
        self.summary = summary_pb2_grpc.SummaryServiceStub(self.channel)

    def code(self, method, request) -> grpc.StatusCode:
        try:
            method(request, metadata=self.metadata, timeout=15)
        except grpc.RpcError as err:
            return err.code()  # type: ignore[attr-defined, no-any-return]
        return grpc.StatusCode.OK


class Model:
    def __init__(self) -> None:
        self.points = 0
        self.stopped = False
        self.public = False
        self.deleted = False


def make_machine(stack):
    class TwoRunners(RuleBasedStateMachine):
        runs = Bundle("runs")

        def __init__(self) -> None:
            super().__init__()
            # Two runners new to the store in each example: what one example left does not count in the next.
            self.ada_user = f"fuzz-ada-{uuid.uuid4().hex[:8]}"
            self.ada = Runner(stack.envoy_address, stack.issuer.token(self.ada_user, ttl_s=3600))
            self.mallory = Runner(
                stack.envoy_address, stack.issuer.token(f"fuzz-mallory-{uuid.uuid4().hex[:8]}", ttl_s=3600)
            )
            self.model: dict[str, Model] = {}
            self.zoned = False

        def teardown(self) -> None:
            self.ada.channel.close()
            self.mallory.channel.close()

        def _stream(self, who: Runner, run_id: str, points) -> grpc.StatusCode:
            request = iter([tracking_pb2.RecordTrackRequest(run_id=run_id, points=points)])
            return who.code(who.tracking.RecordTrack, request)

        @initialize(target=runs, n=st.integers(2, 6), start_inside=st.booleans())
        def ada_has_a_run_already(self, n, start_inside):
            return self.ada_starts_a_run(n, start_inside)

        @rule(target=runs, n=st.integers(2, 6), start_inside=st.booleans())
        def ada_starts_a_run(self, n, start_inside):
            run_id = str(uuid.uuid4())
            points = [at_metres(s, (50.0 if start_inside and s == 1 else 500.0 + 100 * s)) for s in range(1, n + 1)]
            assert self._stream(self.ada, run_id, points) == grpc.StatusCode.OK
            self.model[run_id] = Model()
            self.model[run_id].points = n
            return run_id

        @rule(run_id=runs)
        def ada_stops(self, run_id):
            m = self.model[run_id]
            ov = overview(START)
            ov.avg_heart_rate_bpm = 150.0
            got = self.ada.code(self.ada.summary.StopRun, summary_pb2.StopRunRequest(run_id=run_id, overview=ov))
            assert got == (grpc.StatusCode.FAILED_PRECONDITION if m.deleted else grpc.StatusCode.OK)
            m.stopped = m.stopped or not m.deleted

        @rule(run_id=runs, public=st.booleans())
        def ada_shares(self, run_id, public):
            m = self.model[run_id]
            request = summary_pb2.UpdateRunRequest(
                run=summary_pb2.Run(run_id=run_id, visibility=summary_pb2.PUBLIC if public else summary_pb2.PRIVATE),
                update_mask=FieldMask(paths=["visibility"]),
            )
            got = self.ada.code(self.ada.summary.UpdateRun, request)
            if m.stopped and not m.deleted:
                assert got == grpc.StatusCode.OK
                m.public = public
            else:
                assert got == grpc.StatusCode.NOT_FOUND

        @rule(on=st.booleans())
        def ada_zones_her_door(self, on):
            zones = [tracking_pb2.PrivacyZone(latitude=HOME[0], longitude=HOME[1], radius_m=200.0)] if on else []
            got = self.ada.code(self.ada.tracking.SetPrivacyZones, tracking_pb2.SetPrivacyZonesRequest(zones=zones))
            assert got == grpc.StatusCode.OK
            self.zoned = on

        @rule(run_id=consumes(runs))
        def ada_deletes(self, run_id):
            m = self.model[run_id]
            assert (
                self.ada.code(self.ada.summary.DeleteRun, summary_pb2.DeleteRunRequest(run_id=run_id))
                == grpc.StatusCode.OK
            )
            m.deleted, m.public, m.stopped = True, False, False

        @rule(
            run_id=runs,
            attack=st.sampled_from(
                [
                    "RecordTrack",
                    "StopRun",
                    "ClaimRun",
                    "UpdateRun",
                    "DeleteRun",
                    "DeleteTrack",
                    "CreateLiveLink",
                    "MarkRunStopped",
                    "AnalyseRun",
                    "GetTrackCursor",
                ]
            ),
        )
        def mallory_tries_to_change_or_peek(self, run_id, attack):
            requests = {
                "RecordTrack": (None, None),
                "StopRun": (
                    self.mallory.summary.StopRun,
                    summary_pb2.StopRunRequest(run_id=run_id, overview=overview(START)),
                ),
                "ClaimRun": (self.mallory.tracking.ClaimRun, tracking_pb2.ClaimRunRequest(run_id=run_id)),
                "UpdateRun": (
                    self.mallory.summary.UpdateRun,
                    summary_pb2.UpdateRunRequest(
                        run=summary_pb2.Run(run_id=run_id, visibility=summary_pb2.PUBLIC),
                        update_mask=FieldMask(paths=["visibility"]),
                    ),
                ),
                "DeleteRun": (self.mallory.summary.DeleteRun, summary_pb2.DeleteRunRequest(run_id=run_id)),
                "DeleteTrack": (self.mallory.tracking.DeleteTrack, tracking_pb2.DeleteTrackRequest(run_id=run_id)),
                "CreateLiveLink": (
                    self.mallory.tracking.CreateLiveLink,
                    tracking_pb2.CreateLiveLinkRequest(run_id=run_id),
                ),
                "MarkRunStopped": (
                    self.mallory.tracking.MarkRunStopped,
                    tracking_pb2.MarkRunStoppedRequest(run_id=run_id),
                ),
                "AnalyseRun": (
                    self.mallory.summary.AnalyseRun,
                    summary_pb2.AnalyseRunRequest(run_id=run_id, point_count=1),
                ),
                "GetTrackCursor": (
                    self.mallory.tracking.GetTrackCursor,
                    tracking_pb2.GetTrackCursorRequest(run_id=run_id),
                ),
            }
            method, request = requests[attack]
            got = (
                self._stream(self.mallory, run_id, [at_metres(99, 0.0)])
                if method is None
                else self.mallory.code(method, request)
            )
            ATTEMPTS[attack] = ATTEMPTS.get(attack, 0) + 1
            assert got != grpc.StatusCode.OK, f"Mallory's {attack} on Ada's run succeeded"
            assert got in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED), (attack, got)

        @rule(run_id=runs)
        def mallory_reads(self, run_id):
            m = self.model[run_id]
            visible = m.public and m.stopped and not m.deleted
            run_code = self.mallory.code(self.mallory.summary.GetRun, summary_pb2.GetRunRequest(run_id=run_id))
            assert run_code == (grpc.StatusCode.OK if visible else grpc.StatusCode.NOT_FOUND)
            try:
                track = self.mallory.tracking.GetTrack(
                    tracking_pb2.GetTrackRequest(run_id=run_id), metadata=self.mallory.metadata, timeout=15
                )
            except grpc.RpcError as err:
                assert not visible and err.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
                return
            assert visible
            assert not any(p.HasField("heart_rate_bpm") for p in track.points), "heart rate not shared"
            if self.zoned:  # the door's 200 m are never shown
                assert all(p.latitude > HOME[0] + 190 * DEG_PER_M for p in track.points)
            run = self.mallory.summary.GetRun(summary_pb2.GetRunRequest(run_id=run_id), metadata=self.mallory.metadata)
            assert not run.HasField("analysis") and not run.overview.HasField("avg_heart_rate_bpm")

        @invariant()
        def ada_sees_her_runs_as_she_made_them(self):
            for run_id, m in self.model.items():
                cursor_code = self.ada.code(
                    self.ada.tracking.GetTrackCursor, tracking_pb2.GetTrackCursorRequest(run_id=run_id)
                )
                if m.deleted:
                    assert cursor_code == grpc.StatusCode.NOT_FOUND
                    continue
                cursor = self.ada.tracking.GetTrackCursor(
                    tracking_pb2.GetTrackCursorRequest(run_id=run_id), metadata=self.ada.metadata, timeout=15
                )
                assert cursor.point_count == m.points, "someone else's point reached Ada's trail"
                if m.stopped:
                    run = self.ada.summary.GetRun(summary_pb2.GetRunRequest(run_id=run_id), metadata=self.ada.metadata)
                    assert run.user_id == self.ada_user
                    assert run.visibility == (summary_pb2.PUBLIC if m.public else summary_pb2.PRIVATE)

        @invariant()
        def mallory_lists_exactly_adas_shared_runs(self):
            listed = self.mallory.summary.ListRuns(
                summary_pb2.ListRunsRequest(user_id=self.ada_user, page_size=100), metadata=self.mallory.metadata
            )
            shared = {r for r, m in self.model.items() if m.public and m.stopped and not m.deleted}
            assert {r.run_id for r in listed.runs} == shared

    return TwoRunners


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_two_runners_where_one_tries_to_reach_the_others_data(stack):
    machine = make_machine(stack)
    machine.TestCase.settings = settings(
        max_examples=25,
        stateful_step_count=15,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    machine.TestCase().runTest()
    assert sum(ATTEMPTS.values()) > 0, "Mallory tried nothing"
    report(stack, "two_runners_fuzz", attempts=dict(sorted(ATTEMPTS.items())))
