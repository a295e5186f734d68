"""A live link's webhook: each state change of its run POSTed as JSON, signed, retried with backoff.

Signature: `x-runtrack-signature: sha256=<hex HMAC-SHA256(secret, raw body)>`. The body carries its
own `id` (the same on every retry: receivers drop repeats) and `time`, so a replayed old body is
recognisable. One log line per attempt.

A delivery outlives the replica that made it: it is written to the CQL store's outbox before the
first attempt and removed once answered. Its replica holds a lease on the row, renewed before each
attempt; every replica sweeps the outbox now and then and takes (with a lightweight transaction) the
rows whose lease ran out, going on from the attempts made, with the same id."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import re
import socket
import ssl
import time
import urllib.parse
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from runtrack_common.config import Settings
from runtrack_common.errors import RunTrackError

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "x-runtrack-signature"
MAX_URL_CHARS = 2048


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    return hmac.compare_digest(signature(secret, body), header)


# A DNS name's labels: letters, digits and hyphens (IDNs arrive as their xn-- form).
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
# An IPv4 address as people write it: four decimal octets without leading zeros. Anything else that
# looks numeric (2130706433, 0x7f.1, 0177.0.0.1, 127.1) reads differently in different parsers.
_DOTTED_QUAD = re.compile(
    r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\Z"
)
NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
PRIVATE_RULE = "must not point at a loopback, private, link-local, shared, multicast or unspecified address"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _embedded_v4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries to (IPv4-mapped, NAT64, 6to4, Teredo)."""
    out = []
    if ip.ipv4_mapped is not None:
        out.append(ip.ipv4_mapped)
    if any(ip in net for net in NAT64):
        out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        out.append(ip.sixtofour)
    if ip.teredo is not None:
        out += list(ip.teredo)
    return out


class TargetPolicy:
    """Which addresses a webhook may reach: public unicast only, besides `allowed` networks."""

    def __init__(self, *, allow_private: bool = False, allowed: str = "") -> None:
        self.allow_private = allow_private
        self.allowed: list[Network] = [ipaddress.ip_network(n.strip()) for n in allowed.split(",") if n.strip()]

    @classmethod
    def of(cls, settings: Settings) -> TargetPolicy:
        return cls(allow_private=settings.webhook_allow_private, allowed=settings.webhook_allow_networks)

    def explicitly_allowed(self, ip: Address) -> bool:
        return self.allow_private or any(ip.version == n.version and ip in n for n in self.allowed)

    def forbidden(self, ip: Address) -> bool:
        if self.explicitly_allowed(ip):
            return False
        if isinstance(ip, ipaddress.IPv6Address) and any(self.forbidden(v4) for v4 in _embedded_v4(ip)):
            return True
        return ip.is_multicast or ip.is_unspecified or ip.is_reserved or not ip.is_global


def parse_host(host: str) -> Address | str:
    """The URL's host as an address or a lower-case DNS name; ValueError with the rule it breaks."""
    if not host or "%" in host:
        raise ValueError("must name its host plainly (no percent-escapes)")
    if ":" in host:  # urlsplit took it from brackets
        return ipaddress.IPv6Address(host)
    host = host.lower().rstrip(".")
    last = host.rsplit(".", 1)[-1]
    if last[:1].isdigit():  # no top-level domain starts with a digit: an IPv4 address, written plainly
        if not _DOTTED_QUAD.match(host):
            raise ValueError("must write an IPv4 host as four decimal numbers 0-255 (no hex, octal or short forms)")
        return ipaddress.IPv4Address(host)
    if len(host) > 253 or not all(_LABEL.match(label) for label in host.split(".")):
        raise ValueError("must have a DNS name of letters, digits and hyphens as its host")
    return host


def check_url(url: str, *, allow_private: bool = False, policy: TargetPolicy | None = None) -> str | None:
    """The rule `url` breaks as a webhook target, or None. A name is resolved, and every address it
    has checked, when delivering (see Webhooks): a name's addresses may change."""
    policy = policy or TargetPolicy(allow_private=allow_private)
    if len(url) > MAX_URL_CHARS:
        return f"must be at most {MAX_URL_CHARS} characters"
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F or c == "\\" for c in url):
        return "must not contain spaces, control characters or backslashes"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return "must be an absolute https URL with a valid port"
    if parts.scheme not in ("https", "http") or not parts.netloc:
        return "must be an absolute https URL"
    if "@" in parts.netloc:
        return "must not carry credentials"
    try:
        host = parse_host(parts.hostname or "")
    except ValueError as err:
        return str(err)
    if port == 0:
        return "must be an absolute https URL with a valid port"
    if isinstance(host, str):
        if host == "localhost" or host.endswith(".localhost"):
            return PRIVATE_RULE
        if parts.scheme == "http" and not (policy.allow_private or policy.allowed):
            return "must be an https URL"  # else: only to an allowed network's address (checked when delivering)
        return None
    if policy.forbidden(host):
        return PRIVATE_RULE
    if parts.scheme == "http" and not policy.explicitly_allowed(host):
        return "must be an https URL"
    return None


def resolve(host: str, port: int) -> list[str]:
    """Every address of `host`, each once (getaddrinfo: the system's resolver)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def post_pinned(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    policy: TargetPolicy,
    timeout_s: float,
    resolver: Callable[[str, int], list[str]] = resolve,
) -> int | str:
    """POSTs to `url` over a connection made to an address checked beforehand: the name is resolved
    once, every address it has is checked, and the connection goes to the first (TLS verified for
    the name). A name that answers differently later (rebinding) changes nothing. The HTTP status, or
    a word saying why there is none. No redirect is followed."""
    parts = urllib.parse.urlsplit(url)
    rule = check_url(url, policy=policy)
    if rule is not None:
        return "refused:url"
    host = parse_host(parts.hostname or "")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = [str(host)] if not isinstance(host, str) else resolver(host, port)
    except OSError:
        return "error:resolve"
    if not addresses or any(policy.forbidden(ipaddress.ip_address(a)) for a in addresses):
        return "refused:private-address"
    if parts.scheme == "http" and not all(policy.explicitly_allowed(ipaddress.ip_address(a)) for a in addresses):
        return "refused:plain-http"
    pinned = addresses[0]
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(str(host), port, timeout=timeout_s, context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(str(host), port, timeout=timeout_s)

    def connect_pinned(
        address: tuple[str, int], timeout: float | None = None, source_address: tuple[str, int] | None = None
    ) -> socket.socket:
        return socket.create_connection((pinned, address[1]), timeout, source_address)

    conn._create_connection = connect_pinned  # type: ignore[attr-defined]  # http.client's own hook
    path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    try:
        conn.request("POST", path, body=body, headers=headers)
        return int(conn.getresponse().status)
    except (OSError, http.client.HTTPException) as err:
        return f"error:{type(err).__name__}"
    finally:
        conn.close()


@dataclass(frozen=True, slots=True)
class Delivery:
    run_id: str
    link_id: str
    url: str
    secret: str
    state: str
    at: str  # RFC 3339
    reason: str
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)  # the body's id, the same on every attempt
    attempts: int = 0  # made already (by any replica)


# The outbox's partitions: each sweep reads them all (a handful of reads whatever the traffic).
OUTBOX_SHARDS = 8


def outbox_shard(event_id: uuid.UUID) -> int:
    return event_id.int % OUTBOX_SHARDS


class Outbox(Protocol):
    """Where deliveries wait until answered (the CQL store's `webhook_outbox`)."""

    async def outbox_put(self, d: Delivery, lease_until: dt.datetime) -> None: ...

    async def outbox_waiting(self) -> list[tuple[Delivery, dt.datetime]]:
        """Every delivery waiting, with the time its lease runs out."""

    async def outbox_take(self, event_id: uuid.UUID, held_until: dt.datetime, lease_until: dt.datetime) -> bool:
        """Takes the lease of a row still held until `held_until`; False when another replica did first."""

    async def outbox_renew(self, event_id: uuid.UUID, attempts: int, lease_until: dt.datetime) -> None: ...

    async def outbox_done(self, event_id: uuid.UUID) -> None: ...


class Webhooks:
    """Delivers in the background, on threads of its own (never the event loop's default pool, which
    imports and other work share), at most `webhook_per_receiver` at once to one receiver: a slow or
    failing receiver delays no other, and nothing else. With an outbox, pending deliveries survive
    this replica (see the module's doc)."""

    def __init__(self, settings: Settings, outbox: Outbox | None = None) -> None:
        self.settings = settings
        self.outbox = outbox
        self.policy = TargetPolicy.of(settings)
        self._tasks: set[asyncio.Task[None]] = set()
        self._pool = ThreadPoolExecutor(max_workers=settings.webhook_threads, thread_name_prefix="webhook")
        self._receivers: dict[str, asyncio.Semaphore] = {}
        self._mine: set[uuid.UUID] = set()  # deliveries this replica is making
        self._sweeper: asyncio.Task[None] | None = None

    def send(self, delivery: Delivery) -> None:
        self._spawn(self._deliver(delivery, new=True))
        self.start()

    def start(self) -> None:
        """Starts the sweep of the outbox (on a replica's start: it takes what a lost replica left)."""
        if self.outbox is not None and self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep())

    def _spawn(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _receiver(self, url: str) -> asyncio.Semaphore:
        parts = urllib.parse.urlsplit(url)
        key = f"{parts.hostname}:{parts.port}"
        gate = self._receivers.get(key)
        if gate is None:
            if len(self._receivers) > 10_000:  # forget idle receivers
                self._receivers = {k: g for k, g in self._receivers.items() if g.locked()}
            gate = self._receivers[key] = asyncio.Semaphore(self.settings.webhook_per_receiver)
        return gate

    def _lease(self, seconds: float) -> dt.datetime:
        """Until when a delivery is this replica's: `seconds` of work ahead and the lease's margin."""
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds + self.settings.webhook_lease_s)

    async def _hold(self, d: Delivery, made: int, seconds: float) -> None:
        """Keeps the delivery this replica's for `seconds` more (with `made` attempts made)."""
        if self.outbox is not None:
            await self._outbox("renew", d, self.outbox.outbox_renew(d.event_id, made, self._lease(seconds)))

    async def _turn(self, d: Delivery, made: int) -> asyncio.Semaphore:
        """Waits for the receiver's turn, the lease renewed meanwhile (a slow receiver's queue)."""
        gate = self._receiver(d.url)
        while True:
            try:
                await asyncio.wait_for(gate.acquire(), self.settings.webhook_lease_s / 2)
                return gate
            except TimeoutError:
                await self._hold(d, made, self.settings.webhook_lease_s)

    async def _outbox(self, what: str, d: Delivery, call: Coroutine[Any, Any, Any]) -> Any:
        """An outbox write; the delivery goes on without it (it then lives only here) when the store fails."""
        try:
            return await call
        except RunTrackError as err:
            log.warning("webhook outbox %s failed run_id=%s link_id=%s: %s", what, d.run_id, d.link_id, err)
            return None

    async def _deliver(self, d: Delivery, *, new: bool) -> None:
        self._mine.add(d.event_id)
        try:
            if new and self.outbox is not None:
                await self._outbox("put", d, self.outbox.outbox_put(d, self._lease(self.settings.webhook_timeout_s)))
            await self._attempts(d)
        finally:
            self._mine.discard(d.event_id)
        if self.outbox is not None:
            await self._outbox("done", d, self.outbox.outbox_done(d.event_id))

    async def _attempts(self, d: Delivery) -> None:
        s = self.settings
        body = json.dumps(
            {
                "id": str(d.event_id),
                "type": "run.state_changed",
                "run_id": d.run_id,
                "link_id": d.link_id,
                "state": d.state,
                "time": d.at,
                "reason": d.reason,
            },
            separators=(",", ":"),
        ).encode()
        headers = {
            "content-type": "application/json",
            "user-agent": "RunTrack-Webhook/1",
            "webhook-id": str(d.event_id),
            SIGNATURE_HEADER: signature(d.secret, body),
        }
        for attempt in range(d.attempts + 1, s.webhook_attempts + 1):
            gate = await self._turn(d, attempt - 1)
            try:
                await self._hold(d, attempt - 1, s.webhook_timeout_s)
                started = time.monotonic()
                outcome = await asyncio.get_running_loop().run_in_executor(
                    self._pool,
                    functools.partial(
                        post_pinned, d.url, body, headers, policy=self.policy, timeout_s=s.webhook_timeout_s
                    ),
                )
            finally:
                gate.release()
            ms = (time.monotonic() - started) * 1000
            ok = isinstance(outcome, int) and 200 <= outcome < 300
            log.info(
                "webhook run_id=%s link_id=%s state=%s attempt=%d outcome=%s ms=%.0f%s",
                d.run_id,
                d.link_id,
                d.state,
                attempt,
                outcome,
                ms,
                "" if ok or attempt == s.webhook_attempts else " retrying",
            )
            if ok or outcome == 410:  # delivered, or the receiver is gone for good
                return
            if attempt < s.webhook_attempts:
                backoff = s.webhook_backoff_s * 2 ** (attempt - 1)
                await self._hold(d, attempt, backoff)
                await asyncio.sleep(backoff)

    async def _sweep(self) -> None:
        """Takes over the deliveries whose replica is gone (their lease ran out)."""
        assert self.outbox is not None
        while True:
            await asyncio.sleep(self.settings.webhook_sweep_s)
            try:
                waiting = await self.outbox.outbox_waiting()
                now = dt.datetime.now(dt.UTC)
                for d, held_until in waiting:
                    if held_until > now or d.event_id in self._mine:
                        continue
                    lease = self._lease(self.settings.webhook_timeout_s)
                    if await self.outbox.outbox_take(d.event_id, held_until, lease):
                        log.info(
                            "webhook taken over run_id=%s link_id=%s state=%s attempts_made=%d",
                            d.run_id,
                            d.link_id,
                            d.state,
                            d.attempts,
                        )
                        self._spawn(self._deliver(replace(d), new=False))
            except RunTrackError as err:
                log.warning("webhook outbox sweep failed: %s", err)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
