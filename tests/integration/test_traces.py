"""Traces across the whole path, read back from the real Jaeger the test stack runs: a call sent
through Envoy with a sampled W3C `traceparent` leaves one trace holding Envoy's spans, the replicas'
and their stores', and the replicas' log lines for it carry its trace id beside the run id."""

import asyncio
import datetime as dt
import random
import time
import uuid

import pytest
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from tests.helpers import http_json, point, token_channel
from tests.integration.test_dashboard import overview

pytestmark = pytest.mark.traces

START = dt.datetime(2026, 3, 2, 7, 0, tzinfo=dt.UTC)


def traced(ask: bool = True) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A fresh trace id and the call metadata that starts the call inside it (a sampled `traceparent`),
    asking Envoy to trace it (`x-client-trace-id`) unless `ask` is False."""
    context = SpanContext(
        trace_id=random.getrandbits(128),
        span_id=random.getrandbits(64),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=set_span_in_context(NonRecordingSpan(context)))
    if ask:
        carrier["x-client-trace-id"] = str(uuid.uuid4())
    return format(context.trace_id, "032x"), tuple(carrier.items())


def spans_of(stack, trace_id: str, enough, timeout_s: float = 30.0) -> list[dict]:
    """The trace's spans once `enough(spans)` holds (the exporters send in batches, every few seconds)."""
    deadline = time.monotonic() + timeout_s
    spans: list[dict] = []
    while time.monotonic() < deadline:
        spans = stack.traces.trace(trace_id)
        if spans and enough(spans):
            return spans
        time.sleep(0.5)
    raise AssertionError(f"trace {trace_id} incomplete after {timeout_s:.0f}s: {summary(spans)}")


def summary(spans: list[dict]) -> list[tuple[str, str]]:
    return sorted((s["service"], s["operationName"]) for s in spans)


def tag(span: dict, key: str):
    return next((t["value"] for t in span.get("tags", []) if t["key"] == key), None)


def parent_of(span: dict) -> str | None:
    return next((r["spanID"] for r in span.get("references", []) if r["refType"] == "CHILD_OF"), None)


def log_lines(stack, containing: str) -> list[str]:
    return [
        line
        for log in stack.spec.logs.glob("*-5*.log")  # the replicas' logs (tracking-51110.log, ...)
        for line in log.read_text(errors="replace").splitlines()
        if containing in line
    ]


@pytest.fixture(autouse=True)
def collector(stack):
    """The test stack starts Jaeger only for the tests that read it."""
    return stack.start_traces()


@pytest.fixture
def runner(stack):
    user = f"tracer-{uuid.uuid4().hex[:8]}"
    return user, stack.issuer.token(user)


async def test_one_stop_run_is_one_trace_from_envoy_through_both_services_to_both_stores(stack, runner):
    _user, token = runner
    run_id = str(uuid.uuid4())
    trace_id, metadata = traced()
    async with token_channel(stack.envoy_address, token) as channel:
        await summary_pb2_grpc.SummaryServiceStub(channel).StopRun(
            summary_pb2.StopRunRequest(run_id=run_id, overview=overview(START)), metadata=metadata
        )

    def complete(spans: list[dict]) -> bool:
        systems = {tag(s, "db.system") for s in spans}
        names = {(s["service"], s["operationName"]) for s in spans}
        return {"postgresql", "cassandra"} <= systems and {
            ("summary_service", "/runtrack.v1.SummaryService/StopRun"),
            ("tracking_service", "/runtrack.v1.TrackingService/ClaimRun"),
            ("tracking_service", "/runtrack.v1.TrackingService/MarkRunStopped"),
        } <= names

    spans = spans_of(stack, trace_id, complete)
    names = summary(spans)
    assert ("summary_service", "/runtrack.v1.SummaryService/StopRun") in names, names
    # The summary replica claims the run id and tells the tracking side, through Envoy: both calls in it.
    for method in ("ClaimRun", "MarkRunStopped"):
        assert ("tracking_service", f"/runtrack.v1.TrackingService/{method}") in names, names
    # Envoy's span of each hop: the phone's StopRun and the two calls the summary replica made.
    assert sum(1 for s in spans if s["service"] == "envoy") >= 3, names
    # One tree: every span but the first (Envoy's, under the caller's) has its parent in the trace.
    ids = {s["spanID"] for s in spans}
    roots = [s for s in spans if parent_of(s) not in ids]
    assert [r["service"] for r in roots] == ["envoy"], summary(roots)
    pg = [s for s in spans if tag(s, "db.system") == "postgresql"]
    assert any("runs" in (tag(s, "db.statement") or "") for s in pg), [tag(s, "db.statement") for s in pg]
    # The replicas' log lines of the call carry the trace id beside the run id.
    lines = log_lines(stack, f"trace_id={trace_id}")
    assert lines and all(f"run_id={run_id}" in line for line in lines if "run_id=" in line), lines
    assert any(f"run_id={run_id}" in line for line in lines), lines


async def test_a_stream_is_one_trace_holding_the_writes_of_its_batches_not_a_span_per_point(stack, runner):
    user, token = runner
    run_id = str(uuid.uuid4())
    trace_id, metadata = traced()
    start_ms = (int(time.time()) - 600) * 1000

    async def messages():
        for batch in range(5):
            yield tracking_pb2.RecordTrackRequest(
                run_id=run_id,
                user_id=user,
                points=[point(batch * 20 + i + 1, start_ms=start_ms) for i in range(20)],
            )

    async with token_channel(stack.envoy_address, token) as channel:
        reply = await tracking_pb2_grpc.TrackingServiceStub(channel).RecordTrack(messages(), metadata=metadata)
    assert reply.points_stored == 100

    def written(spans: list[dict]) -> bool:
        return sum(tag(s, "runtrack.points") or 0 for s in spans if s["operationName"] == "write points") >= 100

    spans = spans_of(stack, trace_id, written)
    stream = [s for s in spans if s["operationName"] == "/runtrack.v1.TrackingService/RecordTrack"]
    assert len(stream) == 1 and stream[0]["service"] == "tracking_service", summary(spans)
    writes = [s for s in spans if s["operationName"] == "write points"]
    assert writes and all(parent_of(w) == stream[0]["spanID"] for w in writes), summary(spans)
    # Each write is a batch (its CQL request a span under it), never a span per point.
    assert len(writes) <= 5, len(writes)
    assert all(
        any(parent_of(s) == w["spanID"] and tag(s, "db.system") == "cassandra" for s in spans) for w in writes
    ), summary(spans)
    # The stream's start: its claim on the run id, in the store, in the same trace.
    assert any(tag(s, "db.system") == "cassandra" and parent_of(s) == stream[0]["spanID"] for s in spans)
    assert any(f"run_id={run_id}" in line for line in log_lines(stack, f"trace_id={trace_id}"))


async def test_a_callers_sampled_traceparent_forces_no_trace_envoy_alone_decides(stack, runner):
    """From the caller's side: a `traceparent` marked sampled keeps its trace id (the logs name it) but
    records nothing; Envoy decides (here: only what `x-client-trace-id` asks, the test stack samples 0 %)."""
    _user, token = runner
    run_id = str(uuid.uuid4())
    trace_id, metadata = traced(ask=False)
    async with token_channel(stack.envoy_address, token) as channel:
        await summary_pb2_grpc.SummaryServiceStub(channel).StopRun(
            summary_pb2.StopRunRequest(run_id=run_id, overview=overview(START)), metadata=metadata
        )
    # A traced call made after it: once its spans are in, the first call's would be too.
    later_id, later = traced()
    async with token_channel(stack.envoy_address, token) as channel:
        await summary_pb2_grpc.SummaryServiceStub(channel).StopRun(
            summary_pb2.StopRunRequest(run_id=str(uuid.uuid4()), overview=overview(START)), metadata=later
        )
    spans_of(stack, later_id, lambda spans: {"summary_service", "tracking_service"} <= {s["service"] for s in spans})
    assert stack.traces.trace(trace_id) == []
    assert any(f"trace_id={trace_id}" in line for line in log_lines(stack, f"run_id={run_id}"))


async def test_over_json_too_a_sampled_traceparent_forces_nothing_and_x_client_trace_id_asks(stack, runner):
    """The dashboard's path (JSON through Envoy's transcoder), from the caller's side: the same decision
    as over gRPC. A sampled `traceparent` alone leaves no trace; with `x-client-trace-id` the call is
    traced through Envoy into the summary replica and its store."""
    _user, token = runner
    body = {
        "overview": {
            "startTime": "2026-03-02T07:00:00Z",
            "endTime": "2026-03-02T07:30:00Z",
            "distanceM": 5000,
            "movingTime": "1770s",
        }
    }
    unasked_id, unasked = traced(ask=False)
    asked_id, asked = traced()
    for metadata in (unasked, asked):
        status, answer = await asyncio.to_thread(
            http_json,
            stack.envoy_address,
            "POST",
            f"/v1/runs/{uuid.uuid4()}:stop",
            body,
            token=token,
            headers=dict(metadata),
        )
        assert status == 200, answer
    spans = spans_of(stack, asked_id, lambda spans: {"envoy", "summary_service"} <= {s["service"] for s in spans})
    assert any(s["service"] == "summary_service" and "StopRun" in s["operationName"] for s in spans), summary(spans)
    assert stack.traces.trace(unasked_id) == []
