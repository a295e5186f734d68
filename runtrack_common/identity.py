"""Who is calling: the user Envoy verified from the token, handed to the replicas in one header."""

from __future__ import annotations

from dataclasses import dataclass

from runtrack_common.errors import PermissionDenied

# Set by Envoy from the token's `sub` after removing any the client sent; replicas trust nothing else.
CALLER_HEADER = "x-runtrack-user"
# Set by Envoy from a verified live link's claims (its run and its id), after removing any the client sent.
LINK_RUN_HEADER = "x-runtrack-link-run"
LINK_ID_HEADER = "x-runtrack-link"
# In a path or a user_id field: the caller (`/v1/users/me/runs`).
ME = "me"


@dataclass(frozen=True, slots=True)
class Caller:
    """The verified user, and the credentials to call the other service's API on their behalf."""

    user_id: str
    authorization: str = ""


@dataclass(frozen=True, slots=True)
class LinkHolder:
    """Whoever holds a live link Envoy verified: no account, only the link's run."""

    link_id: str
    run_id: str
    authorization: str = ""


def resolve_user(requested: str, caller: Caller) -> str:
    """The user a request names: empty or "me" is the caller."""
    return caller.user_id if requested in ("", ME) else requested


def require_self(requested: str, caller: Caller, field: str = "user_id") -> str:
    """The caller, when the request names the caller (or no one); PERMISSION_DENIED otherwise."""
    user = resolve_user(requested, caller)
    if user != caller.user_id:
        raise PermissionDenied(
            f"{field}: {user!r} is not the caller; only your own data can be changed or read here",
            reason="NOT_THE_CALLER",
        )
    return user
