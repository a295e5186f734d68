"""The stores as clusters, a stack of its own: three CQL nodes on 127.0.0.1-3 (RF 3, LOCAL_QUORUM),
and PostgreSQL as two nodes (a primary and a synchronous standby, failed over by Patroni).

Under live streams from many phones (paced, through Envoy, with the reference client): a node
SIGKILLed and started again, and a rolling restart of all three (each node stopped gracefully and started
again in turn, which covers a single node's graceful restart). Each time:
no failed call, no point lost or stored twice (every trail read back), the tracking replicas stay
SERVING, and the node that was down catches up by itself (read from it alone, the other two down).

PostgreSQL: its primary SIGKILLed (Patroni and postgres) under 200 runners' StopRun, UpdateRun and
ImportRun calls: every call answered OK is there afterwards, the others answered UNAVAILABLE with
RetryInfo (and succeed with the reference client's retries), the dashboard reads again within 30 s,
and the old primary, started again, rejoins as a streaming standby by itself. The standby lost:
writes go on. Backups follow the primary across a switchover, and `scripts/dev restore --to TIME`
brings both nodes back as of a time before one (the primary and its synchronous standby).

And under many streams that do not resume (as ghz's): 300 at 1 Hz over 20 connections, through
Envoy to the two tracking replicas, a node lost 12 s in (SIGKILLed, or frozen as a machine that
dies without closing its connections): every stream ends OK with every point stored.
"""

import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from functools import partial

import grpc
import psycopg
import pytest
from cassandra import ConsistencyLevel
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import WhiteListRoundRobinPolicy
from cassandra.query import SimpleStatement
from google.api import httpbody_pb2
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from devstack.activity_files import gpx_file, synthetic_run
from devstack.paths import ROOT
from devstack.stack import Stack, cluster_test_spec, metrics_port
from devstack.stack import test_spec as one_node_spec
from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from runtrack_client import Backoff, error_details, retried
from tests.helpers import point, token_channel
from tests.integration.faults import SERVICE, new_run, paced, replica_status, report, stored_trail

PHONES = 12
POINTS = 60  # a point a second: a minute of running per phone


def record(name: str, **figures) -> None:
    """Into .dev/logs/test/faults.jsonl, beside the one-node fault tests' figures."""
    report(Stack(one_node_spec()), name, **figures)


@pytest.fixture(scope="module")
def cluster():
    started = time.monotonic()
    s = Stack(cluster_test_spec())
    try:
        s.up()
    except BaseException:
        s.down()
        raise
    s.started_in_s = time.monotonic() - started
    yield s
    if os.environ.get("RUNTRACK_KEEP_TEST_STACK") != "1":
        s.down()


@pytest.fixture
async def phone_channel(cluster):
    async with token_channel(cluster.envoy_address, cluster.issuer.token(f"runner-{uuid.uuid4().hex[:8]}")) as ch:
        yield ch


def node_session(node, consistency=ConsistencyLevel.ONE):
    """A driver session that talks to `node` only."""
    profile = ExecutionProfile(
        load_balancing_policy=WhiteListRoundRobinPolicy([node.address]), consistency_level=consistency
    )
    c = Cluster([node.address], port=node.native_port, execution_profiles={EXEC_PROFILE_DEFAULT: profile})
    return c, c.connect("runtrack")


def points_on(node, run_ids: list[str]) -> dict[str, int]:
    c, session = node_session(node)
    try:
        query = SimpleStatement(
            "SELECT count(*) FROM track_points WHERE run_id = %s", consistency_level=ConsistencyLevel.ONE
        )
        return {r: session.execute(query, (uuid.UUID(r),)).one()[0] for r in run_ids}
    finally:
        c.shutdown()


async def serving_watch(cluster, stop: asyncio.Event, seen: list[str]) -> None:
    """What the replicas report of themselves (a probe that times out while a JVM starts on the same
    two cores is slow, not NOT_SERVING) and what Envoy's health checks think of them."""
    while not stop.is_set():
        for port in cluster.replica_ports()["tracking"]:
            answer = await replica_status(port, SERVICE["tracking"])
            seen.append("SERVING (slow probe)" if answer == "DEADLINE_EXCEEDED" else answer)
        envoy = await asyncio.to_thread(cluster.host_health)
        seen += [f"envoy: {state}" for state in envoy["tracking"].values()]
        await asyncio.sleep(0.5)


async def under_live_streams(cluster, channel, fault) -> dict:
    """Runs `fault(cluster)` (blocking) while PHONES phones stream at 1 Hz; checks every trail."""
    runs = [new_run(channel, POINTS) for _ in range(PHONES)]
    uploads = [asyncio.create_task(r.upload(paced(pts, 1.0))) for r, pts in runs]
    stop, statuses = asyncio.Event(), []
    watch = asyncio.create_task(serving_watch(cluster, stop, statuses))
    await asyncio.sleep(5)
    started = time.monotonic()
    await asyncio.to_thread(fault, cluster)
    fault_s = time.monotonic() - started
    await asyncio.wait_for(asyncio.gather(*uploads), timeout=300)  # a failed call would raise here
    stop.set()
    await watch
    for recorder, pts in runs:
        trail = await stored_trail(channel, recorder.run_id)
        assert [p.seq for p in trail] == [p.seq for p in pts], "a point is missing or stored twice"
        assert list(trail) == pts
    not_serving = {state for state in statuses if state not in ("SERVING", "SERVING (slow probe)", "envoy: healthy")}
    assert not not_serving, f"a tracking replica was not SERVING: {sorted(set(statuses))}"
    return {
        "phones": PHONES,
        "points_sent": PHONES * POINTS,
        "points_lost": 0,
        "failed_calls": 0,
        "stream_retries": sum(r.stats.retries for r, _ in runs),
        "slow_health_probes": statuses.count("SERVING (slow probe)"),
        "fault_seconds": round(fault_s, 1),
        "run_ids": [r.run_id for r, _ in runs],
    }


def hints_held(node) -> list[str]:
    """The hint files a node keeps for a node that was down: deleted once delivered."""
    return sorted(p.name for p in (node.home / "data" / "hints").glob("*.hints"))


def assert_caught_up(cluster, node, run_ids: list[str]) -> float:
    """The others' hints for `node` delivered, then with the other two nodes down, `node` alone holds
    every point; seconds it took from the end of the fault."""
    others = [n for n in cluster.cql_nodes if n is not node]
    started = time.monotonic()
    while any(hints_held(other) for other in others):
        held = {other.address: hints_held(other) for other in others}
        assert time.monotonic() - started < 300, f"hints for {node.address} not delivered: {held}"
        time.sleep(1)
    for other in others:
        other.stop()
    try:
        reading = time.monotonic()
        while True:
            counts = points_on(node, run_ids)
            if all(n == POINTS for n in counts.values()):
                return time.monotonic() - started
            assert time.monotonic() - reading < 60, f"node {node.address} holds {counts}"
            time.sleep(2)
    finally:
        for other in others:  # one at a time, as an operator brings nodes back
            other.start()
            other.wait_ready()
        cluster.wait_healthy(cluster.replica_ports())


def test_the_cluster_has_three_nodes_and_the_keyspace_replicates_on_all_three(cluster):
    nodes = [p for p in cluster.processes() if p["kind"] == "cql-node"]
    assert [n["address"] for n in nodes] == [f"127.0.0.{i}:29042" for i in (1, 2, 3)]
    assert all(n["pid"] for n in nodes)
    c, session = node_session(cluster.cql)
    try:
        replication = session.execute(
            "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = 'runtrack'"
        ).one()[0]
        peers = session.execute("SELECT peer FROM system.peers").all()
    finally:
        c.shutdown()
    assert replication["class"].endswith("NetworkTopologyStrategy") and replication["datacenter1"] == "3"
    assert len(peers) == 2
    record("cql_cluster_started", seconds=round(cluster.started_in_s, 1))


async def test_a_node_killed_under_live_streams_loses_nothing_and_catches_up(cluster, phone_channel):
    victim = cluster.cql_nodes[2]

    def fault(c):
        victim.kill()
        time.sleep(10)  # live streams write on two nodes of three
        victim.start()
        victim.wait_ready()

    figures = await under_live_streams(cluster, phone_channel, fault)
    figures["catch_up_s"] = round(await asyncio.to_thread(assert_caught_up, cluster, victim, figures.pop("run_ids")), 1)
    record("cql_node_killed", **figures)


async def test_a_rolling_restart_of_all_three_nodes_loses_nothing(cluster, phone_channel):
    def fault(c):
        for node in c.cql_nodes:
            node.stop()
            node.start()
            node.wait_ready()
            time.sleep(3)  # gossip marks it up before the next one goes

    figures = await under_live_streams(cluster, phone_channel, fault)
    figures.pop("run_ids")
    record("cql_rolling_restart", **figures)


# ---- PostgreSQL as two nodes ----------------------------------------------------------------------
RUNNERS = 200
RUNNER_USERS = 10
GPX_TYPE = "application/gpx+xml"


def pg_node(cluster, name: str):
    return next(n for n in cluster.pg_cluster.nodes if n.name == name)


def kill_pg_node(cluster, node) -> None:
    """SIGKILLs a PostgreSQL node: its Patroni's process group, and its postmaster's (every backend
    with it; Patroni starts postgres in a session of its own)."""
    pgc = cluster.pg_cluster
    for pid in (pgc.patroni_pid(node), pgc.postgres_pid(node)):
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
    procs_gone = lambda: pgc.patroni_pid(node) is None and pgc.postgres_pid(node) is None  # noqa: E731
    deadline = time.monotonic() + 10
    while not procs_gone():
        assert time.monotonic() < deadline, f"{node.name} outlived SIGKILL"
        time.sleep(0.05)


def dev_status(cluster, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "devstack", "status", *args],
        cwd=ROOT,
        env=dict(os.environ, RUNTRACK_STACK=cluster.spec.name),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout


def stop_request(run_id: str, i: int) -> summary_pb2.StopRunRequest:
    start = 1_780_000_000 + i * 7200
    overview = summary_pb2.RunOverview(
        start_time=Timestamp(seconds=start), end_time=Timestamp(seconds=start + 1800), distance_m=5000 + i
    )
    return summary_pb2.StopRunRequest(run_id=run_id, overview=overview)


def stored_runs(cluster, run_ids: list[str]) -> dict[str, str]:
    """run_id -> name, as the primary (whichever node it is now) holds them."""
    with psycopg.connect(cluster.database_url) as conn:
        rows = conn.execute(
            "SELECT run_id::text, coalesce(name, '') FROM runs WHERE run_id = ANY(%s::uuid[])", (run_ids,)
        ).fetchall()
    return dict(rows)


def test_postgresql_runs_as_a_primary_and_a_synchronous_standby(cluster):
    pgc = cluster.pg_cluster
    assert pgc is not None and cluster.pg_nodes == 2
    p = cluster.spec.pg_port
    assert cluster.database_url == (
        f"postgresql://postgres@127.0.0.1:{p},127.0.0.1:{p + 1}/runtrack?target_session_attrs=read-write"
    )
    status = json.loads(dev_status(cluster, "--json"))
    primary = status["postgres"]["primary"]
    node = next(n for n in pgc.nodes if n.address == primary["address"])
    assert primary["pid"] == pgc.postgres_pid(node) and primary["pid"]
    assert sorted(m["role"] for m in status["postgres"]["members"]) == ["leader", "sync_standby"]
    assert {"cql-node", "postgresql", "patroni", "etcd", "envoy"} <= {p["kind"] for p in status["processes"]}
    assert f"PostgreSQL primary: {primary['address']} (pid {primary['pid']})" in dev_status(cluster)
    standby = next(n for n in pgc.nodes if n is not node)
    assert pgc.replication() == [{"application_name": standby.name, "state": "streaming", "sync_state": "sync"}]


async def test_the_standby_lost_writes_go_on(cluster, phone_channel):
    pgc = cluster.pg_cluster
    standby = next(n for n in pgc.nodes if n.name != pgc.primary()["name"])
    summary = summary_pb2_grpc.SummaryServiceStub(phone_channel)
    await asyncio.to_thread(kill_pg_node, cluster, standby)
    try:
        latencies, run_ids = [], []
        for i in range(10):
            run_id = str(uuid.uuid4())
            started = time.monotonic()
            await summary.StopRun(stop_request(run_id, i), timeout=15)  # no retry: each answers OK
            latencies.append(time.monotonic() - started)
            run_ids.append(run_id)
        assert set(await asyncio.to_thread(stored_runs, cluster, run_ids)) == set(run_ids)
    finally:
        await asyncio.to_thread(pgc.start_node, standby)
    started = time.monotonic()
    await asyncio.to_thread(pgc.wait_replicating, 120)
    record(
        "pg_standby_lost",
        stop_runs_ok=len(run_ids),
        first_stop_run_s=round(latencies[0], 2),
        slowest_stop_run_s=round(max(latencies), 2),
        standby_back_in_sync_s=round(time.monotonic() - started, 1),
    )


async def test_a_stalled_standby_is_released_and_writes_go_on(cluster, phone_channel):
    """The standby stalled (SIGSTOP: still connected, silent): commits wait for it until its Patroni,
    finding its PostgreSQL unresponsive, has it released from synchronous duty; then StopRun answers OK
    on the primary alone (Patroni will not fail over to a standby no longer synchronous, so nothing
    acknowledged can be lost), and the standby, resumed, is synchronous again."""
    pgc = cluster.pg_cluster
    standby = next(n for n in pgc.nodes if n.name != pgc.primary()["name"])
    summary = summary_pb2_grpc.SummaryServiceStub(phone_channel)
    stalled = os.getpgid(pgc.postgres_pid(standby))
    os.killpg(stalled, signal.SIGSTOP)
    try:
        run_ids, latencies = [str(uuid.uuid4()) for _ in range(5)], []
        for i, run_id in enumerate(run_ids):
            started = time.monotonic()
            await retried(lambda r=run_id, k=i: summary.StopRun(stop_request(r, k), timeout=15), Backoff())
            latencies.append(time.monotonic() - started)
        assert set(await asyncio.to_thread(stored_runs, cluster, run_ids)) == set(run_ids)
    finally:
        os.killpg(stalled, signal.SIGCONT)
    started = time.monotonic()
    await asyncio.to_thread(pgc.wait_replicating, 120)
    record(
        "pg_standby_stalled",
        stop_runs_ok=len(run_ids),
        first_stop_run_s=round(latencies[0], 2),
        slowest_stop_run_s=round(max(latencies), 2),
        standby_back_in_sync_s=round(time.monotonic() - started, 1),
    )


async def test_the_primary_killed_under_load_fails_over_and_keeps_every_acknowledged_write(cluster):
    pgc = cluster.pg_cluster
    old = pg_node(cluster, pgc.primary()["name"])
    acked_stops: set[str] = set()
    acked_names: dict[str, str] = {}
    acked_imports: set[str] = set()
    calls = {"ok": 0}
    failed: list[tuple[str, str, float | None, bool]] = []  # method, code, RetryInfo delay, retrying runner
    reads: list[tuple[float, bool]] = []
    stop = asyncio.Event()

    async def runner(k: int, channel) -> None:
        summary = summary_pb2_grpc.SummaryServiceStub(channel)
        retrying = k % 2 == 1  # half the runners retry as the reference client does, half do not

        async def call(method: str, fn):
            try:
                answer = await (retried(fn, Backoff(0.2, 2.0, 200)) if retrying else fn())
            except grpc.aio.AioRpcError as err:
                failed.append((method, err.code().name, error_details(err)[1], retrying))
                return None
            calls["ok"] += 1
            return answer

        i = 0
        await asyncio.sleep(random.uniform(0, 2))
        while not stop.is_set():
            i += 1
            run_id = str(uuid.uuid4())
            if await call("StopRun", partial(summary.StopRun, stop_request(run_id, i), timeout=20)):
                acked_stops.add(run_id)
                name = f"runner {k} run {i}"
                update = summary_pb2.UpdateRunRequest(
                    run=summary_pb2.Run(run_id=run_id, name=name), update_mask=FieldMask(paths=["name"])
                )
                if await call("UpdateRun", partial(summary.UpdateRun, update, timeout=20)):
                    acked_names[run_id] = name
            if k % 10 == 0:  # a runner in ten brings in a file too
                fixes = synthetic_run(20, seed=k * 1000 + i, start=dt.datetime(2026, 5, 1, 7, tzinfo=dt.UTC))
                body = httpbody_pb2.HttpBody(content_type=GPX_TYPE, data=gpx_file(fixes, name=f"import {k}-{i}"))
                imported = await call("ImportRun", partial(summary.ImportRun, body, timeout=30))
                if imported:
                    acked_imports.add(imported.run_id)
            await asyncio.sleep(random.uniform(1.0, 2.0))

    async def dashboard(channel, run_id: str) -> None:
        summary = summary_pb2_grpc.SummaryServiceStub(channel)
        while not stop.is_set():
            at = time.monotonic()
            try:
                await summary.GetRun(summary_pb2.GetRunRequest(run_id=run_id), timeout=2)
                await summary.ListRuns(summary_pb2.ListRunsRequest(user_id="me", page_size=5), timeout=2)
                reads.append((at, True))
            except grpc.aio.AioRpcError:
                reads.append((at, False))
            await asyncio.sleep(0.25)

    async with contextlib.AsyncExitStack() as stack:
        users = [f"pg-runner-{uuid.uuid4().hex[:8]}" for _ in range(RUNNER_USERS)]
        channels = [
            await stack.enter_async_context(token_channel(cluster.envoy_address, cluster.issuer.token(u)))
            for u in users
        ]
        probe = str(uuid.uuid4())
        await summary_pb2_grpc.SummaryServiceStub(channels[0]).StopRun(stop_request(probe, 0))
        tasks = [asyncio.create_task(runner(k, channels[k % RUNNER_USERS])) for k in range(RUNNERS)]
        tasks.append(asyncio.create_task(dashboard(channels[0], probe)))
        await asyncio.sleep(10)
        ok_before = calls["ok"]
        killed_at = time.monotonic()
        await asyncio.to_thread(kill_pg_node, cluster, old)
        promoted_s = await asyncio.to_thread(pgc.wait_primary, 60)
        while True:  # until the dashboard has read again for 3 s in a row
            last_failed = max((at for at, ok in reads if not ok and at >= killed_at), default=killed_at)
            if any(ok and at > last_failed + 3 for at, ok in reads):
                break
            assert time.monotonic() - killed_at < 60, "the dashboard did not read again within 60 s"
            await asyncio.sleep(0.5)
        read_again_s = min(at for at, ok in reads if ok and at > last_failed) - killed_at
        await asyncio.sleep(5)  # writes on the new primary too
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)

    new = pgc.primary()
    assert new is not None and new["name"] != old.name
    stored = await asyncio.to_thread(stored_runs, cluster, [*acked_stops, *acked_imports])
    assert acked_stops <= set(stored), f"{len(acked_stops - set(stored))} acknowledged StopRuns lost"
    assert acked_imports <= set(stored), f"{len(acked_imports - set(stored))} acknowledged ImportRuns lost"
    wrong = {r: (n, stored.get(r)) for r, n in acked_names.items() if stored.get(r) != n}
    assert not wrong, f"acknowledged names not stored: {list(wrong.items())[:5]}"
    assert calls["ok"] > ok_before, "no call answered OK after the failover"
    assert failed, "no call failed: was the primary under load?"
    assert all(code == "UNAVAILABLE" and delay is not None for _, code, delay, _ in failed), sorted(set(failed))
    assert not [f for f in failed if f[3]], "a call failed despite the reference client's retries"
    assert read_again_s < 30, f"the dashboard read again {read_again_s:.1f} s after the primary was killed"

    # The old primary's Patroni, started again as a supervisor would: it rejoins as a standby by itself.
    restarted = time.monotonic()
    await asyncio.to_thread(pgc.start_node, old)
    await asyncio.to_thread(pgc.wait_replicating, 120)
    rejoined_s = time.monotonic() - restarted
    assert pgc.replication() == [{"application_name": old.name, "state": "streaming", "sync_state": "sync"}]
    members = {m["name"]: m for m in pgc.members()}
    assert members[old.name]["role"] == "sync_standby" and members[old.name]["state"] == "streaming"
    record(
        "pg_primary_killed",
        runners=RUNNERS,
        calls_ok=calls["ok"],
        calls_unavailable_no_retry=len(failed),
        calls_failed_with_retries=0,
        acknowledged_writes=len(acked_stops) + len(acked_names) + len(acked_imports),
        acknowledged_writes_lost=0,
        promoted_after_s=round(promoted_s, 1),
        dashboard_read_again_after_s=round(read_again_s, 1),
        old_primary_rejoined_s=round(rejoined_s, 1),
    )


STREAMS = 300  # as in docs/operating.md's ghz line
CONNECTIONS = 20
STREAM_POINTS = 40  # one a second
LOST_AT_S = 12


def phone_connections(cluster, token: str) -> list[grpc.aio.Channel]:
    """CONNECTIONS channels to Envoy, each its own HTTP/2 connection (not one shared subchannel)."""
    credentials = grpc.composite_channel_credentials(
        grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP), grpc.access_token_call_credentials(token)
    )
    options = [("grpc.use_local_subchannel_pool", 1)]
    return [grpc.aio.secure_channel(cluster.envoy_address, credentials, options) for _ in range(CONNECTIONS)]


async def stream_once(channel, run_id: str, start_ms: int) -> tuple[str, float]:
    """One RecordTrack stream, a point a second, that does not resume: its status and how long it took."""
    await asyncio.sleep(random.uniform(0, 1))  # the phones' seconds are not in step

    async def messages():
        for seq in range(1, STREAM_POINTS + 1):
            yield tracking_pb2.RecordTrackRequest(
                run_id=run_id if seq == 1 else "", points=[point(seq, start_ms=start_ms)]
            )
            if seq < STREAM_POINTS:
                await asyncio.sleep(1.0)

    started = time.monotonic()
    try:
        reply = await tracking_pb2_grpc.TrackingServiceStub(channel).RecordTrack(messages(), timeout=120)
    except grpc.aio.AioRpcError as err:
        return f"{err.code().name}: {err.details()}", time.monotonic() - started
    assert reply.points_stored == STREAM_POINTS and reply.contiguous_seq == STREAM_POINTS
    return "OK", time.monotonic() - started


async def points_stored(channel, run_id: str) -> int:
    """How many points of the run the store holds (none: a stream that failed before its claim)."""
    try:
        return len(await stored_trail(channel, run_id))
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            return 0
        raise


def store_retries(cluster) -> dict[str, float]:
    """runtrack_store_retries_total by call, summed over the tracking replicas."""
    total: dict[str, float] = {}
    for port in cluster.replica_ports()["tracking"]:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port(port)}/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith("runtrack_store_retries_total{"):
                    call = line.split('call="')[1].split('"')[0]
                    total[call] = total.get(call, 0.0) + float(line.split()[-1])
    return total


@pytest.mark.parametrize("loss", ["killed", "frozen"])
async def test_a_node_lost_under_300_streams_that_do_not_resume_fails_none(cluster, loss):
    assert len(cluster.replica_ports()["tracking"]) == 2
    for node in cluster.cql_nodes:  # whole again, whatever an earlier test left
        node.start()
        node.wait_ready()
    victim = cluster.cql_nodes[1]  # 127.0.0.2
    token = cluster.issuer.token(f"runner-{uuid.uuid4().hex[:8]}")
    channels = phone_connections(cluster, token)
    run_ids = [str(uuid.uuid4()) for _ in range(STREAMS)]
    start_ms = (int(time.time()) - 3600) * 1000
    retries_before = store_retries(cluster)
    try:
        streams = [
            asyncio.create_task(stream_once(channels[i % CONNECTIONS], run_id, start_ms))
            for i, run_id in enumerate(run_ids)
        ]
        await asyncio.sleep(LOST_AT_S)
        pid = victim.pid()
        assert pid
        if loss == "killed":
            victim.kill()
        else:  # no reset on its connections: the driver and the other nodes learn of it by timeouts only
            os.kill(pid, signal.SIGSTOP)
        ended = await asyncio.wait_for(asyncio.gather(*streams), timeout=150)
    finally:
        if loss == "frozen" and victim.pid():
            victim.kill()
        for ch in channels:
            await ch.close()
    retries = {k: v - retries_before.get(k, 0.0) for k, v in store_retries(cluster).items()}
    statuses = [status for status, _ in ended]
    # What failed, without the run ids some messages name (`resume from GetTrackCursor (run_id ...)`).
    failed = Counter(re.sub(r" \(run_id [^)]*\)", "", status) for status in statuses if status != "OK")
    async with token_channel(cluster.envoy_address, token) as channel:
        stored = [await points_stored(channel, run_id) for run_id in run_ids]
    await asyncio.to_thread(victim.start)
    await asyncio.to_thread(victim.wait_ready)
    durations = sorted(seconds for _, seconds in ended)
    record(
        f"cql_node_{loss}_under_{STREAMS}_streams",
        streams=STREAMS,
        connections=CONNECTIONS,
        streams_ok=statuses.count("OK"),
        failures=dict(failed),
        points_sent=STREAMS * STREAM_POINTS,
        points_stored=sum(stored),
        stream_s_median=round(statistics.median(durations), 1),
        stream_s_slowest=round(durations[-1], 1),
        store_retries={k: int(v) for k, v in retries.items() if v},
    )
    assert statuses.count("OK") == STREAMS, f"{STREAMS - statuses.count('OK')} streams failed: {dict(failed)}"
    assert stored == [STREAM_POINTS] * STREAMS, "a point is missing"


def run_dev(cluster, *args: str) -> subprocess.CompletedProcess[str]:
    """`scripts/dev ARGS` against the cluster's stack."""
    return subprocess.run(
        [sys.executable, "-m", "devstack", *args],
        cwd=ROOT,
        env=dict(os.environ, RUNTRACK_STACK=cluster.spec.name),
        capture_output=True,
        text=True,
        timeout=900,
    )


def dev(cluster, *args: str) -> dict:
    """`scripts/dev ARGS --json` against the cluster's stack, its JSON."""
    out = run_dev(cluster, *args, "--json")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return json.loads(out.stdout)


def switch_over(cluster) -> tuple[str, str]:
    """The primary handed to the standby (Patroni's POST /switchover); (old, new) primary's names."""
    pgc = cluster.pg_cluster
    pgc.wait_replicating(120)
    old = pgc.primary()["name"]
    new = next(n.name for n in pgc.nodes if n.name != old)
    request = urllib.request.Request(
        pgc.nodes[0].rest_url + "/switchover",
        data=json.dumps({"leader": old, "candidate": new}).encode(),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        assert resp.status == 200
    deadline = time.monotonic() + 60
    while (pgc.primary() or {}).get("name") != new:
        assert time.monotonic() < deadline, "the switchover did not happen"
        time.sleep(0.5)
    return old, new


async def test_backups_follow_the_primary_and_a_restore_to_a_time_brings_both_nodes_back(cluster, phone_channel):
    """Backups of the two-node PostgreSQL are taken from whichever node is the primary, across a
    change of primary (a new timeline, whose history the new primary archives; full base backups: no
    WAL summarizer to hold a promotion back). Then `scripts/dev restore --to TIME`: runs written, a
    backup, the time noted, the primary handed to the standby (TIME lies on the timeline before), more
    runs written, a backup, one of the first runs deleted; after the restore the first runs are there
    (the deleted one too), the later ones are not, both nodes run (a primary and its synchronous
    standby), StopRun through Envoy works, and a backup of the restored cluster is taken from its new
    timeline."""
    pgc = cluster.pg_cluster
    pgc.wait_replicating(120)
    summary = summary_pb2_grpc.SummaryServiceStub(phone_channel)
    early = [str(uuid.uuid4()) for _ in range(3)]
    for i, run_id in enumerate(early):
        await retried(partial(summary.StopRun, stop_request(run_id, 20 + i), timeout=15))
    first = dev(cluster, "backup")
    await asyncio.sleep(1)
    to = dt.datetime.now(dt.UTC)
    await asyncio.sleep(1)
    old, new = await asyncio.to_thread(switch_over, cluster)
    later = [str(uuid.uuid4()) for _ in range(2)]
    for i, run_id in enumerate(later):
        await retried(partial(summary.StopRun, stop_request(run_id, 30 + i), timeout=15))
    second = dev(cluster, "backup")
    assert (first["postgres"]["kind"], second["postgres"]["kind"]) == ("full", "full")
    assert second["postgres"]["begin_lsn"] != first["postgres"]["begin_lsn"]
    wals = cluster.spec.backup_dir / "postgres" / "runtrack" / "wals"
    assert any(wals.glob("*.history")), "no timeline history archived"
    await retried(partial(summary.DeleteRun, summary_pb2.DeleteRunRequest(run_id=early[0]), timeout=15))
    assert set(stored_runs(cluster, early + later)) == {*early[1:], *later}

    started = time.monotonic()
    out = await asyncio.to_thread(run_dev, cluster, "restore", "--to", to.isoformat(), "--json")
    restore_s = time.monotonic() - started
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    restored = json.loads(out.stdout)
    assert restored["postgres_reached"] == restored["to"]

    assert set(stored_runs(cluster, early + later)) == set(early), "the runs at the time, the deleted one back"
    pgc.wait_replicating(60)
    primary = pgc.primary()
    assert primary is not None and all(pgc.postgres_pid(n) for n in pgc.nodes)
    standby = next(n for n in pgc.nodes if n.name != primary["name"])
    assert pgc.replication() == [{"application_name": standby.name, "state": "streaming", "sync_state": "sync"}]
    assert sorted(m["role"] for m in json.loads(dev_status(cluster, "--json"))["postgres"]["members"]) == [
        "leader",
        "sync_standby",
    ]

    after = str(uuid.uuid4())
    async with token_channel(cluster.envoy_address, cluster.issuer.token(f"runner-{uuid.uuid4().hex[:8]}")) as ch:
        await summary_pb2_grpc.SummaryServiceStub(ch).StopRun(stop_request(after, 40), timeout=15)
    assert set(stored_runs(cluster, [after])) == {after}
    again = dev(cluster, "backup")
    assert again["postgres"]["kind"] == "full"
    record(
        "pg_cluster_restore",
        switched_from=old,
        switched_to=new,
        backup_before_s=first["postgres"]["seconds"],
        backup_after_s=second["postgres"]["seconds"],
        restore_s=round(restore_s, 1),
        postgres_s=restored["timings"]["postgres_s"],
        total_s=restored["timings"]["total_s"],
        backup_after_restore_s=again["postgres"]["seconds"],
    )
    print(f"restore (two nodes): {restore_s:.1f}s, PostgreSQL {restored['timings']['postgres_s']}s", file=sys.stderr)
