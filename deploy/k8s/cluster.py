"""A real single-node Kubernetes cluster on this machine, for the chart: scripts/k8s up | down | status.

Every piece is a host process started here, each with a pid file and a log under `.dev/logs/k8s/`:
etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd (Debian's, with runc and
the CNI plugins), kubelet, kube-proxy, CoreDNS, Prometheus (Debian's) and prometheus-adapter. The
Kubernetes binaries, etcd, CoreDNS, helm, the adapter and kubeconform are built once per machine from
the Go module proxy at the versions pinned in `deploy/k8s/gomod/*/go.mod` and cached under
`~/.cache/runtrack/k8s/`.

Addresses: the node is the bridge `rtk0` at 10.244.0.1 (pods 10.244.0.0/24 on it, services
10.96.0.0/24): every packet stays on this machine. The cluster's CQL node and PostgreSQL listen on the
bridge address, where pods reach them; the cluster's Envoy answers on NodePort 30080 of that address.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from deploy.k8s import netpol
from deploy.k8s.node import (
    ADAPTER_PORT,
    ADAPTER_RULES,
    ALERTMANAGER_PORT,
    API_PORT,
    API_SERVICE_IP,
    BRIDGE,
    CHART,
    CQL_PORT,
    DEV_TLS_DIR,
    ENVOY_NODE_PORT,
    ENVOY_TLS_NODE_PORT,
    ETCD_PORT,
    GOMOD,
    K8S_VERSION,
    KSM_PORT,
    NAMESPACE,
    NODE_IP,
    NODE_NAME,
    PAUSE_IMAGE,
    PG_PORT,
    POD_CIDR,
    PROMETHEUS_PORT,
    RELEASE,
    SERVICE_CIDR,
    TRACES_OTLP_PORT,
    TRACES_UI_PORT,
    VALUES_LOCAL,
    build,
    k8s_bin,
    run,
    say,
    tool,
    tools_bin,
)
from devstack import host, procs, tls
from devstack.auth import LINK_KEY_ID, LocalIssuer
from devstack.cql_node import CqlNode
from devstack.paths import ROOT
from devstack.pg_node import PgNode
from devstack.pki import Pair, Pki, b64, kubeconfig
from devstack.traces import Collector


class Cluster:
    def __init__(self) -> None:
        self.state = ROOT / ".dev" / "k8s"
        self.logs = ROOT / ".dev" / "logs" / "k8s"
        self.run_dir = self.state / "run"
        self.pki = Pki(self.state / "pki")
        self.containerd_root = Path("/var/lib/runtrack/containerd")
        self.containerd_state = Path("/run/runtrack/containerd")
        self.containerd_sock = self.containerd_state / "containerd.sock"
        self.kubelet_dir = Path("/var/lib/runtrack/kubelet")
        self.admin_kubeconfig = self.state / "admin.kubeconfig"
        self.cql = CqlNode(
            self.state / "cassandra",
            self.logs / "cassandra.log",
            native_port=CQL_PORT,
            storage_port=CQL_PORT - 2042,
            jmx_port=CQL_PORT - 1843,
            heap_mb=768,
            address=NODE_IP,
            seeds=(NODE_IP,),
        )
        self.pg = PgNode(self.state / "postgres", self.logs / "postgres.log", port=PG_PORT, host=NODE_IP)
        self.traces = Collector(self.state, self.logs / "jaeger.log", TRACES_OTLP_PORT, TRACES_UI_PORT, NODE_IP)
        # The dev stack's signing key: `scripts/dev token` signs what the cluster's Envoy accepts.
        self.issuer = LocalIssuer(ROOT / ".dev" / "keys")
        self.link_keys = LocalIssuer(ROOT / ".dev" / "keys", prefix="live-", key_id=LINK_KEY_ID)

    # ---- processes ----------------------------------------------------------------------------
    def _pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def pid(self, name: str) -> int | None:
        pid = procs.read_pid(self._pid_file(name))
        return pid if procs.alive(pid) else None

    def _start(
        self, name: str, argv: list[str | Path], env: dict[str, str] | None = None, *, changed: bool = False
    ) -> int:
        """Starts a host process unless it runs; one whose configuration `changed` starts again."""
        pid = self.pid(name)
        if pid and changed:
            say(f"restarting {name}: its configuration changed")
            procs.stop(pid, timeout=15)
            pid = None
        if pid:
            return pid
        say(f"starting {name}")
        return procs.start(
            [str(a) for a in argv],
            log=self.logs / f"{name}.log",
            pid_file=self._pid_file(name),
            env=dict(os.environ, **(env or {})),
            cwd=self.state,
        )

    def _wait(self, what: str, name: str, check: Any, timeout: float = 120.0) -> None:
        procs.wait_until(what, check, timeout, log=self.logs / f"{name}.log", pid=self.pid(name))

    def kubectl(self, *args: str, check: bool = True, capture: bool = False, input: str | None = None) -> str:
        proc = subprocess.run(
            [str(k8s_bin() / "kubectl"), "--kubeconfig", str(self.admin_kubeconfig), *args],
            check=check,
            text=True,
            input=input,
            stdout=subprocess.PIPE if capture else None,
        )
        return proc.stdout or ""

    def api_ok(self) -> bool:
        proc = subprocess.run(
            [str(k8s_bin() / "kubectl"), "--kubeconfig", str(self.admin_kubeconfig), "get", "--raw", "/readyz"],
            capture_output=True,
            text=True,
        )
        return proc.returncode == 0 and proc.stdout.strip() == "ok"

    # ---- the host: bridge, kernel settings, certificates ----------------------------------------
    def host_network(self) -> None:
        for module in ("br_netfilter", "overlay"):
            run("modprobe", module, check=False, quiet=True, stderr=subprocess.DEVNULL)
        for key in ("net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables"):
            run("sysctl", "-q", "-w", f"{key}=1", check=False)
        if run("ip", "link", "show", BRIDGE, check=False, quiet=True, stderr=subprocess.DEVNULL).returncode != 0:
            say(f"creating the node's bridge {BRIDGE} at {NODE_IP}")
            run("ip", "link", "add", BRIDGE, "type", "bridge")
        addrs = run("ip", "-o", "addr", "show", BRIDGE, stdout=subprocess.PIPE).stdout
        if f" {NODE_IP}/" not in addrs:
            run("ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE)
        run("ip", "link", "set", BRIDGE, "up")
        cni = self.state / "cni"
        cni.mkdir(parents=True, exist_ok=True)
        conf = {
            "cniVersion": "1.0.0",
            "name": "runtrack",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(self.state / "ipam"),
                        "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        _write((cni / "10-runtrack.conflist"), json.dumps(conf, indent=1))

    def certificates(self) -> dict[str, Pair]:
        ca = self.pki.ca("ca")
        proxy_ca = self.pki.ca("front-proxy-ca")
        issue = self.pki.issue
        certs = {
            "ca": ca,
            "front-proxy-ca": proxy_ca,
            "apiserver": issue(
                "apiserver",
                ca,
                cn="kube-apiserver",
                server=True,
                dns=(
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                ),
                ips=(NODE_IP, API_SERVICE_IP, "127.0.0.1"),
            ),
            "apiserver-kubelet-client": issue(
                "apiserver-kubelet-client",
                ca,
                cn="kube-apiserver-kubelet-client",
                orgs=("system:masters",),
                client=True,
            ),
            "front-proxy-client": issue("front-proxy-client", proxy_ca, cn="front-proxy-client", client=True),
            "admin": issue("admin", ca, cn="runtrack-admin", orgs=("system:masters",), client=True),
            "controller-manager": issue("controller-manager", ca, cn="system:kube-controller-manager", client=True),
            "scheduler": issue("scheduler", ca, cn="system:kube-scheduler", client=True),
            "kube-proxy": issue("kube-proxy", ca, cn="system:kube-proxy", client=True),
            "kubelet-client": issue(
                "kubelet-client", ca, cn=f"system:node:{NODE_NAME}", orgs=("system:nodes",), client=True
            ),
            "kubelet": issue("kubelet", ca, cn=NODE_NAME, server=True, dns=(NODE_NAME,), ips=(NODE_IP,)),
            "adapter": issue(
                "adapter",
                ca,
                cn="custom-metrics-apiserver",
                server=True,
                dns=("custom-metrics-apiserver.monitoring.svc",),
                ips=(NODE_IP,),
            ),
        }
        server = f"https://{NODE_IP}:{API_PORT}"
        for name in ("admin", "controller-manager", "scheduler", "kube-proxy", "kubelet-client"):
            path = self.admin_kubeconfig if name == "admin" else self.state / f"{name}.kubeconfig"
            kubeconfig(path, server=server, ca=ca, user=certs[name], name=name)
        return certs

    # ---- the control plane -------------------------------------------------------------------
    def start_etcd(self) -> None:
        url = f"http://127.0.0.1:{ETCD_PORT}"
        self._start(
            "etcd",
            [
                tools_bin() / "etcd",
                "--name",
                NODE_NAME,
                "--data-dir",
                self.state / "etcd",
                "--listen-client-urls",
                url,
                "--advertise-client-urls",
                url,
                "--listen-peer-urls",
                f"http://127.0.0.1:{ETCD_PORT + 10}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{ETCD_PORT + 10}",
                "--initial-cluster",
                f"{NODE_NAME}=http://127.0.0.1:{ETCD_PORT + 10}",
                "--listen-metrics-urls",
                f"http://127.0.0.1:{ETCD_PORT + 20}",
                "--quota-backend-bytes",
                str(2 * 1024**3),
                "--log-level",
                "warn",
            ],
        )
        self._wait("etcd", "etcd", lambda: procs.port_open(ETCD_PORT), 60)

    def start_apiserver(self, certs: dict[str, Pair]) -> None:
        sa = self.pki.service_account_key()
        self._start(
            "kube-apiserver",
            [
                k8s_bin() / "kube-apiserver",
                f"--etcd-servers=http://127.0.0.1:{ETCD_PORT}",
                f"--bind-address={NODE_IP}",
                f"--advertise-address={NODE_IP}",
                f"--secure-port={API_PORT}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--service-node-port-range=30000-32767",
                f"--tls-cert-file={certs['apiserver'].cert}",
                f"--tls-private-key-file={certs['apiserver'].key}",
                f"--client-ca-file={certs['ca'].cert}",
                f"--kubelet-client-certificate={certs['apiserver-kubelet-client'].cert}",
                f"--kubelet-client-key={certs['apiserver-kubelet-client'].key}",
                f"--kubelet-certificate-authority={certs['ca'].cert}",
                "--kubelet-preferred-address-types=InternalIP",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={sa.cert}",
                f"--service-account-signing-key-file={sa.key}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--allow-privileged=true",
                f"--requestheader-client-ca-file={certs['front-proxy-ca'].cert}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-username-headers=X-Remote-User",
                f"--proxy-client-cert-file={certs['front-proxy-client'].cert}",
                f"--proxy-client-key-file={certs['front-proxy-client'].key}",
                "--enable-aggregator-routing=true",
                "--profiling=false",
                "--v=1",
            ],
        )
        self._wait("kube-apiserver", "kube-apiserver", self.api_ok, 120)

    def start_controllers(self, certs: dict[str, Pair]) -> None:
        sa = self.pki.service_account_key()
        self._start(
            "kube-controller-manager",
            [
                k8s_bin() / "kube-controller-manager",
                f"--kubeconfig={self.state / 'controller-manager.kubeconfig'}",
                f"--authentication-kubeconfig={self.state / 'controller-manager.kubeconfig'}",
                f"--authorization-kubeconfig={self.state / 'controller-manager.kubeconfig'}",
                "--bind-address=127.0.0.1",
                "--secure-port=10257",
                f"--service-account-private-key-file={sa.key}",
                f"--root-ca-file={certs['ca'].cert}",
                f"--cluster-signing-cert-file={certs['ca'].cert}",
                f"--cluster-signing-key-file={certs['ca'].key}",
                "--use-service-account-credentials=true",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--leader-elect=false",
                # The HPA reads metrics every 5 s (default 15 s): scaling tests take less time.
                "--horizontal-pod-autoscaler-sync-period=5s",
                "--v=1",
            ],
        )
        self._start(
            "kube-scheduler",
            [
                k8s_bin() / "kube-scheduler",
                f"--kubeconfig={self.state / 'scheduler.kubeconfig'}",
                f"--authentication-kubeconfig={self.state / 'scheduler.kubeconfig'}",
                f"--authorization-kubeconfig={self.state / 'scheduler.kubeconfig'}",
                "--bind-address=127.0.0.1",
                "--secure-port=10259",
                "--leader-elect=false",
                "--v=1",
            ],
        )

    # ---- the node ----------------------------------------------------------------------------
    def containerd_config(self) -> Path:
        conf = self.state / "containerd.toml"
        _write(
            conf,
            f"""version = 2
root = "{self.containerd_root}"
state = "{self.containerd_state}"

[grpc]
  address = "{self.containerd_sock}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  enable_unprivileged_ports = false
  # This machine denies CAP_SYS_RESOURCE: no process may lower its OOM score below containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{self.state / "cni"}"
""",
        )
        return conf

    def start_containerd(self) -> None:
        self.containerd_state.mkdir(parents=True, exist_ok=True)
        self._start("containerd", ["containerd", "--config", self.containerd_config()])
        self._wait("containerd", "containerd", lambda: self.containerd_sock.exists(), 60)
        time.sleep(0.5)

    def ctr(self, *args: str | Path, capture: bool = False, check: bool = True) -> str:
        """containerd's own client on the node's namespace; with check=False, a failure is ignored quietly."""
        quiet = None if check else subprocess.DEVNULL
        proc = run(
            "ctr",
            "--address",
            self.containerd_sock,
            "--namespace",
            "k8s.io",
            *args,
            check=check,
            stdout=subprocess.PIPE if capture else quiet,
            stderr=quiet,
        )
        return proc.stdout or ""

    def images(self) -> set[str]:
        return set(self.ctr("images", "list", "--quiet", capture=True).split())

    def pause_image(self) -> None:
        """The pod sandbox image: Kubernetes' own pause.c (from the module source), compiled static."""
        if PAUSE_IMAGE in self.images():
            return
        source = _module_dir("k8s.io/kubernetes", K8S_VERSION) / "build" / "pause" / "linux" / "pause.c"
        work = self.state / "pause"
        shutil.rmtree(work, ignore_errors=True)
        (work / "rootfs").mkdir(parents=True)
        run("gcc", "-Os", "-static", "-o", work / "rootfs" / "pause", source, f'-DVERSION="{K8S_VERSION}"')
        run("strip", work / "rootfs" / "pause")
        archive = work / "pause.oci.tar"
        _buildah_image(work / "rootfs", archive, PAUSE_IMAGE, entrypoint=["/pause"], user="65535:65535")
        self.ctr("images", "import", archive)

    def import_image(self, archive: Path, ref: str) -> None:
        if ref in self.images():
            return
        say(f"importing {ref}")
        self.ctr("images", "import", archive)
        if ref not in self.images():
            raise SystemExit(f"{archive} did not import as {ref}: containerd has {sorted(self.images())}")

    def start_kubelet(self, certs: dict[str, Pair]) -> None:
        self.kubelet_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(certs["ca"].cert)},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "tlsCertFile": str(certs["kubelet"].cert),
            "tlsPrivateKeyFile": str(certs["kubelet"].key),
            "clusterDomain": "cluster.local",
            "clusterDNS": [NODE_IP],
            "cgroupDriver": "cgroupfs",
            # This machine mounts cgroup v1 (Kubernetes 1.34 still runs on it when told so).
            "failCgroupV1": False,
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.containerd_sock}",
            "resolvConf": str(self._resolv_conf()),
            "podCIDR": POD_CIDR,
            "maxPods": 60,
            "serializeImagePulls": False,
            "evictionHard": {"memory.available": "200Mi", "nodefs.available": "2%", "imagefs.available": "2%"},
            "imageGCHighThresholdPercent": 99,
            "imageGCLowThresholdPercent": 98,
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "nodeStatusUpdateFrequency": "5s",
            "shutdownGracePeriod": "0s",
            "localStorageCapacityIsolation": False,
        }
        path = self.state / "kubelet-config.json"
        changed = _write(path, json.dumps(config, indent=1))
        self._start(
            "kubelet",
            [
                k8s_bin() / "kubelet",
                f"--config={path}",
                f"--kubeconfig={self.state / 'kubelet-client.kubeconfig'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                f"--root-dir={self.kubelet_dir}",
                "--v=1",
            ],
            changed=changed,
        )

    def _resolv_conf(self) -> Path:
        """Pods' resolv.conf beyond the cluster's names: none (nothing outside this machine)."""
        path = self.state / "resolv.conf"
        _write(path, f"nameserver {NODE_IP}\n")
        return path

    def start_kube_proxy(self) -> None:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.state / "kube-proxy.kubeconfig")},
            "mode": "iptables",
            "clusterCIDR": POD_CIDR,
            "hostnameOverride": NODE_NAME,
            "bindAddress": "127.0.0.1",
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            # NodePorts on loopback too (kube-proxy lets 127.0.0.1 through to the pods), where clients
            # that send tokens in the clear insist on being.
            "nodePortAddresses": [f"{NODE_IP}/32", "127.0.0.1/32"],
            "conntrack": {"maxPerCore": 0},
        }
        path = self.state / "kube-proxy-config.json"
        changed = _write(path, json.dumps(config, indent=1))
        self._start("kube-proxy", [k8s_bin() / "kube-proxy", f"--config={path}", "--v=1"], changed=changed)

    def start_coredns(self) -> None:
        corefile = self.state / "Corefile"
        changed = _write(
            corefile,
            f""".:53 {{
    bind {NODE_IP}
    errors
    health 127.0.0.1:18053
    ready 127.0.0.1:18181
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {self.admin_kubeconfig} runtrack
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
}}
""",
        )
        self._start("coredns", [tools_bin() / "coredns", "-conf", corefile], changed=changed)

    # ---- metrics for the HPAs ------------------------------------------------------------------
    def start_prometheus(self) -> None:
        targets = self.state / "prometheus-targets.json"
        if not targets.exists():
            _write(targets, "[]")
        self._start(
            "pod-discovery",
            [
                sys.executable,
                "-m",
                "deploy.k8s.sd",
                "--kubeconfig",
                self.admin_kubeconfig,
                "--out",
                targets,
            ],
            env={"PYTHONPATH": str(ROOT)},
        )
        self.write_rules()
        config = {
            "global": {"scrape_interval": "5s", "evaluation_interval": "5s", "scrape_timeout": "4s"},
            # deploy/prometheus/'s rules (write_rules), their alerts sent to the cluster's Alertmanager.
            "rule_files": [str(self.rules_dir / "*.yaml")],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{ALERTMANAGER_PORT}"]}]}]},
            "scrape_configs": [
                {
                    "job_name": "runtrack-pods",
                    "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "5s"}],
                },
                {
                    # Its series name their objects' namespace and names: kept as they are.
                    "job_name": "kube-state-metrics",
                    "honor_labels": True,
                    "static_configs": [{"targets": [f"127.0.0.1:{KSM_PORT}"]}],
                },
            ],
        }
        path = self.state / "prometheus.yml"
        changed = _write(path, json.dumps(config, indent=1))
        self._start(
            "prometheus",
            [
                "prometheus",
                f"--config.file={path}",
                f"--storage.tsdb.path={self.state / 'prometheus'}",
                "--storage.tsdb.retention.time=6h",
                f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}",
                # A firing alert sent again every evaluation, not every minute.
                "--rules.alert.resend-delay=5s",
            ],
            changed=changed,
        )

    @property
    def alertmanager_yml(self) -> Path:
        return self.state / "alertmanager.yml"

    def start_alertmanager(self) -> None:
        """Alertmanager on loopback; its alerts stay on its own page until route_alerts names a webhook."""
        if not self.alertmanager_yml.exists():
            self.route_alerts(None)
        self._start(
            "alertmanager",
            [
                "prometheus-alertmanager",
                f"--config.file={self.alertmanager_yml}",
                f"--storage.path={self.state / 'alertmanager'}",
                f"--web.listen-address=127.0.0.1:{ALERTMANAGER_PORT}",
                "--cluster.listen-address=",  # one Alertmanager, no peers to gossip with
            ],
        )

    def route_alerts(self, webhook: str | None) -> None:
        """Alertmanager posts every alert, firing and resolved, to `webhook` (None: to no one); a running
        one reads its configuration again (SIGHUP)."""
        from devstack.monitoring import alertmanager_config

        _write(self.alertmanager_yml, yaml.safe_dump(alertmanager_config(webhook), sort_keys=False))
        if pid := self.pid("alertmanager"):
            os.kill(pid, signal.SIGHUP)

    @property
    def rules_dir(self) -> Path:
        return self.state / "prometheus-rules"

    def write_rules(self, factor: float = 1.0) -> None:
        """deploy/prometheus/'s rule files as the cluster's Prometheus loads them: as shipped, or with
        every window and `for:` divided by `factor` (devstack/monitoring.py) so that a test sees an
        alert of minutes fire in seconds; a running Prometheus loads them again (SIGHUP)."""
        from devstack.monitoring import rendered_rules

        self.rules_dir.mkdir(parents=True, exist_ok=True)
        for name, doc in rendered_rules(factor).items():
            _write(self.rules_dir / name, yaml.safe_dump(doc))
        if pid := self.pid("prometheus"):
            os.kill(pid, signal.SIGHUP)

    def start_kube_state_metrics(self) -> None:
        """The Deployments' and HPAs' state as metrics (ReplicasNotReady, HPAAtMaximum read them)."""
        self._start(
            "kube-state-metrics",
            [
                tool("kube-state-metrics"),
                f"--kubeconfig={self.admin_kubeconfig}",
                "--host=127.0.0.1",
                f"--port={KSM_PORT}",
                "--telemetry-host=127.0.0.1",
                f"--telemetry-port={KSM_PORT + 1}",
                "--resources=deployments,horizontalpodautoscalers",
            ],
        )

    def start_adapter(self, certs: dict[str, Pair]) -> None:
        self._start(
            "prometheus-adapter",
            [
                tools_bin() / "prometheus-adapter",
                f"--prometheus-url=http://127.0.0.1:{PROMETHEUS_PORT}",
                f"--config={ADAPTER_RULES}",
                f"--lister-kubeconfig={self.admin_kubeconfig}",
                f"--authentication-kubeconfig={self.admin_kubeconfig}",
                f"--authorization-kubeconfig={self.admin_kubeconfig}",
                f"--requestheader-client-ca-file={certs['front-proxy-ca'].cert}",
                f"--client-ca-file={certs['ca'].cert}",
                f"--tls-cert-file={certs['adapter'].cert}",
                f"--tls-private-key-file={certs['adapter'].key}",
                f"--bind-address={NODE_IP}",
                f"--secure-port={ADAPTER_PORT}",
                "--metrics-relist-interval=10s",
                "--v=1",
            ],
        )
        ca_bundle = b64(certs["ca"].cert)
        self.apply(
            [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "monitoring"}},
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": "custom-metrics-apiserver", "namespace": "monitoring"},
                    "spec": {"ports": [{"name": "https", "port": 443, "targetPort": ADAPTER_PORT}]},
                },
                {
                    "apiVersion": "v1",
                    "kind": "Endpoints",
                    "metadata": {"name": "custom-metrics-apiserver", "namespace": "monitoring"},
                    "subsets": [{"addresses": [{"ip": NODE_IP}], "ports": [{"name": "https", "port": ADAPTER_PORT}]}],
                },
            ]
            + [
                {
                    "apiVersion": "apiregistration.k8s.io/v1",
                    "kind": "APIService",
                    "metadata": {"name": f"{version}.custom.metrics.k8s.io"},
                    "spec": {
                        "service": {"name": "custom-metrics-apiserver", "namespace": "monitoring", "port": 443},
                        "group": "custom.metrics.k8s.io",
                        "version": version,
                        "caBundle": ca_bundle,
                        "groupPriorityMinimum": 100,
                        "versionPriority": priority,
                    },
                }
                for version, priority in (("v1beta1", 100), ("v1beta2", 200))
            ]
        )

    def apply(self, objects: list[Any]) -> None:
        doc = {"apiVersion": "v1", "kind": "List", "items": objects}
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(doc))

    # ---- the stores the pods use --------------------------------------------------------------
    def start_stores(self) -> None:
        if not self.cql.pid():
            say(f"starting the cluster's CQL node on {NODE_IP}:{CQL_PORT}")
            self.cql.start()
        if not self.pg.pid():
            say(f"starting the cluster's PostgreSQL on {NODE_IP}:{PG_PORT}")
        self.pg.start()
        self.cql.wait_ready()

    # ---- all of it ---------------------------------------------------------------------------
    def up(self) -> None:
        started = time.monotonic()
        if os.geteuid() != 0:
            raise SystemExit("scripts/k8s up runs a kubelet and containerd: it needs root")
        host.preflight("k8s")
        build()
        self.state.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        procs.reserve_ports(
            [
                (ETCD_PORT, ETCD_PORT + 20),
                (API_PORT, ADAPTER_PORT),
                (PROMETHEUS_PORT, PROMETHEUS_PORT),
                (ALERTMANAGER_PORT, ALERTMANAGER_PORT),
                (KSM_PORT, KSM_PORT + 1),
                (TRACES_OTLP_PORT, TRACES_OTLP_PORT),
                (TRACES_UI_PORT - 1, TRACES_UI_PORT),
                (CQL_PORT - 2042, CQL_PORT - 2041),  # the CQL node's storage ports
                (CQL_PORT - 1843, CQL_PORT - 1843),  # its JMX port
                (CQL_PORT, CQL_PORT),
                (PG_PORT, PG_PORT),
                (30000, 32767),  # NodePorts
            ]
        )
        self.host_network()
        certs = self.certificates()
        self.start_etcd()
        self.start_apiserver(certs)
        self.start_controllers(certs)
        self.start_containerd()
        self.pause_image()
        self.start_kubelet(certs)
        self.start_kube_proxy()
        self.start_coredns()
        self.start_stores()
        self.traces.start()
        self.start_kube_state_metrics()
        self.start_alertmanager()
        self.start_prometheus()
        self.start_adapter(certs)
        self.wait_node_ready()
        netpol.start(self)  # NetworkPolicy enforced before any replica starts
        say(f"cluster up in {time.monotonic() - started:.0f} s")
        refs = self.load_images()
        self.install_chart(refs)
        self.wait_deployments()
        say(f"chart ready in {time.monotonic() - started:.0f} s; Envoy at 127.0.0.1:{ENVOY_NODE_PORT}")

    def load_images(self) -> dict[str, str]:
        """Builds the images (cached by content) and imports them into the node's containerd."""
        from deploy.images import build as images

        built = images.build_all()
        for image in built.values():
            self.import_image(image.archive, image.containerd_ref)
        return {name: image.containerd_ref for name, image in built.items()}

    def helm(self, *args: str | Path, capture: bool = False) -> str:
        proc = run(
            tools_bin() / "helm",
            "--kubeconfig",
            self.admin_kubeconfig,
            *args,
            stdout=subprocess.PIPE if capture else None,
        )
        return proc.stdout or ""

    def chart_values(self, refs: dict[str, str]) -> list[str | Path]:
        """helm's value options for this cluster: the local file, then what only this machine knows."""
        return [
            "-f",
            VALUES_LOCAL,
            "--set",
            f"images.app={refs['app']}",
            "--set",
            f"images.envoy={refs['envoy']}",
            *self.machine_files(),
        ]

    def machine_files(self) -> list[str]:
        """helm's options for the files only this machine has: the keys that sign its tokens (with the
        chart's default of none every call is refused), the live links' key pair (none by default: no
        links), and Envoy's TLS certificate for 127.0.0.1 from the dev stack's CA (one CA to trust here)."""
        self.issuer.ensure_keys()
        self.link_keys.ensure_keys()
        served = tls.ensure(DEV_TLS_DIR)
        return [
            "--set-file",
            f"jwks.content={self.issuer.jwks_file}",
            "--set-file",
            f"liveLinks.jwks={self.link_keys.jwks_file}",
            "--set-file",
            f"liveLinks.signingKey={self.link_keys.private_key_file}",
            "--set-file",
            f"tls.certificate={served.cert}",
            "--set-file",
            f"tls.key={served.key}",
        ]

    def install_chart(self, refs: dict[str, str], *extra: str) -> None:
        say(f"installing the chart in namespace {NAMESPACE}")
        self.helm(
            "upgrade",
            "--install",
            RELEASE,
            CHART,
            "--namespace",
            NAMESPACE,
            "--create-namespace",
            *self.chart_values(refs),
            *extra,
        )

    def wait_deployments(self, timeout_s: int = 300) -> None:
        for name in ("tracking", "summary", "envoy"):
            self.kubectl("rollout", "status", f"deployment/{name}", "-n", NAMESPACE, f"--timeout={timeout_s}s")

    def wait_node_ready(self, timeout: float = 180.0) -> None:
        def ready() -> bool:
            out = subprocess.run(
                [
                    str(k8s_bin() / "kubectl"),
                    "--kubeconfig",
                    str(self.admin_kubeconfig),
                    "get",
                    "node",
                    NODE_NAME,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                ],
                capture_output=True,
                text=True,
            ).stdout
            return out.strip() == "True"

        self._wait("the node to be Ready", "kubelet", ready, timeout)

    def down(self) -> None:
        for name in (
            "prometheus-adapter",
            "prometheus",
            "alertmanager",
            "kube-state-metrics",
            "pod-discovery",
            "coredns",
            "kube-router",
            "kube-proxy",
            "kubelet",
            "kube-scheduler",
            "kube-controller-manager",
        ):
            procs.stop(self.pid(name), timeout=15)
        self._stop_pods()
        procs.stop(self.pid("containerd"), timeout=15)
        procs.stop(self.pid("kube-apiserver"), timeout=15)
        procs.stop(self.pid("etcd"), timeout=15)
        self.traces.stop()
        self.pg.stop()
        self.cql.stop()

    def _stop_pods(self) -> None:
        """Containers outlive the kubelet: kill and remove every one containerd still has, then what the
        pods left on the host (the kubelet's volume mounts, the pods' network namespaces)."""
        if self.pid("containerd"):
            tasks = self.ctr("tasks", "list", "--quiet", capture=True).split()
            for task in tasks:
                self.ctr("tasks", "kill", "--signal", "SIGKILL", task, check=False)
            time.sleep(1)
            for task in tasks:
                self.ctr("tasks", "delete", "--force", task, check=False)
            for container in self.ctr("containers", "list", "--quiet", capture=True).split():
                self.ctr("containers", "delete", container, check=False)
        with open("/proc/mounts") as f:
            mounts = [line.split()[1] for line in f]
        ours = (str(self.kubelet_dir), str(self.containerd_state))
        for mount in sorted((m for m in mounts if m.startswith(ours)), key=len, reverse=True):
            run("umount", "-l", mount, check=False, quiet=True, stderr=subprocess.DEVNULL)
        netns = run("ip", "netns", "list", stdout=subprocess.PIPE, check=False).stdout or ""
        for line in netns.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith("cni-"):
                run("ip", "netns", "delete", name, check=False, quiet=True, stderr=subprocess.DEVNULL)
        # kube-proxy's own clean-up of its iptables rules.
        if (k8s_bin() / "kube-proxy").exists():
            run(k8s_bin() / "kube-proxy", "--cleanup", check=False, quiet=True, stderr=subprocess.DEVNULL)


def _write(path: Path, text: str) -> bool:
    """Writes a configuration file only when its content changes (kube-proxy, for one, exits when its
    file is touched); True when it did, and the process reading it must start again."""
    if path.exists() and path.read_text() == text:
        return False
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return True


def _module_dir(module: str, version: str) -> Path:
    out = run("go", "mod", "download", "-json", f"{module}@{version}", stdout=subprocess.PIPE, cwd=GOMOD / "kubernetes")
    return Path(json.loads(out.stdout)["Dir"])


def _buildah_image(rootfs: Path, archive: Path, ref: str, *, entrypoint: list[str], user: str) -> None:
    """An image of one folder, by buildah (no daemon, no registry), as an OCI archive named `ref`."""
    container = run("buildah", "from", "scratch", stdout=subprocess.PIPE).stdout.strip()
    try:
        run("buildah", "copy", "--quiet", container, rootfs, "/", quiet=True)
        run("buildah", "config", "--entrypoint", json.dumps(entrypoint), "--user", user, container)
        run("buildah", "commit", "--quiet", container, ref, quiet=True)
    finally:
        run("buildah", "rm", container, quiet=True, check=False)
    archive.unlink(missing_ok=True)
    run("buildah", "push", "--quiet", ref, f"oci-archive:{archive}:{ref}", quiet=True)


def status(cluster: Cluster) -> dict[str, Any]:
    """What `scripts/k8s status --json` prints (CONTRACT §11)."""
    out: dict[str, Any] = {
        "envoy_address": f"127.0.0.1:{ENVOY_NODE_PORT}",
        "envoy_tls_address": f"127.0.0.1:{ENVOY_TLS_NODE_PORT}",
        "tls_ca": str(tls.files(DEV_TLS_DIR).ca),
        "kubernetes_version": K8S_VERSION,
        "nodes": 0,
        "deployments": {},
        "processes": {name: cluster.pid(name) for name in PROCESSES},
        "prometheus": f"http://127.0.0.1:{PROMETHEUS_PORT}",
        "alertmanager": f"http://127.0.0.1:{ALERTMANAGER_PORT}",
        "kubeconfig": str(cluster.admin_kubeconfig),
    }
    if not cluster.pid("kube-apiserver"):
        return out
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json", capture=True, check=False) or "{}")
    out["nodes"] = len(nodes.get("items", []))
    deps = json.loads(
        cluster.kubectl("get", "deployments", "-n", NAMESPACE, "-o", "json", capture=True, check=False) or "{}"
    )
    for d in deps.get("items", []):
        out["deployments"][d["metadata"]["name"]] = {
            "ready": d.get("status", {}).get("readyReplicas", 0),
            "desired": d.get("spec", {}).get("replicas", 0),
        }
    return out


PROCESSES = (
    "etcd",
    "pod-discovery",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "containerd",
    "kubelet",
    "kube-proxy",
    "kube-router",
    "coredns",
    "prometheus",
    "alertmanager",
    "kube-state-metrics",
    "jaeger",
    "prometheus-adapter",
)


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="scripts/k8s", description="A single-node Kubernetes cluster for the chart.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="build what is missing, start the cluster, install the chart, wait until Ready")
    sub.add_parser("down", help="stop everything `up` started")
    st = sub.add_parser("status", help="what runs")
    st.add_argument("--json", action="store_true")
    sub.add_parser("build", help="only build the binaries (cached)")
    if argv[:1] == ["kubectl"]:
        cluster = Cluster()
        return subprocess.call([str(k8s_bin() / "kubectl"), "--kubeconfig", str(cluster.admin_kubeconfig), *argv[1:]])
    if argv[:1] == ["helm"]:
        cluster = Cluster()
        return subprocess.call([str(tools_bin() / "helm"), "--kubeconfig", str(cluster.admin_kubeconfig), *argv[1:]])
    args = parser.parse_args(argv)
    cluster = Cluster()
    if args.cmd == "up":
        cluster.up()
    elif args.cmd == "down":
        cluster.down()
    elif args.cmd == "build":
        build()
        netpol.build()
    elif args.cmd == "status":
        info = status(cluster)
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            for name, pid in info["processes"].items():
                print(f"{name:26} {'pid ' + str(pid) if pid else 'stopped'}")
            print(f"{'envoy':26} {info['envoy_address']}")
            print(f"{'envoy over TLS':26} {info['envoy_tls_address']}  (CA {info['tls_ca']})")
            for name, d in info["deployments"].items():
                print(f"{'deployment/' + name:26} {d['ready']}/{d['desired']} ready")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
