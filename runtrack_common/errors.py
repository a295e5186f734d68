"""Errors the use cases raise, and their one mapping to gRPC status codes."""

from __future__ import annotations

import functools
import logging
from typing import Any, Awaitable, Callable, TypeVar

import grpc

log = logging.getLogger("runtrack.errors")


class ServiceError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(ServiceError):
    """The database behind the replica cannot be reached; the caller may retry."""

    code = grpc.StatusCode.UNAVAILABLE


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def maps_errors(method: F) -> F:
    """Servicer decorator: a ServiceError becomes its status; anything else is INTERNAL, logged."""

    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await method(self, request, context)
        except ServiceError as err:
            await context.abort(err.code, str(err))
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except Exception:
            run_id = getattr(request, "run_id", "") if hasattr(request, "DESCRIPTOR") else ""
            log.exception("rpc=%s run_id=%s failed unexpectedly", method.__name__, run_id or "-")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    return wrapper  # type: ignore[return-value]
