"""Opaque, validated page tokens: base64url JSON naming the method, the scope and the position."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from runtrack_common.errors import InvalidArgument


def invalid() -> InvalidArgument:
    return InvalidArgument(
        "page_token", "must be a next_page_token returned by this method for this request", reason="INVALID_PAGE_TOKEN"
    )


def encode(kind: str, scope: str, position: list[Any]) -> str:
    raw = json.dumps({"k": kind, "s": scope, "p": position}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(token: str, kind: str, scope: str) -> list[Any]:
    """The position in `token`; InvalidArgument unless this method issued it for this scope."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise invalid() from None
    if not isinstance(data, dict) or data.get("k") != kind or data.get("s") != scope:
        raise invalid()
    position = data.get("p")
    if not isinstance(position, list):
        raise invalid()
    return position
