"""Health, reflection and load balancing: what Envoy and grpcurl rely on."""

import asyncio
import json
import uuid

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from tests.helpers import grpcurl

SERVICE = {"tracking": "runtrack.v1.TrackingService", "summary": "runtrack.v1.SummaryService"}


async def test_every_replica_serves_health_for_overall_and_its_own_service(stack):
    for svc, ports in stack.replica_ports().items():
        assert len(ports) == 2
        for port in ports:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                health = health_pb2_grpc.HealthStub(ch)
                for name in ("", SERVICE[svc]):
                    reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
                    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_grpcurl_lists_every_service_through_envoy(stack):
    out = grpcurl(stack.envoy_address, "list")
    assert out.returncode == 0, out.stderr
    assert {"runtrack.v1.TrackingService", "runtrack.v1.SummaryService"} <= set(out.stdout.split())


def test_grpcurl_calls_a_method_through_envoy_by_reflection(stack, token):
    rid = str(uuid.uuid4())
    out = grpcurl(
        "-d", json.dumps({"run_id": rid}), stack.envoy_address, "runtrack.v1.SummaryService/GetRun", token=token
    )
    assert out.returncode != 0
    assert "NotFound" in out.stderr and rid in out.stderr
    out = grpcurl(stack.envoy_address, "describe", "runtrack.v1.TrackPoint")
    assert out.returncode == 0 and "heart_rate_bpm" in out.stdout


def _served(stack) -> dict[str, dict[int, int]]:
    """rq_total per replica, from Envoy's admin /clusters."""
    return {svc: {port: int(v) for port, v in hosts.items()} for svc, hosts in stack.host_stat("rq_total").items()}


async def test_envoy_spreads_calls_over_both_replicas_of_each_service(stack, channel):
    # Right after start Envoy may route to one replica for a few seconds; keep calling (bounded)
    # until every replica of both services has answered something through Envoy.
    before = _served(stack)
    tracking = tracking_pb2_grpc.TrackingServiceStub(channel)
    summary = summary_pb2_grpc.SummaryServiceStub(channel)

    async def call(coro):
        try:
            await coro
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND

    def idle_replicas():
        after = _served(stack)
        return [
            (svc, p)
            for svc, ports in stack.replica_ports().items()
            for p in ports
            if after[svc].get(p, 0) <= before[svc].get(p, 0)
        ]

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while idle_replicas() and loop.time() < deadline:
        await asyncio.gather(
            *(
                [
                    call(tracking.GetTrackCursor(tracking_pb2.GetTrackCursorRequest(run_id=str(uuid.uuid4()))))
                    for _ in range(10)
                ]
                + [call(summary.GetRun(summary_pb2.GetRunRequest(run_id=str(uuid.uuid4())))) for _ in range(10)]
            )
        )
        await asyncio.sleep(0.2)
    assert not idle_replicas(), f"replicas that served nothing through Envoy: {idle_replicas()}"


def test_starting_the_stack_again_leaves_what_runs_alone(stack):
    def pids():
        return [stack.cql.pid(), stack.pg.pid(), stack.envoy_pid()] + [
            stack.replica_pid(svc, p) for svc, ports in stack.replica_ports().items() for p in ports
        ]

    before = pids()
    stack.up()
    assert pids() == before and None not in before
    rows = {name: state for name, _, state in stack.status()}
    assert (
        rows["envoy"].startswith("running (admin") and rows["cql-node"] == "running" and rows["postgresql"] == "running"
    )
