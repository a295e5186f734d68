"""Live link tokens: JWTs signed with the tracking service's own key (ES256, PyJWT), verified at
Envoy by a second jwt_authn provider with the public half. A token names its run (`run_id`) and its
link (`jti`); the link's row in the store is what keeps it alive (revocation, default expiry)."""

from __future__ import annotations

import datetime as dt
import secrets
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from runtrack_common.api_rules import MAX_LINK_LIFETIME
from runtrack_common.config import Settings
from runtrack_common.errors import Unavailable

ALGORITHM = "ES256"
KEY_ID = "runtrack-live-1"


def new_link_id() -> str:
    return secrets.token_urlsafe(12)


def new_webhook_secret() -> str:
    """32 random bytes, shown to the owner once."""
    return "whsec_" + secrets.token_urlsafe(32)


class LinkSigner:
    def __init__(self, settings: Settings) -> None:
        self.key_file = settings.live_link_key_file
        self.issuer = settings.live_link_issuer
        self.audience = settings.live_link_audience
        self._key: PrivateKeyTypes | None = None

    def _signing_key(self) -> PrivateKeyTypes:
        if self._key is None:
            if not self.key_file:
                raise Unavailable(
                    "live links are not configured on this replica (LIVE_LINK_KEY_FILE)", reason="LIVE_LINKS_OFF"
                )
            self._key = serialization.load_pem_private_key(Path(self.key_file).read_bytes(), password=None)
        return self._key

    def token(self, run_id: str, link_id: str, now: dt.datetime, expire_at: dt.datetime | None) -> str:
        """The bearer token; it expires with the link, or after the longest a link may live (the store's
        row ends a default link earlier, an hour after the run stops)."""
        exp = expire_at or now + MAX_LINK_LIFETIME
        claims = {
            "iss": self.issuer,
            "aud": [self.audience],
            "sub": f"live:{link_id}",
            "jti": link_id,
            "run_id": run_id,
            "iat": int(now.timestamp()),
            "exp": int(exp.timestamp()),
        }
        return jwt.encode(claims, self._signing_key(), algorithm=ALGORITHM, headers={"kid": KEY_ID})  # type: ignore[arg-type]
