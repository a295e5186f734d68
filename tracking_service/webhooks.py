"""A live link's webhook: each state change of its run POSTed as JSON, signed, retried with backoff.

Signature: `x-runtrack-signature: sha256=<hex HMAC-SHA256(secret, raw body)>`. The body carries its
own `id` (the same on every retry: receivers drop repeats) and `time`, so a replayed old body is
recognisable. One log line per attempt."""

from __future__ import annotations

import asyncio
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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from runtrack_common.config import Settings

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


class Webhooks:
    """Delivers in the background, on threads of its own (never the event loop's default pool, which
    imports and other work share), at most `webhook_per_receiver` at once to one receiver: a slow or
    failing receiver delays no other, and nothing else."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.policy = TargetPolicy.of(settings)
        self._tasks: set[asyncio.Task[None]] = set()
        self._pool = ThreadPoolExecutor(max_workers=settings.webhook_threads, thread_name_prefix="webhook")
        self._receivers: dict[str, asyncio.Semaphore] = {}

    def send(self, delivery: Delivery) -> None:
        task = asyncio.create_task(self._deliver(delivery))
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

    async def _deliver(self, d: Delivery) -> None:
        s = self.settings
        event_id = str(uuid.uuid4())
        body = json.dumps(
            {
                "id": event_id,
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
            "webhook-id": event_id,
            SIGNATURE_HEADER: signature(d.secret, body),
        }
        for attempt in range(1, s.webhook_attempts + 1):
            started = time.monotonic()
            async with self._receiver(d.url):
                outcome = await asyncio.get_running_loop().run_in_executor(
                    self._pool,
                    functools.partial(
                        post_pinned, d.url, body, headers, policy=self.policy, timeout_s=s.webhook_timeout_s
                    ),
                )
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
                await asyncio.sleep(s.webhook_backoff_s * 2 ** (attempt - 1))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
