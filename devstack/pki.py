"""The local cluster's keys and certificates (the `cryptography` library), and kubeconfig files.

One CA signs every component's certificate; a second CA (front proxy) signs the client certificate
the API server shows an aggregated API server (the metrics adapter). Made once, kept under
`.dev/k8s/pki/`; a certificate that exists is left alone.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 3650


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _name(cn: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    valid_days: float = VALID_DAYS,
) -> x509.CertificateBuilder:
    """What every certificate here has: names, key, a random serial, ten years (or `valid_days`) from
    five minutes ago."""
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )


class Pki:
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def ca(self, name: str) -> Pair:
        pair = Pair(self.dir / f"{name}.crt", self.dir / f"{name}.key")
        if pair.cert.exists() and pair.key.exists():
            return pair
        self.dir.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(f"runtrack-{name}")
        cert = (
            _builder(subject, subject, key, ca=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256())
        )
        _write_key(pair.key, key)
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return pair

    def issue(
        self,
        name: str,
        ca: Pair,
        *,
        cn: str,
        orgs: tuple[str, ...] = (),
        server: bool = False,
        client: bool = False,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        valid_days: float = VALID_DAYS,
    ) -> Pair:
        pair = Pair(self.dir / f"{name}.crt", self.dir / f"{name}.key")
        if pair.cert.exists() and pair.key.exists():
            return pair
        ca_key = _load_key(ca.key)
        ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        builder = (
            _builder(_name(cn, orgs), ca_cert.subject, key, ca=False, valid_days=valid_days)
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _write_key(pair.key, key)
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return pair

    def service_account_key(self) -> Pair:
        """The key pair service-account tokens are signed with (RSA, as the API server expects)."""
        pair = Pair(self.dir / "sa.pub", self.dir / "sa.key")
        if pair.cert.exists() and pair.key.exists():
            return pair
        self.dir.mkdir(parents=True, exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_key(pair.key, key)
        pair.cert.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        return pair


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def kubeconfig(path: Path, *, server: str, ca: Pair, user: Pair, name: str) -> Path:
    """A kubeconfig for one client certificate (YAML, written as JSON, which YAML reads)."""
    import json

    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "runtrack", "cluster": {"server": server, "certificate-authority-data": b64(ca.cert)}}],
        "users": [
            {"name": name, "user": {"client-certificate-data": b64(user.cert), "client-key-data": b64(user.key)}}
        ],
        "contexts": [{"name": "runtrack", "context": {"cluster": "runtrack", "user": name}}],
        "current-context": "runtrack",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))
    path.chmod(0o600)
    return path
