"""Small helpers the tests share: JSON over HTTP through Envoy, and GPS points."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from devstack.auth import token_channel  # noqa: F401 (the tests' name for it)
from runtrack.v1 import tracking_pb2


def http_json(
    base: str,
    method: str,
    path: str,
    body: dict | None = None,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """(status, parsed JSON body) of one HTTP/1.1 request to Envoy, with `token` as the bearer."""
    data = None if body is None else json.dumps(body).encode()
    all_headers = {"content-type": "application/json", **(headers or {})}
    if token is not None:
        all_headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"http://{base}{path}", data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, raw.decode(errors="replace")


def point(seq: int, *, start_ms: int | None = None, **extra: Any) -> tracking_pb2.TrackPoint:
    """Point `seq` of a run started at `start_ms` (default: an hour ago), one fix a second."""
    start_ms = start_ms if start_ms is not None else (int(time.time()) - 3600) * 1000
    ms = start_ms + (seq - 1) * 1000
    fields: dict[str, Any] = dict(
        seq=seq,
        time=Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000),
        latitude=48.8566 + seq * 1e-5,
        longitude=2.3522 + seq * 1e-5,
        altitude_m=35.0 + seq % 7,
        horizontal_accuracy_m=4.5,
        speed_mps=3.1,
        heart_rate_bpm=140 + seq % 20,
        cadence_spm=170,
    )
    fields.update(extra)
    return tracking_pb2.TrackPoint(**fields)


def _with_metadata(details, metadata):
    return details._replace(metadata=(*(details.metadata or ()), *metadata))


class _UnaryMetadata(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(_with_metadata(client_call_details, self.metadata), request)


class _StreamMetadata(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return await continuation(_with_metadata(client_call_details, self.metadata), request_iterator)


def caller_channel(address: str, user: str) -> grpc.aio.Channel:
    """A channel straight to a replica that names its caller the way Envoy does (x-runtrack-user)."""
    metadata = (("x-runtrack-user", user),)
    return grpc.aio.insecure_channel(address, interceptors=[_UnaryMetadata(metadata), _StreamMetadata(metadata)])


def grpcurl(*args: str, token: str | None = None) -> subprocess.CompletedProcess:
    """grpcurl (plaintext, by reflection), with `token` as the bearer when given."""
    from devstack import tools

    auth = ["-H", f"authorization: Bearer {token}"] if token else []
    return subprocess.run(
        [str(tools.grpcurl()), "-plaintext", *auth, *args], capture_output=True, text=True, timeout=30
    )


def run_readme_demo(envoy_tls_address: str, ca: str, env: dict[str, str], timeout_s: float = 60) -> list[Any]:
    """The README's demo (its first bash block under "## Demo"), run verbatim but for Envoy's TLS
    address and the CA to trust; the JSON documents it prints, in order (grpcurl's RecordTrack
    answer, then one per curl)."""
    import os

    from devstack.paths import ROOT
    from tests.docs_blocks import readme_demo

    script = readme_demo(ROOT).code.replace("127.0.0.1:8443", envoy_tls_address).replace(".dev/tls/ca.pem", ca)
    out = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, **env},
    )
    assert out.returncode == 0, out.stderr
    decoder, text, docs = json.JSONDecoder(), out.stdout.strip(), []
    while text:
        doc, end = decoder.raw_decode(text)
        docs.append(doc)
        text = text[end:].strip()
    return docs


def without_analysis(run: dict[str, Any]) -> dict[str, Any]:
    """A run as JSON without the analysis, which the server adds after StopRun has answered."""
    return {k: v for k, v in run.items() if k != "analysis"}
