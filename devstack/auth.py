"""The local stack's identity provider: one signing key, its JWKS for Envoy, and tokens.

`scripts/dev up` makes the key pair once (ES256, with `cryptography`) under the stack's state
directory and writes the public half as a JWKS file, which Envoy's jwt_authn reads. Tokens are
signed with PyJWT. In production Envoy reads the identity provider's JWKS instead (docs/api.md).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

ISSUER = "https://auth.runtrack.local"
AUDIENCE = "runtrack"
ALGORITHM = "ES256"
KEY_ID = "runtrack-local-1"
# Live links: signed by the tracking replicas with their own key (LIVE_LINK_KEY_FILE), verified by
# Envoy's second provider; the same defaults as the replicas' settings.
LINK_ISSUER = "https://live.runtrack.local"
LINK_AUDIENCE = "runtrack-live"
LINK_KEY_ID = "runtrack-live-1"


class LocalIssuer:
    """Signs tokens for the local stack with the key kept in `keys_dir`."""

    def __init__(self, keys_dir: Path, *, prefix: str = "", key_id: str = KEY_ID) -> None:
        self.keys_dir = keys_dir
        self.private_key_file = keys_dir / f"{prefix}signing-key.pem"
        self.jwks_file = keys_dir / f"{prefix}jwks.json"
        self.key_id = key_id
        self._key: PrivateKeyTypes | None = None

    def ensure_keys(self) -> None:
        """Makes the key pair and the JWKS once; later calls leave them alone."""
        if self.private_key_file.exists() and self.jwks_file.exists():
            return
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        jwk.update({"kid": self.key_id, "alg": ALGORITHM, "use": "sig"})
        tmp = self.jwks_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"keys": [jwk]}, indent=2))
        self.private_key_file.write_bytes(pem)
        self.private_key_file.chmod(0o600)
        tmp.replace(self.jwks_file)

    def token(self, user: str, *, ttl_s: int = 3600, **overrides: object) -> str:
        """A token for `user`; `overrides` replace or add claims (tests forge tokens with them)."""
        now = int(time.time())
        claims: dict[str, object] = {"iss": ISSUER, "aud": [AUDIENCE], "sub": user, "iat": now, "exp": now + ttl_s}
        claims.update(overrides)
        if self._key is None:
            self._key = serialization.load_pem_private_key(self.private_key_file.read_bytes(), password=None)
        return jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self.key_id})  # type: ignore[arg-type]

    def metadata(self, user: str, *, ttl_s: int = 3600) -> tuple[tuple[str, str]]:
        """gRPC call metadata carrying a token for `user`."""
        return (("authorization", f"Bearer {self.token(user, ttl_s=ttl_s)}"),)


def token_channel(address: str, token: str) -> grpc.aio.Channel:
    """A channel that sends `authorization: Bearer <token>` on every call, as a phone does: local
    credentials (plaintext on loopback, as Envoy listens here) with access-token call credentials."""
    credentials = grpc.composite_channel_credentials(
        grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP), grpc.access_token_call_credentials(token)
    )
    return grpc.aio.secure_channel(address, credentials)
