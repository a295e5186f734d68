"""Envoy over TLS, from the client's side: grpcurl (HTTP/2 by ALPN) and curl trusting the local CA,
TLS 1.2 at least with forward-secret AEAD ciphers only, HSTS on every answer, and a rotated
certificate served without a restart."""

import json
import socket
import ssl
import subprocess
import time

import pytest

from devstack import procs, tls, tools
from edge.config import TLS_CIPHERS


def tls_connect(stack, **context_options) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(stack.tls_ca))
    context.set_alpn_protocols(["h2", "http/1.1"])
    for name, value in context_options.items():
        if name == "ciphers":
            context.set_ciphers(value)
        else:
            setattr(context, name, value)
    host, port = stack.envoy_tls_address.split(":")
    raw = socket.create_connection((host, int(port)), timeout=5)
    return context.wrap_socket(raw, server_hostname=host)


def test_grpcurl_reaches_the_api_over_tls_trusting_the_local_ca(stack, token, run_id):
    grpcurl = str(tools.grpcurl())
    address = stack.envoy_tls_address
    listed = subprocess.run(
        [grpcurl, "-cacert", str(stack.tls_ca), address, "list"], capture_output=True, text=True, timeout=30
    )
    assert listed.returncode == 0, listed.stderr
    assert "runtrack.v1.TrackingService" in listed.stdout.split()
    points = json.dumps(
        {"run_id": run_id, "points": [{"seq": 1, "time": "2026-05-01T07:00:00Z", "latitude": 48.85, "longitude": 2.35}]}
    )
    recorded = subprocess.run(
        [
            grpcurl,
            "-cacert",
            str(stack.tls_ca),
            "-H",
            f"authorization: Bearer {token}",
            "-d",
            points,
            address,
            "runtrack.v1.TrackingService/RecordTrack",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert recorded.returncode == 0, recorded.stderr
    assert json.loads(recorded.stdout)["contiguous_seq"] == 1
    # Without the CA, the certificate is not trusted: nothing is sent.
    untrusted = subprocess.run([grpcurl, address, "list"], capture_output=True, text=True, timeout=30)
    assert untrusted.returncode != 0 and "certificate" in untrusted.stderr


def test_curl_gets_json_and_the_page_over_tls_with_hsts(stack, token):
    url = f"https://{stack.envoy_tls_address}"
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--cacert",
            str(stack.tls_ca),
            "-D",
            "-",
            "-H",
            f"authorization: Bearer {token}",
            f"{url}/v1/users/me/runs",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition("\n\n")
    assert head.split()[1] == "200" and json.loads(body) == {"runs": [], "nextPageToken": ""}
    assert "strict-transport-security: max-age=31536000" in head.lower()
    page = subprocess.run(
        ["curl", "-sS", "--http2", "--cacert", str(stack.tls_ca), "-D", "-", "-o", "/dev/null", f"{url}/"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert page.stdout.startswith("HTTP/2 200"), page.stdout + page.stderr
    assert "strict-transport-security: max-age=31536000" in page.stdout.lower()


def test_alpn_offers_h2_and_the_connection_is_tls_1_2_or_newer_with_an_aead_cipher(stack):
    with tls_connect(stack) as s:
        assert s.selected_alpn_protocol() == "h2"
        assert s.version() == "TLSv1.3"
    with tls_connect(stack, maximum_version=ssl.TLSVersion.TLSv1_2) as s:
        assert s.version() == "TLSv1.2"
        assert s.cipher()[0] in TLS_CIPHERS


@pytest.mark.parametrize(
    "options",
    [
        {
            "minimum_version": ssl.TLSVersion.TLSv1,
            "maximum_version": ssl.TLSVersion.TLSv1_1,
            "ciphers": "ALL:@SECLEVEL=0",
        },
        {"maximum_version": ssl.TLSVersion.TLSv1_2, "ciphers": "AES128-SHA:AES256-SHA:AES128-SHA256"},
        {"maximum_version": ssl.TLSVersion.TLSv1_2, "ciphers": "ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA"},
    ],
    ids=["TLS 1.1", "no forward secrecy", "CBC"],
)
def test_old_protocols_and_weak_ciphers_are_refused(stack, options):
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        tls_connect(stack, **options).close()


def test_a_rotated_certificate_is_served_without_restarting_envoy(stack):
    pid = procs.read_pid(stack.run_dir / "envoy.pid")
    with tls_connect(stack) as s:
        before = s.getpeercert()["serialNumber"]
    tls.rotate(stack.spec.tls_dir)
    deadline = time.monotonic() + 15
    while True:
        with tls_connect(stack) as s:
            after = s.getpeercert()["serialNumber"]
        if after != before or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert after != before, "still the old certificate"
    assert procs.read_pid(stack.run_dir / "envoy.pid") == pid and procs.alive(pid)
