"""The alerts of deploy/prometheus/, fired for real: Prometheus and Alertmanager (Debian's, devstack/
monitoring.py) run on loopback beside the test stack, scrape its replicas and Envoy every second and
load the project's rule files with every window and `for:` divided by FACTOR (5m -> 10 s, 1h -> 2 min).
Each test injects a fault under traffic through Envoy, waits for the alert at a webhook receiver of its
own (what Alertmanager posts), ends the fault and waits for the same alert posted as resolved.

Each alert's time to fire (from the fault's start) and to resolve (from the fault's end) is printed and
appended to .dev/logs/test/faults.jsonl; the tests assert the bounds below, generous for a busy machine.
Envoy's own alerts are raised on Envoys of the tests' own beside the stack's, scraped too: one near its
heap limit, one serving a certificate about to expire. Alerts no fault of the test stack can raise
(kube-state-metrics' ReplicasNotReady and HPAAtMaximum) are not here: docs/slos.md says why."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from bench.sampling import with_descendants
from devstack import procs, tls
from devstack.monitoring import Monitoring, parse_duration
from edge.config import Tls
from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from runtrack_common.identity import CALLER_HEADER
from tests.alert_receiver import Receiver
from tests.integration import test_overload as overload
from tests.integration.faults import new_run, overview, paced, report

# The rules' windows divided by this: a 2-minute `for:` holds 4 s, the shortest range (2m) 4 scrapes.
FACTOR = 30
# Seconds from a fault's start to the alert at the receiver, and from its end to the resolution: the
# shortened `for:` and windows, a scrape and an evaluation a second, Alertmanager's 1 s group wait, and
# room for a machine running other stacks.
FIRE_WITHIN_S = 90.0
RESOLVE_WITHIN_S = 120.0
# How long a fault is held once its alert fired: the alert must still fire at its end.
HOLD_S = 8.0
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def monitoring(stack, receiver):
    mon = Monitoring(stack, receiver.url, factor=FACTOR, scrape_interval_s=1.0)
    mon.up()
    yield mon
    mon.down()


async def quiet(monitoring: Monitoring, alerts: set[str] | dict[str, dict[str, str]], timeout: float = 120.0) -> None:  # noqa: ASYNC109
    """Until every target is scraped and none of `alerts` (names, or names with the labels an alert must
    carry: an objective's other window pairs may still fire) is pending or firing in Prometheus (a
    fault of an earlier test has resolved): the next fault's alert is its own."""
    wanted = alerts if isinstance(alerts, dict) else {key: {} for key in alerts}
    deadline = time.monotonic() + timeout
    while True:
        active = sorted(
            {
                a["labels"]["alertname"]
                for a in await asyncio.to_thread(monitoring.alerts)
                if a["labels"]["alertname"] in wanted
                and all(a["labels"].get(k) == v for k, v in wanted[a["labels"]["alertname"]].items())
            }
        )
        scraped = await asyncio.to_thread(monitoring.all_targets_scraped)
        if not active and scraped:
            return
        assert time.monotonic() < deadline, f"still active before the fault: {active}; all targets up: {scraped}"
        await asyncio.sleep(0.5)


@dataclass
class Measured:
    alert: str
    fired_s: float | None = None  # from the fault's start
    resolved_s: float | None = None  # from the fault's end
    resolved_during_fault: bool = False

    def figures(self) -> dict[str, Any]:
        def rounded(x: float | None) -> float | None:
            return None if x is None else round(x, 1)

        return {
            "fired_after_s": rounded(self.fired_s),
            "resolved_after_fault_end_s": rounded(self.resolved_s),
            "resolved_during_fault": self.resolved_during_fault,
        }


@dataclass
class Fault:
    started: float  # Unix time
    ending: float  # Unix time: its end began (a store's restart)
    end_took_s: float


async def fire_and_resolve(
    receiver: Receiver,
    alerts: dict[str, dict[str, str]],
    start_fault: Callable[[], Any],
    end_fault: Callable[[], Any],
    observed: dict[str, dict[str, str]] | None = None,
) -> tuple[dict[str, Measured], Fault]:
    """Starts the fault, waits for each alert of `alerts` (name -> labels it must carry) posted firing,
    holds the fault HOLD_S more, ends it, waits for each posted resolved. The alerts of `observed` are
    measured if they are posted meanwhile, not waited for. Returns the figures and the fault's times."""
    observed = observed or {}
    measured = {name: Measured(name) for name in {**alerts, **observed}}
    started = time.monotonic()
    wall = time.time() - started  # Unix time = monotonic + wall
    await start_fault()
    try:
        for name, labels in alerts.items():
            left = FIRE_WITHIN_S - (time.monotonic() - started)
            measured[name].fired_s = (await receiver.wait(name, "firing", started, left, **labels)).at - started
        await asyncio.sleep(HOLD_S)
    finally:
        ending = time.monotonic()
        await end_fault()
        ended = time.monotonic()
    for name, labels in alerts.items():
        fired_at = started + (measured[name].fired_s or 0.0)
        measured[name].resolved_during_fault = any(
            p.at <= ending for p in receiver.seen(name, "resolved", fired_at, **labels)
        )
        resolved = await receiver.wait(name, "resolved", ending, RESOLVE_WITHIN_S, **labels)
        measured[name].resolved_s = resolved.at - ending
    for name, labels in observed.items():
        firing = receiver.seen(name, "firing", started, **labels)
        if firing:
            measured[name].fired_s = firing[0].at - started
            resolved = receiver.seen(name, "resolved", firing[0].at, **labels)
            measured[name].resolved_during_fault = any(p.at <= ending for p in resolved)
            after = [p for p in resolved if p.at > ending]
            measured[name].resolved_s = after[0].at - ending if after else None
    return measured, Fault(wall + started, wall + ending, ended - ending)


def unavailable_answered(monitoring: Monitoring, store: str, fault: Fault) -> dict[str, Any]:
    """When, from the fault's start, the replicas last answered a call UNAVAILABLE for `store` while the
    fault lasted (`runtrack_store_unavailable_total` alone, what the store's alert read before
    `runtrack_store_ready`), and for how long the replicas saw the store down."""
    window = f"{parse_duration('2m') // FACTOR}ms"
    rising = monitoring.query_range(
        f'sum(rate(runtrack_store_unavailable_total{{store="{store}"}}[{window}])) > 0', fault.started, fault.ending
    )
    down = monitoring.query_range(f'max(runtrack_store_ready{{store="{store}"}}) == 0', fault.started, fault.ending)
    return {
        "fault_lasted_s": round(fault.ending - fault.started, 1),
        "unavailable_answers_rising_s": [
            round(rising[0][0] - fault.started, 1),
            round(rising[-1][0] - fault.started, 1),
        ]
        if rising
        else None,
        "no_replica_reaching_store_s": [round(down[0][0] - fault.started, 1), round(down[-1][0] - fault.started, 1)]
        if down
        else None,
    }


def figures(measured: dict[str, Measured]) -> dict[str, Any]:
    return {name: m.figures() for name, m in measured.items()}


def held(measured: dict[str, Measured], alerts: dict[str, dict[str, str]]) -> list[str]:
    """The alerts of `alerts` Alertmanager posted as resolved while their fault still lasted."""
    return [name for name in alerts if measured[name].resolved_during_fault]


# ---- traffic -----------------------------------------------------------------------------------------


@asynccontextmanager
async def phones(channel, n: int, interval_s: float, points: int = 2000) -> AsyncIterator[list]:
    """`n` runs recorded through Envoy, a point every `interval_s` each, resuming after every failure,
    until the block ends (then cancelled)."""
    runs = [new_run(channel, points) for _ in range(n)]
    uploads = [asyncio.create_task(r.upload(paced(pts, interval_s))) for r, pts in runs]
    try:
        yield runs
    finally:
        for task in uploads:
            task.cancel()
        await asyncio.gather(*uploads, return_exceptions=True)


@asynccontextmanager
async def paced_calls(call: Callable[[int], Awaitable[Any]], per_s: float) -> AsyncIterator[dict[str, int]]:
    """`call(i)` `per_s` times a second, each on its own, until the block ends; yields the count of each status."""
    codes: dict[str, int] = {}
    calls: set[asyncio.Task[None]] = set()

    async def one(i: int) -> None:
        try:
            await call(i)
            code = "OK"
        except grpc.aio.AioRpcError as err:
            code = err.code().name
        codes[code] = codes.get(code, 0) + 1

    async def pace() -> None:
        i = 0
        while True:
            task = asyncio.create_task(one(i))
            calls.add(task)
            task.add_done_callback(calls.discard)
            i += 1
            await asyncio.sleep(1 / per_s)

    pacer = asyncio.create_task(pace())
    try:
        yield codes
    finally:
        pacer.cancel()
        await asyncio.gather(pacer, *calls, return_exceptions=True)


def stop_runs(channel, per_s: float, deadline_s: float = 2.0) -> AbstractAsyncContextManager[dict[str, int]]:
    """StopRun of a new run `per_s` times a second through Envoy, each given `deadline_s`."""
    stub = summary_pb2_grpc.SummaryServiceStub(channel)
    return paced_calls(
        lambda i: stub.StopRun(
            summary_pb2.StopRunRequest(run_id=str(uuid.uuid4()), overview=overview(i)), timeout=deadline_s
        ),
        per_s,
    )


def get_runs(
    channel, run_id: str, per_s: float, deadline_s: float = 2.0
) -> AbstractAsyncContextManager[dict[str, int]]:
    """The dashboard reading run `run_id` (GetRun) `per_s` times a second through Envoy, each given `deadline_s`."""
    stub = summary_pb2_grpc.SummaryServiceStub(channel)
    return paced_calls(lambda i: stub.GetRun(summary_pb2.GetRunRequest(run_id=run_id), timeout=deadline_s), per_s)


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


# ---- the faults --------------------------------------------------------------------------------------


async def test_the_cql_node_stopped_fires_cql_store_unreachable_and_it_resolves_once_it_is_back(
    stack, channel, monitoring, receiver
):
    ns = {"namespace": monitoring.namespace}
    wanted = {"CQLStoreUnreachable": ns}
    observed = {"StoreRetriesRising": ns, "PointsDurableBudgetBurn": ns | {"long_window": "1h"}}
    await quiet(monitoring, set(wanted))

    async def stop() -> None:
        await asyncio.to_thread(stack.cql.stop)

    async def start() -> None:
        await asyncio.to_thread(stack.cql.start)
        await asyncio.to_thread(stack.cql.wait_ready)

    async with phones(channel, 6, 0.1):
        await asyncio.sleep(2.0)
        measured, fault = await fire_and_resolve(receiver, wanted, stop, start, observed)
    await asyncio.to_thread(stack.wait_healthy, stack.replica_ports())
    seen = await asyncio.to_thread(unavailable_answered, monitoring, "cql", fault)
    report(stack, "alerts_cql_node_stopped", node_restart_s=round(fault.end_took_s, 1), **seen, **figures(measured))
    assert not held(measured, wanted), "resolved while the node was still down"


async def test_postgresql_stalled_fires_postgresql_unreachable_and_the_dashboards_objective(
    stack, channel, monitoring, receiver
):
    """PostgreSQL SIGSTOPped, its backends too (connected, silent) under StopRun calls and the dashboard's
    GetRun through Envoy, each given 10 s: a replica's pool fills with stuck calls, the next wait for a
    connection and are answered UNAVAILABLE; the replicas turn NOT_SERVING and Envoy answers instead.
    The dashboard reads' objective pages; the StopRun objective's page is measured when it is posted."""
    ns = {"namespace": monitoring.namespace}
    wanted = {"PostgreSQLUnreachable": ns, "DashboardReadsBudgetBurn": ns | {"long_window": "1h"}}
    observed = {"StopRunBudgetBurn": ns | {"long_window": "1h"}}
    read = str(uuid.uuid4())
    await summary_pb2_grpc.SummaryServiceStub(channel).StopRun(
        summary_pb2.StopRunRequest(run_id=read, overview=overview(0)), timeout=10
    )
    await quiet(monitoring, wanted | observed)
    stalled: list[int] = []

    async def stall() -> None:
        pid = stack.pg.pid()
        assert pid, "PostgreSQL does not run"
        stalled.extend(with_descendants([pid]))  # the postmaster and its backends
        signal_all(stalled, signal.SIGSTOP)

    async def resume() -> None:
        signal_all(stalled, signal.SIGCONT)

    async with (
        stop_runs(channel, per_s=4, deadline_s=10.0) as codes,
        get_runs(channel, read, per_s=4, deadline_s=10.0) as reads,
    ):
        await asyncio.sleep(3.0)  # the objectives' windows see good calls first
        measured, fault = await fire_and_resolve(receiver, wanted, stall, resume, observed)
    await asyncio.to_thread(stack.wait_healthy, stack.replica_ports())
    seen = await asyncio.to_thread(unavailable_answered, monitoring, "postgresql", fault)
    # While no replica reached PostgreSQL, Envoy answered the calls itself: the objective counts those
    # answers (its error ratio stays near 1), it does not go blank for want of replica events. Read once
    # the ratio's window (5m shortened) holds the fault alone.
    down = seen["no_replica_reaching_store_s"]
    assert down, f"the replicas never saw PostgreSQL down: {seen}"
    window_s = parse_duration("5m") / 1000 / FACTOR
    ratio = await asyncio.to_thread(
        monitoring.query_range,
        'slo:sli_error:ratio_rate5m{slo="stop-run"}',
        fault.started + max(down[0] + 2, window_s),
        fault.started + down[1],
    )
    report(
        stack,
        "alerts_postgresql_stalled",
        stop_runs=codes,
        get_runs=reads,
        stop_run_error_ratio=ratio[-5:],
        **seen,
        **figures(measured),
    )
    assert not held(measured, wanted), "resolved while PostgreSQL was still stalled"
    assert len(ratio) >= 3 and all(v >= 0.9 for _t, v in ratio), f"the StopRun objective while Envoy answered: {ratio}"


async def test_summary_replicas_sigkilled_fire_service_down_and_replica_down(stack, channel, monitoring, receiver):
    ns = {"namespace": monitoring.namespace}
    ports = list(stack.replica_ports()["summary"])
    wanted = {
        "ServiceDown": ns | {"component": "summary"},
        "ReplicaDown": ns | {"component": "summary", "pod": f"summary-{ports[0]}"},
    }
    await quiet(monitoring, set(wanted))

    async def kill() -> None:
        for port in ports:
            os.kill(stack.replica_pid("summary", port), signal.SIGKILL)

    async def restart() -> None:
        for port in ports:
            await asyncio.to_thread(stack.wait_stopped, "summary", port)
            await asyncio.to_thread(stack.start_replica, "summary", port)
        await asyncio.to_thread(stack.wait_healthy, stack.replica_ports())

    async with stop_runs(channel, per_s=2):
        measured, fault = await fire_and_resolve(receiver, wanted, kill, restart)
    report(stack, "alerts_summary_replicas_killed", replicas_restart_s=round(fault.end_took_s, 1), **figures(measured))
    assert not held(measured, wanted), "resolved while the replicas were dead"


async def test_one_runner_flooding_streams_fires_streams_shed(stack, channel, monitoring, receiver):
    """One runner opens many RecordTrack streams at once; a tracking replica with a stream limit (the
    chart's TRACK_SHED_ABOVE_STREAMS) sheds the newest, which resume through Envoy, again and again
    while the flood lasts."""
    ns = {"namespace": monitoring.namespace}
    wanted = {"StreamsShed": ns}
    await quiet(monitoring, set(wanted))
    limited = await asyncio.to_thread(stack.add_replica, "tracking", {"TRACK_SHED_ABOVE_STREAMS": "4"})
    flood: list[Any] = []
    try:
        await asyncio.to_thread(monitoring.write_targets)
        await asyncio.to_thread(monitoring.wait_scraped)

        async def start() -> None:
            flood.append(phones(channel, 30, 0.2))
            await flood[0].__aenter__()

        async def end() -> None:
            await flood[0].__aexit__(None, None, None)

        measured, _ = await fire_and_resolve(receiver, wanted, start, end)
    finally:
        await asyncio.to_thread(stack.retire_replica, "tracking", limited)
        await asyncio.to_thread(monitoring.write_targets)
    report(stack, "alerts_one_runner_flooding", **figures(measured))
    assert not held(measured, wanted), "resolved while the flood went on"


async def test_a_replica_holding_watchers_starved_fires_live_following_budget_burn(
    stack, channel, user_id, monitoring, receiver
):
    """Runs recorded through Envoy, each followed by its runner on a third tracking replica (straight to
    it, as Envoy would route a watcher there). That replica is starved: stopped 6 s, let run 3 s, again
    and again while the fault lasts, as a node short of CPU would be. The other replicas keep storing
    the points; the starved one hands each burst to its watchers seconds after it arrived, and the
    live-following objective's page fires; let run again, it resolves."""
    ns = {"namespace": monitoring.namespace}
    wanted = {"LiveFollowingBudgetBurn": ns | {"long_window": "1h"}}
    await quiet(monitoring, wanted)
    async with phones(channel, 6, 0.2) as runs:  # their streams open on the stack's two replicas
        watched = await asyncio.to_thread(stack.add_replica, "tracking")
        pid = stack.replica_pid("tracking", watched)
        received: dict[str, int] = {}

        async def follow(ch: grpc.aio.Channel, run_id: str) -> None:
            call = tracking_pb2_grpc.TrackingServiceStub(ch).WatchRun(
                tracking_pb2.WatchRunRequest(run_id=run_id), metadata=((CALLER_HEADER, user_id),)
            )
            async for event in call:
                received[run_id] = received.get(run_id, 0) + len(event.points.points)

        starving: list[asyncio.Task[None]] = []

        async def starve() -> None:
            while True:
                os.kill(pid, signal.SIGSTOP)
                await asyncio.sleep(6.0)
                os.kill(pid, signal.SIGCONT)
                await asyncio.sleep(3.0)

        async def start() -> None:
            starving.append(asyncio.create_task(starve()))

        async def end() -> None:
            starving[0].cancel()
            await asyncio.gather(starving[0], return_exceptions=True)
            os.kill(pid, signal.SIGCONT)

        async with grpc.aio.insecure_channel(f"127.0.0.1:{watched}") as direct:
            watchers = [asyncio.create_task(follow(direct, r.run_id)) for r, _ in runs]
            try:
                await asyncio.to_thread(monitoring.write_targets)
                await asyncio.to_thread(monitoring.wait_scraped)
                await asyncio.to_thread(
                    procs.wait_until, "points at every watcher", lambda: len(received) == len(runs), 30
                )
                before = dict(received)
                measured, _ = await fire_and_resolve(receiver, wanted, start, end)
            finally:
                os.kill(pid, signal.SIGCONT)
                for task in watchers:
                    task.cancel()
                await asyncio.gather(*watchers, return_exceptions=True)
                await asyncio.to_thread(stack.retire_replica, "tracking", watched)
                await asyncio.to_thread(monitoring.write_targets)
    report(
        stack,
        "alerts_watchers_replica_starved",
        points_to_watchers_meanwhile=sum(received.values()) - sum(before.values()),
        **figures(measured),
    )
    assert all(received[r] > before[r] for r in before), "the starved replica's watchers got nothing meanwhile"
    assert not held(measured, wanted), "resolved while the replica was still starved"


# ---- Envoy's own alerts, on Envoys of the test's own (scraped beside the stack's) ------------------------


async def test_envoy_near_its_heap_limit_fires_envoy_overload_action_active(stack, monitoring, receiver, token):
    """A third Envoy whose heap limit is 64 MiB above what it holds idle, filled by imported files it must
    hold whole (never finished, as in tests/integration/test_overload.py) until it sheds memory and stops
    keep-alive: the ticket fires while it stays there, and resolves once the files are given up."""
    pod = "envoy-heap"
    pid, _address, admin = await asyncio.to_thread(overload._start, stack, 11)
    baseline = overload._allocated(admin)
    procs.stop(pid, timeout=10)
    pid, address, admin = await asyncio.to_thread(overload._start, stack, 11, max_heap_bytes=baseline + 64 * MiB)
    bodies: list = []
    try:
        monitoring.scrape_envoy(pod, admin)
        wanted = {"EnvoyOverloadActionActive": {"namespace": monitoring.namespace, "pod": pod, "severity": "ticket"}}
        await quiet(monitoring, set(wanted))

        def fill() -> None:
            bodies.extend(overload._open_body(address, token) for _ in range(12))
            for step in range(12 * 15):  # 1 MiB at a time; past keep-alive's 92 %, short of refusing (95 %)
                overload._feed(bodies[step % len(bodies)], MiB)
                time.sleep(0.6 if overload._pressure(admin) >= 85 else 0.05)
                if overload._action(admin, "disable_http_keepalive") == 1:
                    return
            raise AssertionError(f"the heap reached {overload._pressure(admin)} % of its limit only")

        async def release() -> None:
            for s in bodies:
                s.close()

        measured, _fault = await fire_and_resolve(receiver, wanted, lambda: asyncio.to_thread(fill), release)
        shares = {a: overload._action(admin, a) for a in overload.ACTIONS}
        report(stack, "alerts_envoy_overload", actions_after=shares, **figures(measured))
        assert not held(measured, wanted), "resolved while the heap was still full"
    finally:
        for s in bodies:
            s.close()
        monitoring.scrape_envoy(pod, None)
        procs.stop(pid, timeout=10)


async def test_a_certificate_about_to_expire_fires_certificate_expiring_soon_and_its_rotation_resolves_it(
    stack, monitoring, receiver
):
    """A third Envoy serving TLS from a directory of its own: its certificate rotated (SDS, no restart) to
    one that expires in a day fires the page (under 2 days) and the ticket (under 14); rotated again to a
    ten-year one, both resolve."""
    pod = "envoy-expiring"
    directory = stack.spec.state / "tls-expiring"
    tls.ensure(directory)
    files = tls.rotate(directory)  # ten years, as every certificate of the stacks
    layout = dataclasses.replace(
        stack.spec.layout,
        listen_port=stack.spec.envoy_port + 12,
        admin_port=stack.spec.envoy_admin_port + 12,
        tls=Tls(stack.spec.envoy_tls_port + 12, str(files.sds), str(files.sds.parent)),
    )
    pid = await asyncio.to_thread(stack.start_envoy, layout, "envoy-expiring")
    try:
        await asyncio.to_thread(
            procs.wait_until, "Envoy's TLS listener", lambda: procs.port_open(stack.spec.envoy_tls_port + 12), 20
        )
        monitoring.scrape_envoy(pod, layout.admin_port)
        ns = {"namespace": monitoring.namespace, "pod": pod}
        wanted = {"CertificateExpiringSoon": ns | {"severity": "page"}}
        await quiet(monitoring, set(wanted))
        started = time.monotonic()
        measured, _fault = await fire_and_resolve(
            receiver,
            wanted,
            lambda: asyncio.to_thread(tls.rotate, directory, 1.0),
            lambda: asyncio.to_thread(tls.rotate, directory),
        )
        ticket = receiver.seen("CertificateExpiringSoon", "firing", started, **ns, severity="ticket")
        report(stack, "alerts_certificate_expiring", ticket_fired=bool(ticket), **figures(measured))
        assert ticket, "the 14-day ticket did not fire for a certificate expiring in a day"
        assert not held(measured, wanted), "resolved while the certificate still expired in a day"
    finally:
        monitoring.scrape_envoy(pod, None)
        procs.stop(pid, timeout=10)
