"""A replica's Prometheus metrics: the standard `grpc_server_*` families for every unary and
client-streaming method (a grpc.aio server interceptor: the maintained interceptors are for the
synchronous server), served as text on the replica's own metrics port."""

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
            HANDLED.labels(*labels, code).inc()
            handling.observe(time.perf_counter() - start)

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


def serve(host: str, port: int) -> None:
    """Serves /metrics (Prometheus text) from a background thread."""
    start_http_server(port, addr=host)
