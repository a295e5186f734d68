"""The Helm chart deploy/helm/runtrack, rendered with `helm template` and read back as objects.

helm comes from RUNTRACK_HELM or the cluster tools' cache (~/.cache/runtrack/k8s/tools/bin/helm). Without
it these tests skip on a workstation and fail under CI (CI set). The test that the chart's Envoy
configurations are the generator's render needs no helm.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from deploy import grafana, prometheus
from deploy.k8s import node
from devstack import procs, tls, tools
from devstack.auth import ISSUER, LocalIssuer
from devstack.paths import DESCRIPTOR_SET, OPENAPI, ROOT
from edge.config import (
    K8S_JWKS_FILE,
    K8S_LIVE_JWKS_FILE,
    K8S_PLACEHOLDERS,
    K8S_READY_PATH,
    K8S_TLS_DIR,
    K8S_TLS_SDS,
    REPLICA_PORT,
    ImagePaths,
    Limits,
)
from edge.generate import ENVOY_YAML, K8S_ENVOY_REMOTE_JWKS_YAML, K8S_ENVOY_YAML, outputs

CHART = ROOT / "deploy" / "helm" / "runtrack"
DRAIN_HOOK = CHART / "files" / "envoy-drain.sh"
NAMESPACE = "runtrack-test"
REPLICAS = ("tracking", "summary")
COMPONENTS = (*REPLICAS, "envoy")

Objects = list[dict[str, Any]]


@pytest.fixture(scope="session")
def helm() -> Path:
    """RUNTRACK_HELM, or helm built from the Go module proxy into the cache (once per machine, as
    `scripts/k8s up` builds it)."""
    named = os.environ.get("RUNTRACK_HELM")
    if named:
        if not Path(named).is_file():
            pytest.fail(f"RUNTRACK_HELM={named} is not a file")
        return Path(named)
    return node.tool("helm")


@cache
def _template(helm: Path, values_json: str = "{}", *files: tuple[str, str]) -> tuple[str, ...]:
    """The chart's manifests (as YAML documents) for these values (JSON) and --set-file pairs."""
    command = [str(helm), "template", "rt", str(CHART), "--namespace", NAMESPACE, "--values", "-"]
    for key, path in files:
        command += ["--set-file", f"{key}={path}"]
    out = subprocess.run(command, input=values_json, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise ChartError(out.stderr)
    return tuple(doc for doc in out.stdout.split("\n---\n") if doc.strip())


class ChartError(Exception):
    """helm refused to render (a `fail` in a template or a value against values.schema.json)."""


# TLS is required: every render names a Secret unless the test says otherwise.
WITH_TLS = {"tls": {"secretName": "runtrack-tls"}}


@pytest.fixture(scope="session")
def render(helm: Path) -> Callable[..., Objects]:
    def render(values: dict[str, Any] | None = None, **files: str | Path) -> Objects:
        values = {**WITH_TLS, **(values or {})}
        docs = _template(helm, json.dumps(values, sort_keys=True), *sorted((k, str(v)) for k, v in files.items()))
        return [doc for doc in (yaml.safe_load(text) for text in docs) if doc]

    return render


def one(objects: Objects, kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def names(objects: Objects, kind: str) -> set[str]:
    return {o["metadata"]["name"] for o in objects if o["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def env(deployment: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(deployment)["env"]}


def envoy_config(objects: Objects) -> str:
    return str(one(objects, "ConfigMap", "envoy")["data"]["envoy.yaml"])


def cluster(config: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in config["static_resources"]["clusters"] if c["name"] == name]
    return found


def jwt_filter(config: dict[str, Any]) -> dict[str, Any]:
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    (jwt,) = [f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.jwt_authn"]
    return dict(jwt["typed_config"])


def jwt_provider(config: dict[str, Any]) -> dict[str, Any]:
    return dict(jwt_filter(config)["providers"]["runtrack"])


# ---- the Envoy configuration the chart carries ------------------------------------------------------


def test_the_charts_envoy_configs_are_the_generators_render():
    # files/envoy.yaml is envoy/envoy.yaml itself (a link): the render is committed once.
    assert K8S_ENVOY_YAML.is_symlink() and K8S_ENVOY_YAML.resolve() == ENVOY_YAML.resolve()
    for path in (ENVOY_YAML, K8S_ENVOY_REMOTE_JWKS_YAML):
        assert path.read_text() == outputs()[path], f"{path.relative_to(ROOT)} is stale: run scripts/gen-envoy"


def test_the_charts_envoy_configs_hold_every_placeholder_the_chart_replaces():
    local, remote = K8S_ENVOY_YAML.read_text(), K8S_ENVOY_REMOTE_JWKS_YAML.read_text()
    for placeholder in K8S_PLACEHOLDERS:
        assert placeholder in remote
    assert {p for p in K8S_PLACEHOLDERS if p in local} == {
        "__NAMESPACE__",
        "__CLUSTER_DOMAIN__",
        "__JWT_ISSUER__",
        "__JWT_AUDIENCE__",
        "__PLAINTEXT_ADDRESS__",
        "__LIMIT_CALLS_PER_SECOND__",
        "__LIMIT_CALLS_BURST__",
        "__LIMIT_STREAM_OPENS_PER_SECOND__",
        "__LIMIT_STREAM_OPENS_BURST__",
        "__LIMIT_FILES_PER_SECOND__",
        "__LIMIT_FILES_BURST__",
        "__LIMIT_MAX_RUNNERS__",
        "__LIMIT_RECORD_STREAMS_PER_RUNNER__",
        "__LIMIT_WATCH_STREAMS_PER_LINK__",
        "__LIMIT_WATCH_STREAMS_PER_RUNNER__",
        "__LIMIT_STREAMS_PER_CONNECTION__",
        "__LIMIT_STREAM_LB_POLICY__",
        "__TRACES_HOST__",
        "__TRACES_PORT__",
        "__TRACE_SAMPLING_PERCENT__",
        "__TRACE_CLIENT_SAMPLING_PERCENT__",
    }
    templates = "".join(p.read_text() for p in (CHART / "templates").rglob("*.yaml"))
    for placeholder in K8S_PLACEHOLDERS:
        assert f'"{placeholder}"' in templates, f"the chart never replaces {placeholder}"


# ---- the chart ----------------------------------------------------------------------------------


def test_helm_lint_passes(helm):
    out = subprocess.run([str(helm), "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_defaults_render_every_object_under_its_fixed_name(render):
    objects = render()
    assert names(objects, "Deployment") == set(COMPONENTS)
    assert names(objects, "Service") == {*COMPONENTS, "envoy-internal"}
    assert names(objects, "HorizontalPodAutoscaler") == set(REPLICAS)
    assert names(objects, "PodDisruptionBudget") == set(COMPONENTS)
    assert names(objects, "NetworkPolicy") == {*COMPONENTS, *(f"{c}-egress" for c in COMPONENTS), "migrate"}
    assert names(objects, "Job") == {"migrate"}
    assert names(objects, "ConfigMap") == {"envoy", "envoy-jwks", "envoy-live-jwks", "envoy-tls-sds"}
    assert names(objects, "Secret") == {"runtrack-postgres"}
    for o in objects:
        labels = o["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "runtrack"
        assert labels["app.kubernetes.io/instance"] == "rt"
        assert labels["app.kubernetes.io/component"] in {*COMPONENTS, "migrate"}
        assert o["metadata"]["namespace"] == NAMESPACE


def test_the_schemas_are_migrated_by_a_job_after_each_install_and_upgrade_and_it_reaches_only_the_stores(render):
    store = [{"ipBlock": {"cidr": "10.1.2.0/24"}}]
    pg = [{"ipBlock": {"cidr": "10.3.4.5/32"}}]
    values = {
        "cql": {"hosts": ["cql-a", "cql-b"], "keyspace": "rt", "port": 9043},
        "networkPolicy": {"egress": {"cql": store, "postgres": {"port": 6432, "to": pg}}},
    }
    objects = render(values)
    job = one(objects, "Job", "migrate")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    commands = {c["name"]: c["command"] for c in pod["containers"]}
    assert commands == {
        "cql": ["python", "-m", "tracking_service.migrate"],
        "postgres": ["python", "-m", "summary_service.migrate"],
    }
    cql, postgres = ({e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]} for c in pod["containers"])
    assert (cql["SCYLLA_HOSTS"], cql["SCYLLA_KEYSPACE"], cql["SCYLLA_PORT"]) == ("cql-a,cql-b", "rt", "9043")
    assert postgres == {"DATABASE_URL": {"secretKeyRef": {"name": "runtrack-postgres", "key": "uri"}}}
    for c in pod["containers"]:
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    policy = one(objects, "NetworkPolicy", "migrate")["spec"]
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "migrate"
    assert policy["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in policy
    dns, to_cql, to_pg = policy["egress"]
    assert _ports(dns) == DNS
    assert to_cql["to"] == store and _ports(to_cql) == [(9043, "TCP"), (19042, "TCP")]
    assert to_pg == {"to": pg, "ports": [{"port": 6432, "protocol": "TCP"}]}
    off = render({"migrations": {"enabled": False}})
    assert names(off, "Job") == set() and "migrate" not in names(off, "NetworkPolicy")


def test_each_replica_runs_its_service_on_the_grpc_port_with_metrics_beside_it(render):
    objects = render()
    for name in REPLICAS:
        deployment = one(objects, "Deployment", name)
        c = container(deployment)
        assert c["image"] == "runtrack/app:dev" and c["imagePullPolicy"] == "Never"
        assert c["command"] == ["python", "-m", f"{name}_service"]
        assert c["args"] == ["--port", "50051", "--metrics-port", "9100"]
        assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"grpc": REPLICA_PORT, "metrics": 9100}
        variables = env(deployment)
        assert variables["RUNTRACK_BIND_HOST"] == "0.0.0.0"
        assert variables["RUNTRACK_API_ADDRESS"] == f"envoy-internal.{NAMESPACE}.svc.cluster.local:8080"
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == "9100"
        assert annotations["prometheus.io/path"] == "/metrics"
        assert deployment["spec"]["template"]["spec"]["enableServiceLinks"] is False


def test_the_store_settings_come_from_values_and_the_url_from_a_secret(render):
    objects = render(
        {
            "cql": {
                "hosts": ["10.244.0.1", "10.244.0.2"],
                "port": 19042,
                "keyspace": "rt",
                "consistency": "ONE",
                "replication": "{'class': 'SimpleStrategy', 'replication_factor': 1}",
            },
            "postgres": {"url": "postgresql://runtrack:secret@10.244.0.1:5432/runtrack"},
        }
    )
    tracking = env(one(objects, "Deployment", "tracking"))
    assert tracking["SCYLLA_HOSTS"] == "10.244.0.1,10.244.0.2"
    assert tracking["SCYLLA_PORT"] == "19042"
    assert tracking["SCYLLA_KEYSPACE"] == "rt"
    assert tracking["SCYLLA_CONSISTENCY"] == "ONE"
    assert tracking["SCYLLA_REPLICATION"] == "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    assert "DATABASE_URL" not in tracking
    summary = env(one(objects, "Deployment", "summary"))
    assert summary["DATABASE_URL"] == {"secretKeyRef": {"name": "runtrack-postgres", "key": "uri"}}
    assert one(objects, "Secret", "runtrack-postgres")["stringData"]["uri"] == (
        "postgresql://runtrack:secret@10.244.0.1:5432/runtrack"
    )


def test_a_primary_and_its_standbys_are_reached_through_one_multi_host_url_that_follows_writes(render):
    objects = render({"postgres": {"nodes": ["pg-0.pg:5432", "pg-1.pg:5432"], "user": "rt", "database": "runs"}})
    assert one(objects, "Secret", "runtrack-postgres")["stringData"]["uri"] == (
        "postgresql://rt@pg-0.pg:5432,pg-1.pg:5432/runs?target_session_attrs=read-write"
    )
    summary = env(one(objects, "Deployment", "summary"))
    assert summary["DATABASE_URL"] == {"secretKeyRef": {"name": "runtrack-postgres", "key": "uri"}}
    # One node is not a cluster, and a node is host:port.
    for nodes in (["pg-0.pg:5432"], ["pg-0.pg", "pg-1.pg"], ["pg-0.pg:5432", "pg-0.pg:5432"]):
        with pytest.raises(ChartError):
            render({"postgres": {"nodes": nodes}})


def test_a_cloudnativepg_secret_replaces_the_charts_own(render):
    objects = render({"postgres": {"existingSecret": "pg-app", "existingSecretKey": "uri"}})
    assert "Secret" not in {o["kind"] for o in objects}
    summary = env(one(objects, "Deployment", "summary"))
    assert summary["DATABASE_URL"] == {"secretKeyRef": {"name": "pg-app", "key": "uri"}}


def test_replicas_are_probed_with_kubernetes_grpc_probes_on_the_overall_health(render):
    objects = render()
    for name in REPLICAS:
        c = container(one(objects, "Deployment", name))
        assert c["readinessProbe"]["grpc"] == {"port": REPLICA_PORT, "service": ""}
        # Liveness asks a name that stays SERVING through a store outage (the replica is not restarted).
        assert c["livenessProbe"]["grpc"] == {"port": REPLICA_PORT, "service": "liveness"}
        liveness = c["livenessProbe"]
        assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60


def test_envoy_is_ready_by_its_own_health_answer_on_the_listener(render):
    c = container(one(render(), "Deployment", "envoy"))
    assert c["readinessProbe"]["httpGet"] == {"path": K8S_READY_PATH, "port": "https", "scheme": "HTTPS"}
    assert c["command"] == ["envoy"]
    assert c["args"][:2] == ["-c", "/etc/envoy/envoy.yaml"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"https": 8443, "http": 8080, "stats": 9902}


def test_the_grace_period_covers_the_prestop_sleep_the_drain_and_the_shutdown(render):
    shutdown = {"preStopSleepSeconds": 4, "drainDelaySeconds": 2.5, "shutdownGraceSeconds": 12, "marginSeconds": 3}
    objects = render({"shutdown": shutdown})
    for name in REPLICAS:
        deployment = one(objects, "Deployment", name)
        spec = deployment["spec"]["template"]["spec"]
        assert container(deployment)["lifecycle"]["preStop"] == {"sleep": {"seconds": 4}}
        assert spec["terminationGracePeriodSeconds"] == 4 + 3 + 12 + 3
        assert env(deployment)["DRAIN_DELAY_S"] == "2.5"
        assert env(deployment)["SHUTDOWN_GRACE_S"] == "12"
    defaults = one(render(), "Deployment", "tracking")["spec"]["template"]["spec"]
    assert defaults["terminationGracePeriodSeconds"] >= 3 + 2 + 10


def test_envoy_drains_before_it_stops(render):
    deployment = one(render({"envoy": {"drain": {"seconds": 7}}}), "Deployment", "envoy")
    c = container(deployment)
    assert c["args"][2:] == ["--drain-time-s", "7"]
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 7
    shell, flag, script, name, seconds = c["lifecycle"]["preStop"]["exec"]["command"]
    assert (shell, flag, name, seconds) == ("/bin/bash", "-c", "envoy-drain", "7")
    assert script.strip() == DRAIN_HOOK.read_text().strip()
    no_shell = container(one(render({"envoy": {"drain": {"seconds": 7, "shell": ""}}}), "Deployment", "envoy"))
    assert no_shell["lifecycle"]["preStop"] == {"sleep": {"seconds": 7}}


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as err:
        return err.code


def test_the_drain_hook_fails_envoys_readiness_and_drains_its_listener(tmp_path):
    """The hook against a real Envoy (the Kubernetes config, on free loopback ports): /healthz turns
    503 at once, the hook waits the drain time, and the listener is closed by then."""
    listen, admin = procs.free_port(), procs.free_port()
    text = outputs()[ENVOY_YAML]
    config = yaml.safe_load(text)
    assert config["admin"]["address"]["socket_address"]["port_value"] == 9901
    assert "/dev/tcp/127.0.0.1/9901" in DRAIN_HOOK.read_text()
    config["admin"]["address"]["socket_address"]["port_value"] = admin
    listener = config["static_resources"]["listeners"][0]
    config["static_resources"]["listeners"] = [listener]  # the plaintext one: no certificate needed here
    listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": listen}
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    # Only what the readiness answer needs: no token check, no transcoder, no replicas.
    hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"].endswith(("health_check", "router"))]
    hcm["route_config"]["virtual_hosts"][0]["routes"] = []
    hcm["http2_protocol_options"]["max_concurrent_streams"] = 100  # the chart's placeholder
    hcm.pop("tracing")  # its collector's cluster is one of those left out
    config["static_resources"]["clusters"] = []
    (tmp_path / "envoy.yaml").write_text(yaml.safe_dump(config))
    envoy = subprocess.Popen(
        [str(tools.envoy()), "-c", str(tmp_path / "envoy.yaml"), "--drain-time-s", "2", "--base-id", str(admin)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ready = f"http://127.0.0.1:{listen}{K8S_READY_PATH}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if _get(ready) == 200:
                    break
            except OSError:
                time.sleep(0.1)
        assert _get(ready) == 200
        hook = DRAIN_HOOK.read_text().replace("127.0.0.1/9901", f"127.0.0.1/{admin}")
        started = time.monotonic()
        drain = subprocess.Popen(["bash", "-c", hook, "envoy-drain", "2"])
        time.sleep(0.5)
        assert _get(ready) == 503
        assert drain.wait(timeout=10) == 0
        assert time.monotonic() - started >= 2
        with pytest.raises(OSError):
            _get(ready)
    finally:
        envoy.terminate()
        envoy.wait(timeout=10)


def test_rollouts_surge_one_pod_and_never_go_below_the_count(render):
    for name in COMPONENTS:
        spec = one(render(), "Deployment", name)["spec"]
        assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
        assert spec["minReadySeconds"] > 0


def test_every_container_runs_as_a_numbered_user_with_nothing_it_does_not_need(render):
    for name in COMPONENTS:
        deployment = one(render(), "Deployment", name)
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["automountServiceAccountToken"] is False
        security = container(deployment)["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        mounts = {m["mountPath"]: m["name"] for m in container(deployment)["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]


def test_resources_come_from_values(render):
    objects = render({"tracking": {"resources": {"requests": {"cpu": "500m"}, "limits": {"memory": "1Gi"}}}})
    assert container(one(objects, "Deployment", "tracking"))["resources"] == {
        "requests": {"cpu": "500m", "memory": "128Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }
    envoy = container(one(objects, "Deployment", "envoy"))["resources"]
    assert envoy == {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}}


def test_the_hpas_scale_tracking_on_open_streams_and_summary_on_calls_per_second(render):
    objects = render(
        {
            "hpa": {
                "tracking": {"minReplicas": 1, "maxReplicas": 9, "targetStreams": 50},
                "summary": {"targetCallsPerSecond": 75},
                "scaleDown": {"stabilizationWindowSeconds": 5},
            }
        }
    )
    expected = {"tracking": ("runtrack_streams_open", "50"), "summary": ("runtrack_grpc_calls_per_second", "75")}
    for name, (metric, target) in expected.items():
        spec = one(objects, "HorizontalPodAutoscaler", name)["spec"]
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert spec["metrics"] == [
            {
                "type": "Pods",
                "pods": {"metric": {"name": metric}, "target": {"type": "AverageValue", "averageValue": target}},
            }
        ]
        assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 5
        assert spec["behavior"]["scaleUp"]["policies"]
    assert one(objects, "HorizontalPodAutoscaler", "tracking")["spec"]["minReplicas"] == 1
    assert one(objects, "HorizontalPodAutoscaler", "tracking")["spec"]["maxReplicas"] == 9
    assert one(objects, "HorizontalPodAutoscaler", "summary")["spec"]["maxReplicas"] == 4


def test_the_hpa_defaults_are_the_contracts(render):
    objects = render()
    tracking = one(objects, "HorizontalPodAutoscaler", "tracking")["spec"]
    summary = one(objects, "HorizontalPodAutoscaler", "summary")["spec"]
    assert (tracking["minReplicas"], tracking["maxReplicas"]) == (2, 6)
    assert (summary["minReplicas"], summary["maxReplicas"]) == (2, 4)
    assert tracking["metrics"][0]["pods"]["target"]["averageValue"] == "3000"
    assert summary["metrics"][0]["pods"]["target"]["averageValue"] == "200"
    assert tracking["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 60


def test_the_replica_count_is_the_hpas_unless_it_is_off(render):
    for name in REPLICAS:
        assert "replicas" not in one(render(), "Deployment", name)["spec"]
    objects = render({"hpa": {"enabled": False}, "tracking": {"replicas": 3}, "summary": {"replicas": 1}})
    assert "HorizontalPodAutoscaler" not in {o["kind"] for o in objects}
    assert one(objects, "Deployment", "tracking")["spec"]["replicas"] == 3
    assert one(objects, "Deployment", "summary")["spec"]["replicas"] == 1


def test_the_replicas_services_are_headless_and_list_only_ready_pods(render):
    objects = render()
    for name in REPLICAS:
        spec = one(objects, "Service", name)["spec"]
        assert spec["clusterIP"] == "None"
        assert spec["publishNotReadyAddresses"] is False
        assert {p["name"]: p["port"] for p in spec["ports"]} == {"grpc": REPLICA_PORT, "metrics": 9100}
        assert spec["selector"]["app.kubernetes.io/component"] == name


def test_envoy_is_a_node_port_over_tls_and_plaintext_only_when_asked(render, tmp_path):
    objects = render({"envoy": {"tlsNodePort": 31443}})
    spec = one(objects, "Service", "envoy")["spec"]
    assert spec["type"] == "NodePort"
    assert [(p["name"], p["port"], p["nodePort"]) for p in spec["ports"]] == [("https", 8443, 31443)]
    pod = one(objects, "Deployment", "envoy")["spec"]["template"]["spec"]
    assert {"name": "tls", "secret": {"secretName": "runtrack-tls"}} in pod["volumes"]
    assert [p["name"] for p in container(one(objects, "Deployment", "envoy"))["ports"]] == ["https", "http", "stats"]
    probe = container(one(objects, "Deployment", "envoy"))["readinessProbe"]["httpGet"]
    assert (probe["port"], probe["scheme"]) == ("https", "HTTPS")
    config = yaml.safe_load(envoy_config(objects))
    listeners = {x["name"]: x["address"]["socket_address"] for x in config["static_resources"]["listeners"]}
    assert listeners["public_tls"] == {"address": "0.0.0.0", "port_value": 8443}
    # Plaintext off: not on the public Service, but on the pod for the replicas' calls to each other,
    # through a Service of the cluster's own that only the replicas may reach.
    assert listeners["public"]["address"] == "0.0.0.0"
    internal = one(objects, "Service", "envoy-internal")["spec"]
    assert internal["type"] == "ClusterIP" and [(p["port"], p["targetPort"]) for p in internal["ports"]] == [
        (8080, "http")
    ]
    policy = one(objects, "NetworkPolicy", "envoy")["spec"]
    rules = {r["ports"][0]["port"]: r.get("from") for r in policy["ingress"]}
    assert rules[8443] is None, "TLS from anywhere"
    assert sorted(p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in rules[8080]) == [
        "summary",
        "tracking",
    ]
    sds = yaml.safe_load(one(objects, "ConfigMap", "envoy-tls-sds")["data"]["sds.yaml"])
    assert sds["resources"][0]["tls_certificate"]["private_key"] == {"filename": "/etc/runtrack/tls/tls.key"}

    objects = render({"envoy": {"plaintext": True}})
    spec = one(objects, "Service", "envoy")["spec"]
    assert [(p["name"], p["port"], p["nodePort"]) for p in spec["ports"]] == [
        ("https", 8443, 30443),
        ("http", 8080, 30080),
    ]
    config = yaml.safe_load(envoy_config(objects))
    assert config["static_resources"]["listeners"][0]["address"]["socket_address"]["address"] == "0.0.0.0"


def test_tls_is_required_and_a_certificate_given_as_values_becomes_the_charts_secret(render, tmp_path):
    with pytest.raises(ChartError, match="TLS is required"):
        render({"tls": {"secretName": ""}})
    (tmp_path / "server.crt").write_text("CERT")
    (tmp_path / "server.key").write_text("KEY")
    objects = render({"tls": {}}, **{"tls.certificate": tmp_path / "server.crt", "tls.key": tmp_path / "server.key"})
    secret = one(objects, "Secret", "envoy-tls")
    assert secret["type"] == "kubernetes.io/tls"
    assert base64.b64decode(secret["data"]["tls.key"]) == b"KEY"
    pod = one(objects, "Deployment", "envoy")["spec"]["template"]["spec"]
    assert {"name": "tls", "secret": {"secretName": "envoy-tls"}} in pod["volumes"]


def test_envoys_stats_port_is_scraped_from_where_prometheus_is_and_nothing_else(render):
    objects = render({"networkPolicy": {"scrapeFrom": ["10.0.0.1/32"]}})
    template = one(objects, "Deployment", "envoy")["spec"]["template"]
    notes = template["metadata"]["annotations"]
    assert (notes["prometheus.io/scrape"], notes["prometheus.io/port"], notes["prometheus.io/path"]) == (
        "true",
        "9902",
        "/stats/prometheus",
    )
    (container,) = template["spec"]["containers"]
    assert {"name": "stats", "containerPort": 9902, "protocol": "TCP"} in container["ports"]
    rules = one(objects, "NetworkPolicy", "envoy")["spec"]["ingress"]
    (stats,) = [r for r in rules if r["ports"][0]["port"] == 9902]
    assert stats["from"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    config = yaml.safe_load(envoy_config(objects))
    (listener,) = [x for x in config["static_resources"]["listeners"] if x["name"] == "stats"]
    routes = listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    assert routes[0]["match"]["path"] == "/stats/prometheus" and routes[0]["route"]["cluster"] == "admin"
    assert routes[1] == {"match": {"prefix": "/"}, "direct_response": {"status": 404}}
    (admin,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "admin"]
    address = admin["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": config["admin"]["address"]["socket_address"]["port_value"],
    }
    # Without sources, no rule; without scraping, no annotations.
    rules = one(render({"networkPolicy": {"scrapeFrom": []}}), "NetworkPolicy", "envoy")["spec"]["ingress"]
    assert 9902 not in [r["ports"][0]["port"] for r in rules]
    template = one(render({"prometheus": {"scrape": False}}), "Deployment", "envoy")["spec"]["template"]
    assert "prometheus.io/scrape" not in template["metadata"].get("annotations", {})


def test_only_envoy_and_the_node_reach_the_replicas(render):
    objects = render({"networkPolicy": {"scrapeFrom": ["10.0.0.1/32", "10.0.0.2/32"]}})
    for name in REPLICAS:
        spec = one(objects, "NetworkPolicy", name)["spec"]
        assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == name
        assert spec["policyTypes"] == ["Ingress"]
        grpc_rule, metrics_rule = spec["ingress"]
        assert grpc_rule["ports"] == [{"port": REPLICA_PORT, "protocol": "TCP"}]
        (envoy,) = [peer for peer in grpc_rule["from"] if "podSelector" in peer]
        assert envoy["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "envoy"
        node = [{"ipBlock": {"cidr": "10.0.0.1/32"}}, {"ipBlock": {"cidr": "10.0.0.2/32"}}]
        assert [peer for peer in grpc_rule["from"] if "ipBlock" in peer] == node  # the kubelet's probes
        assert metrics_rule == {"from": node, "ports": [{"port": 9100, "protocol": "TCP"}]}
    # No source for the metrics port: no rule (an empty `from` would let everyone in).
    spec = one(render({"networkPolicy": {"scrapeFrom": []}}), "NetworkPolicy", "tracking")["spec"]
    assert [rule["ports"][0]["port"] for rule in spec["ingress"]] == [REPLICA_PORT]
    assert "NetworkPolicy" not in {o["kind"] for o in render({"networkPolicy": {"enabled": False}})}


def _egress(objects: Objects, component: str) -> list[dict[str, Any]]:
    spec = one(objects, "NetworkPolicy", f"{component}-egress")["spec"]
    assert spec["policyTypes"] == ["Egress"]
    assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == component
    rules: list[dict[str, Any]] = spec["egress"]
    for rule in rules:
        assert rule["to"], "an empty `to` would let every address out"
    return rules


def _ports(rule: dict[str, Any]) -> list[tuple[int, str]]:
    return [(p["port"], p["protocol"]) for p in rule.get("ports", [])]


def _component_of(rule: dict[str, Any]) -> list[str]:
    return sorted(p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in rule["to"])


DNS = [(53, "UDP"), (53, "TCP")]
NOT_PUBLIC_V4 = {"10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16"}
NOT_PUBLIC_V6 = {"::1/128", "fc00::/7", "fe80::/10"}


def test_each_component_may_connect_only_where_its_work_is(render):
    store = [{"ipBlock": {"cidr": "10.1.2.0/24"}}]
    pg = [{"ipBlock": {"cidr": "10.3.4.5/32"}}]
    dns = [{"ipBlock": {"cidr": "10.0.0.10/32"}}]
    values = {
        "cql": {"port": 9043},
        "networkPolicy": {"egress": {"dns": dns, "cql": store, "postgres": {"port": 6432, "to": pg}}},
    }
    objects = render(values)
    dns_rule, internal, cql, public = _egress(objects, "tracking")
    assert dns_rule == {"to": dns, "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}
    assert _component_of(internal) == ["envoy"] and _ports(internal) == [(8080, "TCP")]
    assert cql["to"] == store and _ports(cql) == [(9043, "TCP"), (19042, "TCP")]
    # Webhooks: the public internet, any port, nothing private, loopback, link-local or shared.
    assert "ports" not in public
    v4, v6 = (peer["ipBlock"] for peer in public["to"])
    assert v4["cidr"] == "0.0.0.0/0" and set(v4["except"]) >= NOT_PUBLIC_V4
    assert v6["cidr"] == "::/0" and set(v6["except"]) >= NOT_PUBLIC_V6

    dns_rule, internal, postgres = _egress(objects, "summary")
    assert _ports(dns_rule) == DNS and _component_of(internal) == ["envoy"]
    assert postgres == {"to": pg, "ports": [{"port": 6432, "protocol": "TCP"}]}

    dns_rule, replicas = _egress(objects, "envoy")
    assert _ports(dns_rule) == DNS
    assert _component_of(replicas) == ["summary", "tracking"] and _ports(replicas) == [(REPLICA_PORT, "TCP")]


def test_egress_is_shaped_by_values(render):
    # No webhooks: tracking keeps its store and Envoy, and nothing public.
    rules = _egress(render({"networkPolicy": {"egress": {"webhooks": False}}}), "tracking")
    assert not any("ipBlock" in peer and peer["ipBlock"]["cidr"] == "0.0.0.0/0" for r in rules for peer in r["to"])
    # A JWKS URL: Envoy fetches it from the public internet, on the URL's port alone.
    rules = _egress(render({"jwks": {"url": "https://id.example.com:8443/jwks.json"}}), "envoy")
    assert rules[-1]["to"][0]["ipBlock"]["cidr"] == "0.0.0.0/0" and _ports(rules[-1]) == [(8443, "TCP")]
    assert _ports(_egress(render({"jwks": {"url": "https://id.example.com/jwks.json"}}), "envoy")[-1]) == [(443, "TCP")]
    # More rules per component, as given.
    extra = {"to": [{"ipBlock": {"cidr": "10.9.0.0/16"}}], "ports": [{"port": 4317, "protocol": "TCP"}]}
    assert _egress(render({"networkPolicy": {"egress": {"extra": {"summary": [extra]}}}}), "summary")[-1] == extra
    # Off: no egress policy (the ingress ones stay).
    objects = render({"networkPolicy": {"egress": {"enabled": False}}})
    assert names(objects, "NetworkPolicy") == set(COMPONENTS)
    # An empty peer list is refused before anything is installed: it would let every address out.
    for key in ("dns", "cql"):
        with pytest.raises(ChartError):
            render({"networkPolicy": {"egress": {key: []}}})
    with pytest.raises(ChartError):
        render({"networkPolicy": {"egress": {"postgres": {"port": 5432, "to": []}}}})


def test_a_disruption_leaves_one_pod_of_each_component(render):
    objects = render()
    for name in COMPONENTS:
        spec = one(objects, "PodDisruptionBudget", name)["spec"]
        assert spec["minAvailable"] == 1
        assert spec["selector"]["matchLabels"]["app.kubernetes.io/component"] == name
    assert "PodDisruptionBudget" not in {o["kind"] for o in render({"pdb": {"enabled": False}})}


def test_envoys_config_finds_the_replicas_in_the_release_namespace_and_checks_the_issuer(render):
    objects = render({"jwt": {"issuer": "https://id.example.com/realms/run", "audience": "runtrack-web"}})
    text = envoy_config(objects)
    assert not [p for p in K8S_PLACEHOLDERS if p in text]
    config = yaml.safe_load(text)
    for name in REPLICAS:
        (endpoint,) = cluster(config, name)["load_assignment"]["endpoints"][0]["lb_endpoints"]
        assert endpoint["endpoint"]["address"]["socket_address"] == {
            "address": f"{name}.{NAMESPACE}.svc.cluster.local",
            "port_value": REPLICA_PORT,
        }
        dns = cluster(config, name)["cluster_type"]["typed_config"]
        assert dns["dns_refresh_rate"] == "1s" and dns["respect_dns_ttl"] is False
    provider = jwt_provider(config)
    assert provider["issuer"] == "https://id.example.com/realms/run"
    assert provider["audiences"] == ["runtrack-web"]
    listeners = {x["name"]: x["address"]["socket_address"] for x in config["static_resources"]["listeners"]}
    assert listeners["public_tls"]["address"] == "0.0.0.0"
    assert config["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9901}
    defaults = jwt_provider(yaml.safe_load(envoy_config(render())))
    assert (defaults["issuer"], defaults["audiences"]) == (ISSUER, ["runtrack"])


def test_envoy_reads_the_jwks_where_the_chart_mounts_it(render, tmp_path):
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": [{"kty": "EC", "kid": "k1"}]}')
    objects = render(**{"jwks.content": jwks})
    provider = jwt_provider(yaml.safe_load(envoy_config(objects)))
    assert provider["local_jwks"] == {"filename": K8S_JWKS_FILE}
    pod = one(objects, "Deployment", "envoy")["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    directory, key = K8S_JWKS_FILE.rsplit("/", 1)
    assert mounts["jwks"] == directory
    mounted = one(objects, "ConfigMap", volumes["jwks"]["configMap"]["name"])
    assert json.loads(mounted["data"][key]) == json.loads(jwks.read_text())
    assert mounts["config"] == "/etc/envoy" and volumes["config"]["configMap"]["name"] == "envoy"


def test_without_keys_envoy_gets_one_that_signs_nothing(render):
    keys = json.loads(one(render(), "ConfigMap", "envoy-jwks")["data"]["jwks.json"])["keys"]
    assert [k["kid"] for k in keys] == ["runtrack-no-signer"]


def test_a_jwks_url_has_envoy_fetch_the_keys_from_the_identity_provider(render):
    objects = render({"jwks": {"url": "https://id.example.com:8443/realms/run/certs"}})
    config = yaml.safe_load(envoy_config(objects))
    remote = jwt_provider(config)["remote_jwks"]
    assert remote["http_uri"]["uri"] == "https://id.example.com:8443/realms/run/certs"
    idp = cluster(config, remote["http_uri"]["cluster"])
    address = idp["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "id.example.com", "port_value": 8443}
    assert idp["transport_socket"]["typed_config"]["sni"] == "id.example.com"
    assert names(objects, "ConfigMap") == {"envoy", "envoy-live-jwks", "envoy-tls-sds"}
    pod = one(objects, "Deployment", "envoy")["spec"]["template"]["spec"]
    assert "jwks" not in {v["name"] for v in pod["volumes"]}
    default_port = yaml.safe_load(envoy_config(render({"jwks": {"url": "https://id.example.com/certs"}})))
    endpoint = cluster(default_port, "jwks")["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"]["port_value"] == 443


def test_a_new_envoy_config_or_key_rolls_the_envoy_pods(render, tmp_path):
    def checksum(objects: Objects) -> str:
        annotations = one(objects, "Deployment", "envoy")["spec"]["template"]["metadata"]["annotations"]
        return str(annotations["checksum/config"])

    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    assert checksum(render()) != checksum(render(**{"jwks.content": jwks}))
    assert checksum(render()) != checksum(render({"jwt": {"issuer": "https://other"}}))


def test_wrong_values_are_refused_before_anything_is_installed(render):
    for values in (
        {"cql": {"consistency": "SOMETIMES"}},
        {"envoy": {"nodePort": 8080}},
        {"jwks": {"url": "http://id.example.com/certs"}},
        {"hpa": {"tracking": {"targetStreams": 0}}},
        {"postgres": {"url": ""}},
        {"replicaCount": 3},
        {"prometheusRule": {"runbookUrlPrefix": "runbooks"}},
    ):
        with pytest.raises(ChartError):
            render(values)


def _self_signed_ca(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "runtrack test CA")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


@pytest.mark.parametrize("remote_jwks", [False, True], ids=["jwks-file", "jwks-url"])
def test_envoy_validates_the_config_the_chart_renders(render, tmp_path, remote_jwks):
    """`envoy --mode validate` on the ConfigMap's content, with the image's paths moved under tmp_path
    (the page, the OpenAPI document and the descriptor set, and the mounted JWKS)."""
    issuer = LocalIssuer(tmp_path / "keys")
    issuer.ensure_keys()
    if remote_jwks:
        _self_signed_ca(tmp_path / "ca.pem")
        values = {"jwks": {"url": "https://id.example.com/certs", "caFile": str(tmp_path / "ca.pem")}}
        text = envoy_config(render(values))
    else:
        text = envoy_config(render(**{"jwks.content": issuer.jwks_file}))
    paths = ImagePaths()
    web, generated, jwks = tmp_path / "web", tmp_path / "generated", tmp_path / "jwks"
    for directory in (web / "assets", generated, jwks):
        directory.mkdir(parents=True)
    for page in ("index.html", "assets/app.js", "assets/app.css"):
        (web / page).write_text("served by Envoy")
    shutil.copy(DESCRIPTOR_SET, generated / DESCRIPTOR_SET.name)
    shutil.copy(OPENAPI, generated / OPENAPI.name)
    shutil.copy(issuer.jwks_file, jwks / Path(K8S_JWKS_FILE).name)
    live = LocalIssuer(tmp_path / "keys", prefix="live-")
    live.ensure_keys()
    (tmp_path / "live-jwks").mkdir()
    shutil.copy(live.jwks_file, tmp_path / "live-jwks" / Path(K8S_LIVE_JWKS_FILE).name)
    text = text.replace(paths.web_dist, str(web)).replace(paths.generated, str(generated))
    text = text.replace(str(Path(K8S_JWKS_FILE).parent), str(jwks))
    text = text.replace(str(Path(K8S_LIVE_JWKS_FILE).parent), str(tmp_path / "live-jwks"))
    served = tls.ensure(tmp_path / "tls")
    text = text.replace(K8S_TLS_SDS, str(served.sds)).replace(K8S_TLS_DIR, str(served.sds.parent))
    config = tmp_path / "envoy.yaml"
    config.write_text(text)
    out = subprocess.run(
        [str(tools.envoy()), "--mode", "validate", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_live_links_are_signed_by_the_tracking_pods_and_verified_by_envoy(render, tmp_path):
    key, jwks = tmp_path / "live-signing-key.pem", tmp_path / "live-jwks.json"
    key.write_text("-----BEGIN PRIVATE KEY-----\nnot a real key\n-----END PRIVATE KEY-----\n")
    jwks.write_text('{"keys": [{"kty": "EC", "kid": "live-1"}]}')
    values = {"liveLinks": {"publicOrigin": "https://run.example.com"}}
    objects = render(values, **{"liveLinks.signingKey": key, "liveLinks.jwks": jwks})
    secret = one(objects, "Secret", "live-link-key")
    assert secret["stringData"]["signing-key.pem"] == key.read_text()
    tracking = one(objects, "Deployment", "tracking")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in container(one(objects, "Deployment", "tracking"))["env"]}
    assert env["LIVE_LINK_KEY_FILE"] == "/etc/runtrack/live-link/signing-key.pem"
    assert env["PUBLIC_ORIGIN"] == "https://run.example.com"
    assert {v["name"]: v for v in tracking["volumes"]}["live-link-key"]["secret"]["secretName"] == "live-link-key"
    summary = one(objects, "Deployment", "summary")["spec"]["template"]["spec"]
    assert "live-link-key" not in {v["name"] for v in summary["volumes"]}, "only the tracking pods sign"
    mounted = one(objects, "ConfigMap", "envoy-live-jwks")["data"]["live-jwks.json"]
    assert json.loads(mounted) == json.loads(jwks.read_text())
    config = yaml.safe_load(envoy_config(objects))
    assert jwt_filter(config)["providers"]["runlink"]["local_jwks"] == {"filename": K8S_LIVE_JWKS_FILE}
    assert "live-link-key" not in names(render(), "Secret"), "no key given: no Secret, links refused"
    # A key without the public origin: a link's url would name Envoy's in-cluster address.
    with pytest.raises(ChartError, match=r"liveLinks\.publicOrigin is needed"):
        render(**{"liveLinks.signingKey": key, "liveLinks.jwks": jwks})


def test_the_per_runner_limits_default_to_envoy_limits_yaml_and_reach_envoys_config(render):
    limits = Limits.load()
    values = yaml.safe_load((CHART / "values.yaml").read_text())["limits"]
    assert values == {
        "calls": {"perSecond": limits.calls.per_second, "burst": limits.calls.burst},
        "streamOpens": {"perSecond": limits.stream_opens.per_second, "burst": limits.stream_opens.burst},
        "files": {"perSecond": limits.files.per_second, "burst": limits.files.burst},
        "maxRunners": limits.max_runners,
        "openStreams": {
            "recordPerRunner": limits.record_streams_per_runner,
            "watchPerLink": limits.watch_streams_per_link,
            "watchPerRunner": limits.watch_streams_per_runner,
            "sameReplica": True,
        },
        "streamsPerConnection": limits.streams_per_connection,
    }
    config = yaml.safe_load(envoy_config(render({"limits": {**values, "calls": {"perSecond": 7, "burst": 9}}})))
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    (limiter,) = [f["typed_config"] for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.local_ratelimit"]
    calls, streams, files, link_calls, link_streams = limiter["descriptors"]
    assert calls["token_bucket"] == {"max_tokens": 9, "tokens_per_fill": 7, "fill_interval": "1s"}
    # A live link's buckets, sized as a runner's, keyed by the link.
    assert link_calls["token_bucket"] == calls["token_bucket"] and link_calls["entries"][0]["key"] == "link"
    assert link_streams["token_bucket"] == streams["token_bucket"]
    assert streams["token_bucket"]["max_tokens"] == limits.stream_opens.burst
    assert files["token_bucket"]["tokens_per_fill"] == limits.files.per_second
    assert limiter["max_dynamic_descriptors"] == limits.max_runners
    assert hcm["http2_protocol_options"]["max_concurrent_streams"] == limits.streams_per_connection
    assert cluster(config, "tracking")["lb_policy"] == "MAGLEV"
    routes = {
        r["match"]["prefix"]: r for r in hcm["route_config"]["virtual_hosts"][0]["routes"] if "prefix" in r["match"]
    }
    record = routes["/runtrack.v1.TrackingService/RecordTrack"]
    assert record["request_headers_to_add"][0]["header"] == {
        "key": "x-runtrack-max-record-streams",
        "value": str(limits.record_streams_per_runner),
    }
    assert record["route"]["hash_policy"] == [{"header": {"header_name": "x-runtrack-user"}}]
    watch = [h["header"] for h in routes["/runtrack.v1.TrackingService/WatchRun"]["request_headers_to_add"]]
    assert watch == [
        {"key": "x-runtrack-max-link-watchers", "value": str(limits.watch_streams_per_link)},
        {"key": "x-runtrack-max-runner-watchers", "value": str(limits.watch_streams_per_runner)},
    ]
    spread = {**values, "openStreams": {**values["openStreams"], "sameReplica": False}}
    config = yaml.safe_load(envoy_config(render({"limits": spread})))
    assert cluster(config, "tracking")["lb_policy"] == "LEAST_REQUEST"
    assert cluster(config, "summary")["lb_policy"] == "LEAST_REQUEST"


# ---- the alerting rules ---------------------------------------------------------------------------------


def _plain_groups() -> list[dict[str, Any]]:
    return [group for path in prometheus.rule_files() for group in yaml.safe_load(path.read_text())["groups"]]


def _by_name(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {group["name"]: group for group in groups}


def test_the_chart_links_every_plain_rule_file():
    linked = {p.name: p.resolve() for p in (CHART / "files" / "prometheus").glob("*.yaml")}
    assert linked == {p.name: p for p in prometheus.rule_files()}


def test_the_prometheus_rule_is_off_unless_asked(render):
    assert names(render(), "PrometheusRule") == set()


def test_the_prometheus_rule_holds_exactly_the_groups_of_the_plain_rule_files(render):
    rule = one(render({"prometheusRule": {"enabled": True}}), "PrometheusRule", "runtrack")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    groups = rule["spec"]["groups"]
    assert len(groups) == len(_plain_groups())
    assert _by_name(groups) == _by_name(_plain_groups())


def test_the_prometheus_rule_takes_its_labels_and_runbook_prefix_from_values(render):
    prefix = "https://git.example.org/runtrack/-/blob/main/"
    values = {"prometheusRule": {"enabled": True, "labels": {"release": "kps"}, "runbookUrlPrefix": prefix}}
    rule = one(render(values), "PrometheusRule", "runtrack")
    assert rule["metadata"]["labels"]["release"] == "kps"
    alerts = [r for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r]
    assert alerts and all(
        a["annotations"]["runbook_url"] == f"{prefix}{prometheus.RUNBOOKS}/{a['alert']}.md" for a in alerts
    )
    plain = json.dumps(_plain_groups(), sort_keys=True).replace(prometheus.RUNBOOK_URL_PREFIX, prefix)
    assert json.dumps(rule["spec"]["groups"], sort_keys=True) == plain


# ---- the Grafana dashboards -------------------------------------------------------------------------------


def test_the_chart_links_every_dashboard():
    linked = {p.name: p.resolve() for p in (CHART / "files" / "grafana").glob("*.json")}
    assert linked == {p.name: p for p in grafana.files()}


def test_the_dashboards_are_off_unless_asked(render):
    assert not [o for o in render() if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("runtrack-dash")]


def test_each_dashboard_is_a_configmap_labelled_for_grafanas_sidecar(render):
    objects = render({"dashboards": {"enabled": True, "labels": {"grafana_dashboard": "1", "team": "runs"}}})
    for path in grafana.files():
        config_map = one(objects, "ConfigMap", f"runtrack-dashboard-{path.stem}")
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["labels"]["team"] == "runs"
        assert json.loads(config_map["data"][f"runtrack-{path.stem}.json"]) == grafana.load(path)


def _hcm_tracing(config: dict[str, Any]) -> dict[str, Any]:
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return dict(hcm["tracing"])


def test_traces_are_off_unless_a_collector_is_named_then_envoy_and_the_replicas_send_there(render):
    off = render()
    tracing = _hcm_tracing(yaml.safe_load(envoy_config(off)))
    assert tracing["random_sampling"] == {"value": 0} and tracing["client_sampling"] == {"value": 0}
    for name in REPLICAS:
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env(one(off, "Deployment", name))

    on = render({"tracing": {"collector": "otel.observability.svc.cluster.local:4317", "samplingPercent": 5}})
    config = yaml.safe_load(envoy_config(on))
    tracing = _hcm_tracing(config)
    assert tracing["random_sampling"] == {"value": 5} and tracing["client_sampling"] == {"value": 100}
    assert tracing["provider"]["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] == "traces"
    (endpoint,) = cluster(config, "traces")["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"] == {
        "address": "otel.observability.svc.cluster.local",
        "port_value": 4317,
    }
    for name in REPLICAS:
        assert env(one(on, "Deployment", name))["OTEL_EXPORTER_OTLP_ENDPOINT"] == (
            "http://otel.observability.svc.cluster.local:4317"
        )


def test_a_collector_that_is_not_host_and_port_is_refused(helm):
    out = subprocess.run(
        [str(helm), "template", "t", str(CHART), "--set", "tracing.collector=http://otel:4317"],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0 and "/tracing/collector" in out.stderr, out.stderr[-500:]
