"""Malformed request bytes on unary calls: INVALID_ARGUMENT with ErrorInfo (MALFORMED_MESSAGE).

grpc decodes a unary call's request before the method runs and answers a corrupt one with UNKNOWN and
no details; a call that ends without any message it never answers at all (grpc.aio returns without a
status: Envoy cut such a call after its route timeout, 15 s, as UNAVAILABLE). This interceptor reads the
request itself, as a stream of one message, decodes it leniently and has the call answer the documented
status, as RecordTrack does for a corrupt message on its stream (which it reads itself).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from runtrack_common import status
from runtrack_common.errors import InvalidArgument


class _Malformed:
    """Stands for a request whose bytes were not a valid message."""

    def __init__(self, error: str) -> None:
        self.error = error


def _refusal(method: str, bad: _Malformed | None) -> InvalidArgument:
    name = method.rsplit("/", 1)[-1]
    if bad is None:
        return InvalidArgument("request", f"is required: the {name} call sent no message", reason="MALFORMED_MESSAGE")
    return InvalidArgument(
        "request", f"is not a valid {name} request (corrupt wire format: {bad.error})", reason="MALFORMED_MESSAGE"
    )


async def _request(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any], method: str) -> Any:
    """The call's one request; the call ends INVALID_ARGUMENT when there is none or it is corrupt."""
    async for request in requests:
        if isinstance(request, _Malformed):
            break
        return request
    else:
        request = None
    await status.abort(context, _refusal(method, request), rpc=method, run_id="-")


class MalformedRequests(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        decode = handler.request_deserializer
        method = handler_call_details.method

        def lenient(data: bytes) -> Any:
            try:
                return decode(data)
            except DecodeError as err:
                return _Malformed(str(err)[:120])

        # Read as a client stream (the same bytes on the wire), so that a call without a message is seen.
        if handler.unary_unary is not None:
            unary: Any = handler.unary_unary  # a coroutine function on an aio server

            async def unary_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                return await unary(await _request(requests, context, method), context)

            return grpc.stream_unary_rpc_method_handler(
                unary_unary, request_deserializer=lenient, response_serializer=handler.response_serializer
            )
        if handler.unary_stream is not None:
            stream: Any = handler.unary_stream  # an async generator function on an aio server

            async def unary_stream(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                async for answer in stream(await _request(requests, context, method), context):
                    yield answer

            return grpc.stream_stream_rpc_method_handler(
                unary_stream, request_deserializer=lenient, response_serializer=handler.response_serializer
            )
        return handler
