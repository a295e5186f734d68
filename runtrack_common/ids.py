"""Identifiers both services take from clients."""

from __future__ import annotations

import uuid

from runtrack_common.errors import InvalidArgument


def parse_run_id(value: str, field: str = "run_id") -> uuid.UUID:
    """The run_id the phone chose at START RUN: required, and a UUID."""
    if not value:
        raise InvalidArgument(field, "is required")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(field, f"must be a UUID, got {value[:64]!r}", reason="INVALID_RUN_ID") from None
