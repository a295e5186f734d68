"""The public edge under HTTP/2 attacks, from the attacker's side against the real Envoy, with raw frames
(h2 writes them, hyperframe where h2 refuses to; a tolerant reader decodes what comes back):

- a fuzz of frame sequences on one h2c connection per example: gRPC request HEADERS to every unary method
  and RecordTrack (valid, or missing / bad pseudo-headers and headers), DATA with valid, mutated, wrongly
  length-prefixed or compressed-flagged gRPC messages, DATA before HEADERS, RST_STREAM mid-stream,
  WINDOW_UPDATE, PRIORITY, PING, SETTINGS with odd values, CONTINUATION, unknown frames, bytes. Every
  answer is a reset, a GOAWAY, or a documented gRPC status with `google.rpc.Status` and ErrorInfo; Envoy
  and every replica stay up, and a normal run recorded afterwards is stored whole;
- 10,000 RecordTrack streams held open on one connection to an Envoy with the public edge's 100 streams
  per connection: past 100 refused, Envoy's memory bounded, another runner served meanwhile;
- the "rapid reset" pattern (HEADERS then RST_STREAM, 10,000 times on one connection): Envoy closes the
  connection (premature reset protection) while another runner is served.

Figures go to .dev/logs/test/faults.jsonl."""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import os
import random
import socket
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import hpack
import pytest
from google.rpc import error_details_pb2, status_pb2
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import H2Error
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    ExtensionFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from bench.sampling import with_descendants
from devstack import procs
from devstack.auth import token_channel
from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from tests.integration.faults import new_run, report, stored_trail
from tests.integration.test_grpc_fuzz import UNARY, path, payloads

RECORD_TRACK = tracking_pb2.DESCRIPTOR.services_by_name["TrackingService"].methods_by_name["RecordTrack"]
METHODS = [RECORD_TRACK, *UNARY]
# The gRPC statuses the API documents (docs/api.md, "Errors"); each but OK carries ErrorInfo.
DOCUMENTED = {0, 3, 5, 6, 7, 8, 9, 14, 16}
# What the gRPC runtime itself answers, before any RunTrack code runs, to a call that breaks the gRPC
# protocol (docs/api.md, "Errors", not covered): no details. (status, the start of grpc-message)
RUNTIME_REFUSALS = (
    (8, "SERVER: Received message larger than max"),
    (13, "Compression bit set but no encoding configured"),
    (13, "Decompression failed"),  # grpc-encoding gzip on a message that is not gzip (the spec's INTERNAL)
    (12, ""),  # a path no method answers (Envoy's 404 without a route, the runtime's "Method not found!")
    (4, "Deadline Exceeded"),  # the call's own grpc-timeout (1n: one nanosecond) passed
)
EDGE_STREAMS = 100  # the public edge's max_concurrent_streams
ATTACK_STREAMS = 10_000


# ---- one attacker's connection -----------------------------------------------------------------


@dataclasses.dataclass
class Answer:
    """What came back on one stream."""

    blocks: list[list[tuple[str, str]]] = dataclasses.field(default_factory=list)
    data: bytearray = dataclasses.field(default_factory=bytearray)
    reset: int | None = None
    ended: bool = False

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None

    def headers(self) -> dict[str, str]:
        return {k: v for block in self.blocks for k, v in block}


class Peer:
    """An h2c (prior knowledge) connection to Envoy. h2 writes the frames, with its checks off so that it
    sends what it is told; hyperframe writes the frames h2 will not. What comes back is read frame by frame
    (hyperframe, hpack) without judging it, so that nothing Envoy sends stops the attack."""

    def __init__(self, address: str, timeout: float = 5.0) -> None:
        host, port = address.split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        config = H2Configuration(
            client_side=True,
            header_encoding="utf-8",
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
        )
        self.conn = H2Connection(config)
        self.decoder = hpack.Decoder()
        self.decoder.max_allowed_table_size = 2**32
        self.decoder.max_header_list_size = 2**32
        self.answers: dict[int, Answer] = collections.defaultdict(Answer)
        self.goaway: tuple[int, int] | None = None  # (error code, last stream id)
        self.closed = False
        self.remote_settings: dict[int, int] = {}
        self.pongs: set[bytes] = set()
        self._buf = bytearray()
        self._block: tuple[int, bytearray, bool] | None = None  # a header block awaiting CONTINUATION
        self.conn.initiate_connection()
        self.flush()

    # -- writing
    def flush(self) -> None:
        self._send(self.conn.data_to_send())

    def raw(self, *frames: Frame) -> None:
        self.flush()
        self._send(b"".join(f.serialize() for f in frames))

    def raw_bytes(self, data: bytes) -> None:
        self.flush()
        self._send(data)

    def _send(self, data: bytes) -> None:
        if data and not self.closed:
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed = True

    def block(self, headers: list[tuple[str, str]]) -> bytes:
        """A header block from the connection's own encoder, so that Envoy's decoder stays in step."""
        self.flush()
        return bytes(self.conn.encoder.encode(headers))

    # -- reading
    def pump(self, timeout: float) -> bool:
        """Reads what arrives within `timeout`; False when nothing did."""
        if self.closed:
            return False
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return False
        except OSError:
            self.closed = True
            return False
        if not data:
            self.closed = True
            return False
        self._buf += data
        while len(self._buf) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self._buf[:9]))
            if len(self._buf) < 9 + length:
                break
            frame.parse_body(memoryview(self._buf[9 : 9 + length]))
            del self._buf[: 9 + length]
            self._on(frame)
        return True

    def drain(self, seconds: float) -> None:
        """Reads for up to `seconds` (less when the connection goes quiet for 0.2 s first)."""
        end = time.monotonic() + seconds
        while self.pump(min(0.2, max(0.001, end - time.monotonic()))) and time.monotonic() < end:
            pass

    def wait(self, streams: list[int], seconds: float) -> None:
        """Reads until each of `streams` that Envoy still serves is answered in full or reset (after a
        GOAWAY, those up to its last stream), the connection ends, or `seconds` have passed."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and not self.closed:
            last = self.goaway[1] if self.goaway is not None else 2**31
            if all(self.answers[s].done for s in streams if s <= last):
                return
            # Quiet for a while: a connection Envoy has given up on answers no PING either (it would
            # close it only after its delayed-close timeout, 1 s).
            if not self.pump(min(0.2, max(0.01, end - time.monotonic()))) and not self.responsive(0.3):
                self.closed = True
                return

    def responsive(self, seconds: float = 3.0) -> bool:
        """Whether Envoy still answers a PING on this connection."""
        opaque = os.urandom(8)
        self.raw(PingFrame(0, opaque_data=opaque))
        end = time.monotonic() + seconds
        while time.monotonic() < end and not self.closed and opaque not in self.pongs:
            self.pump(0.1)
        return opaque in self.pongs

    def _on(self, frame: Frame) -> None:
        if isinstance(frame, SettingsFrame):
            if "ACK" not in frame.flags:
                self.remote_settings.update(frame.settings)
                self.raw(SettingsFrame(0, flags=["ACK"]))
        elif isinstance(frame, HeadersFrame | PushPromiseFrame):
            block = bytearray(frame.data)
            self._block = (frame.stream_id, block, "END_STREAM" in frame.flags)
            if "END_HEADERS" in frame.flags:
                self._header_block_done()
        elif isinstance(frame, ContinuationFrame):
            assert self._block is not None and self._block[0] == frame.stream_id, "CONTINUATION out of place"
            self._block[1].extend(frame.data)
            if "END_HEADERS" in frame.flags:
                self._header_block_done()
        elif isinstance(frame, DataFrame):
            answer = self.answers[frame.stream_id]
            answer.data += frame.data
            answer.ended |= "END_STREAM" in frame.flags
        elif isinstance(frame, RstStreamFrame):
            self.answers[frame.stream_id].reset = frame.error_code
        elif isinstance(frame, GoAwayFrame):
            self.goaway = (frame.error_code, frame.last_stream_id)
        elif isinstance(frame, PingFrame):
            if "ACK" in frame.flags:
                self.pongs.add(bytes(frame.opaque_data))
            else:
                self.raw(PingFrame(0, opaque_data=frame.opaque_data, flags=["ACK"]))

    def _header_block_done(self) -> None:
        assert self._block is not None
        stream_id, block, end_stream = self._block
        self._block = None
        headers = self.decoder.decode(bytes(block))
        answer = self.answers[stream_id]
        answer.blocks.append([(str(k), str(v)) for k, v in headers])
        answer.ended |= end_stream

    def close(self) -> None:
        self.closed = True
        self.sock.close()


def grpc_headers(method: str, token: str, authority: str) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", method),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("authorization", f"Bearer {token}"),
    ]


def grpc_status_problem(answer: Answer) -> str | None:
    """None when the answer is a documented gRPC status (with ErrorInfo unless OK); else what is wrong."""
    headers = answer.headers()
    if headers.get(":status") != "200":
        return f"HTTP status {headers.get(':status')} to a gRPC call: {headers}"
    if "grpc-status" not in headers:
        return f"no grpc-status: {headers}"
    code = int(headers["grpc-status"])
    message = urllib.parse.unquote(headers.get("grpc-message", ""))
    if "grpc-status-details-bin" not in headers and any(
        code == c and message.startswith(m) for c, m in RUNTIME_REFUSALS
    ):
        return None
    if code not in DOCUMENTED:
        return f"grpc-status {code} ({message}) is not a documented one: {headers}"
    if code == 0:
        return None
    raw = headers.get("grpc-status-details-bin")
    if raw is None:
        return f"grpc-status {code} ({message}) without grpc-status-details-bin"
    status = status_pb2.Status.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))
    info = error_details_pb2.ErrorInfo()
    if status.code != code or not any(d.Unpack(info) for d in status.details):
        return f"grpc-status {code}: details {status} lack ErrorInfo or disagree"
    return None


def stack_pids(stack) -> dict[str, int | None]:
    pids: dict[str, int | None] = {"envoy": stack.envoy_pid()}
    for svc, ports in stack.replica_ports().items():
        for port in ports:
            pids[f"{svc}-{port}"] = stack.replica_pid(svc, port)
    return pids


def envoy_process(pid: int) -> int:
    """Envoy itself: the started pid is the small shell that waits on it."""
    below = [p for p in with_descendants([pid]) if p != pid]
    return below[0] if below else pid


def rss_mb(pid: int) -> float:
    return procs.memory_mb(pid).get("VmRSS", 0.0)


# ---- the fuzz ----------------------------------------------------------------------------------

# Headers a call is answered for (or its stream reset)...
HEADER_VARIANTS = [
    "valid",
    "get",
    "unknown-path",
    "odd-path",
    "no-te",
    "no-auth",
    "bad-auth",
    "text-plain",
    "grpc-web",
    "bad-name",
    "gzip-encoding",
    "unknown-encoding",
    "bad-timeout",
    "content-length",
    "huge-value",
    "many-headers",
]
# ... and headers that break HTTP/2 itself, for which Envoy ends the whole connection.
BROKEN_HEADERS = [
    "no-path",
    "no-method",
    "no-scheme",
    "no-authority",
    "connect",
    "uppercase-name",
    "bad-value",
    "connection-header",
    "pseudo-after-regular",
    "duplicate-path",
    "status-in-request",
    "unknown-pseudo",
]


def variant_headers(variant: str, method: str, token: str, authority: str, rnd: random.Random) -> list[tuple[str, str]]:
    h = grpc_headers(method, token, authority)

    def without(name: str) -> list[tuple[str, str]]:
        return [(k, v) for k, v in h if k != name]

    def swap(name: str, value: str) -> list[tuple[str, str]]:
        return [(k, value if k == name else v) for k, v in h]

    match variant:
        case "valid":
            return h
        case "no-path" | "no-method" | "no-scheme" | "no-authority":
            return without(":" + variant[3:])
        case "get":
            return swap(":method", "GET")
        case "connect":
            return swap(":method", "CONNECT")
        case "unknown-path":
            return swap(":path", method + "Nope")
        case "odd-path":
            return swap(":path", rnd.choice(["*", "", "//x/../y", "/%2F%2e%2e", method + "?a=1&=2", "x"]))
        case "no-te":
            return without("te")
        case "no-auth":
            return without("authorization")
        case "bad-auth":
            return swap("authorization", "Bearer " + "x.y.z")
        case "text-plain":
            return swap("content-type", "text/plain")
        case "grpc-web":
            return swap("content-type", "application/grpc-web+proto")
        case "uppercase-name":
            return [*h, ("X-Upper", "1")]
        case "bad-name":
            return [*h, ("x-a!b c", "1")]
        case "bad-value":
            return [*h, ("x-v", "a\r\nb\x00c")]
        case "connection-header":
            return [*h, ("connection", "keep-alive"), ("transfer-encoding", "chunked")]
        case "pseudo-after-regular":
            return [*without(":path"), (":path", method)]
        case "duplicate-path":
            return [*h, (":path", "/runtrack.v1.SummaryService/GetRun")]
        case "status-in-request":
            return [*h, (":status", "200")]
        case "unknown-pseudo":
            return [*h, (":foo", "bar")]
        case "gzip-encoding":
            return [*h, ("grpc-encoding", "gzip")]
        case "unknown-encoding":
            return [*h, ("grpc-encoding", "br0ken")]
        case "bad-timeout":
            return [*h, ("grpc-timeout", rnd.choice(["1n", "abc", "99999999999H", "-1S"]))]
        case "content-length":
            return [*h, ("content-length", "3")]
        case "huge-value":
            return [*h, ("x-big", "a" * 40_000)]
        case "many-headers":
            return [*h, *((f"x-h{i}", "1") for i in range(120))]
    raise AssertionError(variant)


def framed(kind: str, body: bytes) -> bytes:
    """A gRPC length-prefixed message, honest or not."""
    match kind:
        case "honest":
            return b"\x00" + struct.pack(">I", len(body)) + body
        case "compressed":
            return b"\x01" + struct.pack(">I", len(body)) + body
        case "bad-flag":
            return b"\x07" + struct.pack(">I", len(body)) + body
        case "too-long":
            return b"\x00" + struct.pack(">I", len(body) + 17) + body
        case "too-short":
            return b"\x00" + struct.pack(">I", max(0, len(body) - 3)) + body
        case "huge":
            return b"\x00" + struct.pack(">I", 0xFFFFFFF0) + body
        case "prefix-only":
            return b"\x00\x00"
        case "two":
            return (b"\x00" + struct.pack(">I", len(body)) + body) * 2
    return body  # "raw": bytes without a prefix


FRAMINGS = ["honest", "honest", "compressed", "bad-flag", "too-long", "too-short", "huge", "prefix-only", "two", "raw"]
ERROR_CODES = st.one_of(st.sampled_from(list(ErrorCodes)).map(int), st.integers(0, 2**32 - 1))
SETTINGS = st.dictionaries(
    st.one_of(st.integers(1, 6), st.sampled_from([0, 7, 8, 9, 0xFF, 0xFFFF])),
    st.one_of(st.sampled_from([0, 1, 2, 16383, 16384, 2**24, 2**24 - 1, 2**31 - 1, 2**31, 2**32 - 1])),
    min_size=1,
    max_size=4,
)
STREAM = st.integers(0, 15)  # an opened stream by index, or a new one


def first_call(method: st.SearchStrategy[int]) -> st.SearchStrategy[tuple[Any, ...]]:
    """Every example starts with a call's HEADERS, so that the frames after it have a stream to act on."""
    variant = st.one_of(st.just("valid"), st.sampled_from(HEADER_VARIANTS))
    return st.tuples(st.just("headers"), method, variant, st.booleans())


def op(method_index: st.SearchStrategy[int]) -> st.SearchStrategy[tuple[Any, ...]]:
    """Mostly frames a connection survives (calls, messages, resets, window, priority, ping), with one
    in eight that may well end it (broken headers, odd settings, stray CONTINUATION, bytes...)."""
    method = method_index
    message = method.flatmap(lambda i: payloads(METHODS[i].input_type))
    variant = st.one_of(st.just("valid"), st.sampled_from(HEADER_VARIANTS))
    core = st.one_of(
        st.tuples(st.just("headers"), method, variant, st.booleans()),
        st.tuples(st.just("data"), STREAM, st.sampled_from(FRAMINGS), message, st.booleans()),
        st.tuples(st.just("rst"), STREAM, ERROR_CODES),
        st.tuples(st.just("window"), st.one_of(st.none(), STREAM), st.sampled_from([1, 100, 65535])),
        st.tuples(st.just("priority"), STREAM, STREAM, st.integers(1, 256), st.booleans()),
        st.tuples(st.just("ping"), st.binary(min_size=8, max_size=8), st.just(False)),
    )
    wild = st.one_of(
        st.tuples(st.just("headers"), method, st.sampled_from(BROKEN_HEADERS), st.booleans()),
        st.tuples(st.just("window"), st.one_of(st.none(), STREAM), st.sampled_from([0, 2**31 - 1])),
        st.tuples(st.just("priority"), STREAM, st.none(), st.integers(1, 256), st.booleans()),
        st.tuples(st.just("ping"), st.binary(min_size=0, max_size=12), st.booleans()),
        st.tuples(st.just("settings"), SETTINGS),
        st.tuples(st.just("continuation"), STREAM, st.binary(max_size=40), st.booleans()),
        st.tuples(st.just("split-headers"), method, st.sampled_from(["whole", "never-ended", "interrupted"])),
        st.tuples(st.just("data-before-headers"), st.binary(max_size=40), st.booleans()),
        st.tuples(st.just("headers-even-stream"), method),
        st.tuples(st.just("trailers"), STREAM),
        st.tuples(st.just("unknown-frame"), st.integers(0x0A, 0xFF), st.binary(max_size=30), STREAM),
        st.tuples(st.just("bytes"), st.binary(min_size=1, max_size=30)),
    )
    return st.integers(0, 7).flatmap(lambda i: core if i < 7 else wild)


@dataclasses.dataclass
class Attack:
    """One example's connection, and what it sent."""

    peer: Peer
    token: str
    authority: str
    rnd: random.Random
    grpc_streams: list[int] = dataclasses.field(default_factory=list)  # opened with gRPC headers
    other_streams: list[int] = dataclasses.field(default_factory=list)  # opened with bad headers
    ended: set[int] = dataclasses.field(default_factory=set)  # by us: END_STREAM or RST_STREAM
    reset: set[int] = dataclasses.field(default_factory=set)  # by us: RST_STREAM
    settings_sent: bool = False  # SETTINGS of ours (a window of 0 holds Envoy's answers back)
    next_id: int = 1

    def new_id(self) -> int:
        sid, self.next_id = self.next_id, self.next_id + 2
        return sid

    def stream(self, ref: int) -> int:
        """Mostly a stream still open on our side; now and then one we ended, or one never opened."""
        opened = self.grpc_streams + self.other_streams
        live = [s for s in opened if s not in self.ended]
        if live and ref < 12:
            return live[ref % len(live)]
        return opened[ref % len(opened)] if opened and ref < 14 else self.next_id

    def headers(self, method: int, variant: str, end_stream: bool) -> None:
        sid = self.new_id()
        headers = variant_headers(variant, path(METHODS[method]), self.token, self.authority, self.rnd)
        (self.grpc_streams if variant == "valid" else self.other_streams).append(sid)
        try:
            self.peer.conn.send_headers(sid, headers, end_stream=end_stream)
        except H2Error:
            flags = ["END_HEADERS", *(["END_STREAM"] if end_stream else [])]
            self.peer.raw(HeadersFrame(sid, self.peer.block(headers), flags=flags))
        if end_stream:
            self.ended.add(sid)

    def data(self, sid: int, data: bytes, end_stream: bool) -> None:
        try:
            self.peer.conn.send_data(sid, data, end_stream=end_stream)
        except (H2Error, KeyError):  # closed for h2 (or unknown to it), over its window or frame size: sent anyway
            chunks = [data[i : i + 16384] for i in range(0, len(data), 16384)] or [b""]
            for i, chunk in enumerate(chunks):
                last = end_stream and i == len(chunks) - 1
                self.peer.raw(DataFrame(sid, chunk, flags=["END_STREAM"] if last else []))
        if end_stream:
            self.ended.add(sid)

    def run(self, o: tuple[Any, ...]) -> None:
        peer, kind = self.peer, o[0]
        match o:
            case ("headers", method, variant, end_stream):
                self.headers(method, variant, end_stream)
            case ("data", ref, framing, body, end_stream):
                self.data(self.stream(ref), framed(framing, body), end_stream)
            case ("rst", ref, code):
                sid = self.stream(ref)
                try:
                    peer.conn.reset_stream(sid, code)
                except (H2Error, KeyError, ValueError):
                    peer.raw(RstStreamFrame(sid, error_code=code))
                self.ended.add(sid)
                self.reset.add(sid)
            case ("window", ref, increment):
                sid = 0 if ref is None else self.stream(ref)
                try:
                    peer.conn.increment_flow_control_window(increment, stream_id=sid or None)
                except (H2Error, KeyError, ValueError):
                    peer.raw(WindowUpdateFrame(sid, window_increment=increment))
            case ("priority", ref, dep, weight, exclusive):
                sid = self.stream(ref)
                depends_on = sid if dep is None else self.stream(dep)  # None: on itself
                try:
                    peer.conn.prioritize(sid, weight=weight, depends_on=depends_on, exclusive=exclusive)
                except (H2Error, KeyError, ValueError):
                    peer.raw(PriorityFrame(sid, depends_on=depends_on, stream_weight=weight - 1, exclusive=exclusive))
            case ("ping", opaque, ack):
                try:
                    if len(opaque) != 8 or ack:
                        raise ValueError("h2 sends neither")
                    peer.conn.ping(opaque)
                except (H2Error, KeyError, ValueError):  # a PING of the wrong length, or an unasked ACK
                    peer.raw(ExtensionFrame(0x6, 0, flag_byte=int(ack), body=opaque))
            case ("settings", values):
                self.settings_sent = True
                try:
                    peer.conn.update_settings(values)
                except (H2Error, KeyError, ValueError):
                    peer.raw(SettingsFrame(0, settings=values))
            case ("continuation", ref, block, end_headers):
                peer.raw(ContinuationFrame(self.stream(ref), block, flags=["END_HEADERS"] if end_headers else []))
            case ("split-headers", method, how):
                sid = self.new_id()
                block = peer.block(grpc_headers(path(METHODS[method]), self.token, self.authority))
                cut = len(block) // 2
                peer.raw(HeadersFrame(sid, block[:cut]))
                if how == "whole":
                    peer.raw(ContinuationFrame(sid, block[cut:], flags=["END_HEADERS"]))
                    self.grpc_streams.append(sid)
                elif how == "interrupted":  # another frame where the CONTINUATION must be
                    peer.raw(PingFrame(0, opaque_data=b"12345678"))
                else:
                    self.other_streams.append(sid)
            case ("data-before-headers", body, end_stream):
                peer.raw(DataFrame(self.new_id(), body, flags=["END_STREAM"] if end_stream else []))
            case ("headers-even-stream", method):
                block = peer.block(grpc_headers(path(METHODS[method]), self.token, self.authority))
                peer.raw(HeadersFrame(self.next_id + 1, block, flags=["END_HEADERS"]))
            case ("trailers", ref):
                sid = self.stream(ref)
                peer.raw(HeadersFrame(sid, peer.block([("x-trailer", "1")]), flags=["END_HEADERS", "END_STREAM"]))
                self.ended.add(sid)
            case ("unknown-frame", type_, body, ref):
                peer.raw(ExtensionFrame(type_, self.stream(ref), flag_byte=0xFF, body=body))
            case ("bytes", data):
                peer.raw_bytes(data)
            case _:
                raise AssertionError(kind)
        peer.flush()


@dataclasses.dataclass
class Tally:
    examples: int = 0
    streams: int = 0
    grpc_statuses: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    http_statuses: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    resets: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    goaways: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    unanswered: int = 0
    held: int = 0  # not answered after SETTINGS of ours (a window of 0), on a connection that answers a PING


def _error_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(code)


def judge(attack: Attack, tally: Tally) -> list[str]:
    """What is wrong with the answers of one example's connection (nothing, when all is well)."""
    peer, problems = attack.peer, []
    for sid in attack.grpc_streams + attack.other_streams:
        answer = peer.answers.get(sid)
        tally.streams += 1
        if answer is None or (not answer.blocks and answer.reset is None):
            # Not answered: reset by us, or cut by the connection's end (a GOAWAY or a close).
            if sid in attack.reset or peer.goaway is not None or peer.closed:
                tally.unanswered += 1
            elif attack.settings_sent and peer.responsive():
                tally.held += 1
            else:
                problems.append(f"stream {sid}: no answer on a connection that lives")
            continue
        if answer.reset is not None and not answer.blocks:
            tally.resets[_error_name(answer.reset)] += 1
            continue
        headers = answer.headers()
        if "grpc-status" in headers:
            tally.grpc_statuses[headers["grpc-status"]] += 1
            problem = grpc_status_problem(answer)
            if problem and (answer.ended or answer.reset is None):
                problems.append(f"stream {sid}: {problem}")
        elif answer.reset is not None:
            tally.resets[_error_name(answer.reset)] += 1  # reset after its response headers
        elif sid in attack.grpc_streams:
            if answer.ended or sid in attack.ended:
                problems.append(f"stream {sid}: a gRPC call answered without grpc-status: {headers}")
        else:
            # A request that is not gRPC (bad content-type, method...): an HTTP status, never a 5xx.
            status = headers.get(":status", "")
            tally.http_statuses[status] += 1
            if not status.startswith("4") and status != "200":
                problems.append(f"stream {sid}: HTTP {status} to a malformed request: {headers}")
    if peer.goaway is not None:
        tally.goaways[_error_name(peer.goaway[0])] += 1
    return problems


@pytest.fixture(scope="module")
def fuzz_token(stack):
    return stack.issuer.token(f"h2fuzz-{uuid.uuid4().hex[:8]}")


FUZZ_SEED = int(os.environ.get("RUNTRACK_H2_FUZZ_SEED", random.randrange(2**32)))


async def test_raw_http2_frames_get_resets_goaways_or_documented_statuses(stack, fuzz_token):
    print(f"h2 fuzz seed: {FUZZ_SEED} (RUNTRACK_H2_FUZZ_SEED to replay)")
    before = stack_pids(stack)
    assert all(before.values()), before
    tally = Tally()
    failures: list[str] = []
    began = time.monotonic()

    method = st.integers(0, len(METHODS) - 1)

    @seed(FUZZ_SEED)
    @settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(first_call(method), st.lists(op(method), max_size=9), st.randoms())
    def one(first: tuple[Any, ...], more: list[tuple[Any, ...]], rnd: random.Random) -> None:
        ops = [first, *more]
        attack = Attack(Peer(stack.envoy_address), fuzz_token, stack.envoy_address, rnd)
        try:
            for o in ops:
                attack.run(o)
                attack.peer.drain(0)
            for sid in attack.grpc_streams + attack.other_streams:  # the calls left open end now
                if sid not in attack.ended:
                    attack.data(sid, b"", end_stream=True)
            attack.peer.flush()
            attack.peer.wait([s for s in attack.grpc_streams + attack.other_streams if s not in attack.reset], 5)
            tally.examples += 1
            problems = judge(attack, tally)
        finally:
            attack.peer.close()
        now = stack_pids(stack)
        assert now == before, f"a process of the stack went away: {before} -> {now}"
        if problems:
            failures.append(f"{ops!r}: {problems}")
        assert not problems, f"{problems} after {ops!r}"

    await asyncio.to_thread(one)
    took = time.monotonic() - began
    assert stack_pids(stack) == before

    # The stack serves on: calls with a deadline are answered as documented (a grpc-timeout the runtime
    # could not parse, forwarded once, left the replica's connection from Envoy refusing every later
    # one), and a normal run through Envoy is stored whole and read back.
    async with token_channel(stack.envoy_address, fuzz_token) as channel:
        tracking = tracking_pb2_grpc.TrackingServiceStub(channel)
        for _ in range(20):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await tracking.GetTrackCursor(tracking_pb2.GetTrackCursorRequest(run_id=str(uuid.uuid4())), timeout=10)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value
        recorder, points = new_run(channel, 300)
        recorder.record(points)
        await recorder.upload()
        trail = await stored_trail(channel, recorder.run_id)
        assert list(trail) == points, "a point of the run after the fuzz is missing or differs"
        start, end = points[0].time.seconds, points[-1].time.seconds
        overview = summary_pb2.RunOverview(
            start_time={"seconds": start}, end_time={"seconds": end}, distance_m=420.0, point_count=len(points)
        )
        await recorder.stop(overview)
        run = await summary_pb2_grpc.SummaryServiceStub(channel).GetRun(
            summary_pb2.GetRunRequest(run_id=recorder.run_id)
        )
        assert run.run_id == recorder.run_id and run.overview.point_count == len(points)
    report(
        stack,
        "h2_frames_fuzz",
        seed=FUZZ_SEED,
        examples=tally.examples,
        seconds=round(took, 1),
        streams=tally.streams,
        grpc_statuses=dict(tally.grpc_statuses),
        http_statuses=dict(tally.http_statuses),
        resets=dict(tally.resets),
        goaways=dict(tally.goaways),
        unanswered=tally.unanswered,
        held=tally.held,
        run_after_points_stored=len(trail),
    )


# ---- many streams on one connection, and the rapid reset ---------------------------------------


def _wait_listening(address: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://{address}/openapi.json", timeout=1).close()
            return
        except (OSError, urllib.error.URLError):
            time.sleep(0.2)
    raise AssertionError(f"Envoy on {address} does not answer")


@pytest.fixture
def edge(stack, request) -> Iterator[tuple[str, int]]:
    """An Envoy with the public edge's streams per connection (100) in front of the test stack's
    replicas: (host:port, Envoy's own pid)."""
    offset, name = request.param
    layout = dataclasses.replace(
        stack.spec.layout,
        listen_port=stack.spec.envoy_port + offset,
        admin_port=stack.spec.envoy_admin_port + offset,
        tls=None,
        max_concurrent_streams=EDGE_STREAMS,
    )
    pid = stack.start_envoy(layout, name=name)
    address = f"127.0.0.1:{layout.listen_port}"
    _wait_listening(address)
    yield address, envoy_process(pid)
    procs.stop(pid, timeout=10)


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0


def admin_stats(admin_port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats?usedonly", timeout=5) as resp:
        lines = resp.read().decode().splitlines()
    return {k: int(v) for k, _, v in (line.partition(": ") for line in lines) if v.strip().isdigit()}


class EnvoyWatch:
    """Envoy's resident memory and its open HTTP/2 streams, sampled every 50 ms while the attack runs."""

    def __init__(self, pid: int, admin_port: int) -> None:
        self.pid, self.admin_port = pid, admin_port
        self.before, self.peak, self.peak_streams = rss_mb(pid), 0.0, 0
        self.stats_before = admin_stats(admin_port)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            streams = admin_stats(self.admin_port).get("http2.streams_active", 0)
            self.peak_streams = max(self.peak_streams, streams)
            time.sleep(0.05)

    def grown(self, stat: str) -> int:
        return admin_stats(self.admin_port).get(stat, 0) - self.stats_before.get(stat, 0)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return rss_mb(self.pid)


async def other_runner(address: str, token: str, busy: threading.Event) -> tuple[list[float], int]:
    """A well-behaved runner on its own connection while `busy` is set: records runs of 200 points and
    reads each back whole, with a GetRun between; the latencies of its unary calls, and the points stored."""
    latencies: list[float] = []
    stored = 0
    async with token_channel(address, token) as channel:
        summary = summary_pb2_grpc.SummaryServiceStub(channel)
        while True:
            recorder, points = new_run(channel, 200)
            recorder.record(points)
            await recorder.upload()
            began = time.perf_counter()
            trail = await stored_trail(channel, recorder.run_id)
            latencies.append(time.perf_counter() - began)
            assert list(trail) == points, "another runner's run is not stored whole"
            stored += len(trail)
            began = time.perf_counter()
            try:
                await summary.GetRun(summary_pb2.GetRunRequest(run_id=str(uuid.uuid4())))
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.NOT_FOUND, err
            latencies.append(time.perf_counter() - began)
            if not busy.is_set():
                return latencies, stored


def hold_streams(address: str, token: str, n: int) -> dict[str, Any]:
    """Opens `n` RecordTrack streams (HEADERS only, held open) on one connection, and on a new one each
    time Envoy ends it; what Envoy did."""
    headers = grpc_headers(path(RECORD_TRACK), token, address)
    began = time.monotonic()
    sent, connections, refused, goaways, advertised = 0, [], 0, collections.Counter(), set()
    while sent < n:
        peer = Peer(address)
        peer.drain(0.3)  # Envoy's SETTINGS, acknowledged
        advertised.add(peer.remote_settings.get(3))
        on_this = 0
        for sid in range(1, 2 * (n - sent), 2):
            if peer.closed:
                break
            peer.conn.send_headers(sid, headers)
            on_this += 1
            if on_this % 100 == 0:
                peer.flush()
                peer.drain(0)  # what Envoy answers, read as it comes
        peer.flush()
        peer.drain(2)
        if not peer.closed:
            peer.responsive(1.0)  # a connection Envoy has given up on answers no PING
        refused += sum(1 for a in peer.answers.values() if a.reset == ErrorCodes.REFUSED_STREAM)
        if peer.goaway is not None:
            goaways[_error_name(peer.goaway[0])] += 1
        connections.append(on_this)
        sent += on_this
        peer.close()
    return {
        "sent": sent,
        "seconds": round(time.monotonic() - began, 2),
        "advertised_max_concurrent_streams": sorted(advertised),
        "connections": len(connections),
        "streams_sent_per_connection": connections,
        "refused_stream": refused,
        "goaways": dict(goaways),
    }


@pytest.mark.parametrize("edge", [(5, "envoy-edge-streams")], indirect=True)
async def test_10000_streams_on_one_connection_past_100_are_refused_and_others_are_served(stack, edge):
    address, envoy = edge
    admin = stack.spec.envoy_admin_port + 5
    attacker, runner = (stack.issuer.token(f"{n}-{uuid.uuid4().hex[:6]}") for n in ("h2hold", "calm"))
    quiet, _ = await other_runner(address, runner, threading.Event())
    watch = EnvoyWatch(envoy, admin)
    busy = threading.Event()
    busy.set()
    attack = asyncio.create_task(asyncio.to_thread(hold_streams, address, attacker, ATTACK_STREAMS))
    try:
        attack.add_done_callback(lambda _: busy.clear())
        during, stored = await other_runner(address, runner, busy)
        result = await attack
    finally:
        after = watch.stop()
    protocol_errors = watch.grown("http.public.downstream_cx_protocol_error")
    requests = watch.grown("http.public.downstream_rq_total")
    assert result["sent"] == ATTACK_STREAMS and result["advertised_max_concurrent_streams"] == [EDGE_STREAMS], result
    # Past 100 open streams Envoy refuses: a stream reset REFUSED_STREAM, or the whole connection
    # ended (Envoy 1.40 ends it as a protocol error: HEADERS past the acknowledged limit).
    per_connection = result["streams_sent_per_connection"]
    if result["refused_stream"] < ATTACK_STREAMS - EDGE_STREAMS * len(per_connection):
        assert protocol_errors >= len(per_connection), (protocol_errors, result)
    # Never more than 100 of the attacker's streams open at once (the other runner's few beside them).
    assert watch.peak_streams <= EDGE_STREAMS + 5, watch.peak_streams
    assert watch.peak - watch.before < 64, f"Envoy's RSS {watch.before:.0f} -> {watch.peak:.0f} MiB"
    assert procs.alive(envoy)
    report(
        stack,
        "h2_streams_on_one_connection",
        **result,
        refused_by="RST_STREAM REFUSED_STREAM" if result["refused_stream"] else "connection closed",
        envoy_protocol_errors=protocol_errors,
        envoy_requests=requests,
        envoy_peak_http2_streams_active=watch.peak_streams,
        max_concurrent_streams=EDGE_STREAMS,
        envoy_rss_mb_before=round(watch.before, 1),
        envoy_rss_mb_peak=round(watch.peak, 1),
        envoy_rss_mb_after=round(after, 1),
        other_runner_points_stored=stored,
        other_runner_p99_ms_quiet=round(_p99(quiet) * 1000, 1),
        other_runner_p99_ms_during=round(_p99(during) * 1000, 1),
    )


def rapid_reset(address: str, token: str, n: int) -> dict[str, Any]:
    """HEADERS then RST_STREAM (CANCEL) at once, at least `n` times, on one connection and on a new one
    each time Envoy closes it (the last too: up to 1,000 on it); what Envoy did."""
    headers = grpc_headers(path(RECORD_TRACK), token, address)
    began = time.monotonic()
    sent, connections, goaways, still_open = 0, [], collections.Counter(), 0
    while sent < n:
        peer = Peer(address)
        peer.drain(0.3)
        on_this = 0
        for sid in range(1, 2 * max(n - sent, 1000), 2):
            if peer.closed:
                break
            peer.conn.send_headers(sid, headers)
            peer.conn.reset_stream(sid, ErrorCodes.CANCEL)
            on_this += 1
            if on_this % 50 == 0:
                peer.flush()
                peer.drain(0)
        peer.flush()
        peer.drain(2)
        if not peer.closed and not peer.responsive(1.0):
            peer.closed = True
        still_open += not peer.closed and peer.goaway is None
        if peer.goaway is not None:
            goaways[_error_name(peer.goaway[0])] += 1
        connections.append(on_this)
        sent += on_this
        peer.close()
    return {
        "sent": sent,
        "seconds": round(time.monotonic() - began, 2),
        "connections": len(connections),
        # Written before the close was seen (the socket's buffers take more than Envoy read).
        "streams_written_per_connection_max": max(connections),
        "connections_left_open": still_open,
        "goaways": dict(goaways),
    }


@pytest.mark.parametrize("edge", [(6, "envoy-edge-resets")], indirect=True)
async def test_a_rapid_reset_connection_is_closed_and_others_are_served(stack, edge):
    address, envoy = edge
    attacker, runner = (stack.issuer.token(f"{n}-{uuid.uuid4().hex[:6]}") for n in ("h2rst", "calm"))
    quiet, _ = await other_runner(address, runner, threading.Event())
    watch = EnvoyWatch(envoy, stack.spec.envoy_admin_port + 6)
    busy = threading.Event()
    busy.set()
    attack = asyncio.create_task(asyncio.to_thread(rapid_reset, address, attacker, ATTACK_STREAMS))
    try:
        attack.add_done_callback(lambda _: busy.clear())
        during, stored = await other_runner(address, runner, busy)
        result = await attack
    finally:
        after = watch.stop()
    closed_for_resets = watch.grown("http.public.downstream_rq_too_many_premature_resets")
    requests = watch.grown("http.public.downstream_rq_total")
    # Envoy's defaults (overload.premature_reset_total_stream_count 500, ..._min_stream_lifetime_seconds
    # 1): once 500 streams of a connection have closed, more than half of them reset by the client
    # within 1 s of opening closes the connection. None outlives that; each is counted.
    assert result["sent"] >= ATTACK_STREAMS and result["connections_left_open"] == 0, result
    assert closed_for_resets >= result["connections"] - 1, (closed_for_resets, result)
    assert watch.peak - watch.before < 64, f"Envoy's RSS {watch.before:.0f} -> {watch.peak:.0f} MiB"
    assert procs.alive(envoy)
    report(
        stack,
        "h2_rapid_reset",
        **result,
        closed_by="connection closed" if not result["goaways"] else "GOAWAY",
        envoy_too_many_premature_resets=closed_for_resets,
        envoy_requests=requests,
        envoy_rss_mb_before=round(watch.before, 1),
        envoy_rss_mb_peak=round(watch.peak, 1),
        envoy_rss_mb_after=round(after, 1),
        other_runner_points_stored=stored,
        other_runner_p99_ms_quiet=round(_p99(quiet) * 1000, 1),
        other_runner_p99_ms_during=round(_p99(during) * 1000, 1),
    )
