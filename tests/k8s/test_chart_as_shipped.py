"""The chart as shipped: its default values (TLS only, plaintext nowhere outside Envoy's pods, every
NetworkPolicy on, egress included) installed beside the session's release, in a namespace of its own,
with only what this cluster cannot avoid changed (OVERRIDES says each and why; none turns plaintext
on). Every call goes through Envoy's TLS listener, and each one below has one service call the other
on the caller's behalf, through the envoy-internal Service:

- StopRun: summary claims the run id (ClaimRun) and tells tracking it stopped (MarkRunStopped);
- a live link: its holder's WatchRun sees the stop; its GetRun has summary check the link
  (CheckLiveLink) and read the visible part (GetVisibleSummary) from tracking;
- a PUBLIC run read by another runner: tracking asks summary whether it may (CheckRunVisible);
- DeleteRun: summary deletes the trail through tracking (DeleteTrack);
- ImportRun: summary writes the file's trail through tracking (RecordTrack).

The session's release (deploy/k8s/values-local.yaml) turns plaintext on for the README's demo and the
scaling tests; with it, a call between the services that only works in plaintext would go unseen.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.api import httpbody_pb2
from google.protobuf import field_mask_pb2

from deploy.k8s.cluster import Cluster
from deploy.k8s.node import CHART, CQL_PORT, DEV_TLS_DIR, NODE_IP, PG_PORT
from deploy.k8s.node import NAMESPACE as SESSION_NAMESPACE
from devstack import tls
from devstack.activity_files import gpx_file, synthetic_run
from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from tests.helpers import point
from tests.k8s.test_network_policy import PROBE, _attacker_manifest

NAMESPACE = "runtrack-shipped"
RELEASE = "runtrack"
# The session's release holds the chart's default TLS node port (30443).
TLS_NODE_PORT = 30444
ADDRESS = f"127.0.0.1:{TLS_NODE_PORT}"
ORIGIN = f"https://{ADDRESS}"
NODE = f"{NODE_IP}/32"


def overrides(images: dict[str, str]) -> dict[str, Any]:
    """Every value this install changes from the chart's defaults, and why it cannot keep them. The
    secrets (the token keys, the link signing key, the TLS certificate) come as files, below."""
    return {
        # Built on this machine and imported into the node's containerd, never pushed: the references the
        # build printed (the defaults name `runtrack/app:dev`, which no build makes). Pull policy stays
        # the default's, Never.
        "images": {"app": images["app"], "envoy": images["envoy"]},
        # The stores: this cluster's CQL node and PostgreSQL are host processes on the node's bridge
        # address, not Services in the namespaces the defaults name. One CQL node cannot hold RF 3, so the
        # replication map is SimpleStrategy RF 1 (the keyspace is the session release's, already made so).
        "cql": {
            "hosts": [NODE_IP],
            "port": CQL_PORT,
            "replication": "{'class': 'SimpleStrategy', 'replication_factor': 1}",
        },
        "postgres": {"url": f"postgresql://postgres@{NODE_IP}:{PG_PORT}/runtrack"},
        # The same addresses in the egress policies, and DNS: CoreDNS runs on the node too, not in
        # kube-system. Nothing else of the policies changes (webhooks, Envoy's, the ingress rules).
        "networkPolicy": {
            "egress": {
                "dns": [{"ipBlock": {"cidr": NODE}}],
                "cql": [{"ipBlock": {"cidr": NODE}}],
                "cqlExtraPorts": [],  # a Cassandra node: no shard-aware port
                "postgres": {"port": PG_PORT, "to": [{"ipBlock": {"cidr": NODE}}]},
            }
        },
        # The session's release holds node port 30443; one Envoy pod of the default two (two cores).
        "envoy": {"tlsNodePort": TLS_NODE_PORT, "replicas": 1},
        # Two cores, shared with the session's release: one pod of each replica (the defaults' HPA minimum
        # is two); the HPAs stay on.
        "hpa": {"tracking": {"minReplicas": 1, "maxReplicas": 1}, "summary": {"minReplicas": 1, "maxReplicas": 1}},
        # Where a link opens on this machine (required with a signing key: the chart cannot know it).
        "liveLinks": {"publicOrigin": ORIGIN},
    }


def _session_image(k8s: Cluster, deployment: str) -> str:
    """The image the session's release runs (built and imported by `scripts/k8s up`)."""
    path = "jsonpath={.spec.template.spec.containers[0].image}"
    image = k8s.kubectl("get", "deploy", deployment, "-n", SESSION_NAMESPACE, "-o", path, capture=True).strip()
    assert image, f"deployment/{deployment} of the session's release has no image"
    return image


def _install(k8s: Cluster, values: Path) -> None:
    images = {"app": _session_image(k8s, "tracking"), "envoy": _session_image(k8s, "envoy")}
    values.write_text(yaml.safe_dump(overrides(images)))
    # Beside the overrides, only the files this machine has: token keys, link keys, TLS (required).
    k8s.helm(
        "upgrade", "--install", RELEASE, CHART, "--namespace", NAMESPACE, "--create-namespace",
        "-f", values, *k8s.machine_files(),
    )  # fmt: skip
    for name in ("tracking", "summary", "envoy"):
        k8s.kubectl("rollout", "status", f"deployment/{name}", "-n", NAMESPACE, "--timeout=180s")


@pytest.fixture(scope="module")
def shipped(k8s: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The release, installed once for this module and removed after it (its pods would take CPU from
    the load tests that follow)."""
    started = time.monotonic()
    # A namespace still going from a run just before cannot take the release yet.
    k8s.kubectl("wait", "--for=delete", f"namespace/{NAMESPACE}", "--timeout=120s", check=False)
    _install(k8s, tmp_path_factory.mktemp("shipped") / "values.yaml")
    _wait_routed(k8s)
    print(f"the chart as shipped installed and Ready in {time.monotonic() - started:.1f} s")
    try:
        yield ADDRESS
    finally:
        k8s.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait=false")
        k8s.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=false")


def _wait_routed(k8s: Cluster, timeout_s: float = 120.0) -> None:
    """Until the release's Envoy routes to a replica of each service: its pods are Ready before its
    Envoy has found them through their headless Services' DNS (which lists only Ready pods), and a
    call in between answers UNAVAILABLE "no healthy replica"."""
    credentials = tls_credentials(token(k8s, "probe"))
    deadline = time.monotonic() + timeout_s
    with grpc.secure_channel(ADDRESS, credentials) as channel:
        calls = [
            lambda: summary_pb2_grpc.SummaryServiceStub(channel).GetRun(
                summary_pb2.GetRunRequest(run_id=str(uuid.uuid4())), timeout=5
            ),
            lambda: tracking_pb2_grpc.TrackingServiceStub(channel).GetTrackCursor(
                tracking_pb2.GetTrackCursorRequest(run_id=str(uuid.uuid4())), timeout=5
            ),
        ]
        for call in calls:
            while True:
                try:
                    call()
                    break
                except grpc.RpcError as err:
                    if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                        break  # routed: NOT_FOUND for an id nobody used
                    assert time.monotonic() < deadline, f"the release's Envoy routes to no replica: {err.details()}"
                    time.sleep(1)


def tls_credentials(token: str) -> grpc.ChannelCredentials:
    """TLS trusting this machine's CA, the token on every call."""
    ca = tls.files(DEV_TLS_DIR).ca.read_bytes()
    return grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=ca), grpc.access_token_call_credentials(token)
    )


def tls_channel(address: str, token: str) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(address, tls_credentials(token))


def token(k8s: Cluster, user: str) -> str:
    return k8s.issuer.token(user, ttl_s=600)


async def record(channel: grpc.aio.Channel, run_id: str, count: int) -> None:
    start_ms = (int(time.time()) - 3600) * 1000

    async def requests() -> AsyncIterator[tracking_pb2.RecordTrackRequest]:
        points = [point(seq, start_ms=start_ms) for seq in range(1, count + 1)]
        yield tracking_pb2.RecordTrackRequest(run_id=run_id, points=points)

    stub = tracking_pb2_grpc.TrackingServiceStub(channel)
    reply = await stub.RecordTrack(requests(), timeout=30)
    assert reply.points_stored == count, reply


async def trail(channel: grpc.aio.Channel, run_id: str) -> list[tracking_pb2.TrackPoint]:
    stub = tracking_pb2_grpc.TrackingServiceStub(channel)
    out: list[tracking_pb2.TrackPoint] = []
    page_token = ""
    while True:
        page = await stub.GetTrack(
            tracking_pb2.GetTrackRequest(run_id=run_id, page_size=1000, page_token=page_token), timeout=15
        )
        out += page.points
        page_token = page.next_page_token
        if not page_token:
            return out


async def served(make_call: Any, within_s: float = 60.0) -> Any:
    """A call retried as a phone retries it: after UNAVAILABLE (the release's one replica of a service
    not serving for a moment, on a node the other release's load tests share), again after a second."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return await make_call()
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            await asyncio.sleep(1)


async def code_of(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_the_release_serves_tls_alone_and_its_plaintext_port_only_inside(k8s: Cluster, shipped: str) -> None:
    public = json.loads(k8s.kubectl("get", "service", "envoy", "-n", NAMESPACE, "-o", "json", capture=True))
    assert [(p["port"], p["nodePort"]) for p in public["spec"]["ports"]] == [(8443, TLS_NODE_PORT)]
    internal = json.loads(k8s.kubectl("get", "service", "envoy-internal", "-n", NAMESPACE, "-o", "json", capture=True))
    assert internal["spec"]["type"] == "ClusterIP"
    policies = k8s.kubectl("get", "networkpolicy", "-n", NAMESPACE, "-o", "name", capture=True).split()
    # migrate: the schema Job's egress-only policy (it has no ingress at all)
    assert sorted(policies) == sorted(
        f"networkpolicy.networking.k8s.io/{name}"
        for name in ("envoy", "envoy-egress", "migrate", "tracking", "tracking-egress", "summary", "summary-egress")
    )


def test_envoys_plaintext_port_answers_the_replicas_alone(k8s: Cluster, shipped: str) -> None:
    """From the attacker's side: a pod of the namespace that is not a replica connects to Envoy's TLS
    port, and neither to its plaintext port nor through envoy-internal (where a replica's call
    carries a runner's token in the clear)."""
    manifest = _attacker_manifest(_session_image(k8s, "tracking"))
    manifest["metadata"]["namespace"] = NAMESPACE
    name = manifest["metadata"]["name"]
    k8s.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    try:
        k8s.kubectl("wait", "--for=condition=Ready", f"pod/{name}", "-n", NAMESPACE, "--timeout=90s")
        pods = json.loads(
            k8s.kubectl(
                "get", "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=envoy", "-o", "json", capture=True
            )
        )
        envoys = [p["status"]["podIP"] for p in pods["items"] if p["status"].get("podIP")]
        internal = f"envoy-internal.{NAMESPACE}.svc.cluster.local:8080"
        targets = [internal, *(f"{ip}:8080" for ip in envoys), *(f"{ip}:8443" for ip in envoys)]
        out = k8s.kubectl("exec", "-n", NAMESPACE, name, "--", "python", "-c", PROBE, json.dumps(targets), capture=True)
        results = json.loads(out)
        assert envoys and all(results[f"{ip}:8443"] == ["connected"] for ip in envoys), results
        plaintext = [internal, *(f"{ip}:8080" for ip in envoys)]
        assert all(results[t] and set(results[t]) <= {"refused", "timeout"} for t in plaintext), results
    finally:
        k8s.kubectl("delete", "pod", name, "-n", NAMESPACE, "--ignore-not-found", "--wait=false")


async def test_stop_a_live_link_a_public_read_and_delete_go_between_the_services_over_tls(
    k8s: Cluster, shipped: str
) -> None:
    owner = f"shipped-{uuid.uuid4().hex[:8]}"
    run_id = str(uuid.uuid4())
    async with tls_channel(shipped, token(k8s, owner)) as channel:
        tracking = tracking_pb2_grpc.TrackingServiceStub(channel)
        summary = summary_pb2_grpc.SummaryServiceStub(channel)
        await record(channel, run_id, 30)

        link = await tracking.CreateLiveLink(tracking_pb2.CreateLiveLinkRequest(run_id=run_id), timeout=15)
        assert link.url == f"{ORIGIN}/#live={link.token}", "a link opens at the public origin"
        async with tls_channel(shipped, link.token) as holder:
            watch = tracking_pb2_grpc.TrackingServiceStub(holder).WatchRun(
                tracking_pb2.WatchRunRequest(run_id=run_id), timeout=60
            )
            seen: list[int] = []
            states: list[str] = []

            async def follow() -> None:
                async for event in watch:
                    if event.HasField("points"):
                        seen.extend(p.seq for p in event.points.points)
                    else:
                        states.append(tracking_pb2.LiveState.Name(event.state.state))
                        if states[-1] == "STOPPED":
                            return

            following = asyncio.create_task(follow())

            # StopRun: summary claims the id and tells tracking, through envoy-internal.
            overview = summary_pb2.RunOverview(distance_m=42.0, point_count=30)
            overview.start_time.seconds, overview.end_time.seconds = int(time.time()) - 3600, int(time.time()) - 3571
            stopped = await served(
                lambda: summary.StopRun(summary_pb2.StopRunRequest(run_id=run_id, overview=overview), timeout=30)
            )
            assert stopped.run_id == run_id
            await asyncio.wait_for(following, timeout=20)
            assert seen == list(range(1, 31)) and states[-1] == "STOPPED", (seen, states)

            # The link's GetRun: summary checks the link and reads the visible part from tracking.
            seen_by_holder = await summary_pb2_grpc.SummaryServiceStub(holder).GetRun(
                summary_pb2.GetRunRequest(run_id=run_id), timeout=15
            )
            assert seen_by_holder.run_id == run_id and seen_by_holder.overview.point_count == 30

        # PUBLIC, then another runner's GetTrack: tracking asks summary whether they may.
        await summary.UpdateRun(
            summary_pb2.UpdateRunRequest(
                run=summary_pb2.Run(run_id=run_id, visibility=summary_pb2.PUBLIC),
                update_mask=field_mask_pb2.FieldMask(paths=["visibility"]),
            ),
            timeout=15,
        )
        async with tls_channel(shipped, token(k8s, f"stranger-{uuid.uuid4().hex[:8]}")) as stranger:
            assert len(await trail(stranger, run_id)) == 30

        # DeleteRun: summary deletes the trail through tracking.
        await summary.DeleteRun(summary_pb2.DeleteRunRequest(run_id=run_id), timeout=30)
        assert await code_of(tracking.GetTrack(tracking_pb2.GetTrackRequest(run_id=run_id), timeout=15)) == (
            grpc.StatusCode.NOT_FOUND
        )
        assert await code_of(summary.GetRun(summary_pb2.GetRunRequest(run_id=run_id), timeout=15)) == (
            grpc.StatusCode.NOT_FOUND
        )


async def test_an_import_writes_its_trail_through_the_tracking_service_over_tls(k8s: Cluster, shipped: str) -> None:
    fixes = synthetic_run(120, seed=11)
    async with tls_channel(shipped, token(k8s, f"shipped-{uuid.uuid4().hex[:8]}")) as channel:
        body = httpbody_pb2.HttpBody(content_type="application/gpx+xml", data=gpx_file(fixes, name="As shipped"))
        stub = summary_pb2_grpc.SummaryServiceStub(channel)
        run = await served(lambda: stub.ImportRun(body, timeout=60))
        assert run.overview.point_count == 120
        stored = await trail(channel, run.run_id)
        assert [p.seq for p in stored] == list(range(1, 121))
        assert [(p.latitude, p.longitude) for p in stored] == [(f.latitude, f.longitude) for f in fixes]
