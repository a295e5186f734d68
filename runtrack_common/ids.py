"""Identifiers and times both services take from clients."""

from __future__ import annotations

import datetime as dt
import uuid

from google.protobuf.timestamp_pb2 import Timestamp

from runtrack_common.errors import InvalidArgument


def parse_run_id(value: str, field: str = "run_id") -> uuid.UUID:
    """The run_id the phone chose at START RUN: required, and a UUID."""
    if not value:
        raise InvalidArgument(field, "is required")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(field, f"must be a UUID, got {value[:64]!r}", reason="INVALID_RUN_ID") from None


# google.protobuf.Timestamp's own range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
MIN_SECONDS = -62_135_596_800
MAX_SECONDS = 253_402_300_799


def parse_time(value: Timestamp, field: str) -> dt.datetime:
    """A Timestamp the caller sent, as an aware datetime; INVALID_ARGUMENT naming `field` when it
    lies outside the range a Timestamp may hold (the datetime conversion would otherwise fail)."""
    if not MIN_SECONDS <= value.seconds <= MAX_SECONDS or not 0 <= value.nanos <= 999_999_999:
        raise InvalidArgument(field, "must be a time between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z")
    return value.ToDatetime(dt.UTC)
