"""The alerts that read the cluster's own state, fired for real on the local cluster: kube-state-metrics
reports its Deployments and HPAs, the cluster's Prometheus scrapes it, loads deploy/prometheus/'s rules
with every window and `for:` divided by FACTOR (`scripts/k8s up` loads them as shipped) and sends its
alerts to the cluster's Alertmanager, which posts them to a webhook receiver of the tests' own. A fault
is injected, the alert must be posted firing, the fault ends, and the alert must be posted resolved.
Times go to .dev/logs/test/faults.jsonl."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from deploy.k8s.cluster import Cluster
from deploy.k8s.node import NAMESPACE, PROMETHEUS_PORT
from devstack.paths import ROOT
from tests.alert_receiver import Receiver

FACTOR = 30  # 10m -> 20 s, 15m -> 30 s
FIRE_WITHIN_S = 150.0
RESOLVE_WITHIN_S = 150.0


@pytest.fixture(scope="module")
def receiver(k8s: Cluster) -> Iterator[Receiver]:
    r = Receiver()
    k8s.route_alerts(r.url)
    yield r
    k8s.route_alerts(None)
    r.close()


@pytest.fixture(scope="module")
def short_rules(k8s: Cluster) -> Iterator[None]:
    k8s.write_rules(FACTOR)
    time.sleep(6)  # Prometheus reads them again (SIGHUP), then evaluates every 5 s
    yield
    k8s.write_rules()


def _prometheus(path: str, **params: str) -> Any:
    url = f"http://127.0.0.1:{PROMETHEUS_PORT}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())["data"]


def firing(name: str, **labels: str) -> bool:
    return any(
        a["labels"].get("alertname") == name
        and a["state"] == "firing"
        and all(a["labels"].get(k) == v for k, v in labels.items())
        for a in _prometheus("/api/v1/alerts")["alerts"]
    )


def wait(what: str, check: Any, timeout: float) -> float:
    """Seconds until `check()` holds."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout:.0f} s"
        time.sleep(1)
    return time.monotonic() - started


def report(name: str, **figures: Any) -> None:
    print(f"{name}: {figures}")
    path = ROOT / ".dev" / "logs" / "test" / "faults.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps({"test": name, **figures}) + "\n")


def test_kube_state_metrics_reports_every_deployment_and_autoscaler(k8s: Cluster, short_rules: None) -> None:
    def seen(metric: str, label: str) -> set[str]:
        return {
            r["metric"][label]
            for r in _prometheus("/api/v1/query", query=f'{metric}{{namespace="{NAMESPACE}"}}')["result"]
        }

    wait(
        "kube-state-metrics' series in Prometheus",
        lambda: (
            {"tracking", "summary", "envoy"} <= seen("kube_deployment_spec_replicas", "deployment")
            and {"tracking", "summary"}
            <= seen("kube_horizontalpodautoscaler_spec_max_replicas", "horizontalpodautoscaler")
        ),
        60,
    )


def fire_and_resolve(
    receiver: Receiver, name: str, labels: dict[str, str], start_fault: Any, end_fault: Any
) -> tuple[float, float]:
    """Seconds from the fault's start to `name` posted firing at the receiver, and from its end to the
    same alert posted resolved (and gone from Prometheus)."""
    assert not firing(name, **labels)
    started = time.monotonic()
    start_fault()
    try:
        fired = receiver.wait_blocking(name, "firing", started, FIRE_WITHIN_S, **labels).at - started
    finally:
        ended = time.monotonic()
        end_fault()
    resolved = receiver.wait_blocking(name, "resolved", ended, RESOLVE_WITHIN_S, **labels).at - ended
    assert not firing(name, **labels)
    return fired, resolved


def test_summary_pods_unready_while_postgresql_is_stopped_fire_replicas_not_ready(
    k8s: Cluster, receiver: Receiver, short_rules: None
) -> None:
    """PostgreSQL stopped: the summary pods answer their readiness probe NOT_SERVING, the Deployment has
    fewer available pods than it asks for; once PostgreSQL is back they are ready and the alert leaves."""
    labels = {"namespace": NAMESPACE, "deployment": "summary"}
    fired, resolved = fire_and_resolve(receiver, "ReplicasNotReady", labels, k8s.pg.stop, k8s.pg.start)
    k8s.wait_deployments()
    report("k8s_alert_replicas_not_ready", fired_after_s=round(fired, 1), resolved_after_s=round(resolved, 1))


def test_an_autoscaler_held_at_its_maximum_fires_hpa_at_maximum(
    k8s: Cluster, receiver: Receiver, short_rules: None
) -> None:
    """The tracking HPA's maximum lowered to the replicas it has: it is at its maximum (the next peak would
    find no room); its maximum put back, the alert leaves."""
    hpa = json.loads(k8s.kubectl("get", "hpa", "tracking", "-n", NAMESPACE, "-o", "json", capture=True))
    spec, current = hpa["spec"], int(hpa["status"]["currentReplicas"])
    labels = {"namespace": NAMESPACE, "horizontalpodautoscaler": "tracking"}
    assert current < spec["maxReplicas"]

    def patch(min_replicas: int, max_replicas: int) -> None:
        body = {"spec": {"minReplicas": min_replicas, "maxReplicas": max_replicas}}
        k8s.kubectl("patch", "hpa", "tracking", "-n", NAMESPACE, "--type=merge", "-p", json.dumps(body))

    fired, resolved = fire_and_resolve(
        receiver,
        "HPAAtMaximum",
        labels,
        lambda: patch(min(spec.get("minReplicas", 1), current), current),
        lambda: patch(spec.get("minReplicas", 1), spec["maxReplicas"]),
    )
    report(
        "k8s_alert_hpa_at_maximum", replicas=current, fired_after_s=round(fired, 1), resolved_after_s=round(resolved, 1)
    )
