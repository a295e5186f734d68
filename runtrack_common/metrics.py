"""A replica's Prometheus metrics: the standard `grpc_server_*` families for every unary and
client-streaming method (a grpc.aio server interceptor: the maintained interceptors are for the
synchronous server), served as text on the replica's own metrics port.

Beside them, what the objectives of docs/slos.md are measured with: the time to each status by
status (`runtrack_grpc_server_handled_seconds`, with buckets at the objectives' 200 ms and 300 ms),
and the calls a store did not answer (`runtrack_store_unavailable_total`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from prometheus_client import Counter, Histogram, start_http_server

LABELS = ("grpc_type", "grpc_service", "grpc_method")
STARTED = Counter("grpc_server_started_total", "RPCs started on the server.", LABELS)
HANDLED = Counter(
    "grpc_server_handled_total", "RPCs completed on the server, whatever their status.", (*LABELS, "grpc_code")
)
HANDLING = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of an RPC to its status (a client stream: the whole stream).",
    LABELS,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
# The standard histogram has no status: "OK within 300 ms" needs the time and the status of the same
# call (an error answered fast is not a good call). Its buckets hold each objective's threshold.
HANDLED_BY_CODE = Histogram(
    "runtrack_grpc_server_handled_seconds",
    "Time from the start of an RPC to its status, by status (the objectives of docs/slos.md).",
    (*LABELS, "grpc_code"),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2.5, 5, 10),
)
STORE_UNAVAILABLE = Counter(
    "runtrack_store_unavailable_total",
    "Calls answered UNAVAILABLE because a store did not answer (after any retries), by store.",
    ("store",),
)

Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


def _code(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The status an exception ended the call with: set by abort, else UNKNOWN (grpc.aio's own)."""
    code: object = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


def _observed(behavior: Behavior, labels: tuple[str, str, str]) -> Behavior:
    started, handling = STARTED.labels(*labels), HANDLING.labels(*labels)

    async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started.inc()
        start = time.perf_counter()
        code = "OK"
        try:
            return await behavior(request, context)
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception:
            code = _code(context)
            raise
        finally:
            elapsed = time.perf_counter() - start
            HANDLED.labels(*labels, code).inc()
            handling.observe(elapsed)
            HANDLED_BY_CODE.labels(*labels, code).observe(elapsed)

    return observed


class ServerMetrics(grpc.aio.ServerInterceptor):
    """Counts and times unary and client-streaming calls; other handlers pass through as they are."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        service, _, method = handler_call_details.method.strip("/").partition("/")
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _observed(cast(Behavior, handler.unary_unary), ("UNARY", service, method)),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _observed(cast(Behavior, handler.stream_unary), ("CLIENT_STREAM", service, method)),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def initialize(service: ServiceDescriptor) -> None:
    """Every counted method's series at 0 from the start (status OK), before its first call: a rate
    over them is 0, not missing, on a replica no call has reached yet (the HPA reads it per pod)."""
    for method in service.methods:
        if method.server_streaming:
            continue  # not counted (the interceptor passes such handlers through)
        labels = ("CLIENT_STREAM" if method.client_streaming else "UNARY", service.full_name, method.name)
        STARTED.labels(*labels)
        HANDLING.labels(*labels)
        HANDLED.labels(*labels, "OK")
        HANDLED_BY_CODE.labels(*labels, "OK")


def serve(host: str, port: int) -> None:
    """Serves /metrics (Prometheus text) from a background thread."""
    start_http_server(port, addr=host)
