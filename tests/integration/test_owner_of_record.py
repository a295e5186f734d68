"""One owner of record, tried from the attacker's side on the real stack through Envoy: a runner who
learns another's run id (it is in every live link's payload) cannot take the run over through
StopRun, ClaimRun or an import, over gRPC or JSON; nothing of theirs is written; the real runner's
StopRun and DeleteRun go on working. `scripts/dev owners` lists runs whose stores disagree."""

import asyncio
import datetime as dt
import hashlib
import json
import os
import subprocess
import uuid

import grpc
import psycopg
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from devstack.activity_files import gpx_file, synthetic_run
from devstack.paths import ROOT
from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from summary_service.runs import LEGACY_IMPORT_NAMESPACE
from tests.helpers import http_json, point, token_channel
from tests.integration.test_dashboard import overview
from tests.integration.test_imports import GPX_TYPE, post_file
from tests.integration.test_ownership import code_of, record

START = dt.datetime(2026, 5, 3, 7, 0, tzinfo=dt.UTC)


def reason_of(err: grpc.aio.AioRpcError) -> str:
    info = error_details_pb2.ErrorInfo()
    for detail in rpc_status.from_call(err).details:
        if detail.Unpack(info):
            return info.reason
    return ""


async def refused(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code(), reason_of(err.value)


def dashboard_rows(stack, run_id: str) -> list[tuple[str, str]]:
    with psycopg.connect(stack.database_url) as conn:
        return [(str(r), u) for r, u in conn.execute("SELECT run_id, user_id FROM runs WHERE run_id = %s", (run_id,))]


@pytest.fixture
async def mallory(stack):
    user = f"mallory-{uuid.uuid4().hex[:8]}"
    async with token_channel(stack.envoy_address, stack.issuer.token(user)) as ch:
        yield user, ch


async def test_a_run_in_progress_cannot_be_taken_over_through_stop_run(stack, channel, mallory, run_id, user_id):
    user, attacker = mallory
    await record(channel, run_id, [point(s) for s in range(1, 11)])  # the phone is streaming it
    stop = summary_pb2.StopRunRequest(run_id=run_id, overview=overview(START))
    attempt = summary_pb2_grpc.SummaryServiceStub(attacker).StopRun(stop)
    assert await refused(attempt) == (grpc.StatusCode.PERMISSION_DENIED, "RUN_ID_TAKEN")
    status, body = http_json(
        stack.envoy_address,
        "POST",
        f"/v1/runs/{run_id}:stop",
        {"overview": {"startTime": "2026-05-03T07:00:00Z", "endTime": "2026-05-03T07:30:00Z"}},
        token=stack.issuer.token(user),
    )
    assert status == 403 and body["details"][0]["reason"] == "RUN_ID_TAKEN", body
    claim = tracking_pb2_grpc.TrackingServiceStub(attacker).ClaimRun(tracking_pb2.ClaimRunRequest(run_id=run_id))
    assert await refused(claim) == (grpc.StatusCode.PERMISSION_DENIED, "RUN_ID_TAKEN")
    assert dashboard_rows(stack, run_id) == []  # nothing of the attacker's was written
    # The attacker reads nothing of it; the runner stops, reads and deletes her run as usual.
    get = summary_pb2_grpc.SummaryServiceStub(attacker).GetRun(summary_pb2.GetRunRequest(run_id=run_id))
    assert await code_of(get) == grpc.StatusCode.NOT_FOUND
    track = tracking_pb2_grpc.TrackingServiceStub(attacker).GetTrack(tracking_pb2.GetTrackRequest(run_id=run_id))
    assert await code_of(track) == grpc.StatusCode.NOT_FOUND
    mine = await summary_pb2_grpc.SummaryServiceStub(channel).StopRun(stop)
    assert mine.user_id == user_id
    assert dashboard_rows(stack, run_id) == [(run_id, user_id)]
    await summary_pb2_grpc.SummaryServiceStub(channel).DeleteRun(summary_pb2.DeleteRunRequest(run_id=run_id))
    assert dashboard_rows(stack, run_id) == []


async def test_a_stop_run_first_claims_the_id_so_no_stream_of_someone_else_writes_into_it(
    stack, channel, mallory, run_id, user_id
):
    _, attacker = mallory
    await summary_pb2_grpc.SummaryServiceStub(channel).StopRun(
        summary_pb2.StopRunRequest(run_id=run_id, overview=overview(START))
    )
    stream = tracking_pb2_grpc.TrackingServiceStub(attacker).RecordTrack(
        iter([tracking_pb2.RecordTrackRequest(run_id=run_id, points=[point(1)])])
    )
    assert await refused(stream) == (grpc.StatusCode.PERMISSION_DENIED, "RUN_ID_TAKEN")
    cursor = await tracking_pb2_grpc.TrackingServiceStub(channel).GetTrackCursor(
        tracking_pb2.GetTrackCursorRequest(run_id=run_id)
    )
    assert cursor.point_count == 0  # the attacker's point was not written
    reply = await record(channel, run_id, [point(1), point(2)])  # the trail syncs after STOP RUN
    assert reply.contiguous_seq == 2


async def test_an_import_id_cannot_be_computed_by_anyone_else(stack, mallory, token, user_id):
    user, _ = mallory
    data = gpx_file(synthetic_run(40, seed=27))
    status, run = await asyncio.to_thread(post_file, stack.envoy_address, data, GPX_TYPE, token)
    assert status == 200, run
    sha = hashlib.sha256(data).hexdigest()
    assert run["runId"] != str(uuid.uuid5(LEGACY_IMPORT_NAMESPACE, f"{user_id}:{sha}"))  # not from public inputs
    status, theirs = await asyncio.to_thread(post_file, stack.envoy_address, data, GPX_TYPE, stack.issuer.token(user))
    assert status == 200 and theirs["runId"] != run["runId"] and theirs["userId"] == user
    status, again = await asyncio.to_thread(post_file, stack.envoy_address, data, GPX_TYPE, token)
    assert (status, again["runId"]) == (200, run["runId"])  # the same file again: the same run


def owners(stack, *extra: str) -> tuple[int, dict]:
    env = dict(os.environ, RUNTRACK_STACK="test")
    out = subprocess.run(
        [str(ROOT / "scripts" / "dev"), "owners", "--json", *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out.returncode, json.loads(out.stdout)


async def test_the_owners_check_lists_runs_whose_two_stores_disagree(stack, channel, run_id, user_id):
    await record(channel, run_id, [point(1)])
    await summary_pb2_grpc.SummaryServiceStub(channel).StopRun(
        summary_pb2.StopRunRequest(run_id=run_id, overview=overview(START))
    )
    taken, unclaimed = str(uuid.uuid4()), str(uuid.uuid4())
    await record(channel, taken, [point(1)])
    # Rows as StopRun wrote them before it claimed: a takeover, and a run stopped without points.
    with psycopg.connect(stack.database_url) as conn:
        for rid in (taken, unclaimed):
            conn.execute(
                "INSERT INTO runs (run_id, user_id, start_time, end_time, distance_m, moving_time_us,"
                " elevation_gain_m, point_count, polyline, stopped_at)"
                " VALUES (%s, 'mallory', now(), now(), 0, 0, 0, 0, '', now())",
                (rid,),
            )
    try:
        code, report = await asyncio.to_thread(owners, stack)
        found = {d["run_id"]: d for d in report["disagreements"]}
        assert code == 1 and run_id not in found
        assert found[taken]["kind"] == "owner_mismatch" and found[taken]["owner_of_record"] == user_id
        assert found[unclaimed]["kind"] == "unclaimed" and found[unclaimed]["dashboard_owner"] == "mallory"
        code, report = await asyncio.to_thread(owners, stack, "--claim")
        kinds = {d["run_id"]: d["kind"] for d in report["disagreements"]}
        assert kinds.get(taken) == "owner_mismatch" and unclaimed not in kinds
    finally:
        with psycopg.connect(stack.database_url) as conn:
            conn.execute("DELETE FROM runs WHERE run_id = ANY(%s)", ([taken, unclaimed],))
