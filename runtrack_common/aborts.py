"""Calls ended with `context.abort` leave no reference cycle behind.

grpc.aio keeps the AbortError that `abort` raises in the call's state. As it passes up through the
handler, its traceback holds the handler's frames, and they hold the servicer context, which holds the
call's state and so the AbortError again (and so does the error it was raised while handling, through
its own traceback). Every refused or failed call was then a cycle of ~70 objects that only the cycle
collector frees: under a flood of refused calls its collections grew to 0.1-0.6 s pauses of the
replica, every other caller's calls waiting behind them. This outermost interceptor takes the
AbortError off the handler's frames (its traceback and the error it chains) and lets gRPC finish the
call as aborted, as it would have: the status was sent by `abort` already.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

Handler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any]


def _release(err: grpc.aio.AbortError) -> None:
    err.__traceback__ = None
    err.__context__ = None
    err.__cause__ = None


def _coroutine(behavior: Handler) -> Handler:
    async def released(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError as err:
            _release(err)
            return None  # gRPC raises the call's AbortError again and ends the call as aborted

    return released


def _generator(behavior: Handler) -> Handler:
    async def released(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        try:
            async for answer in behavior(request, context):
                yield answer
        except grpc.aio.AbortError as err:
            _release(err)

    return released


def _wrap(behavior: Handler) -> Handler:
    return _generator(behavior) if inspect.isasyncgenfunction(behavior) else _coroutine(behavior)


class ReleaseAborts(grpc.aio.ServerInterceptor):
    """Wraps every handler (the first interceptor, so that its frame is the outermost of ours)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        kinds: dict[str, Callable[..., grpc.RpcMethodHandler[Any, Any]]] = {
            "unary_unary": grpc.unary_unary_rpc_method_handler,
            "unary_stream": grpc.unary_stream_rpc_method_handler,
            "stream_unary": grpc.stream_unary_rpc_method_handler,
            "stream_stream": grpc.stream_stream_rpc_method_handler,
        }
        for kind, make in kinds.items():
            behavior = getattr(handler, kind)
            if behavior is not None:
                return make(
                    _wrap(behavior),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler
