"""Webhooks on the real stack: a pending delivery outlives the replica that made it (the CQL store's
outbox, taken over by another replica once its lease runs out, with the same id), and a slow
receiver delays no other receiver's deliveries."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import signal
import threading
import time

from tests.integration.faults import report
from tests.integration.test_live import Phone, create_link, stop
from tracking_service.webhooks import SIGNATURE_HEADER, verify


class Receiver(http.server.ThreadingHTTPServer):
    """A webhook receiver on loopback that answers `status` after `delay_s`; keeps what it got."""

    def __init__(self, status: int = 204, delay_s: float = 0.0) -> None:
        self.status, self.delay_s = status, delay_s
        self.deliveries: list[tuple[float, int, dict]] = []  # (arrival, status answered, body)
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                arrived = time.monotonic()
                body = self.rfile.read(int(self.headers["content-length"]))
                status, delay = receiver.status, receiver.delay_s
                with receiver.lock:
                    receiver.deliveries.append((arrived, status, {"raw": body, "sig": self.headers[SIGNATURE_HEADER]}))
                time.sleep(delay)
                try:
                    self.send_response(status)
                    self.end_headers()
                except OSError:
                    pass  # the replica gave up waiting

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.daemon_threads = True
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/runtrack"

    def events(self, secret: str) -> list[tuple[float, int, dict]]:
        with self.lock:
            got = list(self.deliveries)
        out = []
        for arrived, status, d in got:
            assert verify(secret, d["raw"], d["sig"]), "signed with the link's secret"
            out.append((arrived, status, json.loads(d["raw"])))
        return out


async def until(check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def replicas_logging(stack, needle: str) -> list[int]:
    """The tracking replicas (ports) whose log holds `needle`."""
    ports = []
    for f in stack.spec.logs.glob("tracking-*.log"):
        if needle in f.read_text(errors="replace"):
            ports.append(int(f.stem.rsplit("-", 1)[1]))
    return ports


async def test_a_pending_delivery_survives_the_replica_that_made_it(stack, channel, run_id):
    receiver = Receiver(status=503)  # down for now
    victim = None
    try:
        phone = Phone(channel, run_id)
        await phone.started()
        link = await create_link(channel, run_id, webhook_url=receiver.url)
        await phone.finish()
        await stop(channel, run_id, phone.seq)
        first = await until(lambda: receiver.events(link.webhook_secret), 15, "the STOPPED delivery's first attempt")
        event_id = first[0][2]["id"]
        assert first[0][2]["state"] == "STOPPED"
        (victim,) = replicas_logging(stack, f"webhook run_id={run_id}")
        os.kill(stack.replica_pid("tracking", victim), signal.SIGKILL)
        killed_at = time.monotonic()
        receiver.status = 204  # the receiver is back; the replica that was trying is gone
        delivered = await until(
            lambda: [e for e in receiver.events(link.webhook_secret) if e[1] == 204],
            30,
            "the delivery taken over by another replica",
        )
        arrived, _, body = delivered[0]
        assert body["id"] == event_id and body["state"] == "STOPPED" and body["run_id"] == run_id
        takers = replicas_logging(stack, f"webhook taken over run_id={run_id}")
        assert takers and victim not in takers, takers
        # Once answered it leaves the outbox: no further attempt.
        await asyncio.sleep(3)
        assert len([e for e in receiver.events(link.webhook_secret) if e[1] == 204]) == 1
        report(stack, "webhook_outbox_takeover", seconds_after_kill=round(arrived - killed_at, 2))
    finally:
        receiver.shutdown()
        if victim is not None:
            await asyncio.to_thread(stack.start_replica, "tracking", victim)
            await asyncio.to_thread(stack.wait_healthy, stack.replica_ports())


async def test_a_slow_receiver_delays_no_other_receivers_delivery(stack, channel, run_id):
    slow, quick = Receiver(delay_s=20), Receiver()
    try:
        phone = Phone(channel, run_id)
        await phone.started()
        for _ in range(12):
            await create_link(channel, run_id, webhook_url=slow.url)
        link = await create_link(channel, run_id, webhook_url=quick.url)
        await phone.finish()
        stopped = time.monotonic()
        await stop(channel, run_id, phone.seq)
        got = await until(lambda: quick.events(link.webhook_secret), 10, "the quick receiver's delivery")
        waited = got[0][0] - stopped
        # The slow one holds at most its own share of deliveries at once, each until its timeout.
        with slow.lock:
            held = len(slow.deliveries)
        assert waited < 3, waited
        assert 1 <= held <= 2, held
        # Those waiting their turn stay their replica's (the lease renewed while they wait): after
        # several leases' time none was taken over by another replica and sent twice.
        await asyncio.sleep(7)
        assert replicas_logging(stack, f"webhook taken over run_id={run_id}") == []
        with slow.lock:
            ids = [json.loads(d["raw"])["id"] for _, _, d in slow.deliveries]
        assert len(ids) == len(set(ids)) >= 3, ids
        report(stack, "webhook_slow_receiver", quick_delivery_s=round(waited, 2), slow_at_once=held)
    finally:
        slow.shutdown()
        quick.shutdown()
