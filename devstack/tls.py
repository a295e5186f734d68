"""The local CA and Envoy's server certificate (the `cryptography` library, through devstack.pki),
and the SDS file Envoy reads them from.

Made once per stack under its `tls/` directory (`.dev/tls/` for `scripts/dev`): `ca.pem` is what a
client trusts (`grpcurl -cacert`, `curl --cacert`). Envoy reads the certificate and key through SDS
from a file (`sds.yaml`) in a watched directory: `rotate()` writes a new certificate and moves the
SDS file into place, and Envoy serves the new one without a restart.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from devstack.pki import VALID_DAYS, Pki

SECRET_NAME = "runtrack-server"
SERVER_NAMES = ("localhost",)
SERVER_IPS = ("127.0.0.1", "::1")
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


@dataclass(frozen=True)
class TlsFiles:
    dir: Path
    ca: Path
    cert: Path
    key: Path
    sds: Path


def files(directory: Path) -> TlsFiles:
    return TlsFiles(
        directory,
        directory / "ca.pem",
        directory / "server" / "server.crt",
        directory / "server" / "server.key",
        directory / "sds" / "sds.yaml",
    )


def sds_document(cert: Path, key: Path) -> dict[str, object]:
    """The SDS answer naming the certificate and key files (JSON is YAML, which Envoy reads)."""
    return {
        "resources": [
            {
                "@type": SECRET_TYPE,
                "name": SECRET_NAME,
                "tls_certificate": {
                    "certificate_chain": {"filename": str(cert)},
                    "private_key": {"filename": str(key)},
                },
            }
        ]
    }


def ensure(directory: Path) -> TlsFiles:
    """The CA, the server certificate (localhost, 127.0.0.1, ::1) and the SDS file, made when missing."""
    f = files(directory)
    pki = Pki(directory / "pki")
    ca = pki.ca("ca")
    if not f.ca.exists():
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ca.cert, f.ca)
    if not (f.cert.exists() and f.key.exists()):
        _issue(pki, f)
    if not f.sds.exists():
        _move_sds_into_place(f)
    return f


def rotate(directory: Path, valid_days: float = VALID_DAYS) -> TlsFiles:
    """A new server certificate (a new key and serial, valid for `valid_days`) that Envoy picks up
    without a restart."""
    f = files(directory)
    pki = Pki(directory / "pki")
    for stale in (pki.dir / "server.crt", pki.dir / "server.key"):
        stale.unlink(missing_ok=True)
    _issue(pki, f, valid_days)
    _move_sds_into_place(f)
    return f


def _issue(pki: Pki, f: TlsFiles, valid_days: float = VALID_DAYS) -> None:
    pair = pki.issue(
        "server", pki.ca("ca"), cn="localhost", server=True, dns=SERVER_NAMES, ips=SERVER_IPS, valid_days=valid_days
    )
    f.cert.parent.mkdir(parents=True, exist_ok=True)
    # Moved into place, so that Envoy never reads a half-written file.
    for src, dst in ((pair.cert, f.cert), (pair.key, f.key)):
        tmp = dst.with_suffix(dst.suffix + ".tmp")
        shutil.copyfile(src, tmp)
        tmp.chmod(0o600)
        os.replace(tmp, dst)


def _move_sds_into_place(f: TlsFiles) -> None:
    """Envoy watches the SDS file's directory for a move: a new file moved over the old one makes it
    read the SDS file, and the certificate and key it names, again."""
    f.sds.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.sds.parent / ".sds.yaml.tmp"
    tmp.write_text(json.dumps(sds_document(f.cert, f.key), indent=2) + "\n")
    os.replace(tmp, f.sds)
