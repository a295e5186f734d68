"""The chart's NetworkPolicies, enforced on the local cluster: only Envoy's pods (and the node, for
probes and scrapes) reach the replicas' gRPC port 50051, only the node their metrics port 9100.

A pod of the app image that is not Envoy tries both ports of every tracking and summary pod, by
address and through the headless Services' names, and must be refused or time out; a connection to
an Envoy pod's TLS port (open to all) shows that pod can connect at all. Every Envoy pod connects to
every replica's 50051, a call of each service goes through the cluster's Envoy, and the node reaches
both ports. With nothing enforcing the policies the attacker connects, and the first test fails.

Egress, from the side of a replica taken over: a tracking pod reaches DNS, its CQL node and Envoy's
internal port, and nothing else inside (not the summary's PostgreSQL, the API server, another pod, the
clouds' metadata address); a summary pod reaches PostgreSQL and Envoy's internal port, not the CQL
node; an Envoy pod neither store. (kube-router lets any pod reach the node's own NodePorts whatever the
policies say; those are the public ports anyway, and none is probed here.)
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from deploy.k8s.cluster import Cluster
from deploy.k8s.node import API_PORT, CQL_PORT, NAMESPACE, NODE_IP, PG_PORT
from devstack.auth import LocalIssuer, token_channel
from devstack.paths import ROOT
from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc

GRPC_PORT = 50051
METRICS_PORT = 9100
ENVOY_PORT = 8443  # Envoy's TLS port, open to every pod (its plaintext one only to the replicas)
ENVOY_INTERNAL = f"envoy-internal.{NAMESPACE}.svc.cluster.local:8080"  # where a replica calls the other service
METADATA = "169.254.169.254:80"  # the clouds' instance metadata service
REPLICAS = ("tracking", "summary")
ATTACKER = "netpol-attacker"
CONNECT_TIMEOUT_S = 3

# Run inside a pod with the image's python: tries a TCP connection to each "host:port" of argv[1] (a
# JSON list), every address a name resolves to, and prints {target: [outcome, ...]} as JSON.
PROBE = """
import json, socket, sys
out = {}
for target in json.loads(sys.argv[1]):
    host, port = target.rsplit(":", 1)
    try:
        addrs = sorted({a[4][0] for a in socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)})
    except OSError as err:
        out[target] = ["unresolved: %s" % err]
        continue
    results = []
    for addr in addrs:
        s = socket.socket()
        s.settimeout(TIMEOUT)
        try:
            s.connect((addr, int(port)))
            results.append("connected")
        except ConnectionRefusedError:
            results.append("refused")
        except (TimeoutError, socket.timeout):
            results.append("timeout")
        except OSError as err:
            results.append("error: %s" % err)
        finally:
            s.close()
    out[target] = results
print(json.dumps(out))
""".replace("TIMEOUT", str(CONNECT_TIMEOUT_S))

# Run in an Envoy pod (bash, coreutils): "connected" or "failed" for each host:port argument.
BASH_PROBE = f"""
for target in "$@"; do
  if timeout {CONNECT_TIMEOUT_S} bash -c "exec 3<>/dev/tcp/${{target%:*}}/${{target##*:}}" 2>/dev/null; then
    echo "$target connected"
  else
    echo "$target failed"
  fi
done
"""


def _pods(k8s: Cluster, component: str) -> list[dict[str, Any]]:
    doc = json.loads(
        k8s.kubectl(
            "get", "pods", "-n", NAMESPACE, "-l", f"app.kubernetes.io/component={component}", "-o", "json", capture=True
        )
    )
    ready = []
    for pod in doc["items"]:
        conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
        if conditions.get("Ready") == "True" and not pod["metadata"].get("deletionTimestamp"):
            ready.append(pod)
    assert ready, f"no Ready {component} pod in namespace {NAMESPACE}"
    return ready


def _ips(k8s: Cluster, component: str) -> list[str]:
    return [str(p["status"]["podIP"]) for p in _pods(k8s, component)]


def _app_image(k8s: Cluster) -> str:
    image = k8s.kubectl(
        "get",
        "deploy",
        "tracking",
        "-n",
        NAMESPACE,
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
        capture=True,
    ).strip()
    assert image, "deployment/tracking has no image"
    return image


def _attacker_manifest(image: str) -> dict[str, Any]:
    """A pod of the replicas' own image that is not Envoy: no label any policy admits."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": ATTACKER,
            "namespace": NAMESPACE,
            "labels": {"app.kubernetes.io/name": ATTACKER},
        },
        "spec": {
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 2,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "runAsGroup": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "probe",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": [
                        "python",
                        "-c",
                        "import signal, sys, time\n"
                        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
                        "time.sleep(900)\n",
                    ],
                    "securityContext": {
                        "runAsNonRoot": True,
                        "readOnlyRootFilesystem": True,
                        "allowPrivilegeEscalation": False,
                        "privileged": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def attacker(k8s: Cluster) -> Iterator[str]:
    k8s.kubectl("delete", "pod", ATTACKER, "-n", NAMESPACE, "--ignore-not-found", "--wait=true")
    k8s.kubectl("apply", "-f", "-", input=json.dumps(_attacker_manifest(_app_image(k8s))))
    try:
        k8s.kubectl("wait", "--for=condition=Ready", f"pod/{ATTACKER}", "-n", NAMESPACE, "--timeout=90s")
        yield ATTACKER
    finally:
        k8s.kubectl("delete", "pod", ATTACKER, "-n", NAMESPACE, "--ignore-not-found", "--wait=false")


def _probe_from(k8s: Cluster, pod: str, targets: list[str]) -> dict[str, list[str]]:
    out = k8s.kubectl("exec", "-n", NAMESPACE, pod, "--", "python", "-c", PROBE, json.dumps(targets), capture=True)
    result: dict[str, list[str]] = json.loads(out)
    return result


def _connect_from_node(host: str, port: int) -> str:
    with socket.socket() as s:
        s.settimeout(CONNECT_TIMEOUT_S)
        try:
            s.connect((host, port))
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "timeout"
        except OSError as err:
            return f"error: {err}"
        return "connected"


def test_a_pod_that_is_not_envoy_reaches_no_replica(k8s: Cluster, attacker: str) -> None:
    names = [f"{c}.{NAMESPACE}.svc.cluster.local" for c in REPLICAS]
    targets = [f"{ip}:{port}" for c in REPLICAS for ip in _ips(k8s, c) for port in (GRPC_PORT, METRICS_PORT)]
    targets += [f"{name}:{port}" for name in names for port in (GRPC_PORT, METRICS_PORT)]
    # The control: Envoy's TLS port is open to every pod, so the same probe connects to it.
    controls = [f"{ip}:{ENVOY_PORT}" for ip in _ips(k8s, "envoy")]
    started = time.monotonic()
    results = _probe_from(k8s, attacker, targets + controls)
    for target in controls:
        assert results[target] == ["connected"], f"the probe pod cannot connect to Envoy at all: {results}"
    for name in names:
        for port in (GRPC_PORT, METRICS_PORT):
            outcomes = results[f"{name}:{port}"]
            assert outcomes and not outcomes[0].startswith("unresolved"), f"{name}: {outcomes}"
    let_in = {t: r for t, r in results.items() if t not in controls and any(o == "connected" for o in r)}
    assert not let_in, f"NetworkPolicy not enforced: a pod that is not Envoy connected to {let_in}"
    others = {t: r for t, r in results.items() if t not in controls and set(r) - {"refused", "timeout"}}
    assert not others, others
    print(f"attacker: {len(targets)} targets refused or timed out in {time.monotonic() - started:.1f} s: {results}")


def test_every_envoy_pod_reaches_every_replicas_grpc_port_and_not_its_metrics(k8s: Cluster) -> None:
    grpc_targets = [f"{ip}:{GRPC_PORT}" for c in REPLICAS for ip in _ips(k8s, c)]
    metrics_targets = [f"{ip}:{METRICS_PORT}" for c in REPLICAS for ip in _ips(k8s, c)]
    for envoy in _pods(k8s, "envoy"):
        name = envoy["metadata"]["name"]
        out = k8s.kubectl(
            "exec",
            "-n",
            NAMESPACE,
            name,
            "-c",
            "envoy",
            "--",
            "bash",
            "-c",
            BASH_PROBE,
            "probe",
            *grpc_targets,
            *metrics_targets,
            capture=True,
        )
        outcome = dict(line.split() for line in out.splitlines() if line.strip())
        assert all(outcome[t] == "connected" for t in grpc_targets), f"{name}: {outcome}"
        assert all(outcome[t] == "failed" for t in metrics_targets), f"{name}: {outcome}"


def _probe_replica(k8s: Cluster, pod: dict[str, Any], targets: list[str]) -> dict[str, list[str]]:
    """The probe run inside a replica's pod, as code that took the replica over would."""
    name, component = pod["metadata"]["name"], pod["metadata"]["labels"]["app.kubernetes.io/component"]
    out = k8s.kubectl(
        "exec", "-n", NAMESPACE, name, "-c", component, "--", "python", "-c", PROBE, json.dumps(targets), capture=True
    )
    result: dict[str, list[str]] = json.loads(out)
    return result


def _shut(results: dict[str, list[str]], targets: list[str]) -> dict[str, list[str]]:
    """Those of `targets` that any address let in (or that answered other than refused or timed out)."""
    return {t: results[t] for t in targets if not results[t] or set(results[t]) - {"refused", "timeout"}}


def test_a_tracking_pod_reaches_dns_its_store_and_envoys_internal_port_and_nothing_else_inside(k8s: Cluster) -> None:
    pod = _pods(k8s, "tracking")[0]
    others = [ip for ip in _ips(k8s, "tracking") if ip != pod["status"]["podIP"]]
    allowed = [f"{NODE_IP}:{CQL_PORT}", ENVOY_INTERNAL]  # the name resolving shows DNS answers
    refused = [
        f"{NODE_IP}:{PG_PORT}",  # the summary's PostgreSQL
        f"{NODE_IP}:{API_PORT}",  # the API server, on the node
        "10.96.0.1:443",  # the same through the kubernetes Service
        METADATA,
        *[f"{ip}:{ENVOY_PORT}" for ip in _ips(k8s, "envoy")],  # Envoy's pods on any port but the internal one
        *[f"{ip}:{port}" for ip in _ips(k8s, "summary") for port in (GRPC_PORT, METRICS_PORT)],
        *[f"{ip}:{port}" for ip in others for port in (GRPC_PORT, METRICS_PORT)],  # another tracking pod
    ]
    started = time.monotonic()
    results = _probe_replica(k8s, pod, allowed + refused)
    assert all(results[t] and set(results[t]) == {"connected"} for t in allowed), results
    assert not _shut(results, refused), f"a tracking pod connected outside its egress policy: {_shut(results, refused)}"
    print(f"tracking egress: {len(refused)} targets refused or timed out in {time.monotonic() - started:.1f} s")


def test_a_summary_pod_reaches_postgres_and_envoys_internal_port_and_not_the_cql_node(k8s: Cluster) -> None:
    allowed = [f"{NODE_IP}:{PG_PORT}", ENVOY_INTERNAL]
    refused = [
        f"{NODE_IP}:{CQL_PORT}",
        f"{NODE_IP}:{API_PORT}",
        METADATA,
        *[f"{ip}:{GRPC_PORT}" for ip in _ips(k8s, "tracking")],
    ]
    results = _probe_replica(k8s, _pods(k8s, "summary")[0], allowed + refused)
    assert all(results[t] and set(results[t]) == {"connected"} for t in allowed), results
    assert not _shut(results, refused), f"a summary pod connected outside its egress policy: {_shut(results, refused)}"


def test_an_envoy_pod_reaches_neither_store(k8s: Cluster) -> None:
    stores = [f"{NODE_IP}:{CQL_PORT}", f"{NODE_IP}:{PG_PORT}", f"{NODE_IP}:{API_PORT}"]
    name = _pods(k8s, "envoy")[0]["metadata"]["name"]
    out = k8s.kubectl(
        "exec", "-n", NAMESPACE, name, "-c", "envoy", "--", "bash", "-c", BASH_PROBE, "probe", *stores, capture=True
    )
    outcome = dict(line.split() for line in out.splitlines() if line.strip())
    assert all(outcome[t] == "failed" for t in stores), f"{name}: {outcome}"


async def test_calls_through_the_clusters_envoy_reach_both_services(k8s: Cluster, k8s_envoy: str) -> None:
    issuer = LocalIssuer(ROOT / ".dev" / "keys")
    token = issuer.token(f"netpol-{uuid.uuid4().hex[:8]}", ttl_s=600)
    async with token_channel(k8s_envoy, token) as channel:
        tracking = tracking_pb2_grpc.TrackingServiceStub(channel)
        summary = summary_pb2_grpc.SummaryServiceStub(channel)
        for _ in range(4):  # Envoy spreads the calls over its replicas
            zones = await tracking.GetPrivacyZones(tracking_pb2.GetPrivacyZonesRequest(user_id="me"), timeout=15)
            assert list(zones.zones) == []
            runs = await summary.ListRuns(summary_pb2.ListRunsRequest(user_id="me"), timeout=15)
            assert list(runs.runs) == []
            await asyncio.sleep(0.1)


def test_the_node_reaches_the_grpc_and_metrics_ports(k8s: Cluster) -> None:
    """The kubelet's probes and Prometheus come from the node's address on the pod network."""
    outcomes = {
        f"{ip}:{port}": _connect_from_node(ip, port)
        for c in REPLICAS
        for ip in _ips(k8s, c)
        for port in (GRPC_PORT, METRICS_PORT)
    }
    assert set(outcomes.values()) == {"connected"}, outcomes
