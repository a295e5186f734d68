"""What Alertmanager posts, kept: a webhook receiver on loopback that the alert tests (beside the test
stack and on the local cluster) wait on."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Posted:
    at: float  # time.monotonic() when the receiver got it
    status: str  # "firing" or "resolved"
    labels: dict[str, str]


class Receiver:
    """An HTTP server on 127.0.0.1 that keeps every alert Alertmanager posts (its webhook format)."""

    def __init__(self) -> None:
        self.posted: list[Posted] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                now = time.monotonic()
                with receiver.lock:
                    receiver.posted += [Posted(now, a["status"], a["labels"]) for a in body["alerts"]]
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/alerts"

    def seen(self, alertname: str, status: str, after: float, **labels: str) -> list[Posted]:
        with self.lock:
            return [
                p
                for p in self.posted
                if p.at >= after
                and p.status == status
                and p.labels.get("alertname") == alertname
                and all(p.labels.get(k) == v for k, v in labels.items())
            ]

    async def wait(self, alertname: str, status: str, after: float, timeout: float, **labels: str) -> Posted:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while not (found := self.seen(alertname, status, after, **labels)):
            if time.monotonic() > deadline:
                with self.lock:
                    posted = [(round(p.at - after, 1), p.status, p.labels.get("alertname")) for p in self.posted]
                raise AssertionError(f"{alertname} not posted {status} within {timeout:.0f} s; posted: {posted}")
            await asyncio.sleep(0.2)
        return found[0]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_blocking(self, alertname: str, status: str, after: float, timeout: float, **labels: str) -> Posted:
        """`wait`, for a test without an event loop."""
        return asyncio.run(self.wait(alertname, status, after, timeout, **labels))
