"""The edge under abuse, from the attacker's side against the real Envoy: a slowloris of 2,000 half-open
connections is cut off after the request-header timeout while another runner's calls all succeed;
oversized and too many headers are refused (431); a gRPC message over the replicas' limit is
RESOURCE_EXHAUSTED (in a RecordTrack stream, with the points before it kept) and a JSON body over
Envoy's is 413 with a google.rpc.Status body; a flood of TLS handshakes (and of handshakes stalled
or broken off with garbage) leaves another runner's calls over TLS all served; Envoy serves on after
each. Figures go to .dev/logs/test/faults.jsonl."""

import asyncio
import contextlib
import json
import multiprocessing
import os
import selectors
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter

import grpc
import pytest
from google.rpc import code_pb2

from bench.sampling import cpu_seconds, with_descendants
from edge.config import IMPORT_REQUEST_MAX_BYTES, JSON_REQUEST_MAX_BYTES, Layout
from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from runtrack_common.config import Settings
from tests.helpers import http_json, point
from tests.integration.faults import report, stored_trail

SLOW_CLIENTS = 2000


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _calls(stack, token: str, n: int) -> tuple[list[float], int]:
    """n ListRuns calls as a well-behaved runner: their latencies, and how many did not answer 200."""
    latencies, failed = [], 0
    for _ in range(n):
        began = time.perf_counter()
        status, _ = http_json(stack.envoy_address, "GET", "/v1/users/me/runs", token=token)
        latencies.append(time.perf_counter() - began)
        failed += status != 200
    return latencies, failed


async def test_a_slowloris_is_cut_off_and_other_runners_are_served_meanwhile(stack, token):
    quiet, failed = await asyncio.to_thread(_calls, stack, token, 60)
    assert failed == 0
    host, port = stack.envoy_address.split(":")
    slow: list[socket.socket] = []
    opened = time.monotonic()
    try:
        for _ in range(SLOW_CLIENTS):
            s = socket.create_connection((host, int(port)), timeout=5)
            s.sendall(b"GET /v1/users/me/runs HTTP/1.1\r\nHost: runtrack\r\nX-Slow: 1\r\n")  # never finished
            s.setblocking(False)
            slow.append(s)
        during, failed = await asyncio.to_thread(_calls, stack, token, 60)
        assert failed == 0, "a well-behaved runner's call failed during the slowloris"
        # Envoy gives each its request-header timeout, then answers 408 and closes.
        limit = Layout().request_headers_timeout_s
        open_ = {s.fileno(): s for s in slow}
        selector = selectors.DefaultSelector()
        for s in slow:
            selector.register(s, selectors.EVENT_READ)
        closed_after: list[float] = []
        deadline = opened + limit + 15
        while open_ and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.5):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(4096)
                except (ConnectionResetError, BlockingIOError):
                    data = b""
                if not data or b"408" in data.split(b"\r\n", 1)[0]:
                    selector.unregister(sock)
                    open_.pop(sock.fileno(), None)
                    closed_after.append(time.monotonic() - opened)
        assert not open_, f"{len(open_)} of {SLOW_CLIENTS} half-open connections still open after {limit + 15} s"
    finally:
        for s in slow:
            s.close()
    _, failed = await asyncio.to_thread(_calls, stack, token, 20)
    assert failed == 0, "Envoy serves on after the slowloris"
    report(
        stack,
        "slowloris",
        half_open_connections=SLOW_CLIENTS,
        request_headers_timeout_s=limit,
        cut_off_after_s_max=round(max(closed_after), 2),
        other_runner_p99_ms_quiet=round(_p99(quiet) * 1000, 1),
        other_runner_p99_ms_during=round(_p99(during) * 1000, 1),
        other_runner_failed=0,
    )


def test_oversized_and_too_many_headers_are_refused_and_envoy_serves_on(stack, token):
    layout = Layout()
    big = {"x-padding": "a" * (layout.max_request_headers_kb * 1024 + 1)}
    status, _ = http_json(stack.envoy_address, "GET", "/v1/users/me/runs", token=token, headers=big)
    assert status == 431
    many = {f"x-h{i}": "1" for i in range(layout.max_headers_count + 5)}
    status, _ = http_json(stack.envoy_address, "GET", "/v1/users/me/runs", token=token, headers=many)
    assert status == 431
    status, _ = http_json(stack.envoy_address, "GET", "/v1/users/me/runs", token=token)
    assert status == 200


HANDSHAKE_FLOOD_S = 10.0
HANDSHAKE_THREADS = 6
STALLED_HANDSHAKES = 500


def handshake_flood(address: str, ca: str, seconds: float, results) -> None:
    """For `seconds`, as many full TLS handshakes as this process manages (connect, handshake, close,
    from HANDSHAKE_THREADS threads); meanwhile, from one thread, ClientHellos followed by garbage, each
    read until Envoy closes it; and STALLED_HANDSHAKES ClientHellos never followed by anything, held
    until Envoy closes them (or `seconds` + 20 s). Runs in its own process at the lowest priority: an
    attacker's CPU is not ours, and this machine has two cores."""
    os.nice(19)
    host, port_text = address.rsplit(":", 1)
    port = int(port_text)
    context = ssl.create_default_context(cafile=ca)
    context.set_alpn_protocols(["h2", "http/1.1"])
    began = time.monotonic()
    stop = began + seconds
    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def count(key: str) -> None:
        with lock:
            counts[key] += 1

    def hello() -> bytes:
        """A real ClientHello for this listener, as the first bytes of a connection."""
        out = ssl.MemoryBIO()
        tls = context.wrap_bio(ssl.MemoryBIO(), out, server_hostname=host)
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()
        return out.read()

    def full() -> None:
        while time.monotonic() < stop:
            try:
                with (
                    socket.create_connection((host, port), timeout=5) as raw,
                    context.wrap_socket(raw, server_hostname=host),
                ):
                    pass
                count("handshakes")
            except OSError:
                count("handshakes_failed")

    def garbage() -> None:
        while time.monotonic() < stop:
            try:
                with socket.create_connection((host, port), timeout=5) as raw:
                    raw.sendall(hello() + os.urandom(512))
                    while raw.recv(65536):  # Envoy's answer and alert, then its close
                        pass
                count("garbage_closed_by_envoy")
            except TimeoutError:
                count("garbage_left_open")
            except OSError:
                count("garbage_closed_by_envoy")  # reset

    workers = [threading.Thread(target=full) for _ in range(HANDSHAKE_THREADS)] + [threading.Thread(target=garbage)]
    for w in workers:
        w.start()
    stalled: dict[int, tuple[socket.socket, float]] = {}
    for _ in range(STALLED_HANDSHAKES):
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(hello())
        s.setblocking(False)
        stalled[s.fileno()] = (s, time.monotonic())
    selector = selectors.DefaultSelector()
    for s, _ in stalled.values():
        selector.register(s, selectors.EVENT_READ)
    closed_after: list[float] = []
    while stalled and time.monotonic() < stop + 20:
        for key, _ in selector.select(timeout=0.5):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(65536)  # the server's flight, then nothing until it closes
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                selector.unregister(sock)
                _, opened = stalled.pop(sock.fileno())
                closed_after.append(time.monotonic() - opened)
                sock.close()
    for w in workers:
        w.join()
    for s, _ in stalled.values():
        s.close()
    results.put(
        {
            **counts,
            "seconds": round(seconds, 1),
            "stalled": STALLED_HANDSHAKES,
            "stalled_left_open": len(stalled),
            "stalled_closed_after_s_max": round(max(closed_after), 1) if closed_after else None,
        }
    )


def _envoy_cpu_s(stack) -> float:
    pid = stack.envoy_pid()
    return sum(cpu_seconds(p) for p in with_descendants([pid])) if pid else 0.0


def _tls_stats(stack) -> Counter[str]:
    """The TLS listener's handshake counters from Envoy's admin."""
    query = urllib.parse.quote(r"ssl\.(handshake|connection_error)$")
    with urllib.request.urlopen(f"{stack.admin_url}/stats?filter={query}", timeout=5) as r:
        lines = r.read().decode().splitlines()
    out: Counter[str] = Counter()
    for line in lines:
        name, _, value = line.partition(": ")
        if name.startswith("listener.") and value.isdigit():
            out[name.rsplit(".", 1)[1]] += int(value)
    return out


def _tls_channel(stack, token: str) -> grpc.aio.Channel:
    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(stack.tls_ca.read_bytes()), grpc.access_token_call_credentials(token)
    )
    return grpc.aio.secure_channel(stack.envoy_tls_address, credentials)


async def _paced_calls(stub, *, n: int | None = None, until: float | None = None) -> tuple[list[float], list[str]]:
    """ListRuns ten times a second, as a runner's app might: latencies, and the calls that failed."""
    latencies, failures = [], []
    while (n is None or len(latencies) < n) and (until is None or time.monotonic() < until):
        began = time.perf_counter()
        try:
            await stub.ListRuns(summary_pb2.ListRunsRequest(user_id="me"), timeout=5)
        except grpc.aio.AioRpcError as err:
            failures.append(f"{err.code().name}: {err.details()}")
        latencies.append(time.perf_counter() - began)
        await asyncio.sleep(0.1)
    return latencies, failures


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000, 1)


async def test_a_tls_handshake_flood_leaves_other_runners_served_over_tls(stack, token):
    async with _tls_channel(stack, token) as channel:  # the runner's kept connection, open before the flood
        stub = summary_pb2_grpc.SummaryServiceStub(channel)
        quiet, failures = await _paced_calls(stub, n=30)
        assert failures == []
        stats_before, cpu_before = _tls_stats(stack), _envoy_cpu_s(stack)
        spawn = multiprocessing.get_context("spawn")
        results = spawn.Queue()
        attacker = spawn.Process(
            target=handshake_flood, args=(stack.envoy_tls_address, str(stack.tls_ca), HANDSHAKE_FLOOD_S, results)
        )
        attacker.start()
        try:
            await asyncio.sleep(1.5)  # the process is up and flooding
            flood_began = time.monotonic()
            during, failures = await _paced_calls(stub, until=flood_began + HANDSHAKE_FLOOD_S - 2.5)
            envoy_cpu = (_envoy_cpu_s(stack) - cpu_before) / (time.monotonic() - flood_began + 1.5)
            flood = await asyncio.to_thread(results.get, True, HANDSHAKE_FLOOD_S + 60)
        finally:
            attacker.join(10)
            if attacker.is_alive():
                attacker.kill()
        assert failures == [], f"a runner's call over TLS failed during the handshake flood: {failures[:5]}"
        stats = _tls_stats(stack) - stats_before
        # The kept connection is still the runner's.
        _, failures = await _paced_calls(stub, n=5)
        assert failures == []
    # A new TLS connection after the flood is served.
    async with _tls_channel(stack, token) as channel:
        stub = summary_pb2_grpc.SummaryServiceStub(channel)
        await stub.ListRuns(summary_pb2.ListRunsRequest(user_id="me"), timeout=5)
    assert flood["handshakes"] > 0 and flood.get("handshakes_failed", 0) == 0, flood
    assert flood.get("garbage_left_open", 0) == 0, "Envoy closes a connection that sends garbage after its hello"
    # Envoy gives a handshake its timeout, then closes it.
    limit = Layout().tls_handshake_timeout_s
    assert flood["stalled_left_open"] == 0, f"stalled handshakes still open after {HANDSHAKE_FLOOD_S + 20} s: {flood}"
    assert flood["stalled_closed_after_s_max"] <= limit + 5, flood
    report(
        stack,
        "tls_handshake_flood",
        **flood,
        handshakes_per_s=round(flood["handshakes"] / HANDSHAKE_FLOOD_S),
        tls_handshake_timeout_s=limit,
        envoy_handshakes=stats["handshake"],
        envoy_connection_errors=stats["connection_error"],
        envoy_cpu_cores=round(envoy_cpu, 2),
        other_runner_calls_during=len(during),
        other_runner_p50_ms_quiet=_ms(quiet, 0.5),
        other_runner_p99_ms_quiet=_ms(quiet, 0.99),
        other_runner_p50_ms_during=_ms(during, 0.5),
        other_runner_p99_ms_during=_ms(during, 0.99),
        other_runner_failed=0,
    )


MAX_MESSAGE_BYTES = Settings().max_message_bytes  # the replicas' gRPC limit (GRPC_MAX_MESSAGE_BYTES)


async def test_a_grpc_message_over_the_limit_is_resource_exhausted_and_envoy_serves_on(stack, channel):
    stub = tracking_pb2_grpc.TrackingServiceStub(channel)
    huge = tracking_pb2.GetTrackRequest(run_id=str(uuid.uuid4()), page_token="a" * (MAX_MESSAGE_BYTES + 1024))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.GetTrack(huge, timeout=10)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
    # The same channel (and Envoy) serve the next call: a replica answers that there is no such run.
    with pytest.raises(grpc.aio.AioRpcError) as answered:
        await stub.GetTrack(tracking_pb2.GetTrackRequest(run_id=str(uuid.uuid4())), timeout=10)
    assert answered.value.code() == grpc.StatusCode.NOT_FOUND, answered.value


async def test_an_oversized_message_in_a_stream_ends_it_and_the_points_before_it_are_kept(stack, channel, run_id):
    stub = tracking_pb2_grpc.TrackingServiceStub(channel)
    start_ms = (int(time.time()) - 3600) * 1000
    first = [point(s, start_ms=start_ms) for s in range(1, 6)]
    second = [point(s, start_ms=start_ms) for s in range(6, 11)]
    n = MAX_MESSAGE_BYTES // len(point(11).SerializeToString()) + 1000
    oversized = tracking_pb2.RecordTrackRequest(points=[point(s, start_ms=start_ms) for s in range(11, 11 + n)])
    assert oversized.ByteSize() > MAX_MESSAGE_BYTES

    async def messages():
        yield tracking_pb2.RecordTrackRequest(run_id=run_id, points=first)
        yield tracking_pb2.RecordTrackRequest(points=second)
        await asyncio.sleep(1.0)  # both read and accepted by the replica
        yield oversized

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.RecordTrack(messages(), timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
    cursor = await stub.GetTrackCursor(tracking_pb2.GetTrackCursorRequest(run_id=run_id), timeout=10)
    assert (cursor.contiguous_seq, cursor.point_count) == (10, 10), cursor
    assert [p.seq for p in await stored_trail(channel, run_id)] == list(range(1, 11))
    # The phone resumes after the cursor, in messages under the limit.
    rest = [point(s, start_ms=start_ms) for s in range(11, 21)]
    done = await stub.RecordTrack(iter([tracking_pb2.RecordTrackRequest(run_id=run_id, points=rest)]), timeout=30)
    assert done.contiguous_seq == 20
    report(
        stack,
        "oversized_message_in_stream",
        message_bytes=oversized.ByteSize(),
        limit_bytes=MAX_MESSAGE_BYTES,
        answer=refused.value.code().name,
        points_kept=cursor.contiguous_seq,
        resumed_to=done.contiguous_seq,
    )


def _curl(stack, method: str, path: str, body: bytes, token: str, content_type: str) -> tuple[int, str]:
    """(status, body) of an HTTP call with `body` sent as is (curl stops sending at an early answer)."""
    out = subprocess.run(
        [
            "curl", "-sS", "-X", method, "--data-binary", "@-", "-o", "-", "-w", "\n%{http_code}",
            "-H", f"content-type: {content_type}", "-H", f"authorization: Bearer {token}",
            f"http://{stack.envoy_address}{path}",
        ],
        input=body, capture_output=True, timeout=60,
    )  # fmt: skip
    text, _, code = out.stdout.decode(errors="replace").rpartition("\n")
    assert code.isdigit() and code != "000", out.stderr.decode()
    return int(code), text


def test_a_json_body_over_envoys_limit_is_413_with_a_status_body_and_envoy_serves_on(stack, token, run_id):
    over = b"a" * (JSON_REQUEST_MAX_BYTES + 1024)
    calls = {
        ("POST", f"/v1/runs/{run_id}:stop"): (b'{"timeZone": "' + over + b'"}', "application/json"),
        ("PATCH", f"/v1/runs/{run_id}?updateMask=name"): (b'{"name": "' + over + b'"}', "application/json"),
        ("POST", "/v1/runs:import"): (b"<gpx>" + b"a" * IMPORT_REQUEST_MAX_BYTES + b"</gpx>", "application/gpx+xml"),
    }
    answers = {}
    for (method, path), (body, content_type) in calls.items():
        status, text = _curl(stack, method, path, body, token, content_type)
        answers[f"{method} {path.split('?')[0].replace(run_id, '{id}')} ({len(body)} bytes)"] = status
        assert status == 413, (method, path, status, text[:300])
        error = json.loads(text)
        assert error["code"] == code_pb2.RESOURCE_EXHAUSTED and "at most" in error["message"], error
        infos = [d for d in error.get("details", []) if d["@type"].endswith("google.rpc.ErrorInfo")]
        assert infos and infos[0]["reason"] == "REQUEST_TOO_LARGE", error
    status, _ = http_json(stack.envoy_address, "GET", "/v1/users/me/runs", token=token)
    assert status == 200
    report(stack, "oversized_json_bodies", answers=answers, served_after=status)


def _without_length(stack, method: str, path: str, body: bytes, token: str, *, http2: bool) -> tuple[int, str]:
    """(status, body) of an HTTP call whose body has no content-length: chunked over HTTP/1.1, or
    over HTTP/2 (curl reads the body from a pipe, so it cannot know the length)."""
    args = ["--http2-prior-knowledge"] if http2 else ["-H", "transfer-encoding: chunked"]
    out = subprocess.run(
        [
            "curl", "-sS", *args, "-X", method, "-T", "-", "-o", "-", "-w", "\n%{http_code}",
            "-H", "content-type: application/json", "-H", f"authorization: Bearer {token}",
            f"http://{stack.envoy_address}{path}",
        ],
        input=body, capture_output=True, timeout=60,
    )  # fmt: skip
    text, _, code = out.stdout.decode(errors="replace").rpartition("\n")
    if http2 and out.returncode == 92:  # Envoy reset the stream while curl was still sending
        return 0, out.stderr.decode()
    assert code.isdigit() and code != "000", out.stderr.decode()
    return int(code), text


@pytest.mark.parametrize("http2", [False, True], ids=["chunked", "http2"])
def test_a_json_body_without_a_content_length_is_capped_as_well(stack, token, run_id, http2):
    over = b'{"timeZone": "' + b"a" * (JSON_REQUEST_MAX_BYTES + 1024) + b'"}'
    status, text = _without_length(stack, "POST", f"/v1/runs/{run_id}:stop", over, token, http2=http2)
    refused_with = status or "stream reset"
    if status == 0:
        # Over HTTP/2 Envoy ends the stream at its buffer's limit (RST_STREAM) before curl has sent
        # the body: refused at the edge all the same; nothing reached a replica.
        assert http2 and "HTTP/2" in text, text
    else:
        assert status == 413, (status, text[:300])
        infos = [d for d in json.loads(text).get("details", []) if d["@type"].endswith("google.rpc.ErrorInfo")]
        assert infos and infos[0]["reason"] == "REQUEST_TOO_LARGE", text[:300]
    assert http_json(stack.envoy_address, "GET", f"/v1/runs/{run_id}", token=token)[0] == 404
    # A body of the usual size without a length is served as before.
    ok = json.dumps(
        {"overview": {"startTime": "2026-05-01T08:00:00Z", "endTime": "2026-05-01T08:30:00Z", "distanceM": 5000}}
    ).encode()
    status, text = _without_length(stack, "POST", f"/v1/runs/{run_id}:stop", ok, token, http2=http2)
    assert status == 200 and json.loads(text)["runId"] == run_id, text[:300]
    report(
        stack,
        f"json_body_without_length_{'http2' if http2 else 'chunked'}",
        over_bytes=len(over),
        refused_with=refused_with,
    )
