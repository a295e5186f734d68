"""The errors the use cases raise: plain exceptions, no transport in sight.

Each names what went wrong in words a client can act on: a `reason` (UPPER_SNAKE_CASE, the
machine-readable cause), a message naming the field and the rule, and for invalid input one
`FieldViolation` per broken rule. `runtrack_common.status` maps them to gRPC statuses at the
edge, once, for every method.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One broken rule: `field` is the request field path (`run_id`, `overview.distance_m`)."""

    field: str
    rule: str

    def __str__(self) -> str:
        return f"{self.field}: {self.rule}"


class RunTrackError(Exception):
    """Base of every error a client is told about; the transport maps each subclass to a status."""

    reason = "ERROR"

    def __init__(self, message: str, *, reason: str | None = None, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(RunTrackError):
    """The request breaks one or more rules; the same request will fail again."""

    reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, rule: str, *, reason: str | None = None) -> None:
        self.violations: tuple[FieldViolation, ...] = (FieldViolation(field, rule),)
        super().__init__(f"{field}: {rule}", reason=reason)

    @classmethod
    def of(cls, violations: Iterable[FieldViolation], *, reason: str | None = None) -> InvalidArgument:
        """One error listing every broken rule (at least one)."""
        found = tuple(violations)
        if not found:
            raise ValueError("InvalidArgument.of needs at least one violation")
        err = cls(found[0].field, found[0].rule, reason=reason)
        err.violations = found
        err.message = "; ".join(str(v) for v in found)
        err.args = (err.message,)
        return err

    @property
    def field(self) -> str:
        return self.violations[0].field

    @property
    def rule(self) -> str:
        return self.violations[0].rule


class Violations:
    """Collects every broken rule of a request, then raises them as one InvalidArgument."""

    def __init__(self) -> None:
        self.found: list[FieldViolation] = []

    def add(self, field: str, rule: str) -> None:
        self.found.append(FieldViolation(field, rule))

    def check(self, parse: Callable[[], T]) -> T | None:
        """`parse()`, or None with its violations kept when it raises InvalidArgument."""
        try:
            return parse()
        except InvalidArgument as err:
            self.found.extend(err.violations)
            return None

    def __bool__(self) -> bool:
        return bool(self.found)

    def raise_if_any(self) -> None:
        if self.found:
            raise InvalidArgument.of(self.found)


class Unauthenticated(RunTrackError):
    """The call carries no verified user: it did not come through Envoy's token check."""

    reason = "NO_VERIFIED_CALLER"


class FailedPrecondition(RunTrackError):
    """The request is valid but the run's state forbids it: it was deleted for good."""

    reason = "RUN_DELETED"


class NotFound(RunTrackError):
    reason = "RUN_NOT_FOUND"


class PermissionDenied(RunTrackError):
    reason = "RUN_OWNED_BY_ANOTHER_USER"


class AlreadyExists(RunTrackError):
    reason = "RUN_ALREADY_STOPPED"


class DeadlineExceeded(RunTrackError):
    reason = "STREAM_IDLE"


class Unavailable(RunTrackError):
    """Something a retry can fix: the store is unreachable or timed out, the replica is leaving.

    `retry_after_s` is the least a client should wait before it tries again.
    """

    reason = "STORE_UNAVAILABLE"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after_s: float = 1.0,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after_s = retry_after_s


class Internal(RunTrackError):
    """A failure a retry cannot fix: a rejected statement, bad data in the store, a refused login.

    The detail goes to the log; the client is told only that it failed and must not retry.
    """

    reason = "STORE_REJECTED"


class ResourceExhausted(Unavailable):
    """Over a limit (streams open at once): the same call succeeds once one ends, after `retry_after_s`."""

    reason = "RATE_LIMITED"
