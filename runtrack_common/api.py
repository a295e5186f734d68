"""Calls to the other service's public API through Envoy, on the caller's behalf.

The services stay deployed apart: where one needs the other (GetTrack asks the dashboard whether
a run is shared; DeleteRun has the tracking service delete the trail), it calls its public gRPC
API through Envoy with the caller's own token, so the other side applies its own rules.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from runtrack_common import tracing
from runtrack_common.errors import (
    FailedPrecondition,
    Internal,
    NotFound,
    PermissionDenied,
    RunTrackError,
    Unauthenticated,
    Unavailable,
)
from runtrack_common.identity import Caller, LinkHolder

Response = TypeVar("Response")
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)


def _reason(err: grpc.aio.AioRpcError) -> str | None:
    """The ErrorInfo reason the other service gave, passed on as it is."""
    try:
        status = rpc_status.from_call(cast(grpc.Call, err))
    except ValueError:
        return None
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason or None
    return None


def classify(err: grpc.aio.AioRpcError) -> RunTrackError:
    """The other service's answer, as the error this service passes on."""
    code, details = err.code(), err.details() or ""
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(details, reason=_reason(err))
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(details, reason=_reason(err))
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPrecondition(details, reason=_reason(err))
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(details, reason=_reason(err))
    if code in RETRYABLE:
        return Unavailable(f"the other RunTrack service is unavailable: {details}", reason="UPSTREAM_UNAVAILABLE")
    return Internal(f"the other RunTrack service failed: {code.name}", reason="UPSTREAM_FAILED")


class PublicApi:
    """One channel to Envoy, opened on first use."""

    def __init__(self, address: str, timeout_s: float) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._channel: grpc.aio.Channel | None = None

    @property
    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            # With traces on, each call carries the caller's trace on (`traceparent`) as a client span.
            self._channel = grpc.aio.insecure_channel(self.address, interceptors=tracing.client_interceptors() or None)
        return self._channel

    async def call(
        self,
        method: Callable[..., Awaitable[Response]],
        request: Any,
        caller: Caller | LinkHolder,
        *,
        timeout_s: float | None = None,
    ) -> Response:
        metadata: tuple[tuple[str, str], ...] = (("authorization", caller.authorization),)
        if tracing.recording():
            # Envoy decides afresh which requests it traces: a traced call's own calls ask to be.
            metadata += ((tracing.ASK_HEADER, str(uuid.uuid4())),)
        try:
            return await method(
                request,
                metadata=metadata,
                timeout=self.timeout_s if timeout_s is None else timeout_s,
            )
        except grpc.aio.AioRpcError as err:
            raise classify(err) from err

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
