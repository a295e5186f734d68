"""The phone's library (clients/kotlin) on a bad network: `scripts/phone record` records runs through
Toxiproxy (a real TCP proxy, devstack/toxiproxy.py) in front of the test stack's Envoy over TLS, one
proxy per phone, each with its fault, the phones at once:

- cut: the link cut for 30 s mid-run (the proxy disabled: connections closed, new ones refused);
- slow: 50 kbit/s (Toxiproxy counts whole KB/s: 48) with 800 ms of latency, the whole run;
- resets: every connection closed every 20 s;
- cut at stop: the link cut 5 s before STOP RUN, for 25 s (past it).

And one phone SIGKILLed mid-run and started again on the same queue file. Each run must end with
every point stored exactly once (seq 1..N, read back through Envoy) and the run on the dashboard with
the overview the phone computed, equal to the server's own analysis of the trail within 0.5 %."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack import procs
from devstack.paths import ROOT
from devstack.phone import classpath
from devstack.toxiproxy import Proxy, Toxiproxy
from runtrack.v1 import summary_pb2, summary_pb2_grpc
from tests.helpers import token_channel
from tests.integration.faults import report, stored_trail

PHONE = str(ROOT / "scripts" / "phone")
RATE_HZ = 2.0  # fixes recorded a second: a generated minute is recorded in 30 s
# The longest a phone may take: its run, the faults, a backoff capped at 30 s after a cut, the sync.
PHONE_TIMEOUT_S = 300.0


@pytest.fixture(scope="module", autouse=True)
def phone_built() -> None:
    """The Kotlin phone compiled before any phone starts: the faults are timed from a phone's start."""
    classpath()


@pytest.fixture(scope="module")
def toxiproxy(stack) -> Iterator[Toxiproxy]:
    server = Toxiproxy(stack.spec.state, stack.spec.logs / "toxiproxy.log", api_port=procs.free_port())
    server.start()
    yield server
    server.stop()


@dataclass
class Phone:
    name: str
    user: str
    minutes: float
    queue: Path
    endpoint: str
    log: Path
    ca: Path
    started: float = 0.0
    proc: asyncio.subprocess.Process | None = None

    async def start(self, stack) -> None:
        self.started = time.monotonic()
        argv = [PHONE, "record", "--minutes", str(self.minutes), "--rate", str(RATE_HZ)]
        argv += [
            "--endpoint",
            self.endpoint,
            "--ca",
            str(stack.tls_ca),
            "--user",
            self.user,
            "--queue",
            str(self.queue),
        ]
        with self.log.open("ab") as log:  # what the phone prints as it goes: the queue and the cursor
            self.proc = await asyncio.create_subprocess_exec(
                *argv, stdout=subprocess.PIPE, stderr=log, env=dict(os.environ, RUNTRACK_STACK="test")
            )

    def at(self, seconds: float) -> Awaitable[None]:
        """Until `seconds` after the phone started."""
        return asyncio.sleep(max(0.0, self.started + seconds - time.monotonic()))

    async def finish(self) -> str:
        assert self.proc is not None
        out, _ = await asyncio.wait_for(self.proc.communicate(), PHONE_TIMEOUT_S)
        assert self.proc.returncode == 0, f"{self.name}: the phone exited {self.proc.returncode}"
        return out.decode().split()[-1]

    @property
    def points(self) -> int:
        return round(self.minutes * 60)

    def printed(self) -> str:
        return self.log.read_text()


async def check_run(stack, phone: Phone, run_id: str) -> dict[str, float]:
    """Every point stored once; the run on the dashboard with the phone's overview, which agrees with the
    server's analysis of the stored trail."""
    async with token_channel(stack.envoy_address, stack.issuer.token(phone.user)) as ch:
        trail = await stored_trail(ch, run_id)
        assert [p.seq for p in trail] == list(range(1, phone.points + 1)), f"{phone.name}: not every point once"
        summary = summary_pb2_grpc.SummaryServiceStub(ch)
        deadline = time.monotonic() + 30
        while not (run := await summary.GetRun(summary_pb2.GetRunRequest(run_id=run_id))).HasField("analysis"):
            assert time.monotonic() < deadline, f"{phone.name}: no analysis 30 s after the trail was complete"
            await asyncio.sleep(0.5)
    ov, an = run.overview, run.analysis
    assert ov.point_count == an.point_count == phone.points
    assert ov.distance_m > 100 and abs(ov.distance_m - an.distance_m) <= 0.005 * an.distance_m, (ov, an)
    assert abs(ov.elevation_gain_m - an.elevation_gain_m) <= max(0.005 * an.elevation_gain_m, 0.01), (ov, an)
    return {
        "received_by_server": received(stack, run_id),
        "distance_m": round(ov.distance_m, 1),
        "server_distance_m": round(an.distance_m, 1),
    }


def received(stack, run_id: str) -> int:
    """Points the tracking replicas received for the run over all its streams, sent twice included (each
    stream's end is logged with its count)."""
    found = re.compile(rf"run_id={run_id} received=(\d+)")
    return sum(
        int(m.group(1)) for log in stack.spec.logs.glob("tracking-*.log") for m in found.finditer(log.read_text())
    )


async def cut_mid_run(proxy: Proxy, phone: Phone) -> None:
    await phone.at(8)
    proxy.cut()
    await phone.at(38)
    proxy.restore()


async def slow_link(proxy: Proxy, phone: Phone) -> None:
    proxy.slow(kbit_s=50, latency_ms=800)
    # The link is slow indeed: a TLS handshake through it waits at least the latency.
    started = time.monotonic()
    context = ssl.create_default_context(cafile=str(phone.ca))
    with (
        socket.create_connection((proxy.listen_host, proxy.listen_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost"),
    ):
        pass
    assert time.monotonic() - started >= 0.8


async def resets(proxy: Proxy, phone: Phone) -> None:
    with proxy.resets_every(20.0):
        await phone.at(65)


async def cut_at_stop(proxy: Proxy, phone: Phone) -> None:
    # A generated minute at RATE_HZ: STOP RUN about 30 s in.
    await phone.at(25)
    proxy.cut()
    await phone.at(50)
    proxy.restore()


# name -> minutes of route (recorded at RATE_HZ), the fault, how the phone must have felt it: it backed
# off (it prints each state it is in, once a second), or it connected again after each reset (grpc-java
# replays a client stream the server has not answered yet on a new connection by itself: a short reset
# need not surface as an error).
FAULTS: dict[str, tuple[float, Callable[[Proxy, Phone], Awaitable[None]], str]] = {
    "cut": (1.5, cut_mid_run, "backed off"),  # 45 s of recording, the cut from 8 s to 38 s
    "slow": (1.0, slow_link, ""),
    "resets": (2.0, resets, "connected again"),  # 60 s of recording: resets at 20 s and 40 s (and 60 s)
    "cut-at-stop": (1.0, cut_at_stop, "backed off"),
}


def connections(toxiproxy: Toxiproxy, proxy: Proxy) -> int:
    """Client connections the proxy accepted (its log)."""
    lines = (json.loads(line) for line in toxiproxy.log.read_text().splitlines() if line.startswith("{"))
    return sum(1 for e in lines if e.get("listen") == proxy.listen and e.get("message") == "Accepted client")


async def test_phones_through_cuts_a_slow_link_and_resets_store_every_point_once(stack, toxiproxy, tmp_path) -> None:
    phones: list[tuple[Phone, Proxy, Callable[[Proxy, Phone], Awaitable[None]]]] = []
    for name, (minutes, fault, _) in FAULTS.items():
        port = procs.free_port()
        proxy = toxiproxy.create_proxy(f"phone-{name}", port, stack.envoy_tls_address)
        phone = Phone(
            name,
            f"runner-phone-{name}",
            minutes,
            tmp_path / f"{name}.db",
            f"127.0.0.1:{port}",
            tmp_path / f"{name}.log",
            stack.tls_ca,
        )
        phones.append((phone, proxy, fault))

    async def one(phone: Phone, proxy: Proxy, fault: Callable[[Proxy, Phone], Awaitable[None]]) -> dict[str, float]:
        await phone.start(stack)
        try:
            await fault(proxy, phone)
            run_id = await phone.finish()
        finally:
            proxy.restore()
            if phone.proc and phone.proc.returncode is None:
                phone.proc.kill()
        took = time.monotonic() - phone.started
        return {"seconds": round(took, 1), **await check_run(stack, phone, run_id)}

    results = await asyncio.gather(*(one(*p) for p in phones))
    for (phone, proxy, _), figures in zip(phones, results, strict=True):
        felt = FAULTS[phone.name][2]
        accepted = connections(toxiproxy, proxy)
        report(stack, f"phone_{phone.name}", points=phone.points, connections=accepted, **figures)
        if felt == "backed off":
            assert "backing_off (UNAVAILABLE)" in phone.printed(), phone.printed()[-3000:]
        if felt == "connected again":
            assert accepted >= 3, accepted


async def test_a_phone_killed_mid_run_and_started_again_loses_nothing(stack, tmp_path) -> None:
    """SIGKILL 12 s in (about 24 fixes recorded, some not yet durable); the same command again on the
    same queue takes the run up, records the rest, stops it; every point once."""
    phone = Phone(
        "killed",
        "runner-phone-killed",
        1.0,
        tmp_path / "killed.db",
        stack.envoy_tls_address,
        tmp_path / "killed.log",
        stack.tls_ca,
    )
    await phone.start(stack)
    await phone.at(12)
    assert phone.proc is not None and phone.proc.returncode is None
    phone.proc.send_signal(signal.SIGKILL)
    await phone.proc.wait()
    await phone.start(stack)
    run_id = await phone.finish()
    taken_up = re.search(rf"taking up run {run_id}: (\d+) of 60 fixes recorded", phone.printed())
    assert taken_up and 10 <= int(taken_up.group(1)) < 60, phone.printed()[-3000:]
    figures = await check_run(stack, phone, run_id)
    report(stack, "phone_killed", points=phone.points, **figures)
