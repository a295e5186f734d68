"""Tokens checked at the edge, tried from the attacker's side on the gRPC path and the JSON path:
missing, forged, `alg: none`, unknown key, wrong issuer or audience, expired; a spoofed
x-runtrack-user; a replica called without Envoy. Each is refused and stores nothing."""

import base64
import datetime as dt
import time
import uuid

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.auth import ALGORITHM, AUDIENCE, ISSUER, KEY_ID
from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from runtrack_client import error_status
from tests.helpers import caller_channel, grpcurl, http_json, point, token_channel
from tests.integration.test_dashboard import overview

START = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)
STOP_JSON = {
    "overview": {
        "startTime": "2026-03-01T08:00:00Z",
        "endTime": "2026-03-01T08:30:00Z",
        "distanceM": 5000,
        "movingTime": "1700s",
    }
}


def _foreign_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _claims(user: str, **overrides) -> dict:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": [AUDIENCE], "sub": user, "iat": now, "exp": now + 600}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def bad_tokens(stack, user: str) -> dict[str, str]:
    """Every way a token is wrong, each otherwise valid for `user`."""
    good = stack.issuer.token(user)
    header, payload, signature = good.split(".")
    other_payload = stack.issuer.token("someone-else").split(".")[1]
    flipped = base64.urlsafe_b64encode(bytes(b ^ 1 for b in base64.urlsafe_b64decode(signature + "=="))).rstrip(b"=")
    return {
        "signed by another key under the stack's kid": jwt.encode(
            _claims(user), _foreign_key(), algorithm=ALGORITHM, headers={"kid": KEY_ID}
        ),
        "signature bytes altered": f"{header}.{payload}.{flipped.decode()}",
        "payload swapped for another user's": f"{header}.{other_payload}.{signature}",
        "alg none": jwt.encode(_claims(user), None, algorithm="none"),
        "HS256 with a guessed secret": jwt.encode(
            _claims(user), "runtrack-secret-of-32-bytes-long!", algorithm="HS256", headers={"kid": KEY_ID}
        ),
        "unknown key id": jwt.encode(_claims(user), _foreign_key(), algorithm=ALGORITHM, headers={"kid": "other"}),
        "wrong issuer": stack.issuer.token(user, iss="https://evil.example"),
        "wrong audience": stack.issuer.token(user, aud=["someone-else"]),
        "expired beyond the 30 s skew": stack.issuer.token(user, exp=int(time.time()) - 120),
        "no expiry": jwt.encode(
            _claims(user, exp=None),
            serialization.load_pem_private_key(stack.issuer.private_key_file.read_bytes(), password=None),
            algorithm=ALGORITHM,
            headers={"kid": KEY_ID},
        ),
        "not a JWT": "garbage.garbage.garbage",
    }


CASES = [
    "no token",
    "signed by another key under the stack's kid",
    "signature bytes altered",
    "payload swapped for another user's",
    "alg none",
    "HS256 with a guessed secret",
    "unknown key id",
    "wrong issuer",
    "wrong audience",
    "expired beyond the 30 s skew",
    "no expiry",
    "not a JWT",
]


def _token(stack, user: str, case: str) -> str | None:
    return None if case == "no token" else bad_tokens(stack, user)[case]


def _channel(stack, token: str | None) -> grpc.aio.Channel:
    if token is None:
        return grpc.aio.insecure_channel(stack.envoy_address)
    return token_channel(stack.envoy_address, token)


def _error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = error_status(err)
    assert status is not None, f"no google.rpc.Status on {err.code()}: {err.details()}"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


@pytest.mark.parametrize("case", CASES)
async def test_a_bad_token_on_the_grpc_path_is_unauthenticated_and_stores_nothing(stack, channel, user_id, case):
    run_id = str(uuid.uuid4())
    async with _channel(stack, _token(stack, user_id, case)) as attacker:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await tracking_pb2_grpc.TrackingServiceStub(attacker).RecordTrack(
                iter([tracking_pb2.RecordTrackRequest(run_id=run_id, points=[point(1)])])
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, err.value.details()
        info = _error_info(err.value)
        assert (info.domain, info.reason) == ("runtrack", "INVALID_TOKEN")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await summary_pb2_grpc.SummaryServiceStub(attacker).StopRun(
                summary_pb2.StopRunRequest(run_id=run_id, overview=overview(START))
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # The runner, signed in properly, finds nothing of it.
    for call in (
        summary_pb2_grpc.SummaryServiceStub(channel).GetRun(summary_pb2.GetRunRequest(run_id=run_id)),
        tracking_pb2_grpc.TrackingServiceStub(channel).GetTrackCursor(
            tracking_pb2.GetTrackCursorRequest(run_id=run_id)
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("case", CASES)
def test_a_bad_token_on_the_json_path_is_401_with_a_status_body_and_stores_nothing(stack, user_id, token, case):
    run_id = str(uuid.uuid4())
    bad = _token(stack, user_id, case)
    for method, path, body in (
        ("POST", f"/v1/runs/{run_id}:stop", STOP_JSON),
        ("GET", "/v1/users/me/runs", None),
        ("GET", f"/v1/runs/{run_id}/track", None),
        ("PUT", "/v1/users/me/privacyZones", {"zones": []}),
        ("DELETE", f"/v1/runs/{run_id}", None),
    ):
        status, reply = http_json(stack.envoy_address, method, path, body, token=bad)
        assert status == 401, (method, path, reply)
        assert reply["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0] and reply["message"]
        assert reply["details"][0]["reason"] == "INVALID_TOKEN"
    status, _ = http_json(stack.envoy_address, "GET", f"/v1/runs/{run_id}", token=token)
    assert status == 404


def test_a_bearer_scheme_with_no_token_and_a_token_in_the_query_are_refused(stack, user_id, token):
    for headers, path in (
        ({"authorization": "Bearer"}, "/v1/users/me/runs"),
        ({"authorization": f"Basic {token}"}, "/v1/users/me/runs"),
        ({}, f"/v1/users/me/runs?access_token={token}"),
    ):
        status, _ = http_json(stack.envoy_address, "GET", path, headers=headers)
        assert status == 401, (headers, path)


def test_a_token_within_the_clock_skew_is_still_accepted(stack, user_id):
    token = stack.issuer.token(user_id, exp=int(time.time()) - 5)
    status, body = http_json(stack.envoy_address, "GET", "/v1/users/me/runs", token=token)
    assert status == 200, body


async def _private_run(channel, run_id: str) -> None:
    await tracking_pb2_grpc.TrackingServiceStub(channel).RecordTrack(
        iter([tracking_pb2.RecordTrackRequest(run_id=run_id, points=[point(1), point(2)])])
    )
    await summary_pb2_grpc.SummaryServiceStub(channel).StopRun(
        summary_pb2.StopRunRequest(run_id=run_id, overview=overview(START))
    )


async def test_a_spoofed_caller_header_on_the_grpc_path_is_dropped(stack, channel, run_id, user_id):
    await _private_run(channel, run_id)
    spoof = (("x-runtrack-user", user_id),)
    # With no token the header alone opens nothing.
    async with grpc.aio.insecure_channel(stack.envoy_address) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await summary_pb2_grpc.SummaryServiceStub(anonymous).GetRun(
                summary_pb2.GetRunRequest(run_id=run_id), metadata=spoof
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # With her own valid token mallory stays mallory: the victim's private run does not exist for her,
    # and she cannot write into it.
    async with token_channel(stack.envoy_address, stack.issuer.token("mallory")) as mallory:
        for call in (
            summary_pb2_grpc.SummaryServiceStub(mallory).GetRun(
                summary_pb2.GetRunRequest(run_id=run_id), metadata=spoof
            ),
            tracking_pb2_grpc.TrackingServiceStub(mallory).GetTrack(
                tracking_pb2.GetTrackRequest(run_id=run_id), metadata=spoof
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await tracking_pb2_grpc.TrackingServiceStub(mallory).RecordTrack(
                iter([tracking_pb2.RecordTrackRequest(run_id=run_id, points=[point(3)])]), metadata=spoof
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        mine = await summary_pb2_grpc.SummaryServiceStub(mallory).ListRuns(
            summary_pb2.ListRunsRequest(user_id="me"), metadata=spoof
        )
        assert all(r.user_id == "mallory" for r in mine.runs)
    cursor = await tracking_pb2_grpc.TrackingServiceStub(channel).GetTrackCursor(
        tracking_pb2.GetTrackCursorRequest(run_id=run_id)
    )
    assert cursor.max_seq == 2, "mallory's point landed in the run"


async def test_a_spoofed_caller_header_on_the_json_path_is_dropped(stack, channel, run_id, user_id):
    await _private_run(channel, run_id)
    for spelling in ("x-runtrack-user", "X-RunTrack-User"):
        spoof = {spelling: user_id}
        status, _ = http_json(stack.envoy_address, "GET", f"/v1/runs/{run_id}", headers=spoof)
        assert status == 401
        mallory = stack.issuer.token("mallory")
        for path in (f"/v1/runs/{run_id}", f"/v1/runs/{run_id}/track"):
            status, _ = http_json(stack.envoy_address, "GET", path, token=mallory, headers=spoof)
            assert status == 404, path
        status, body = http_json(stack.envoy_address, "GET", "/v1/users/me/runs", token=mallory, headers=spoof)
        assert status == 200 and all(r["userId"] == "mallory" for r in body.get("runs", []))
        status, _ = http_json(stack.envoy_address, "DELETE", f"/v1/runs/{run_id}", token=mallory, headers=spoof)
        assert status == 404
    status, body = http_json(stack.envoy_address, "GET", f"/v1/runs/{run_id}", token=stack.issuer.token(user_id))
    assert status == 200 and body["userId"] == user_id


async def test_a_replica_called_without_envoy_and_without_a_caller_is_unauthenticated(stack, run_id):
    port = stack.replica_ports()["summary"][0]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as direct:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await summary_pb2_grpc.SummaryServiceStub(direct).GetRun(summary_pb2.GetRunRequest(run_id=run_id))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _error_info(err.value).reason == "NO_VERIFIED_CALLER"
    port = stack.replica_ports()["tracking"][0]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as direct:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await tracking_pb2_grpc.TrackingServiceStub(direct).RecordTrack(
                iter([tracking_pb2.RecordTrackRequest(run_id=run_id, user_id="ada", points=[point(1)])])
            )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with caller_channel(f"127.0.0.1:{port}", "ada") as as_ada:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await tracking_pb2_grpc.TrackingServiceStub(as_ada).GetTrackCursor(
                tracking_pb2.GetTrackCursorRequest(run_id=run_id)
            )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND, "nothing was stored by the refused stream"


async def test_health_and_reflection_stay_open_without_a_token(stack):
    async with grpc.aio.insecure_channel(stack.envoy_address) as anonymous:
        reply = await health_pb2_grpc.HealthStub(anonymous).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    listed = grpcurl(stack.envoy_address, "list")
    assert listed.returncode == 0 and "runtrack.v1.SummaryService" in listed.stdout
    refused = grpcurl("-d", "{}", stack.envoy_address, "runtrack.v1.SummaryService/ListRuns")
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr


@pytest.mark.parametrize(
    "path, code",
    [
        # Normalised before the token check: the API's own path, which needs a token.
        ("/grpc.health.v1.Health/../runtrack.v1.SummaryService/ListRuns", grpc.StatusCode.UNAUTHENTICATED),
        (
            "/grpc.reflection.v1.ServerReflection/%2E%2E/runtrack.v1.SummaryService/ListRuns",
            grpc.StatusCode.UNAUTHENTICATED,
        ),
        ("//runtrack.v1.SummaryService/ListRuns", grpc.StatusCode.UNAUTHENTICATED),
        # An escaped slash is refused outright (Envoy's 400, answered as INVALID_ARGUMENT MALFORMED_REQUEST).
        ("/grpc.health.v1.Health%2F..%2Fruntrack.v1.SummaryService/ListRuns", grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_an_open_path_with_dot_segments_or_escaped_slashes_opens_nothing(stack, user_id, path, code):
    """A path that starts like health or reflection but names the API, with a spoofed caller."""
    async with grpc.aio.insecure_channel(stack.envoy_address) as anonymous:
        call = anonymous.unary_unary(
            path,
            request_serializer=summary_pb2.ListRunsRequest.SerializeToString,
            response_deserializer=summary_pb2.ListRunsResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(summary_pb2.ListRunsRequest(user_id=user_id), metadata=(("x-runtrack-user", user_id),))
    assert err.value.code() == code, err.value.details()
