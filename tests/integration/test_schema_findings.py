"""What the JSON document says and what the server does agree on a request without a body and on
`null`: a PATCH that names nothing and a PUT of privacy zones without a body are refused (the latter
would have cleared every zone), `null` reads as a field's default and the document says so."""

import datetime as dt
import json

from devstack.paths import OPENAPI
from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from tests.helpers import http_json
from tests.integration.test_dashboard import overview


async def test_replacing_privacy_zones_needs_a_body_and_an_empty_list_still_clears_them(stack, channel, token):
    zone = {"latitude": 48.8566, "longitude": 2.3522, "radiusM": 150}
    status, _ = http_json(stack.envoy_address, "PUT", "/v1/users/me/privacyZones", {"zones": [zone]}, token=token)
    assert status == 200
    status, body = http_json(stack.envoy_address, "PUT", "/v1/users/me/privacyZones", None, token=token)
    assert status == 400, body
    assert body["code"] == 3 and body["details"][0]["reason"] == "MALFORMED_REQUEST"
    assert 'body: is required: send {"zones": [...]}' in body["message"]
    kept = await tracking_pb2_grpc.TrackingServiceStub(channel).GetPrivacyZones(
        tracking_pb2.GetPrivacyZonesRequest(user_id="me")
    )
    assert len(kept.zones) == 1, "a PUT without a body changed nothing"
    # The transcoder would drop a null in the list, and clear them (Schemathesis's coverage phase).
    for zones in ([None], [None, None], [zone, None]):
        status, body = http_json(stack.envoy_address, "PUT", "/v1/users/me/privacyZones", {"zones": zones}, token=token)
        assert status == 400 and "not null" in body["message"], body
    kept = await tracking_pb2_grpc.TrackingServiceStub(channel).GetPrivacyZones(
        tracking_pb2.GetPrivacyZonesRequest(user_id="me")
    )
    assert len(kept.zones) == 1, "a PUT with nulls for zones changed nothing"
    status, body = http_json(stack.envoy_address, "PUT", "/v1/users/me/privacyZones", {"zones": []}, token=token)
    assert status == 200 and body.get("zones", []) == []


async def test_a_patch_naming_nothing_is_refused(stack, channel, token, run_id):
    await summary_pb2_grpc.SummaryServiceStub(channel).StopRun(
        summary_pb2.StopRunRequest(run_id=run_id, overview=overview(dt.datetime(2026, 5, 1, tzinfo=dt.UTC), 3))
    )
    status, body = http_json(stack.envoy_address, "PATCH", f"/v1/runs/{run_id}?updateMask=", None, token=token)
    assert status == 400, body
    assert body["details"][1]["fieldViolations"][0]["field"] == "update_mask"
    status, body = http_json(stack.envoy_address, "PATCH", f"/v1/runs/{run_id}", {"name": "Tempo"}, token=token)
    assert status == 200 and body["name"] == "Tempo"


def test_null_is_a_fields_default_and_the_document_says_so(stack, token, run_id):
    document = json.loads(OPENAPI.read_text())
    fields = document["components"]["schemas"]["RunOverview"]["properties"]
    assert fields["polyline"]["nullable"] is True
    stop = {
        "overview": {
            "startTime": "2026-05-01T07:00:00Z",
            "endTime": "2026-05-01T07:30:00Z",
            "distanceM": 5000,
            "pointCount": 0,
            "polyline": None,
        }
    }
    status, body = http_json(stack.envoy_address, "POST", f"/v1/runs/{run_id}:stop", stop, token=token)
    assert status == 200, body
    assert body["overview"]["polyline"] == ""
