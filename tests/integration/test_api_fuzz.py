"""Schemathesis against the JSON API through Envoy, signed in, driven by the committed OpenAPI
document, in every phase: the document's examples, coverage (each parameter's edge values, valid and
not), fuzzing, and stateful sequences (a run made by one call read, changed and deleted by the next,
following the links Schemathesis infers from the document, which has none of its own). No 5xx, every
response conforms to the document, and every 4xx is a google.rpc.Status body.

Each run draws a new seed, printed at the start and written to .dev/logs/test/faults.jsonl with the
requests made per phase; `RUNTRACK_FUZZ_SEED=<seed>` replays a run."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import uuid
from collections import Counter

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck
from schemathesis.config import SchemathesisConfig

from devstack.paths import OPENAPI
from tests.integration.faults import report

SEED = int(os.environ.get("RUNTRACK_FUZZ_SEED") or secrets.randbits(64))
# Fuzzing's examples per operation, and the stateful phase's scenarios and their most steps: the
# whole file in about three minutes on two cores (the coverage phase's cases come on top, as many
# as each operation's parameters call for).
EXAMPLES_PER_OPERATION = 200
SCENARIOS = 300
STEPS_PER_SCENARIO = 10
STOP_RUN = "POST /v1/runs/{runId}:stop"

schema = schemathesis.openapi.from_path(OPENAPI, config=SchemathesisConfig(seed=SEED))
calls: Counter[str] = Counter()
phases: Counter[str] = Counter({"examples": 0, "coverage": 0, "fuzzing": 0, "stateful": 0})
statuses: Counter[int] = Counter()
SETTINGS = hypothesis.settings(deadline=None, suppress_health_check=list(HealthCheck), database=None)
# The document gives each field's type, not every rule the API enforces (a run_id is a UUID, an
# overview ends after it starts...): a schema-valid request may still be a 4xx.
# A verb no method has on a path is 404 NOT_FOUND (no such method), as gRPC answers it, not 405.
EXCLUDED_CHECKS = [schemathesis.checks.positive_data_acceptance, schemathesis.checks.unsupported_method]


@pytest.fixture(scope="module", autouse=True)
def counts(request, stack):
    """The seed first (to replay a failure), then what the run covered, to faults.jsonl."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print(f"\nschemathesis seed {SEED} (replay: RUNTRACK_FUZZ_SEED={SEED})", flush=True)
    yield
    report(
        stack,
        "schemathesis",
        seed=str(SEED),
        operations=len(calls),
        requests=sum(calls.values()),
        requests_per_phase=dict(phases),
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


@schema.hook("map_case")
def a_stop_as_a_phone_sends_it(ctx, case):
    """In sequences, StopRun's body is a phone's: the document cannot say that an overview and its
    times are required, and a random body is a 400 with no run for the following calls to use. With
    it, a sequence stops a run, then reads, renames, shares, exports, links and deletes it. A new run
    each time: the seed draws the same run_ids in each sequence, and a second stop of a run is a 409,
    which Hypothesis would take for data generation that is not repeatable."""
    if case.meta is not None and case.meta.phase.name.value == "stateful" and case.operation.label == STOP_RUN:
        case.path_parameters = {**(case.path_parameters or {}), "runId": str(uuid.uuid4())}
        end = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=5)
        overview = {
            "startTime": (end - dt.timedelta(minutes=30)).isoformat().replace("+00:00", "Z"),
            "endTime": end.isoformat().replace("+00:00", "Z"),
            "distanceM": 5000.0,
            "movingTime": "1800s",
        }
        case.body = {"overview": overview, "timeZone": "Europe/Paris"}
    return case


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


def counted(case, response) -> None:
    calls[case.operation.label] += 1
    phases[case.meta.phase.name.value if case.meta is not None else "unknown"] += 1
    statuses[response.status_code] += 1


@schema.parametrize()
@hypothesis.settings(SETTINGS, max_examples=EXAMPLES_PER_OPERATION)
def test_the_json_api_conforms_to_its_openapi_document(case, stack, token):
    """The examples, coverage and fuzzing phases, operation by operation."""
    SignedIn.token = token
    response = case.call_and_validate(
        base_url=f"http://{stack.envoy_address}",
        additional_checks=[error_is_a_status_body],
        excluded_checks=EXCLUDED_CHECKS,
    )
    counted(case, response)


def test_sequences_of_calls_conform_to_the_openapi_document(stack, token):
    """The stateful phase: scenarios of linked calls (StopRun, ImportRun or CreateLiveLink first, then
    the operations that take the run or link they answered)."""
    SignedIn.token = token
    base_url = f"http://{stack.envoy_address}"

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case) -> None:
            # The state machine's cases came with "Bearer " and nothing (a 401, and no run to follow),
            # but for those meant to be sent without a valid token: signed in here.
            if not case.operation.schema.is_security_param_negated(case):
                SignedIn().set(case, token, None)

        def get_call_kwargs(self, case) -> dict[str, str]:
            return {"base_url": base_url}

        def after_call(self, response, case) -> None:
            super().after_call(response, case)
            counted(case, response)

        def validate_response(self, response, case, additional_checks=None, **kwargs) -> None:
            case.validate_response(
                response,
                additional_checks=[error_is_a_status_body],
                excluded_checks=EXCLUDED_CHECKS,
                transport_kwargs=kwargs or None,
                recorder=self.recorder,
            )

    # Not shrunk: a sequence replayed against the server's new state (the run it stopped is stopped
    # now) is not the sequence that failed; the first failing one is reported as it was.
    hypothesis.seed(SEED)(Workflow).run(
        settings=hypothesis.settings(
            SETTINGS,
            max_examples=SCENARIOS,
            stateful_step_count=STEPS_PER_SCENARIO,
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        )
    )
