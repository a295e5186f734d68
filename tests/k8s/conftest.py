"""The local Kubernetes cluster (`scripts/k8s up`): started by the first test that needs it, with the
chart installed, and stopped at the end unless it was running before the tests began."""

from __future__ import annotations

import os

import pytest

from deploy.k8s.cluster import Cluster, status
from devstack import tools


@pytest.fixture(scope="session")
def k8s() -> Cluster:
    tools.grpcurl()  # the README demo's client
    cluster = Cluster()
    was_up = bool(cluster.pid("kube-apiserver"))
    try:
        cluster.up()
    except BaseException:
        if not was_up:
            cluster.down()
        raise
    yield cluster
    if not was_up and os.environ.get("RUNTRACK_KEEP_K8S") != "1":
        cluster.down()


@pytest.fixture(scope="session")
def k8s_envoy(k8s: Cluster) -> str:
    """host:port of the cluster's Envoy."""
    return str(status(k8s)["envoy_address"])
