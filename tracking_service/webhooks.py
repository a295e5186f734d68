"""A live link's webhook: each state change of its run POSTed as JSON, signed, retried with backoff.

Signature: `x-runtrack-signature: sha256=<hex HMAC-SHA256(secret, raw body)>`. The body carries its
own `id` (the same on every retry: receivers drop repeats) and `time`, so a replayed old body is
recognisable. One log line per attempt."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass

from runtrack_common.config import Settings

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "x-runtrack-signature"
MAX_URL_CHARS = 2048


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    return hmac.compare_digest(signature(secret, body), header)


def check_url(url: str, *, allow_private: bool) -> str | None:
    """The rule `url` breaks as a webhook target, or None."""
    if len(url) > MAX_URL_CHARS:
        return f"must be at most {MAX_URL_CHARS} characters"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "must be an absolute https URL"
    if parts.scheme == "http" and not allow_private:
        return "must be an https URL"
    if parts.username or parts.password:
        return "must not carry credentials"
    if not allow_private and _private(parts.hostname):
        return "must not point at a loopback, private or link-local address"
    return None


def _private(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return not ipaddress.ip_address(host).is_global
    except ValueError:
        return False  # a name: resolved (and checked) when delivering


def _resolves_private(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return any(not ipaddress.ip_address(str(info[4][0])).is_global for info in infos)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is a failed delivery, not a second target (which could be an inside address)."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


OPENER = urllib.request.build_opener(_NoRedirects)


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
    """Delivers in the background: a slow or failing receiver delays nothing else."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, delivery: Delivery) -> None:
        task = asyncio.create_task(self._deliver(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
            outcome = await asyncio.to_thread(self._post, d.url, body, headers)
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

    def _post(self, url: str, body: bytes, headers: dict[str, str]) -> int | str:
        host = urllib.parse.urlsplit(url).hostname or ""
        if not self.settings.webhook_allow_private and _resolves_private(host):
            return "refused:private-address"
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with OPENER.open(request, timeout=self.settings.webhook_timeout_s) as response:
                return int(response.status)
        except urllib.error.HTTPError as err:
            return int(err.code)
        except (urllib.error.URLError, OSError) as err:
            return f"error:{type(err).__name__}"

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
