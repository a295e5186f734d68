"""Schemathesis against the JSON API through Envoy, signed in, driven by the committed OpenAPI
document, in every phase: the document's examples, coverage (each parameter's edge values, valid and
not), fuzzing, and stateful sequences (a run made by one call read, changed and deleted by the next,
following the links Schemathesis infers from the document, which has none of its own). No 5xx, every
response conforms to the document, every 4xx is a google.rpc.Status body, a request the document
calls valid is accepted (Schemathesis's positive-data check), and a method a path does not declare
is 405 with `Allow`.

The document states each field's bounds and formats as a schema; the rules a schema cannot state (a
time zone's name, a page token from the previous page, an end after its start...) it lists per
operation in `x-runtrack-rules`. A request generated as valid is made to meet those too before it is
sent (`RULE_FIXES`, one per rule id: a rule the document adds without one here fails the test).

Each run draws a new seed, printed at the start and written to .dev/logs/test/faults.jsonl with the
requests made per phase; `RUNTRACK_FUZZ_SEED=<seed>` replays a run."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import secrets
import uuid
import zoneinfo
from collections import Counter

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck
from schemathesis.config import SchemathesisConfig

from devstack.paths import OPENAPI
from runtrack_common.api_rules import HEADER_NAME_PATTERN
from tests.integration.faults import report

SEED = int(os.environ.get("RUNTRACK_FUZZ_SEED") or secrets.randbits(64))
# Fuzzing's examples per operation, and the stateful phase's scenarios and their most steps: the
# whole file in about three minutes on two cores (the coverage phase's cases come on top, as many
# as each operation's parameters call for). With every check on, 300 scenarios took 4.5 minutes alone;
# each run draws a new seed, so successive runs cover other sequences.
EXAMPLES_PER_OPERATION = 200
SCENARIOS = 100
STEPS_PER_SCENARIO = 10
STOP_RUN = "POST /v1/runs/{runId}:stop"

# A body over what a method takes (1 MiB of JSON; a document cannot bound a body's bytes) is refused
# with 413: a rejection of invalid data like the others.
REJECTIONS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
CONFIG = SchemathesisConfig.from_dict(
    {"seed": SEED, "checks": {"negative_data_rejection": {"expected-statuses": REJECTIONS}}}
)
schema = schemathesis.openapi.from_path(OPENAPI, config=CONFIG)
calls: Counter[str] = Counter()
phases: Counter[str] = Counter({"examples": 0, "coverage": 0, "fuzzing": 0, "stateful": 0})
statuses: Counter[int] = Counter()
SETTINGS = hypothesis.settings(deadline=None, suppress_health_check=list(HealthCheck), database=None)
# Every check runs, positive_data_acceptance and unsupported_method included.
EXCLUDED_CHECKS: list = []
DOCUMENT = json.loads(OPENAPI.read_text())


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


def _to_us(value: str) -> int:
    """A Timestamp in the document's form (RFC 3339, up to 9 fractional digits), in microseconds
    since the epoch, truncated as the service reads it."""
    offset = dt.timedelta(0)
    if not value.endswith("Z"):
        value, sign, hours, minutes = value[:-6], value[-6], value[-5:-3], value[-2:]
        offset = (1 if sign == "+" else -1) * dt.timedelta(hours=int(hours), minutes=int(minutes))
    main, _, frac = value.removesuffix("Z").partition(".")
    whole = dt.datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC)
    return (whole - EPOCH - offset) // dt.timedelta(microseconds=1) + int((frac + "000000")[:6])


def _duration_us(value: str) -> int:
    whole, _, frac = value.removesuffix("s").partition(".")
    return int(whole) * 1_000_000 + int((frac + "000000")[:6])


def _fix_time_zone(case, field: str) -> None:
    def valid(zone: object) -> bool:
        return zone in (None, "") or zone in ZONES

    if field == "x-runtrack-time-zone":
        if case.headers and not valid(case.headers.get(field)):
            case.headers = {**case.headers, field: "Europe/Paris"}
    elif case.query and not valid(case.query.get("timeZone")):
        case.query = {**case.query, "timeZone": "Europe/Paris"}
    elif isinstance(case.body, dict) and not valid(case.body.get("timeZone")):
        case.body = {**case.body, "timeZone": "Europe/Paris"}


def _fix_page_token(case, field: str) -> None:
    if case.query and "pageToken" in case.query:
        case.query = {k: v for k, v in case.query.items() if k != "pageToken"}


def _fix_overview_times(case, field: str) -> None:
    overview = case.body.get("overview") if isinstance(case.body, dict) else None
    if not isinstance(overview, dict):
        return
    overview = dict(overview)
    if _to_us(overview["endTime"]) < _to_us(overview["startTime"]):
        overview["startTime"], overview["endTime"] = overview["endTime"], overview["startTime"]
    elapsed = _to_us(overview["endTime"]) - _to_us(overview["startTime"])
    if overview.get("movingTime") is not None and _duration_us(overview["movingTime"]) > elapsed:
        overview["movingTime"] = f"{elapsed // 1_000_000}s"
    case.body = {**case.body, "overview": overview}


def _fix_expire_time(case, field: str) -> None:
    if isinstance(case.body, dict) and case.body.get("expireTime") is not None:
        soon = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=1)
        case.body = {**case.body, "expireTime": soon.isoformat().replace("+00:00", "Z")}


def _fix_webhook_url(case, field: str) -> None:
    if isinstance(case.body, dict) and case.body.get("webhookUrl"):
        case.body = {k: v for k, v in case.body.items() if k != "webhookUrl"}


def _fix_update_mask(case, field: str) -> None:
    mask = (case.query or {}).get("updateMask")
    if not mask or not isinstance(case.body, dict):
        return
    named = mask.split(",")
    body = dict(case.body)
    if "visibility" in named and body.get("visibility") not in ("PRIVATE", "PUBLIC"):
        body["visibility"] = "PUBLIC"
    if "name" in named and not body.get("name"):
        body["name"] = "Evening run"
    case.body = body


def _fix_activity_file(case, field: str) -> None:
    """A GPX file of three points an hour ago, unique (a deleted run's file again is refused)."""
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)
    points = "".join(
        f'<trkpt lat="48.85{i}" lon="2.35{i}"><time>{(start + dt.timedelta(seconds=10 * i)).isoformat()}</time></trkpt>'
        for i in range(3)
    )
    case.body = (
        '<?xml version="1.0"?><gpx version="1.1" creator="fuzz" xmlns="http://www.topografix.com/GPX/1/1">'
        f"<trk><name>{uuid.uuid4()}</name><trkseg>{points}</trkseg></trk></gpx>"
    )
    case.media_type = "application/gpx+xml"


def _fix_header_names(case, field: str) -> None:
    if case.headers and any(re.fullmatch(HEADER_NAME_PATTERN, name) is None for name in case.headers):
        case.headers = {k: v for k, v in case.headers.items() if re.fullmatch(HEADER_NAME_PATTERN, k)}


# x-runtrack-rules id -> how a request generated as valid is made to meet it.
RULE_FIXES = {
    "time-zone": _fix_time_zone,
    "page-token": _fix_page_token,
    "end-after-start": _fix_overview_times,
    "moving-within-elapsed": _fix_overview_times,
    "expire-time": _fix_expire_time,
    "webhook-url": _fix_webhook_url,
    "update-mask": _fix_update_mask,
    "activity-file": _fix_activity_file,
    "header-names": _fix_header_names,
}
RULES_BY_OPERATION = {
    f"{method.upper()} {path}": [(rule["id"], rule["field"]) for rule in operation.get("x-runtrack-rules", [])]
    for path, item in DOCUMENT["paths"].items()
    for method, operation in item.items()
}
DOCUMENT_RULES = [(rule["id"], rule["field"]) for rule in DOCUMENT.get("x-runtrack-rules", [])]
ZONES = zoneinfo.available_timezones()
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def test_every_documented_rule_has_a_fix():
    """Each rule the document lists is one this test knows how to meet."""
    ids = {rule_id for rules in [*RULES_BY_OPERATION.values(), DOCUMENT_RULES] for rule_id, _ in rules}
    assert ids and ids <= RULE_FIXES.keys(), f"rules without a fix here: {sorted(ids - RULE_FIXES.keys())}"


def as_the_document_states(case) -> None:
    """A case meets the document's `x-runtrack-rules` too, whatever else it breaks (Schemathesis
    judges a case again once it changed: one that breaks nothing else is then a valid one). The
    rules are met on the fields' JSON names: their proto names (`time_zone`), which the document
    allows too, are left out of a body that has rules."""
    if (body := _integral_floats_as_ints(case.body)) is not None:
        case.body = body
    rules = RULES_BY_OPERATION.get(case.operation.label, [])
    if rules and isinstance(case.body, dict):
        case.body = _without_proto_names(case.body)
    for rule_id, field in rules + DOCUMENT_RULES:
        try:
            RULE_FIXES[rule_id](case, field)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            pass  # a value of another type than the document's: the case is invalid anyway


def _integral_floats_as_ints(value: object) -> object | None:
    """`value` with every `0.0` as `0`, or None when it holds none (the case is left as it is). The JSON
    API reads JSON as protobuf does, where 1.0 is the integer 1, but the document's dialect (OpenAPI 3.0,
    JSON Schema draft 4) calls 1.0 no integer. Sent as it is, a case whose only fault was an integral
    float would be judged invalid and then accepted. Schemathesis judges the case again once it has
    changed."""
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, dict):
        items = {k: _integral_floats_as_ints(v) for k, v in value.items()}
        return (
            None
            if all(v is None for v in items.values())
            else {k: value[k] if v is None else v for k, v in items.items()}
        )
    if isinstance(value, list):
        found = [_integral_floats_as_ints(v) for v in value]
        return (
            None
            if all(v is None for v in found)
            else [o if v is None else v for o, v in zip(value, found, strict=True)]
        )
    return None


def _without_proto_names(body: dict) -> dict:
    return {
        k: _without_proto_names(v) if isinstance(v, dict) else v
        for k, v in body.items()
        if not (isinstance(k, str) and "_" in k)
    }


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
    as_the_document_states(case)
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
            as_the_document_states(case)

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
