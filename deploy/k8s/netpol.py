"""NetworkPolicy enforcement on the local cluster: kube-router's firewall controller, nothing else.

The bridge CNI plugin accepts NetworkPolicies and enforces none. kube-router, run with only its
network policy controller (`--run-firewall`; no routing, no service proxy, no CNI), turns each policy
into iptables chains and ipsets in the node's filter table, next to kube-proxy's rules, which it
leaves alone: traffic to a selected pod that no policy admits is REJECTed. It uses the `iptables`
command (Debian's nf_tables backend, the one kube-proxy uses) with the xtables matches `set`,
`physdev`, `addrtype`, `conntrack`, `mark`, `comment`, and `ipset`; this kernel has them all built
in. (Enforcers that hand packets to user space through nftables' `queue` statement do not work here:
the kernel lacks CONFIG_NFT_QUEUE.)

Traffic whose source is one of the node's own addresses (the kubelet's probes, Prometheus's scrapes
from 10.244.0.1) is always let through to the node's pods, as kube-router does on every node.

Built once per machine from the Go module proxy at the version pinned in
`deploy/k8s/gomod/netpol/go.mod`, into `~/.cache/runtrack/k8s/tools/bin/kube-router`. It talks to
the API server with a client certificate of its own, bound to a read-only ClusterRole.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devstack import gobuild, host
from devstack.pki import kubeconfig

if TYPE_CHECKING:
    from deploy.k8s.cluster import Cluster

NAME = "kube-router"
MODULE = "netpol"
PACKAGE = "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"
USER = "runtrack:kube-router"
# What the controller reads; it writes nothing through the API in this mode.
RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["pods", "namespaces", "nodes", "services", "endpoints"]},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"]},
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"]},
]
# Commands it runs, and the Debian packages that have them.
# The first full sync after a start writes this line (at --v=1): the policies are in the kernel then.
SYNCED = "sync iptables took"


def binary() -> Path:
    from deploy.k8s.node import tools_bin

    return tools_bin() / NAME


def version() -> str:
    """The kube-router version go.mod pins."""
    from deploy.k8s.node import GOMOD

    for line in (GOMOD / MODULE / "go.mod").read_text().splitlines():
        words = line.split()
        if "github.com/cloudnativelabs/kube-router/v2" in words:
            return words[words.index("github.com/cloudnativelabs/kube-router/v2") + 1]
    raise RuntimeError(f"no kube-router version in {GOMOD / MODULE / 'go.mod'}")


def build() -> None:
    """Builds kube-router when it is missing (about two minutes on two cores, once per machine)."""
    from deploy.k8s.node import GOMOD

    ld = f"-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version={version()}"
    gobuild.command(binary(), f"kube-router {version()}", GOMOD / MODULE, [PACKAGE], ld)


def credentials(cluster: Cluster) -> Path:
    """A kubeconfig with kube-router's own client certificate, and its read-only RBAC."""
    from deploy.k8s.node import API_PORT, NODE_IP

    ca = cluster.pki.ca("ca")
    cert = cluster.pki.issue(NAME, ca, cn=USER, client=True)
    path = cluster.state / f"{NAME}.kubeconfig"
    kubeconfig(path, server=f"https://{NODE_IP}:{API_PORT}", ca=ca, user=cert, name=NAME)
    verbs = ["get", "list", "watch"]
    cluster.apply(
        [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": USER},
                "rules": [dict(rule, verbs=verbs) for rule in RULES],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": USER},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": USER},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}],
            },
        ]
    )
    return path


def argv(kubeconfig_path: Path) -> list[str | Path]:
    from deploy.k8s.node import NODE_NAME, SERVICE_CIDR

    return [
        binary(),
        f"--kubeconfig={kubeconfig_path}",
        f"--hostname-override={NODE_NAME}",
        "--run-firewall=true",
        "--run-router=false",
        "--run-service-proxy=false",
        "--run-loadbalancer=false",
        "--enable-cni=false",
        "--enable-ipv4=true",
        "--enable-ipv6=false",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--service-node-port-range=30000-32767",
        # No listener: its health server would bind every address (the pods' gateway included).
        "--health-port=0",
        "--metrics-port=0",
        # A full sync on every pod, namespace or policy change; this one is the backstop.
        "--iptables-sync-period=1m",
        "--v=1",
    ]


def start(cluster: Cluster) -> None:
    """Starts kube-router (after the node is registered: it reads its own Node) and waits until its
    first full sync has written the policies into the kernel. Nothing to do when it runs already."""
    from deploy.k8s.node import NODE_NAME

    if cluster.pid(NAME):
        return
    host.preflight("k8s")
    build()
    path = credentials(cluster)
    log = cluster.logs / f"{NAME}.log"
    offset = log.stat().st_size if log.exists() else 0
    cluster._start(NAME, argv(path), env={"NODE_NAME": NODE_NAME})

    def synced() -> bool:
        with open(log, "rb") as f:
            f.seek(offset)
            return SYNCED.encode() in f.read()

    cluster._wait("kube-router's first NetworkPolicy sync", NAME, synced, 90)
    if not _hooked():
        raise RuntimeError("kube-router synced, yet FORWARD does not jump to KUBE-ROUTER-FORWARD")


def _hooked() -> bool:
    rules = subprocess.run(["iptables", "-w", "-S", "FORWARD"], capture_output=True, text=True, check=True).stdout
    return "-j KUBE-ROUTER-FORWARD" in rules
