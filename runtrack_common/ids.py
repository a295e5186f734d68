"""Identifiers both services take from clients."""

from __future__ import annotations

import uuid

from runtrack_common.errors import InvalidArgument


def parse_run_id(value: str) -> uuid.UUID:
    """The run_id the phone chose at START RUN: required, and a UUID."""
    if not value:
        raise InvalidArgument("run_id", "is required")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument("run_id", f"must be a UUID, got {value[:64]!r}", reason="INVALID_RUN_ID") from None
