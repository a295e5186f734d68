"""The chart on a real single-node Kubernetes cluster (`scripts/k8s up`): every pod Ready, the README's
demo through the cluster's Envoy, rolling updates, a killed pod and the HPA under live phones, with no
failed call and every point read back once."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from deploy.k8s import node as k8smod
from deploy.k8s.cluster import Cluster, status
from deploy.k8s.node import NAMESPACE
from devstack.auth import LocalIssuer, token_channel
from devstack.paths import ROOT
from runtrack.v1 import summary_pb2, summary_pb2_grpc
from runtrack_client import Backoff, RunRecorder
from tests.helpers import point, run_readme_demo, without_analysis
from tests.integration.faults import stored_trail
from tests.integration.test_dashboard import overview
from tests.integration.test_traces import START, spans_of, summary, tag, traced

REPORT = ROOT / ".dev" / "logs" / "k8s" / "k8s-tests.jsonl"


def report(name: str, **figures: object) -> None:
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    with open(REPORT, "a") as f:
        f.write(json.dumps({"test": name, **figures}) + "\n")
    print(f"{name}: {figures}")


def issuer() -> LocalIssuer:
    return LocalIssuer(ROOT / ".dev" / "keys")


def deployment(k8s: Cluster, name: str) -> dict:
    return json.loads(k8s.kubectl("get", "deployment", name, "-n", NAMESPACE, "-o", "json", capture=True))


def pods(k8s: Cluster, component: str) -> list[dict]:
    doc = json.loads(
        k8s.kubectl(
            "get", "pods", "-n", NAMESPACE, "-l", f"app.kubernetes.io/component={component}", "-o", "json", capture=True
        )
    )
    return [p for p in doc["items"] if not p["metadata"].get("deletionTimestamp")]  # not those leaving


# ---- phones and readers ------------------------------------------------------------------------
@dataclass
class Load:
    """`phones` runs streaming one point a second through Envoy with the reference client (which
    resumes a broken stream from its cursor), and GetRun readers with no retries at all."""

    envoy: str
    phones: int
    readers: int = 4
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    sent: dict[str, list] = field(default_factory=dict)
    recorders: list[RunRecorder] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    reads: int = 0
    tasks: list[asyncio.Task] = field(default_factory=list)
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    closed_at: float = 0.0

    async def _phone(self, channel: grpc.aio.Channel) -> None:
        recorder = RunRecorder(channel, str(uuid.uuid4()), "", backoff=Backoff(base_s=0.2, cap_s=2.0, max_attempts=400))
        self.recorders.append(recorder)
        sent = self.sent.setdefault(recorder.run_id, [])
        start_ms = (int(time.time()) - 3600) * 1000

        async def live():
            seq = 0
            while not self.stop.is_set():
                seq += 1
                p = point(seq, start_ms=start_ms)
                sent.append(p)
                yield p
                await asyncio.sleep(1.0)

        try:
            await recorder.upload(live())
        except Exception as err:  # noqa: BLE001 (every failure is counted)
            self.failures.append(f"RecordTrack {recorder.run_id}: {err!r}")

    async def _reader(self, channel: grpc.aio.Channel, run_id: str) -> None:
        stub = summary_pb2_grpc.SummaryServiceStub(channel)
        while not self.stop.is_set():
            try:
                await stub.GetRun(summary_pb2.GetRunRequest(run_id=run_id), timeout=10)
                self.reads += 1
            except grpc.aio.AioRpcError as err:
                self.failures.append(f"GetRun: {err.code().name}: {err.details()}")
            await asyncio.sleep(0.1)

    async def start(self) -> None:
        token = issuer().token(f"k8s-{uuid.uuid4().hex[:8]}", ttl_s=3600)
        # A few connections, as many phones would open: Envoy's pods each get some.
        self.channels = [token_channel(self.envoy, token) for _ in range(8)]
        summary = summary_pb2_grpc.SummaryServiceStub(self.channels[0])
        run_id = str(uuid.uuid4())
        ov = summary_pb2.RunOverview(distance_m=5000, point_count=10)
        ov.start_time.seconds, ov.end_time.seconds, ov.moving_time.seconds = 1_780_000_000, 1_780_001_800, 1700
        await summary.StopRun(summary_pb2.StopRunRequest(run_id=run_id, overview=ov), timeout=30)
        for i in range(self.phones):
            self.tasks.append(asyncio.create_task(self._phone(self.channels[i % len(self.channels)])))
            if i % 20 == 19:
                await asyncio.sleep(0.1)  # phones arrive over a moment, not in one instant
        for i in range(self.readers):
            self.tasks.append(asyncio.create_task(self._reader(self.channels[i % len(self.channels)], run_id)))

    async def finish(self) -> dict[str, int]:
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), timeout=180)
        self.closed_at = time.monotonic()  # every stream ended: the load is gone from here on
        lost = doubled = 0
        reader = self.channels[0]
        for run_id, sent in self.sent.items():
            stored = await stored_trail(reader, run_id)
            seqs = [p.seq for p in stored]
            doubled += len(seqs) - len(set(seqs))
            lost += len({p.seq for p in sent} - set(seqs))
            assert list(stored) == sent, f"run {run_id}: stored {len(stored)} points, sent {len(sent)}"
        for ch in self.channels:
            await ch.close()
        return {
            "phones": self.phones,
            "points_sent": sum(len(s) for s in self.sent.values()),
            "points_lost": lost,
            "points_doubled": doubled,
            "streams_resumed": sum(r.stats.retries for r in self.recorders),
            "get_run_calls": self.reads,
            "failed_calls": len(self.failures),
        }


# ---- the tests -----------------------------------------------------------------------------------
def test_the_chart_installs_and_every_pod_is_ready(k8s: Cluster) -> None:
    info = status(k8s)
    assert info["nodes"] == 1
    assert info["kubernetes_version"] == k8smod.K8S_VERSION
    assert set(info["deployments"]) == {"tracking", "summary", "envoy"}
    for name, d in info["deployments"].items():
        assert d["desired"] >= 1 and d["ready"] == d["desired"], f"{name}: {d}"
    for component in ("tracking", "summary", "envoy"):
        for pod in pods(k8s, component):
            ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
            assert ready["Ready"] == "True", pod["metadata"]["name"]
    hpas = json.loads(k8s.kubectl("get", "hpa", "-n", NAMESPACE, "-o", "json", capture=True))["items"]
    assert sorted(h["metadata"]["name"] for h in hpas) == ["summary", "tracking"]
    # `scripts/k8s status --json` says the same, as the contract names it.
    out = subprocess.run(
        [str(ROOT / "scripts" / "k8s"), "status", "--json"], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out)["envoy_address"] == info["envoy_address"]
    # Every host process of the cluster runs, Alertmanager among them.
    stopped = [name for name, pid in info["processes"].items() if not pid]
    assert not stopped and "alertmanager" in info["processes"], stopped


def test_the_hpas_read_the_replicas_own_metrics(k8s: Cluster) -> None:
    """The custom metrics API (Prometheus, the adapter) answers for every tracking and summary pod."""
    deadline = time.monotonic() + 90
    while True:
        values = {}
        for metric, component in (
            ("runtrack_streams_open", "tracking"),
            ("runtrack_grpc_calls_per_second", "summary"),
        ):
            raw = k8s.kubectl(
                "get",
                "--raw",
                f"/apis/custom.metrics.k8s.io/v1beta1/namespaces/{NAMESPACE}/pods/*/{metric}",
                capture=True,
                check=False,
            )
            items = json.loads(raw)["items"] if raw else []
            values[component] = {i["describedObject"]["name"] for i in items}
        want = {c: {p["metadata"]["name"] for p in pods(k8s, c)} for c in ("tracking", "summary")}
        if all(want[c] <= values[c] for c in want):
            break
        assert time.monotonic() < deadline, f"custom metrics {values}, pods {want}"
        time.sleep(3)


def _http(url: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def test_prometheus_scrapes_envoys_own_stats_and_their_port_offers_nothing_else_of_the_admin(k8s: Cluster) -> None:
    """Envoy's admin stays on the pod's loopback; its /stats/prometheus is served on the stats port,
    which the cluster's Prometheus scrapes. From the scraper's side (the node), the admin's other pages
    and its POSTs (fail the health check, drain, quit) answer 404 there, and Envoy stays ready."""
    envoys = pods(k8s, "envoy")
    names = {p["metadata"]["name"] for p in envoys}
    for pod in envoys:
        base = f"http://{pod['status']['podIP']}:9902"
        status_code, text = _http(base + "/stats/prometheus")
        assert status_code == 200 and "envoy_server_live" in text and "envoy_cluster_upstream_rq" in text
        for method, path in [
            ("POST", "/healthcheck/fail"),
            ("POST", "/drain_listeners"),
            ("POST", "/quitquitquit"),
            ("GET", "/config_dump"),
            ("GET", "/stats"),
            ("POST", "/stats/prometheus"),
            ("GET", "/stats/prometheus/../config_dump"),
        ]:
            assert _http(base + path, method)[0] in (400, 404), f"{method} {path} reached the admin"
    deadline = time.monotonic() + 60
    while True:
        raw = _http(f"http://127.0.0.1:{k8smod.PROMETHEUS_PORT}/api/v1/query?query=envoy_server_live")[1]
        scraped = {r["metric"].get("pod") for r in json.loads(raw)["data"]["result"] if r["value"][1] == "1"}
        if names <= scraped:
            break
        assert time.monotonic() < deadline, f"Prometheus has envoy_server_live for {scraped}, pods {names}"
        time.sleep(3)
    time.sleep(6)  # a failed health check would show within the readiness probe's 2 x 2 s
    assert all(p["metadata"]["name"] in names for p in pods(k8s, "envoy")), "an Envoy pod left"
    assert all(c["ready"] for p in pods(k8s, "envoy") for c in p["status"]["containerStatuses"])


async def test_a_call_that_asks_is_traced_from_the_clusters_envoy_through_both_services_into_its_jaeger(
    k8s: Cluster, k8s_envoy: str
) -> None:
    """The chart's tracing on the cluster: Envoy's OpenTelemetry tracer and both services send to the
    cluster's Jaeger (tracing.collector in values-local.yaml, let out by the egress policies). A StopRun
    that asks (`x-client-trace-id`) is one trace: Envoy, the summary pod and its PostgreSQL statements,
    and the tracking pod it calls through Envoy."""
    token = issuer().token(f"tracer-{uuid.uuid4().hex[:8]}")
    trace_id, metadata = traced()
    async with token_channel(k8s_envoy, token) as channel:
        await summary_pb2_grpc.SummaryServiceStub(channel).StopRun(
            summary_pb2.StopRunRequest(run_id=str(uuid.uuid4()), overview=overview(START)), metadata=metadata
        )
    every = {"envoy", "summary_service", "tracking_service"}
    spans = await asyncio.to_thread(spans_of, k8s, trace_id, lambda spans: every <= {s["service"] for s in spans}, 60.0)
    assert any(tag(s, "db.system") == "postgresql" for s in spans), summary(spans)


def test_the_readme_demo_through_the_clusters_envoy(k8s: Cluster, k8s_envoy: str) -> None:
    # `scripts/dev token` signs with the dev stack's key, which the cluster's Envoy trusts.
    info = status(k8s)  # over TLS: the cluster's Envoy serves the dev stack's certificate
    docs = run_readme_demo(info["envoy_tls_address"], info["tls_ca"], {"RUNTRACK_STACK": "dev"}, timeout_s=120)
    recorded, stopped, listed, track, _stats, _zones, shared, seen_by_bob, refused = docs
    assert recorded["points_stored"] == 3
    assert without_analysis(stopped) in [without_analysis(r) for r in listed["runs"]]
    assert [p["seq"] for p in track["points"]] == [1, 2, 3]
    assert shared["visibility"] == "PUBLIC"
    assert [p["seq"] for p in seen_by_bob["points"]] == [2, 3]
    assert refused["code"] == 16


def _cluster_schemas(k8s: Cluster, folder: Path) -> Path:
    """The cluster's own OpenAPI definitions as one JSON Schema file per kind, for kubeconform."""
    doc = json.loads(k8s.kubectl("get", "--raw", "/openapi/v2", capture=True))
    defs = doc["definitions"]

    def fix(node: object) -> object:
        if isinstance(node, dict):
            if node.get("format") == "int-or-string":
                return {"oneOf": [{"type": "string"}, {"type": "integer"}]}
            return {k: fix(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fix(v) for v in node]
        return node

    defs = {k: fix(v) for k, v in defs.items()}
    defs["io.k8s.apimachinery.pkg.api.resource.Quantity"] = {"oneOf": [{"type": "string"}, {"type": "number"}]}
    folder.mkdir(parents=True, exist_ok=True)
    for name, schema in defs.items():
        for gvk in schema.get("x-kubernetes-group-version-kind", []) if isinstance(schema, dict) else []:
            group = gvk["group"] or gvk["version"]  # kubeconform names the core group by its version
            path = folder / f"{gvk['kind'].lower()}_{group}_{gvk['version']}.json"
            path.write_text(json.dumps({"$ref": f"#/definitions/{name}", "definitions": defs}))
    return folder


def test_every_rendered_manifest_passes_server_dry_run_and_kubeconform(k8s: Cluster, tmp_path: Path) -> None:
    refs = {"app": "runtrack/app:check", "envoy": "runtrack/envoy:check"}
    rendered = k8s.helm(
        "template",
        k8smod.RELEASE,
        k8smod.CHART,
        "--namespace",
        NAMESPACE,
        *k8s.chart_values(refs),
        capture=True,
    )
    manifest = tmp_path / "chart.yaml"
    manifest.write_text(rendered)
    kinds = set(re.findall(r"^kind: (\w+)$", rendered, re.M))
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    dry = subprocess.run(
        [
            str(k8smod.k8s_bin() / "kubectl"),
            "--kubeconfig",
            str(k8s.admin_kubeconfig),
            "apply",
            "--dry-run=server",
            "--validate=strict",
            "-n",
            NAMESPACE,
            "-f",
            str(manifest),
        ],
        capture_output=True,
        text=True,
    )
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("(server dry run)") == rendered.count("\nkind: ")
    schemas = _cluster_schemas(k8s, tmp_path / "schemas")
    conform = subprocess.run(
        [
            str(k8smod.tools_bin() / "kubeconform"),
            "-summary",
            "-output",
            "json",
            "-schema-location",
            str(schemas) + "/{{ .ResourceKind }}_{{ .Group }}_{{ .ResourceAPIVersion }}.json",
            str(manifest),
        ],
        capture_output=True,
        text=True,
    )
    summary = json.loads(conform.stdout)["summary"]
    assert conform.returncode == 0, conform.stdout
    assert summary["valid"] == rendered.count("\nkind: ") and summary["skipped"] == 0, summary


def _rollout(k8s: Cluster, name: str) -> float:
    started = time.monotonic()
    k8s.kubectl("rollout", "restart", f"deployment/{name}", "-n", NAMESPACE)
    k8s.kubectl("rollout", "status", f"deployment/{name}", "-n", NAMESPACE, "--timeout=300s")
    return time.monotonic() - started


async def test_a_rolling_update_of_each_deployment_under_200_phones_fails_no_call(k8s: Cluster, k8s_envoy: str) -> None:
    load = Load(k8s_envoy, phones=200)
    await load.start()
    await asyncio.sleep(10)
    before = {n: {p["metadata"]["name"] for p in pods(k8s, n)} for n in ("tracking", "summary", "envoy")}
    seconds = {}
    for name in ("tracking", "summary", "envoy"):
        seconds[name] = round(await asyncio.to_thread(_rollout, k8s, name), 1)
        after = {p["metadata"]["name"] for p in pods(k8s, name) if not p["metadata"].get("deletionTimestamp")}
        assert not (after & before[name]), f"{name}: pods not replaced"
    await asyncio.sleep(5)
    figures = await load.finish()
    report("k8s_rollout", rollout_seconds=seconds, **figures)
    assert load.failures == [], load.failures[:5]
    assert figures["points_lost"] == 0 and figures["points_doubled"] == 0


def _kill_main_process(k8s: Cluster, pod: dict) -> None:
    """SIGKILL to the tracking container's process, from the node, as the kernel's OOM killer would."""
    cid = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    k8s.ctr("tasks", "kill", "--signal", "SIGKILL", cid)


async def test_a_tracking_pod_killed_under_load_loses_no_point(k8s: Cluster, k8s_envoy: str) -> None:
    load = Load(k8s_envoy, phones=100)
    await load.start()
    await asyncio.sleep(10)
    victim = pods(k8s, "tracking")[0]
    restarts = victim["status"]["containerStatuses"][0]["restartCount"]
    killed_at = time.monotonic()
    await asyncio.to_thread(_kill_main_process, k8s, victim)
    name = victim["metadata"]["name"]
    while True:
        pod = json.loads(k8s.kubectl("get", "pod", name, "-n", NAMESPACE, "-o", "json", capture=True))
        cs = pod["status"]["containerStatuses"][0]
        if cs["restartCount"] > restarts and cs.get("ready"):
            break
        assert time.monotonic() - killed_at < 120, f"{name} not back: {cs}"
        await asyncio.sleep(1)
    back_s = time.monotonic() - killed_at
    await asyncio.sleep(5)
    figures = await load.finish()
    report("k8s_pod_killed", pod_back_after_s=round(back_s, 1), **figures)
    assert figures["streams_resumed"] >= 1, "no stream was on the killed pod"
    assert load.failures == [], load.failures[:5]
    assert figures["points_lost"] == 0 and figures["points_doubled"] == 0


def _hpa(k8s: Cluster) -> dict:
    return json.loads(k8s.kubectl("get", "hpa", "tracking", "-n", NAMESPACE, "-o", "json", capture=True))


async def test_the_hpa_adds_tracking_pods_under_load_and_removes_them_after_the_window(
    k8s: Cluster, k8s_envoy: str
) -> None:
    target, window = 40, 20
    spec = _hpa(k8s)["spec"]
    low = spec["minReplicas"]
    k8s.kubectl(
        "patch",
        "hpa",
        "tracking",
        "-n",
        NAMESPACE,
        "--type=merge",
        "-p",
        json.dumps(
            {
                "spec": {
                    "metrics": [
                        {
                            "type": "Pods",
                            "pods": {
                                "metric": {"name": "runtrack_streams_open"},
                                "target": {"type": "AverageValue", "averageValue": str(target)},
                            },
                        }
                    ],
                    "behavior": {"scaleDown": {"stabilizationWindowSeconds": window}},
                }
            }
        ),
    )
    try:
        load = Load(k8s_envoy, phones=160, readers=2)
        started = time.monotonic()
        await load.start()
        top = low
        while True:  # 160 streams over 2 pods at 40 a pod: the HPA wants 4
            top = max(top, deployment(k8s, "tracking")["spec"]["replicas"])
            if top > low:
                break
            assert time.monotonic() - started < 180, f"the HPA did not scale up: {_hpa(k8s)['status']}"
            await asyncio.sleep(2)
        up_s = time.monotonic() - started
        await asyncio.sleep(20)
        figures = await load.finish()
        left = load.closed_at  # the window runs from the last high reading, at or after this
        while deployment(k8s, "tracking")["spec"]["replicas"] > low:
            assert time.monotonic() - left < window + 120, f"the HPA did not scale down: {_hpa(k8s)['status']}"
            await asyncio.sleep(1)
        down_s = time.monotonic() - left
        report("k8s_hpa", scaled_to=top, up_after_s=round(up_s, 1), down_after_s=round(down_s, 1), **figures)
        assert top > low
        # The last high recommendation comes at most one HPA sync (5 s) before the streams closed.
        assert down_s >= window - 5, "scaled down inside the stabilisation window"
        assert load.failures == [], load.failures[:5]
        assert figures["points_lost"] == 0 and figures["points_doubled"] == 0
    finally:
        # The chart's own HPA back.
        refs = {name: img for name, img in _current_images(k8s).items()}
        k8s.install_chart(refs)


def _current_images(k8s: Cluster) -> dict[str, str]:
    app = deployment(k8s, "tracking")["spec"]["template"]["spec"]["containers"][0]["image"]
    envoy = deployment(k8s, "envoy")["spec"]["template"]["spec"]["containers"][0]["image"]
    return {"app": app, "envoy": envoy}
