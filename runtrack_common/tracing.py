"""Traces: OpenTelemetry with W3C trace context, exported over OTLP (docs/operating.md#traces).

Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` names a collector (OpenTelemetry's own variable). Envoy decides
which requests are traced (a share of them, and those a caller asks for with `x-client-trace-id`) and
passes its decision on in `traceparent`; a replica records exactly the calls whose parent is sampled, and
nothing that comes without one (its own store probes). `OTEL_TRACES_SAMPLER` and the exporter's other
`OTEL_*` variables work as the SDK documents them.

A RecordTrack stream is one call, so one trace for its whole life: its server span, the store requests
of its start, and a span per batch of its points the writer stored (see `tracking_service/writer.py`),
never one per point. On a point's path, an unsampled stream costs a context lookup per store request;
per call, the gRPC instrumentation's (non-recording) span around it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind

log = logging.getLogger(__name__)

ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
# What asks Envoy to trace a request (its `client_sampling` share of them: all, by default).
ASK_HEADER = "x-client-trace-id"
_provider: Any = None
_tracer: trace.Tracer = trace.NoOpTracer()


def setup(service_name: str, instance: str, env: Mapping[str, str] = os.environ) -> bool:
    """Installs the tracer provider when a collector is named; True when traces are on."""
    if not env.get(ENDPOINT):
        return False
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

    resource = Resource.create({"service.name": service_name, "service.instance.id": instance})
    sampler = None
    if not env.get("OTEL_TRACES_SAMPLER"):
        sampler = ParentBased(ALWAYS_OFF)
    provider = TracerProvider(resource=resource, sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    install(provider)
    log.info("traces on service=%s collector=%s", service_name, env[ENDPOINT])
    return True


def install(provider: Any) -> None:
    """Traces go to `provider` (an SDK TracerProvider) from now on."""
    global _provider, _tracer
    _provider, _tracer = provider, provider.get_tracer("runtrack")


def uninstall() -> None:
    global _provider, _tracer
    _provider, _tracer = None, trace.NoOpTracer()


def shutdown() -> None:
    """Sends what is still buffered (a replica stopping)."""
    if _provider is not None:
        _provider.shutdown()


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The server span of every call, its parent taken from `traceparent` (none when traces are off)."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

    # Not the health checks Envoy sends every few seconds: they have no parent, and say nothing of a call.
    interceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=_provider, filter_=filters.negate(filters.health_check())
    )
    return [interceptor]


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """A client span per outgoing call, and `traceparent` sent with it."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors(tracer_provider=_provider))  # type: ignore[no-untyped-call]


def instrument_pg_connection(connection: Any) -> None:
    """PostgreSQL's spans (one per statement) for a pool's new connection."""
    if _provider is not None:
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

        PsycopgInstrumentor.instrument_connection(connection, tracer_provider=_provider)


def current() -> SpanContext | None:
    """The current call's span context when it is being recorded (sampled), else None."""
    span = trace.get_current_span()
    return span.get_span_context() if span.is_recording() else None


def recording() -> bool:
    """Whether the current call is being recorded (sampled)."""
    return trace.get_current_span().is_recording()


def trace_id() -> str | None:
    """The current trace's id as logs show it (32 hex digits), sampled or not; None outside a trace."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


@contextmanager
def store_span(system: str, operation: str, statement: str = "") -> Iterator[Span]:
    """A client span for one store request (the caller asks `recording()` first: only a traced call's)."""
    attributes = {"db.system": system, "db.operation": operation}
    if statement:
        attributes["db.statement"] = statement
    with _tracer.start_as_current_span(f"{system} {operation}", kind=SpanKind.CLIENT, attributes=attributes) as span:
        yield span


@contextmanager
def span_for(parents: Sequence[SpanContext], name: str, attributes: Mapping[str, Any]) -> Iterator[None]:
    """One span on behalf of several recorded calls (a batch holding points of many streams): a child of
    the first, linked to the others. Nothing when `parents` is empty."""
    if not parents:
        yield
        return
    parent = trace.set_span_in_context(NonRecordingSpan(parents[0]))
    links = [Link(p) for p in parents[1:]]
    with _tracer.start_as_current_span(name, context=parent, links=links, attributes=dict(attributes)):
        yield
