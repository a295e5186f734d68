"""Schemathesis against the JSON API through Envoy, signed in, driven by the committed OpenAPI
document: no 5xx, every response conforms to the document, and every 4xx is a google.rpc.Status
body. Bounded (examples per operation) and derandomized, so a run is repeatable."""

from collections import Counter

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck

from devstack.paths import OPENAPI
from tests.integration.faults import report

EXAMPLES_PER_OPERATION = 100
schema = schemathesis.openapi.from_path(OPENAPI)
calls: Counter[str] = Counter()
statuses: Counter[int] = Counter()


@pytest.fixture(scope="module", autouse=True)
def counts(stack):
    """What the run covered, written to .dev/logs/test/faults.jsonl."""
    yield
    report(
        stack,
        "schemathesis",
        operations=len(calls),
        requests=sum(calls.values()),
        statuses=dict(sorted(statuses.items())),
    )


@schema.auth()
class SignedIn:
    """The test user's token, applied by Schemathesis itself: a case it generates without the header
    (negative for `Authorization`) is then sent, and judged, as what it is."""

    token = ""

    def get(self, case, ctx) -> str:
        return SignedIn.token

    def set(self, case, data, ctx) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@schemathesis.check
def error_is_a_status_body(ctx, response, case) -> None:
    """A 4xx answer is a google.rpc.Status: a numeric code, a message, details with their @type."""
    if not 400 <= response.status_code < 500:
        return None
    body = response.json()
    assert isinstance(body, dict), f"{response.status_code} body is not a JSON object: {response.text[:200]}"
    assert isinstance(body.get("code"), int) and body["code"] > 0, f"no status code in {body}"
    assert isinstance(body.get("message"), str) and body["message"], f"no message in {body}"
    details = body.get("details", [])
    assert all("@type" in d for d in details), f"a detail without @type in {body}"
    assert any(d["@type"].endswith("google.rpc.ErrorInfo") for d in details), f"no ErrorInfo in {body}"
    return None


@schema.parametrize()
@hypothesis.settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_the_json_api_conforms_to_its_openapi_document(case, stack, token):
    SignedIn.token = token
    response = case.call_and_validate(
        base_url=f"http://{stack.envoy_address}",
        additional_checks=[error_is_a_status_body],
        # The document gives each field's type, not every rule the API enforces (a run_id is a UUID,
        # an overview ends after it starts...): a schema-valid request may still be a 4xx.
        # A verb no method has on a path is 404 NOT_FOUND (no such method), as gRPC answers it, not 405.
        excluded_checks=[schemathesis.checks.positive_data_acceptance, schemathesis.checks.unsupported_method],
    )
    calls[case.operation.label] += 1
    statuses[response.status_code] += 1
