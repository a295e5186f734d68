"""`scripts/bench tls`: what TLS costs at Envoy, against plaintext in the same run, rounds alternating.

- Handshakes: --connections new connections per round, 8 at a time, each completing the TLS handshake
  (TLS 1.3, ECDHE P-256/X25519, the ECDSA P-256 certificate) and closing; the plaintext round opens and
  closes TCP connections. Connections/s, p50/p99 connect time, Envoy CPU per connection.
- Calls: GetRun over 16 kept connections (gRPC, HTTP/2), --calls per round; p50/p99 and Envoy CPU per call.
Figures go to .dev/bench/tls-<time>.json.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import ssl
import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from bench.sampling import cpu_seconds, with_descendants
from devstack.stack import Stack
from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0


def _envoy_cpu(stack: Stack) -> float:
    pid = stack.envoy_pid()
    return sum(cpu_seconds(p) for p in with_descendants([pid])) if pid else 0.0


def connections(stack: Stack, tls: bool, n: int) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=str(stack.tls_ca))
    context.set_alpn_protocols(["h2"])
    port = stack.spec.envoy_tls_port if tls else stack.spec.envoy_port
    times: list[float] = []
    lock = threading.Lock()

    def one(_: int) -> None:
        began = time.perf_counter()
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        if tls:
            with context.wrap_socket(raw, server_hostname="127.0.0.1"):
                pass
        else:
            raw.close()
        with lock:
            times.append(time.perf_counter() - began)

    cpu0, began = _envoy_cpu(stack), time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(n)))
    wall, cpu = time.perf_counter() - began, _envoy_cpu(stack) - cpu0
    return {
        "connections": n,
        "per_s": round(n / wall),
        "p50_ms": round(_pct(times, 0.5) * 1000, 2),
        "p99_ms": round(_pct(times, 0.99) * 1000, 2),
        "envoy_cpu_us_per_connection": round(cpu / n * 1e6, 1),
    }


async def calls(stack: Stack, tls: bool, n: int, metadata: Any, run_id: str) -> dict[str, Any]:
    if tls:
        credentials = grpc.ssl_channel_credentials(stack.tls_ca.read_bytes())
        channels = [grpc.aio.secure_channel(f"127.0.0.1:{stack.spec.envoy_tls_port}", credentials) for _ in range(16)]
    else:
        channels = [grpc.aio.insecure_channel(stack.envoy_address) for _ in range(16)]
    stubs = [summary_pb2_grpc.SummaryServiceStub(c) for c in channels]
    request = summary_pb2.GetRunRequest(run_id=run_id)
    for stub in stubs:  # connected before the clock starts
        await stub.GetRun(request, metadata=metadata)
    times: list[float] = []
    left = n

    async def client(stub: summary_pb2_grpc.SummaryServiceAsyncStub) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            began = time.perf_counter()
            await stub.GetRun(request, metadata=metadata)
            times.append(time.perf_counter() - began)

    cpu0, began = _envoy_cpu(stack), time.perf_counter()
    await asyncio.gather(*(client(s) for s in stubs))
    wall, cpu = time.perf_counter() - began, _envoy_cpu(stack) - cpu0
    for c in channels:
        await c.close()
    return {
        "calls": n,
        "per_s": round(n / wall),
        "p50_ms": round(_pct(times, 0.5) * 1000, 2),
        "p99_ms": round(_pct(times, 0.99) * 1000, 2),
        "envoy_cpu_us_per_call": round(cpu / n * 1e6, 1),
    }


async def _a_run(stack: Stack, metadata: Any) -> str:
    run_id = str(uuid.uuid4())
    start = int(time.time()) - 3600
    points = [
        tracking_pb2.TrackPoint(seq=i, latitude=48.85 + i * 1e-5, longitude=2.35, time=Timestamp(seconds=start + i))
        for i in range(1, 11)
    ]
    async with grpc.aio.insecure_channel(stack.envoy_address) as channel:
        await tracking_pb2_grpc.TrackingServiceStub(channel).RecordTrack(
            iter([tracking_pb2.RecordTrackRequest(run_id=run_id, points=points)]), metadata=metadata
        )
        o = summary_pb2.RunOverview(distance_m=100, point_count=10)
        o.start_time.seconds, o.end_time.seconds = start, start + 600
        await summary_pb2_grpc.SummaryServiceStub(channel).StopRun(
            summary_pb2.StopRunRequest(run_id=run_id, overview=o), metadata=metadata
        )
    return run_id


def _median(rounds: list[dict[str, Any]], key: str) -> float:
    return round(float(statistics.median(r[key] for r in rounds)), 2)


def run(stack: Stack, n_connections: int, n_calls: int, rounds: int, out_dir: Path) -> dict[str, Any]:
    metadata = stack.issuer.metadata("bench-tls", ttl_s=6 * 3600)
    run_id = asyncio.run(_a_run(stack, metadata))
    result: dict[str, Any] = {"rounds": rounds, "connections": {}, "calls": {}}
    for label in ("plaintext", "tls"):
        result["connections"][label], result["calls"][label] = [], []
    for _ in range(rounds):
        for label, tls in (("plaintext", False), ("tls", True)):
            result["connections"][label].append(connections(stack, tls, n_connections))
            result["calls"][label].append(asyncio.run(calls(stack, tls, n_calls, metadata, run_id)))
    print(f"{rounds} rounds, alternating; medians over the rounds (Envoy's CPU from /proc)")
    print(f"  {'':28} {'per s':>8} {'p50 ms':>8} {'p99 ms':>8} {'Envoy CPU µs':>13}")
    summary: dict[str, Any] = {}
    for what, cpu_key in (("connections", "envoy_cpu_us_per_connection"), ("calls", "envoy_cpu_us_per_call")):
        for label in ("plaintext", "tls"):
            r = result[what][label]
            figures = {k: _median(r, k) for k in ("per_s", "p50_ms", "p99_ms", cpu_key)}
            summary[f"{what} {label}"] = figures
            print(
                f"  {what + ' ' + label:28} {figures['per_s']:>8,.0f} {figures['p50_ms']:>8.2f} "
                f"{figures['p99_ms']:>8.2f} {figures[cpu_key]:>13.1f}"
            )
        base, over = summary[f"{what} plaintext"], summary[f"{what} tls"]
        ratio = over[cpu_key] / base[cpu_key] if base[cpu_key] else float("nan")
        print(f"  {what}: TLS / plaintext, Envoy CPU {ratio:.2f}x, p50 {over['p50_ms'] / base['p50_ms']:.2f}x")
    result["summary"] = summary
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"tls-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"figures: {out}")
    return result
