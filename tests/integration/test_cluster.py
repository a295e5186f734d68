"""The store as a cluster: three CQL nodes on 127.0.0.1-3 (RF 3, LOCAL_QUORUM), a stack of its own.

Under live streams from many phones (paced, through Envoy, with the reference client): a node
SIGKILLed and started again, and a rolling restart of all three (each node stopped gracefully and started
again in turn, which covers a single node's graceful restart). Each time:
no failed call, no point lost or stored twice (every trail read back), the tracking replicas stay
SERVING, and the node that was down catches up by itself (read from it alone, the other two down).
"""

import asyncio
import os
import time
import uuid

import pytest
from cassandra import ConsistencyLevel
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import WhiteListRoundRobinPolicy
from cassandra.query import SimpleStatement

from devstack.stack import Stack, cluster_test_spec
from devstack.stack import test_spec as one_node_spec
from tests.helpers import token_channel
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


def assert_caught_up(cluster, node, run_ids: list[str]) -> float:
    """With the other two nodes down, `node` alone holds every point (hints replayed); seconds it took."""
    others = [n for n in cluster.cql_nodes if n is not node]
    for other in others:
        other.stop()
    try:
        started = time.monotonic()
        while True:
            counts = points_on(node, run_ids)
            if all(n == POINTS for n in counts.values()):
                return time.monotonic() - started
            assert time.monotonic() - started < 120, f"node {node.address} holds {counts}"
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
