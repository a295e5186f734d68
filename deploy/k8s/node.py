"""The local cluster's node: its addresses and ports, the versions it runs, and the commands built once
per machine from the Go module proxy (Kubernetes' own, etcd, CoreDNS, helm, the adapter, kubeconform).
What `cluster.py` and `netpol.py` both need, so that neither imports the other."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from devstack import gobuild
from devstack.paths import ROOT, cache_dir, once_per_machine

K8S_VERSION = "v1.34.4"
GOMOD = ROOT / "deploy" / "k8s" / "gomod"
CHART = ROOT / "deploy" / "helm" / "runtrack"
ADAPTER_RULES = ROOT / "deploy" / "k8s" / "adapter-rules.yaml"
VALUES_LOCAL = ROOT / "deploy" / "k8s" / "values-local.yaml"
RELEASE = "runtrack"

NODE_NAME = "runtrack-node"
BRIDGE = "rtk0"
NODE_IP = "10.244.0.1"
POD_CIDR = "10.244.0.0/24"
SERVICE_CIDR = "10.96.0.0/24"
API_SERVICE_IP = "10.96.0.1"
NAMESPACE = "runtrack"
ENVOY_NODE_PORT = 30080
ENVOY_TLS_NODE_PORT = 30443
DEV_TLS_DIR = ROOT / ".dev" / "tls"

ETCD_PORT = 23790
API_PORT = 6443
ADAPTER_PORT = 6444
PROMETHEUS_PORT = 19090
# Alertmanager, where the cluster's Prometheus sends its alerts (Cluster.route_alerts names a webhook).
ALERTMANAGER_PORT = 19095
# kube-state-metrics: its metrics, and its own.
KSM_PORT = 19092
# Jaeger, the cluster's traces: OTLP/gRPC on the node's bridge address (the pods send there; the chart's
# tracing.collector in values-local.yaml), its API on loopback.
TRACES_OTLP_PORT = 24317
TRACES_UI_PORT = 26686
CQL_PORT = 39042
PG_PORT = 35432

K8S_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl")
TOOLS = {  # binary -> (wrapper module, package)
    "etcd": ("etcd", "."),
    "helm": ("tools", "helm.sh/helm/v3/cmd/helm"),
    "kubeconform": ("tools", "github.com/yannh/kubeconform/cmd/kubeconform"),
    "coredns": ("coredns", "."),  # only the plugins the cluster's Corefile names
    "prometheus-adapter": ("adapter", "sigs.k8s.io/prometheus-adapter/cmd/adapter"),
    "kube-state-metrics": ("ksm", "k8s.io/kube-state-metrics/v2"),
}
PAUSE_IMAGE = "docker.io/runtrack/pause:3.10"


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(*argv: str | Path, check: bool = True, quiet: bool = False, **kw: Any) -> subprocess.CompletedProcess[str]:
    out = subprocess.DEVNULL if quiet else None
    return subprocess.run([str(a) for a in argv], check=check, text=True, stdout=kw.pop("stdout", out), **kw)


# ---- what is built once per machine -------------------------------------------------------------
def k8s_bin() -> Path:
    return cache_dir() / "k8s" / K8S_VERSION / "bin"


def tools_bin() -> Path:
    return cache_dir() / "k8s" / "tools" / "bin"


def go_build(module: str, out: Path, packages: list[str], ldflags: str = "-s -w") -> None:
    """Builds `packages` of the wrapper module deploy/k8s/gomod/<module> into `out`."""
    gobuild.go_build(GOMOD / module, out, packages, ldflags)


def build() -> None:
    """Builds whatever is missing: Kubernetes' commands, then the tools (minutes, once per machine)."""
    with once_per_machine(f"kubernetes-{K8S_VERSION}"):
        _build_kubernetes()
    for name in TOOLS:
        tool(name)


def _build_kubernetes() -> None:
    missing = [b for b in K8S_BINARIES if not (k8s_bin() / b).exists()]
    if missing:
        say(f"building Kubernetes {K8S_VERSION} ({', '.join(missing)}) from the Go module proxy, once per machine")
        k8s_bin().mkdir(parents=True, exist_ok=True)
        minor = K8S_VERSION.split(".")[1]
        ld = "-s -w"
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
            ld += f" -X {pkg}.gitVersion={K8S_VERSION} -X {pkg}.gitMajor=1 -X {pkg}.gitMinor={minor}"
            ld += f" -X {pkg}.gitTreeState=clean"
        tmp = k8s_bin().parent / "bin.tmp"
        tmp.mkdir(exist_ok=True)
        go_build("kubernetes", tmp, [f"k8s.io/kubernetes/cmd/{b}" for b in missing], ld)
        for b in missing:
            (tmp / b).replace(k8s_bin() / b)


def tool(name: str) -> Path:
    """One of TOOLS, built from the Go module proxy when missing (once per machine); its path.
    The dev stack's `--pg-nodes 2` takes etcd from here too."""
    module, pkg = TOOLS[name]
    return gobuild.command(tools_bin() / name, name, GOMOD / module, [pkg])
