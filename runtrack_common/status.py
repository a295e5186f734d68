"""The transport edge: every error leaves a replica as one gRPC status with `google.rpc` details.

`ErrorInfo` (reason, domain `runtrack`) on every error, `BadRequest` with one field violation per
broken rule on INVALID_ARGUMENT, `RetryInfo` on UNAVAILABLE. Envoy's transcoder turns the same
`google.rpc.Status` into the JSON body of the HTTP error. Anything that is not a RunTrackError is a
bug: INTERNAL, logged once with the run_id, and never UNAVAILABLE (a retry cannot fix it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from runtrack_common.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RunTrackError,
    Unauthenticated,
    Unavailable,
)
from runtrack_common.identity import CALLER_HEADER, LINK_ID_HEADER, LINK_RUN_HEADER, Caller, LinkHolder
from runtrack_common.metrics import STORE_UNAVAILABLE

log = logging.getLogger(__name__)

DOMAIN = "runtrack"
CODES: dict[type[RunTrackError], grpc.StatusCode] = {
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Internal: grpc.StatusCode.INTERNAL,
}
UNEXPECTED = "INTERNAL_ERROR"


def code_of(err: RunTrackError) -> grpc.StatusCode:
    for kind in type(err).__mro__:
        if kind in CODES:
            return CODES[kind]
    return grpc.StatusCode.INTERNAL


def to_status(err: RunTrackError) -> status_pb2.Status:
    """The `google.rpc.Status` a client receives for `err`."""
    code = code_of(err)
    status = status_pb2.Status(code=code.value[0], message=err.message)
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN, metadata=err.metadata))
    if isinstance(err, InvalidArgument):
        status.details.add().Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.rule)
                    for v in err.violations
                ]
            )
        )
    if isinstance(err, Unavailable):
        delay = Duration()
        delay.FromTimedelta(dt.timedelta(seconds=err.retry_after_s))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return status


def unexpected(run_id: str) -> RunTrackError:
    """What a client is told about a bug: INTERNAL, not retryable; the log has the rest."""
    return Internal(
        f"internal error (run_id {run_id}); not retryable, reported",
        reason=UNEXPECTED,
        metadata={"run_id": run_id} if run_id != "-" else None,
    )


async def abort(context: grpc.aio.ServicerContext[Any, Any], err: Exception, *, rpc: str, run_id: str) -> NoReturn:
    """Ends the call with the status of `err`; logs it when it is a failure of ours."""
    if not isinstance(err, RunTrackError):
        log.error("rpc=%s run_id=%s failed unexpectedly", rpc, run_id, exc_info=err)
        err = unexpected(run_id)
    elif isinstance(err, Internal):
        log.error("rpc=%s run_id=%s failed: %s", rpc, run_id, err.message, exc_info=err.__cause__ or err)
    elif isinstance(err, Unavailable) and "store" in err.metadata:
        STORE_UNAVAILABLE.labels(err.metadata["store"]).inc()
    await context.abort_with_status(rpc_status.to_status(to_status(err)))
    raise AssertionError("abort_with_status returned")  # it raises; this tells the type checker


def metadata(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str:
    """A request header Envoy passed on (the first, as text); "" when absent."""
    for k, value in context.invocation_metadata() or ():
        if k == key:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return ""


def caller_of(context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
    """The user Envoy verified; UNAUTHENTICATED when the call did not pass Envoy's token check."""
    user, authorization = "", ""
    for key, value in context.invocation_metadata() or ():
        if key == CALLER_HEADER and isinstance(value, str):
            user = value
        elif key == "authorization" and isinstance(value, str):
            authorization = value
    if not user:
        raise Unauthenticated(
            f"no verified caller ({CALLER_HEADER}): call through Envoy with authorization: Bearer <JWT>"
        )
    return Caller(user, authorization)


def viewer_of(context: grpc.aio.ServicerContext[Any, Any]) -> Caller | LinkHolder:
    """A verified user, or else the holder of a verified live link (WatchRun and GetRun only)."""
    link_run, link_id, user, authorization = "", "", "", ""
    for key, value in context.invocation_metadata() or ():
        if not isinstance(value, str):
            continue
        if key == LINK_RUN_HEADER:
            link_run = value
        elif key == LINK_ID_HEADER:
            link_id = value
        elif key == CALLER_HEADER:
            user = value
        elif key == "authorization":
            authorization = value
    if user:
        return Caller(user, authorization)
    if link_run and link_id:
        return LinkHolder(link_id, link_run, authorization)
    return caller_of(context)


Request = TypeVar("Request")
Response = TypeVar("Response")
Servicer = TypeVar("Servicer")
Context = grpc.aio.ServicerContext
Handler = Callable[[Servicer, Request, "Context[Request, Response]"], Awaitable[Response]]


def request_run_id(request: object) -> str:
    """The run a request is about, for the log line ("-" when it names none)."""
    run_id = getattr(request, "run_id", None)
    return run_id if isinstance(run_id, str) and run_id else "-"


def maps_errors(
    method: Callable[[Servicer, Request, Context[Request, Response]], Awaitable[Response]],
) -> Callable[[Servicer, Request, Context[Request, Response]], Coroutine[Any, Any, Response]]:
    """A unary method whose errors leave through `abort`."""

    @functools.wraps(method)
    async def wrapper(self: Servicer, request: Request, context: Context[Request, Response]) -> Response:
        try:
            return await method(self, request, context)
        except asyncio.CancelledError:
            raise
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except Exception as err:  # noqa: BLE001 (every failure leaves with a status)
            await abort(context, err, rpc=method.__name__, run_id=request_run_id(request))

    return wrapper
