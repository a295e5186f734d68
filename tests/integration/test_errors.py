"""Errors a client can act on, on the real stack: google.rpc.Status details over gRPC and JSON,
stores' failures classified, and the tools engineers use (grpcurl, ghz) working by reflection."""

import asyncio
import json
import subprocess
import sys
import uuid

import grpc
import pytest
from cassandra.cluster import Cluster
from google.rpc import error_details_pb2

from devstack import procs, tools
from devstack.paths import ROOT
from runtrack.v1 import summary_pb2, summary_pb2_grpc
from runtrack_client import Backoff, RunRecorder, error_status
from runtrack_common.config import Settings
from runtrack_common.errors import Internal
from summary_service.pg_store import PgRunStore
from tests.helpers import caller_channel, grpcurl, http_json, point
from tests.integration.faults import SERVICE, replica_status

RUN_TYPES = {
    "type.googleapis.com/google.rpc.ErrorInfo",
    "type.googleapis.com/google.rpc.BadRequest",
    "type.googleapis.com/google.rpc.RetryInfo",
}


def json_details(body: dict) -> dict[str, dict]:
    return {d["@type"].rsplit(".", 1)[1]: d for d in body["details"]}


def test_a_bad_stop_run_over_json_is_400_with_a_bad_request_naming_each_field(stack, run_id, user_id, token):
    overview = {
        "startTime": "2026-03-01T08:00:00Z",
        "endTime": "2026-03-01T08:30:00Z",
        "distanceM": -5,
        "movingTime": "1700s",
        "elevationGainM": -1,
    }
    status, body = http_json(
        stack.envoy_address, "POST", f"/v1/runs/{run_id}:stop", {"userId": user_id, "overview": overview}, token=token
    )
    assert status == 400 and body["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    details = json_details(body)
    assert details["ErrorInfo"]["domain"] == "runtrack" and details["ErrorInfo"]["reason"] == "INVALID_ARGUMENT"
    assert [(v["field"], v["description"]) for v in details["BadRequest"]["fieldViolations"]] == [
        ("overview.distance_m", "must be a finite number >= 0"),
        ("overview.elevation_gain_m", "must be a finite number >= 0"),
    ]


@pytest.mark.parametrize(
    "path, code, reason",
    [
        ("/v1/runs/{id}", 404, "RUN_NOT_FOUND"),
        ("/v1/runs/{id}/track", 404, "RUN_NOT_FOUND"),
        ("/v1/runs/not-a-uuid", 400, "INVALID_RUN_ID"),
        ("/v1/users/me/runs?pageToken=garbled", 400, "INVALID_PAGE_TOKEN"),
        ("/v1/users/me/stats?timeZone=Nowhere/Land", 400, "UNKNOWN_TIME_ZONE"),
    ],
)
def test_every_json_error_is_a_status_body_with_error_info(stack, path, code, reason, token):
    status, body = http_json(stack.envoy_address, "GET", path.format(id=uuid.uuid4()), token=token)
    assert status == code
    assert {d["@type"] for d in body["details"]} <= RUN_TYPES
    info = json_details(body)["ErrorInfo"]
    assert (info["domain"], info["reason"]) == ("runtrack", reason)


async def _wait_serving(port: int, log) -> None:
    for _ in range(120):
        if await replica_status(port, SERVICE["tracking"]) == "SERVING":
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"replica on {port} never served:\n{log.read_text()[-3000:]}")


async def test_a_statement_the_store_rejects_is_internal_logged_once_and_never_retried(stack, user_id):
    """A tracking replica whose table was dropped under it: every write is rejected by the CQL node."""
    keyspace = f"runtrack_broken_{uuid.uuid4().hex[:8]}"
    port = procs.free_port()
    log = stack.spec.logs / f"tracking-broken-{port}.log"
    env = dict(stack.replica_env(), SCYLLA_KEYSPACE=keyspace)
    stack.migrate({"SCYLLA_KEYSPACE": keyspace})
    pid = procs.start(
        [sys.executable, "-m", "tracking_service", "--port", str(port)],
        log=log,
        pid_file=stack.run_dir / f"tracking-broken-{port}.pid",
        env=env,
        cwd=ROOT,
    )
    cluster = Cluster([stack.scylla_hosts], port=stack.scylla_port)
    try:
        await _wait_serving(port, log)
        session = await asyncio.to_thread(cluster.connect)
        await asyncio.to_thread(session.execute, f"DROP TABLE {keyspace}.track_points", timeout=60)

        run_id = str(uuid.uuid4())
        async with caller_channel(f"127.0.0.1:{port}", user_id) as channel:
            recorder = RunRecorder(channel, run_id, user_id, backoff=Backoff(0.01, 0.1, 10))
            recorder.record([point(1), point(2), point(3)])
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await recorder.upload()
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert (recorder.stats.streams, recorder.stats.retries) == (1, 0), "a rejected statement was retried"
        info = error_details_pb2.ErrorInfo()
        assert any(d.Unpack(info) for d in error_status(err.value).details)
        assert (info.reason, info.metadata["store"]) == ("STORE_REJECTED", "cql")
        assert not any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in error_status(err.value).details)
        assert await replica_status(port, SERVICE["tracking"]) == "SERVING", "a bad statement is no outage"
        errors = [line for line in log.read_text().splitlines() if " ERROR " in line and run_id in line]
        assert len(errors) == 1 and "InvalidRequest" in errors[0], errors
    finally:
        procs.stop(pid, timeout=20)
        session = await asyncio.to_thread(cluster.connect)
        await asyncio.to_thread(session.execute, f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=60)
        await asyncio.to_thread(cluster.shutdown)


async def test_postgresql_rejecting_a_statement_is_internal_and_a_timeout_unavailable(stack):
    store = PgRunStore(
        Settings.from_env({"DATABASE_URL": stack.database_url, "PG_STATEMENT_TIMEOUT_MS": "200", "PG_POOL_MAX": "2"})
    )
    await store.ensure_ready()
    try:
        with pytest.raises(Internal, match="PostgreSQL rejected the request: UndefinedTable"):
            async with store._conn() as conn:
                await conn.execute("SELECT * FROM no_such_table")
        await store.ensure_ready()  # the pool is fine afterwards
    finally:
        await store.close()


def _ghz(stack, token: str, call: str, data, count: int = 20) -> dict:
    out = subprocess.run(
        [
            str(tools.ghz()),
            "--metadata",
            json.dumps({"authorization": f"Bearer {token}"}),
            "--insecure",
            "--call",
            call,
            "-d",
            json.dumps(data),
            "-n",
            str(count),
            "-c",
            "4",
            "--format",
            "json",
            stack.envoy_address,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


OVERVIEW = {
    "start_time": "2025-06-01T07:00:00Z",
    "end_time": "2025-06-01T07:30:00Z",
    "distance_m": 5000,
    "moving_time": "1700s",
    "point_count": 2,
}


def test_ghz_calls_record_track_stop_run_and_get_run_through_envoy_by_reflection(stack, user_id, token):
    # Client streaming: each element of the array is one message of the stream.
    stream = [
        {
            "run_id": "{{.UUID}}",
            "user_id": user_id,
            "points": [{"seq": 1, "time": "2025-06-01T07:00:00Z", "latitude": 48.85, "longitude": 2.35}],
        },
        {"points": [{"seq": 2, "time": "2025-06-01T07:00:01Z", "latitude": 48.86, "longitude": 2.36}]},
    ]
    report = _ghz(stack, token, "runtrack.v1.TrackingService.RecordTrack", stream)
    assert report["statusCodeDistribution"] == {"OK": 20}, report.get("errorDistribution")

    report = _ghz(
        stack,
        token,
        "runtrack.v1.SummaryService.StopRun",
        {"run_id": "{{.UUID}}", "user_id": user_id, "overview": OVERVIEW},
    )
    assert report["statusCodeDistribution"] == {"OK": 20}, report.get("errorDistribution")

    status, listed = http_json(stack.envoy_address, "GET", f"/v1/users/{user_id}/runs?pageSize=1", token=token)
    assert status == 200
    report = _ghz(stack, token, "runtrack.v1.SummaryService.GetRun", {"run_id": listed["runs"][0]["runId"]})
    assert report["statusCodeDistribution"] == {"OK": 20}, report.get("errorDistribution")


@pytest.mark.parametrize(
    "symbol, expect",
    [
        ("runtrack.v1.TrackingService.RecordTrack", "rpc RecordTrack ( stream .runtrack.v1.RecordTrackRequest )"),
        ("runtrack.v1.SummaryService.StopRun", "rpc StopRun ( .runtrack.v1.StopRunRequest )"),
        ("runtrack.v1.RunOverview", "message RunOverview {"),
        ("runtrack.v1.TrackPoint.heart_rate_bpm", "optional uint32 heart_rate_bpm = 8;"),
        ("google.rpc.BadRequest", "message BadRequest {"),
    ],
)
def test_grpcurl_describes_methods_messages_and_fields_through_envoy(stack, symbol, expect):
    out = grpcurl(stack.envoy_address, "describe", symbol)
    assert out.returncode == 0, out.stderr
    assert expect in out.stdout


def test_every_service_grpcurl_lists_through_envoy_can_be_called_through_envoy(stack, token):
    listed = grpcurl(stack.envoy_address, "list").stdout.split()
    calls = {
        "grpc.health.v1.Health": ("grpc.health.v1.Health/Check", "{}"),
        "grpc.reflection.v1alpha.ServerReflection": None,  # what `list` itself just used
        "runtrack.v1.SummaryService": ("runtrack.v1.SummaryService/ListRuns", '{"user_id": "nobody"}'),
        "runtrack.v1.TrackingService": (
            "runtrack.v1.TrackingService/GetTrackCursor",
            f'{{"run_id": "{uuid.uuid4()}"}}',
        ),
    }
    assert sorted(listed) == sorted(calls)
    for service in listed:
        if calls[service] is None:
            continue
        method, body = calls[service]
        out = grpcurl("-d", body, stack.envoy_address, method, token=token)
        assert "Unimplemented" not in out.stderr, (service, out.stderr)
        assert out.returncode == 0 or "NotFound" in out.stderr, (service, out.stderr)
    health = grpcurl("-d", "{}", stack.envoy_address, "grpc.health.v1.Health/Check")
    assert json.loads(health.stdout) == {"status": "SERVING"}


async def test_a_stop_run_error_over_grpc_carries_the_same_details_as_over_json(channel):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await summary_pb2_grpc.SummaryServiceStub(channel).StopRun(summary_pb2.StopRunRequest(run_id="run-1"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in error_status(err.value).details)
    assert [v.field for v in bad.field_violations] == ["run_id", "overview"]
