"""Envoy's overload manager acting, on a third Envoy of the test stack whose limits are set low enough
to reach: past its connection limit a new connection is refused while those held are served; as its
heap fills (imported files it must hold whole to transcode, never finished) it stops keep-alive, then new
connections and requests, and serves again once the memory is given back. Figures go to
.dev/logs/test/faults.jsonl."""

import dataclasses
import json
import socket
import time
import urllib.error
import urllib.request

from devstack import procs
from tests.helpers import http_json
from tests.integration.faults import report

CONNECTIONS = 200
MiB = 1024 * 1024
# envoy_config's overload actions, in the order of their thresholds.
ACTIONS = ("shrink_heap", "disable_http_keepalive", "stop_accepting_connections", "stop_accepting_requests")


def _admin(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
        return answer.read().decode()


def _gauge(port: int, name: str) -> float:
    for line in _admin(port, f"/stats?filter=^{name}$").splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return float(value)
    raise AssertionError(f"no stat {name}")


def _action(port: int, name: str) -> float:
    return _gauge(port, f"overload.envoy.overload_actions.{name}.active")


def _pressure(port: int) -> float:
    """The heap in use, in percent of the limit, as the overload manager sees it."""
    return _gauge(port, "overload.envoy.resource_monitors.fixed_heap.pressure")


def _allocated(port: int) -> int:
    return int(json.loads(_admin(port, "/memory"))["allocated"])


def _start(stack, offset: int, **changes) -> tuple[int, str, int]:
    layout = dataclasses.replace(
        stack.spec.layout,
        listen_port=stack.spec.envoy_port + offset,
        admin_port=stack.spec.envoy_admin_port + offset,
        tls=None,
        **changes,
    )
    pid = stack.start_envoy(layout, name=f"envoy-overload-{offset}")
    address = f"127.0.0.1:{layout.listen_port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://{address}/openapi.json", timeout=1).close()
            return pid, address, layout.admin_port
        except (OSError, urllib.error.URLError):
            time.sleep(0.2)
    procs.stop(pid, timeout=10)
    raise AssertionError("the overload test's Envoy did not start")


def _served(address: str, token: str) -> int:
    try:
        status, _ = http_json(address, "GET", "/v1/users/me/runs", token=token)
        return status
    except OSError:
        return 0  # refused or reset before an answer


def test_past_its_connection_limit_envoy_refuses_new_connections_and_serves_those_it_holds(stack, token):
    pid, address, admin = _start(stack, 7, max_connections=CONNECTIONS)
    host, port = address.split(":")
    held: list[socket.socket] = []
    try:
        for _ in range(CONNECTIONS):
            held.append(socket.create_connection((host, int(port)), timeout=5))
        time.sleep(0.5)
        # One more: accepted by the kernel, closed by Envoy at once.
        extra = socket.create_connection((host, int(port)), timeout=5)
        extra.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            refused = extra.recv(1) == b""
        except ConnectionResetError:
            refused = True
        extra.close()
        assert refused, "a connection past the limit was served"
        overflow = _gauge(admin, f"listener.127.0.0.1_{port}.downstream_global_cx_overflow")
        assert overflow >= 1
        # The connections it holds are served.
        first = held[0]
        first.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
        assert first.recv(12).startswith(b"HTTP/1.1 200")
    finally:
        for s in held:
            s.close()
    time.sleep(0.5)
    assert _served(address, token) == 200, "Envoy serves again once the connections are gone"
    procs.stop(pid, timeout=10)
    report(stack, "overload_connections", limit=CONNECTIONS, overflow=overflow)


def _open_body(address: str, token: str) -> socket.socket:
    """An imported file (ImportRun over HTTP) whose body Envoy must hold whole to transcode it,
    announced as 16 MiB (the most a file may be) and fed by `_feed`, never finished."""
    host, port = address.split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    # A small send buffer: what was fed is in Envoy, not queued in the kernel.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    head = (
        f"POST /v1/runs:import HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/gpx+xml\r\nContent-Length: {16 * MiB}\r\n\r\n"
    )
    s.sendall(head.encode() + b'<?xml version="1.0"?><gpx version="1.1" creator="t"><!-- ')
    return s


def _feed(s: socket.socket, size: int) -> None:
    s.sendall(b"a" * size)


def test_as_its_heap_fills_envoy_sheds_then_serves_again_once_memory_is_given_back(stack, token):
    pid, address, admin = _start(stack, 8)
    baseline = _allocated(admin)
    procs.stop(pid, timeout=10)
    # The heap limit 64 MiB above what it holds idle: the held bodies take it past every threshold.
    limit = baseline + 64 * MiB
    pid, address, admin = _start(stack, 8, max_heap_bytes=limit)
    held: list[socket.socket] = []
    try:
        assert _action(admin, "stop_accepting_requests") == 0
        before = _served(address, token)
        assert before == 200
        held = [_open_body(address, token) for _ in range(12)]
        seen: dict[str, float] = {}
        # 1 MiB more on one held body at a time (at most 12 x 15 MiB), slowly near the thresholds so
        # that each action is seen as it starts (the overload manager looks every 0.25 s; 1 MiB is 1.4 %).
        for step in range(12 * 15):
            _feed(held[step % len(held)], MiB)
            if _pressure(admin) < 70:
                time.sleep(0.05)
                continue
            time.sleep(0.6)
            for name in ACTIONS:
                if name not in seen and _action(admin, name) == 1:
                    seen[name] = _pressure(admin) / 100
            if "stop_accepting_requests" in seen:
                break
        peak = _allocated(admin)
        assert "stop_accepting_requests" in seen, f"heap at {_pressure(admin)}% of its limit; actions seen {seen}"
        assert list(seen) == sorted(seen, key=seen.__getitem__), f"thresholds out of order: {seen}"
        during = _served(address, token)
        assert during != 200, "a new request was served with the heap past every threshold"
        rejected = _gauge(admin, f"listener.127.0.0.1_{address.split(':')[1]}.downstream_cx_overload_reject")
        shed = _gauge(admin, "http.public.rq_overload_local_reply")
        assert procs.alive(pid)
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 20
    while _action(admin, "stop_accepting_requests") == 1 and time.monotonic() < deadline:
        time.sleep(0.25)
    time.sleep(0.5)
    after = _served(address, token)
    assert after == 200, "Envoy serves again once the memory is given back"
    procs.stop(pid, timeout=10)
    report(
        stack,
        "overload_heap",
        limit_mb=round(limit / MiB),
        baseline_mb=round(baseline / MiB),
        peak_mb=round(peak / MiB),
        actions_at_share={k: round(v, 3) for k, v in seen.items()},
        answer_during=during,
        connections_rejected=rejected,
        requests_shed=shed,
    )
