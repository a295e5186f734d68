"""The edge under abuse, from the attacker's side against the real Envoy: a slowloris of 2,000 half-open
connections is cut off after the request-header timeout while another runner's calls all succeed;
oversized and too many headers are refused (431); Envoy serves on after each. Figures go to
.dev/logs/test/faults.jsonl."""

import asyncio
import selectors
import socket
import time

from devstack.envoy_config import Layout
from tests.helpers import http_json
from tests.integration.faults import report

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
