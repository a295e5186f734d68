"""Prometheus' pod list for the local cluster: only running, scrape-annotated pods with an IP."""

from __future__ import annotations

from deploy.k8s.sd import targets


def pod(
    name: str, *, ip: str | None = "10.244.0.7", phase: str = "Running", scrape: str = "true", **meta: object
) -> dict:
    return {
        "metadata": {
            "name": name,
            "namespace": "runtrack",
            "labels": {"app.kubernetes.io/component": "tracking"},
            "annotations": {"prometheus.io/scrape": scrape, "prometheus.io/port": "9100"},
            **meta,
        },
        "status": {"phase": phase, "podIP": ip},
    }


def test_only_running_annotated_pods_with_an_ip_are_scraped() -> None:
    pods = {
        "items": [
            pod("b"),
            pod("a", ip="10.244.0.8"),
            pod("pending", phase="Pending", ip=None),
            pod("no-scrape", scrape="false"),
            pod("leaving", deletionTimestamp="2026-11-28T10:00:00Z"),
        ]
    }
    found = targets(pods)
    assert [t["labels"]["pod"] for t in found] == ["a", "b"]
    assert found[0] == {
        "targets": ["10.244.0.8:9100"],
        "labels": {"namespace": "runtrack", "pod": "a", "component": "tracking", "__metrics_path__": "/metrics"},
    }


def test_a_pod_without_annotations_is_left_out() -> None:
    bare = {
        "metadata": {"name": "x", "namespace": "kube-system"},
        "status": {"phase": "Running", "podIP": "10.244.0.9"},
    }
    assert targets({"items": [bare]}) == []
