"""A whole RunTrack stack on this machine: CQL node, PostgreSQL, replicas and Envoy.

Two stacks can run side by side: `dev` (scripts/dev, the contract's ports) and `test`
(scripts/test, its own ports and state), so the tests never touch a developer's stack.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from devstack import procs, tls, tools
from devstack.auth import AUDIENCE, ISSUER, LINK_AUDIENCE, LINK_ISSUER, LINK_KEY_ID, LocalIssuer
from devstack.cql_node import CqlNode
from devstack.paths import ROOT
from devstack.pg_backup import PgBackup, pg_backup_settings
from devstack.pg_cluster import PgCluster
from devstack.pg_node import PgNode
from devstack.traces import Collector
from edge.config import Auth, Layout, Tls, Tracing, eds_document, render, to_yaml

SERVICES = ("tracking", "summary")
# A replica on port P serves its Prometheus metrics on P + METRICS_PORT_OFFSET.
METRICS_PORT_OFFSET = 10_000
MODULES = {"tracking": "tracking_service", "summary": "summary_service"}
# What brings each store's schema up to this checkout's, before the replicas serve.
MIGRATIONS = ("tracking_service.migrate", "summary_service.migrate")


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    return int(env.get(name) or default)


@dataclass(frozen=True)
class StackSpec:
    name: str
    state: Path
    logs: Path
    envoy_port: int
    envoy_admin_port: int
    envoy_tls_port: int
    cql_port: int
    cql_storage_port: int
    cql_jmx_port: int
    pg_port: int
    base_ports: dict[str, int]
    replicas: dict[str, int] = field(default_factory=lambda: {"tracking": 2, "summary": 2})
    # An existing cluster / database instead of the local nodes.
    scylla_hosts: str | None = None
    database_url: str | None = None
    keyspace: str = "runtrack"
    # Settings the replicas get on top of the environment (see runtrack_common/config.py).
    replica_settings: dict[str, str] = field(default_factory=dict)
    # Local CQL nodes: 1, or 3 on 127.0.0.1-3 as one cluster (None: as the last `up` left it).
    cql_nodes: int | None = None
    # Local stores kept for `scripts/dev backup` / `restore`: PostgreSQL archives its WAL, the CQL
    # node keeps incremental backups (devstack/backup.py); the repository is state/backups.
    backups: bool = False
    # Local PostgreSQL: 1 node, or 2 (a primary and a synchronous standby failed over by Patroni; see
    # devstack/pg_cluster.py) on pg_port and pg_port + 1 (None: as the last `up` left it).
    pg_nodes: int | None = None
    # Traces: Jaeger on loopback taking OTLP/gRPC on this port (its UI on traces_ui_port), Envoy and
    # the replicas sending it theirs (devstack/traces.py). None: no traces.
    otlp_port: int | None = None
    traces_ui_port: int = 16686
    # The share of requests Envoy traces unasked, in percent.
    trace_sampling_percent: float = 1.0
    # Jaeger started by `up` (False: only when a caller asks, `Stack.start_traces`; until then the
    # replicas' and Envoy's exporters find no collector and drop what they would send).
    traces_at_up: bool = True

    @property
    def backup_dir(self) -> Path:
        return self.state / "backups"

    @property
    def eds_dir(self) -> Path:
        return self.state / "run" / "eds"

    @property
    def tls_dir(self) -> Path:
        return self.state / "tls"

    @property
    def keys_dir(self) -> Path:
        return self.state / "keys"

    @property
    def layout(self) -> Layout:
        return Layout(
            auth=Auth(
                issuer=ISSUER,
                audience=AUDIENCE,
                link_issuer=LINK_ISSUER,
                link_audience=LINK_AUDIENCE,
                jwks_file=str((self.keys_dir / "jwks.json").relative_to(ROOT)),
                link_jwks_file=str((self.keys_dir / "live-jwks.json").relative_to(ROOT)),
            ),
            listen_port=self.envoy_port,
            admin_port=self.envoy_admin_port,
            eds_dir=str(self.eds_dir.relative_to(ROOT)),
            tls=Tls(
                port=self.envoy_tls_port,
                sds_path=str(tls.files(self.tls_dir).sds.relative_to(ROOT)),
                watched_dir=str(tls.files(self.tls_dir).sds.parent.relative_to(ROOT)),
            ),
            tracing=(
                Tracing("127.0.0.1", self.otlp_port, sampling_percent=self.trace_sampling_percent)
                if self.otlp_port is not None
                else None
            ),
        )


def dev_spec(env: Mapping[str, str] = os.environ) -> StackSpec:
    state = ROOT / ".dev"
    return StackSpec(
        name="dev",
        state=state,
        logs=state / "logs",
        envoy_port=_env_int(env, "ENVOY_PORT", 8080),
        envoy_admin_port=_env_int(env, "ENVOY_ADMIN_PORT", 9901),
        envoy_tls_port=_env_int(env, "ENVOY_TLS_PORT", 8443),
        cql_port=_env_int(env, "SCYLLA_PORT", 9042),
        cql_storage_port=7000,
        cql_jmx_port=7199,
        pg_port=_env_int(env, "PG_PORT", 5432),
        base_ports={"tracking": 50110, "summary": 50210},
        scylla_hosts=env.get("SCYLLA_HOSTS") or None,
        database_url=env.get("DATABASE_URL") or None,
        backups=True,
        otlp_port=_env_int(env, "OTLP_PORT", 4317),
        traces_ui_port=_env_int(env, "TRACES_UI_PORT", 16686),
    )


def backup_test_spec() -> StackSpec:
    """The stack the restore drills run (tests/integration/test_backup_restore.py): one CQL node, a
    local PostgreSQL archiving its WAL, one replica of each service, on ports of its own (33xxx; the
    local Kubernetes cluster's stores take 39042 and 35432)."""
    state = ROOT / ".dev" / "test-backup"
    return StackSpec(
        name="test-backup",
        state=state,
        logs=ROOT / ".dev" / "logs" / "test-backup",
        envoy_port=33080,
        envoy_admin_port=33901,
        envoy_tls_port=33443,
        cql_port=33042,
        cql_storage_port=33000,
        cql_jmx_port=33199,
        pg_port=33432,
        base_ports={"tracking": 53110, "summary": 53210},
        replicas={"tracking": 1, "summary": 1},
        cql_nodes=1,
        backups=True,
    )


def test_spec(env: Mapping[str, str] = os.environ) -> StackSpec:
    state = ROOT / ".dev" / "test"
    return StackSpec(
        name="test",
        state=state,
        logs=ROOT / ".dev" / "logs" / "test",
        envoy_port=18080,
        envoy_admin_port=19901,
        envoy_tls_port=18443,
        cql_port=_env_int(env, "SCYLLA_PORT", 19042) if env.get("SCYLLA_HOSTS") else 19042,
        cql_storage_port=17000,
        cql_jmx_port=17199,
        pg_port=15432,
        base_ports={"tracking": 51110, "summary": 51210},
        scylla_hosts=env.get("SCYLLA_HOSTS") or None,
        database_url=env.get("DATABASE_URL") or None,
        keyspace="runtrack_test" if env.get("SCYLLA_HOSTS") else "runtrack",
        otlp_port=14317,
        traces_ui_port=16696,
        # Only the calls a test asks for (`x-client-trace-id`): what is traced is then known.
        trace_sampling_percent=0.0,
        # Started by the tests that read traces: on a fresh machine Jaeger is then built beside the
        # first tests (tests/prebuild.py) instead of before them.
        traces_at_up=False,
        # Short limits so that the tests can watch them act.
        replica_settings={
            "TRACK_STREAM_IDLE_TIMEOUT_S": "4",
            # A store outage ends the streams after 3 s (the default, 30 s, rides through a lost node
            # and is what the cluster stack runs): the one-node stack's fault tests watch the phones
            # resume after an outage longer than that.
            "TRACK_WRITE_RETRY_BUDGET_S": "3",
            # As the chart's: Envoy asks every second and takes a replica out at its first NOT_SERVING,
            # but under the whole suite on 2 cores an answer can take over a second; with 1.5 s a
            # rollout under the whole suite once failed a unary call after its retries.
            "DRAIN_DELAY_S": "2.5",
            # A runner counts as stalled after 3 s (not 3 minutes), seen within half a second.
            "LIVE_STALL_S": "3",
            "LIVE_STATE_POLL_S": "0.5",
            "LIVE_WATCHED_REFRESH_S": "0.5",
            "LIVE_WEBHOOK_BACKOFF_S": "0.2",
            # A lost replica's pending deliveries taken over within a few seconds.
            "LIVE_WEBHOOK_LEASE_S": "1",
            "LIVE_WEBHOOK_SWEEP_S": "0.5",
            # Strangers on one PUBLIC run per replica: a few, so that the test reaches the cap.
            "LIVE_MAX_SPECTATORS_PER_RUN": "3",
            # Webhooks contained as in production, but for the tests' own receivers on 127.0.0.1.
            "LIVE_WEBHOOK_ALLOW_PRIVATE": "0",
            "LIVE_WEBHOOK_ALLOW_NETWORKS": "127.0.0.1/32",
        },
    )


def metrics_port(port: int) -> int:
    return port + METRICS_PORT_OFFSET


def cluster_test_spec() -> StackSpec:
    """The stack the cluster tests run: three local CQL nodes (RF 3) and PostgreSQL as two nodes (a
    primary and a synchronous standby), both backed up, on ports of its own, whatever SCYLLA_HOSTS or
    DATABASE_URL say."""
    state = ROOT / ".dev" / "test-cluster"
    return StackSpec(
        name="test-cluster",
        state=state,
        logs=ROOT / ".dev" / "logs" / "test-cluster",
        envoy_port=28080,
        envoy_admin_port=29901,
        envoy_tls_port=28443,
        cql_port=29042,
        cql_storage_port=27000,
        cql_jmx_port=27199,
        pg_port=25432,
        base_ports={"tracking": 52110, "summary": 52210},
        replica_settings={"DRAIN_DELAY_S": "1.5"},
        cql_nodes=3,
        pg_nodes=2,
        backups=True,
    )


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Stack:
    def __init__(self, spec: StackSpec) -> None:
        self.spec = spec
        s = spec
        self.run_dir = s.state / "run"
        nodes = s.cql_nodes or self._recorded("cql-nodes")
        self.cql_nodes = [
            CqlNode(
                s.state / "cassandra" if nodes == 1 else s.state / "cql-cluster" / f"node{i + 1}",
                s.logs / ("cassandra.log" if nodes == 1 else f"cassandra-node{i + 1}.log"),
                native_port=s.cql_port,
                storage_port=s.cql_storage_port,
                jmx_port=s.cql_jmx_port + 100 * i,
                heap_mb=1024 if nodes == 1 else 512,
                address=f"127.0.0.{i + 1}",
                seeds=tuple(f"127.0.0.{k + 1}" for k in range(nodes)),
                in_cluster=nodes > 1,
                incremental_backups=s.backups,
            )
            for i in range(nodes)
        ]
        self.cql = self.cql_nodes[0]
        self.pg = PgNode(
            s.state / "postgres",
            s.logs / "postgres.log",
            port=s.pg_port,
            database="runtrack_test" if (s.database_url and s.name == "test") else "runtrack",
            settings=pg_backup_settings(s.backup_dir) if s.backups else None,
        )
        self.pg_cluster = (
            PgCluster(
                s.state / "pg-cluster",
                s.logs,
                self.run_dir,
                pg_port=s.pg_port,
                scope=f"runtrack-{s.name}",
                settings=pg_backup_settings(s.backup_dir, incremental=False) if s.backups else None,
            )
            if (s.pg_nodes or self._recorded("pg-nodes")) == 2
            else None
        )
        self.traces = (
            Collector(s.state, s.logs / "jaeger.log", s.otlp_port, s.traces_ui_port)
            if s.otlp_port is not None
            else None
        )
        self.envoy_pid_file = self.run_dir / "envoy.pid"
        self.replicas_file = self.run_dir / "replicas.json"
        self.issuer = LocalIssuer(s.keys_dir)
        # The live links' key pair: the tracking replicas sign with it, Envoy verifies.
        self.link_keys = LocalIssuer(s.keys_dir, prefix="live-", key_id=LINK_KEY_ID)

    # ---- addresses -------------------------------------------------------------------------
    def _recorded(self, what: str) -> int:
        """How many nodes (`cql-nodes`, `pg-nodes`) the last `up` started: 1 unless it said."""
        recorded = self.run_dir / what
        return int(recorded.read_text()) if recorded.exists() else 1

    @property
    def pg_nodes(self) -> int:
        return 1 if self.pg_cluster is None else len(self.pg_cluster.nodes)

    @property
    def scylla_hosts(self) -> str:
        return self.spec.scylla_hosts or ",".join(n.address for n in self.cql_nodes)

    @property
    def scylla_port(self) -> int:
        return self.spec.cql_port

    @property
    def database_url(self) -> str:
        """With two nodes, a libpq URL naming both (target_session_attrs=read-write): a connection goes
        to the primary, whichever node that is."""
        if self.spec.database_url:
            return self.spec.database_url
        return self.pg.url if self.pg_cluster is None else self.pg_cluster.url

    @property
    def envoy_address(self) -> str:
        return f"127.0.0.1:{self.spec.envoy_port}"

    @property
    def envoy_tls_address(self) -> str:
        """Envoy over TLS, by the name its certificate carries."""
        return f"localhost:{self.spec.envoy_tls_port}"

    @property
    def tls_ca(self) -> Path:
        return tls.files(self.spec.tls_dir).ca

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.spec.envoy_admin_port}"

    def replica_env(self) -> dict[str, str]:
        return (
            dict(
                os.environ,
                SCYLLA_HOSTS=self.scylla_hosts,
                SCYLLA_PORT=str(self.scylla_port),
                SCYLLA_KEYSPACE=self.spec.keyspace,
                DATABASE_URL=self.database_url,
                # Where a replica calls the other service's public API on a caller's behalf.
                RUNTRACK_API_ADDRESS=self.envoy_address,
                LIVE_LINK_KEY_FILE=str(self.link_keys.private_key_file),
                PUBLIC_ORIGIN=f"http://{self.envoy_address}",
                # Webhooks to the developer's own machine are the point here.
                LIVE_WEBHOOK_ALLOW_PRIVATE="1",
                PYTHONUNBUFFERED="1",
            )
            | ({"OTEL_EXPORTER_OTLP_ENDPOINT": self.traces.endpoint} if self.traces is not None else {})
            | self.cluster_settings()
            | self.spec.replica_settings
        )

    def cluster_settings(self) -> dict[str, str]:
        """On the local three-node cluster: every run on all three nodes (RF 3), unless set."""
        if self.spec.scylla_hosts is not None or len(self.cql_nodes) == 1 or "SCYLLA_REPLICATION" in os.environ:
            return {}
        return {"SCYLLA_REPLICATION": "{'class': 'NetworkTopologyStrategy', 'datacenter1': 3}"}

    # ---- replicas ----------------------------------------------------------------------------
    def replica_ports(self) -> dict[str, list[int]]:
        try:
            data = json.loads(self.replicas_file.read_text())
            return {svc: [int(p) for p in data.get(svc, [])] for svc in SERVICES}
        except (OSError, ValueError):
            return {svc: [] for svc in SERVICES}

    def _save_replica_ports(self, ports: dict[str, list[int]]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.replicas_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(ports))
        tmp.replace(self.replicas_file)

    def _pid_file(self, svc: str, port: int) -> Path:
        return self.run_dir / f"{svc}-{port}.pid"

    def replica_pid(self, svc: str, port: int) -> int | None:
        pid = procs.read_pid(self._pid_file(svc, port))
        return pid if procs.alive(pid) else None

    def start_replica(self, svc: str, port: int, extra_env: dict[str, str] | None = None) -> int:
        pid = self.replica_pid(svc, port)
        if pid:
            return pid
        return procs.start(
            [sys.executable, "-m", MODULES[svc], "--port", str(port), "--metrics-port", str(metrics_port(port))],
            log=self.spec.logs / f"{svc}-{port}.log",
            pid_file=self._pid_file(svc, port),
            env=self.replica_env() | (extra_env or {}),
            cwd=ROOT,
        )

    def migrate(self, extra_env: dict[str, str] | None = None) -> None:
        """Both stores' schemas brought up to this checkout's (the commands a deployment runs before
        its replicas serve); the replicas only check them."""
        for module in MIGRATIONS:
            out = subprocess.run(
                [sys.executable, "-m", module],
                env=self.replica_env() | (extra_env or {}),
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=300,
            )
            if out.returncode != 0:
                raise SystemExit(f"{module} failed:\n{(out.stdout + out.stderr)[-3000:]}")
            said = (out.stdout + out.stderr).strip().splitlines()
            say(said[-1] if said else f"{module}: done")

    def wait_stopped(self, svc: str, port: int, timeout: float = 30.0) -> None:
        procs.wait_until(f"{svc} replica {port} to exit", lambda: self.replica_pid(svc, port) is None, timeout)

    def write_eds(self, ports: dict[str, list[int]]) -> None:
        """Atomically replaces each cluster's EDS file (Envoy watches the directory for renames)."""
        self.spec.eds_dir.mkdir(parents=True, exist_ok=True)
        for svc in SERVICES:
            target = self.spec.eds_dir / f"{svc}.yaml"
            tmp = self.spec.eds_dir / f".{svc}.yaml.tmp"
            tmp.write_text(to_yaml(eds_document(svc, ports[svc])))
            tmp.replace(target)

    # ---- Envoy ---------------------------------------------------------------------------------
    def envoy_pid(self) -> int | None:
        pid = procs.read_pid(self.envoy_pid_file)
        return pid if procs.alive(pid) else None

    def start_envoy(self, layout: Layout | None = None, name: str = "envoy") -> int:
        """Starts Envoy with the stack's layout (or another one, e.g. the benchmark's listener
        without token checks, under another `name`) unless it runs; returns its pid."""
        layout = layout or self.spec.layout
        pid_file = self.run_dir / f"{name}.pid"
        running = procs.read_pid(pid_file)
        if running and procs.alive(running):
            return running
        config = self.run_dir / f"{name}.yaml"
        config.write_text(to_yaml(render(layout)))
        log = self.spec.logs / f"{name}.log"
        # Envoy ends when the process that started it exits: a shell that waits on it stays its
        # parent, so Envoy outlives `scripts/dev up`.
        pid = procs.start(
            [
                "sh",
                "-c",
                '"$@"; exit $?',
                "envoy",
                str(tools.envoy()),
                "-c",
                str(config),
                "--log-level",
                "warn",
                "--drain-time-s",
                "5",
                "--base-id",
                str(layout.admin_port),
            ],
            log=log,
            pid_file=pid_file,
            cwd=ROOT,
        )
        admin = f"http://127.0.0.1:{layout.admin_port}"
        procs.wait_until("Envoy", lambda: self._admin_get("/ready", admin) == "LIVE", 30, log=log, pid=pid)
        return pid

    def _admin_get(self, path: str, admin_url: str | None = None) -> str | None:
        try:
            with urllib.request.urlopen((admin_url or self.admin_url) + path, timeout=2) as resp:
                return str(resp.read().decode().strip())
        except OSError:
            return None

    def envoy_stats(self, containing: str) -> dict[str, str]:
        """Envoy's counters and gauges whose name contains `containing` (admin /stats)."""
        lines = (self._admin_get("/stats") or "").splitlines()
        return dict(line.split(": ", 1) for line in lines if containing in line and ": " in line)

    def host_stat(self, stat: str) -> dict[str, dict[int, str]]:
        """One per-host value of Envoy's admin /clusters: {"tracking": {port: value}}."""
        text = self._admin_get("/clusters") or ""
        out: dict[str, dict[int, str]] = {svc: {} for svc in SERVICES}
        for line in text.splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[0] in out and parts[2] == stat:
                out[parts[0]][int(parts[1].rsplit(":", 1)[1])] = parts[3]
        return out

    def host_health(self) -> dict[str, dict[int, str]]:
        """What Envoy thinks of each replica: {"tracking": {port: "healthy" | flags}}."""
        return self.host_stat("health_flags")

    def all_healthy(self, ports: dict[str, list[int]]) -> bool:
        health = self.host_health()
        return all(
            set(health[svc]) == set(ports[svc]) and all(health[svc][p] == "healthy" for p in ports[svc])
            for svc in SERVICES
        )

    def wait_healthy(self, ports: dict[str, list[int]], timeout: float = 120.0, settle_s: float = 1.5) -> None:
        """Until Envoy's admin shows every replica healthy for `settle_s` in a row: right after a
        host turns healthy, Envoy was seen to route new requests to the others for about a second."""
        deadline = time.monotonic() + timeout
        healthy_since: float | None = None
        while time.monotonic() < deadline:
            if self.all_healthy(ports):
                healthy_since = healthy_since or time.monotonic()
                if time.monotonic() - healthy_since >= settle_s:
                    return
            else:
                healthy_since = None
            for svc in SERVICES:
                for port in ports[svc]:
                    if not self.replica_pid(svc, port):
                        log = self.spec.logs / f"{svc}-{port}.log"
                        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log.exists() else ""
                        raise RuntimeError(f"{svc} replica on port {port} exited\n{tail}")
            time.sleep(0.25)
        raise RuntimeError(f"Envoy did not see every replica healthy within {timeout:.0f}s: {self.host_health()}")

    # ---- the commands --------------------------------------------------------------------------
    def listening_ports(self) -> list[tuple[int, int]]:
        """Every port this stack's servers may listen on (replicas: a hundred from each base, and their
        metrics ports)."""
        s = self.spec
        out = [(p, p) for p in (s.envoy_port, s.envoy_admin_port, s.envoy_tls_port, s.cql_port, s.pg_port)]
        out += [(s.cql_storage_port, s.cql_storage_port + 1), (s.cql_jmx_port, s.cql_jmx_port + 200)]
        for base in s.base_ports.values():
            out += [(base, base + 99), (metrics_port(base), metrics_port(base) + 99)]
        if self.pg_cluster is not None:
            out += self.pg_cluster.port_ranges()
        if s.otlp_port is not None:
            out += [(s.otlp_port, s.otlp_port), (s.traces_ui_port - 1, s.traces_ui_port)]
        return out

    def up(self) -> None:
        s = self.spec
        procs.reserve_ports(self.listening_ports())
        s.logs.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tools.envoy()
        tools.grpcurl()
        tools.ghz()  # the README's load line: linked into .venv/bin like grpcurl
        tools.web()  # Envoy serves the built page: built before Envoy starts
        self.issuer.ensure_keys()
        self.link_keys.ensure_keys()
        tls.ensure(s.tls_dir)
        if s.scylla_hosts is None:
            recorded = self._recorded("cql-nodes")
            if recorded != len(self.cql_nodes) and Stack(replace(s, cql_nodes=recorded)).cql.pid():
                raise SystemExit(
                    f"{recorded} CQL node(s) run now: `scripts/dev down` first, then `up` with the new count"
                )
            (self.run_dir / "cql-nodes").write_text(str(len(self.cql_nodes)))
            # The seed first: the others learn the cluster from it, then start together.
            for group in (self.cql_nodes[:1], self.cql_nodes[1:]):
                for node in group:
                    if not node.pid():
                        version = tools.CASSANDRA_VERSION
                        say(f"starting CQL node (Apache Cassandra {version}) on {node.address}:{s.cql_port}")
                        node.start()
                for node in group:
                    node.wait_ready()
        if s.database_url is None:
            self.start_postgres()
        if self.traces is not None and s.traces_at_up:
            self.traces.start()
        self.migrate()
        ports = self.replica_ports()
        for svc in SERVICES:
            if not ports[svc]:
                ports[svc] = [s.base_ports[svc] + i for i in range(s.replicas[svc])]
        self._save_replica_ports(ports)
        self.write_eds(ports)
        for svc in SERVICES:
            for port in ports[svc]:
                self.start_replica(svc, port)
        self.start_envoy()
        self.wait_healthy(ports)

    def start_traces(self) -> Collector:
        """The stack's Jaeger, started (and built, once per machine) if it is not running."""
        if self.traces is None:
            raise SystemExit("this stack has no traces (its spec names no OTLP port)")
        self.traces.start()
        return self.traces

    def postgres_running(self) -> bool:
        if self.pg_cluster is None:
            return self.pg.pid() is not None
        c = self.pg_cluster
        return bool(c.etcd_pid() or any(c.patroni_pid(n) or c.postgres_pid(n) for n in c.nodes))

    def start_postgres(self) -> None:
        s = self.spec
        recorded = self._recorded("pg-nodes")
        if recorded != self.pg_nodes and Stack(replace(s, pg_nodes=recorded)).postgres_running():
            raise SystemExit(
                f"{recorded} PostgreSQL node(s) run now: `scripts/dev down` first, then `up` with the new count"
            )
        (self.run_dir / "pg-nodes").write_text(str(self.pg_nodes))
        if s.backups:
            self.pg_backup().prepare()  # where archive_command copies WAL to
        if self.pg_cluster is None:
            if not self.pg.pid():
                say(f"starting PostgreSQL on 127.0.0.1:{s.pg_port}")
            self.pg.start()
            return
        addresses = ", ".join(n.address for n in self.pg_cluster.nodes)
        say(f"starting PostgreSQL as two nodes (Patroni, synchronous standby) on {addresses}")
        self.pg_cluster.start()

    def pg_backup(self) -> PgBackup:
        """Barman for this stack's PostgreSQL: the node, or every node of the two (the primary's
        backups and archive, whichever node that is)."""
        addresses = None if self.pg_cluster is None else [n.address for n in self.pg_cluster.nodes]
        return PgBackup(self.pg, self.spec.backup_dir, addresses)

    def postgres(self) -> dict[str, Any]:
        """What `scripts/dev status --json` says of PostgreSQL: the primary's pid and address, and with
        two nodes each one's role."""
        if self.spec.database_url is not None:
            return {"nodes": None, "primary": {"address": "DATABASE_URL", "pid": None}}
        if self.pg_cluster is not None:
            return self.pg_cluster.status()
        pid = self.pg.pid()
        return {"nodes": 1, "primary": {"name": "pg", "address": f"127.0.0.1:{self.spec.pg_port}", "pid": pid}}

    # ---- the autoscaler ----------------------------------------------------------------------
    @property
    def autoscaler_pid_file(self) -> Path:
        return self.run_dir / "autoscale.pid"

    def autoscaler_pid(self) -> int | None:
        pid = procs.read_pid(self.autoscaler_pid_file)
        return pid if procs.alive(pid) else None

    def start_autoscaler(self, args: list[str]) -> int:
        """`scripts/dev autoscale ARGS` in the background, logging to autoscale.log."""
        running = self.autoscaler_pid()
        if running:
            return running
        env = dict(os.environ, RUNTRACK_STACK=self.spec.name)
        return procs.start(
            [sys.executable, "-m", "devstack", "autoscale", *args],
            log=self.spec.logs / "autoscale.log",
            pid_file=self.autoscaler_pid_file,
            env=env,
            cwd=ROOT,
        )

    def replica_load(self, port: int) -> dict[str, float] | None:
        """What a replica's metrics say of its load now (None when it does not answer)."""
        from devstack.autoscale import scrape

        try:
            return scrape(metrics_port(port), timeout_s=1.0)
        except OSError:
            return None

    def down(self) -> None:
        procs.stop(self.autoscaler_pid(), timeout=10)
        procs.stop(self.envoy_pid(), timeout=10)
        ports = self.replica_ports()
        for svc in SERVICES:
            for port in ports[svc]:
                procs.stop(self.replica_pid(svc, port), timeout=20)
        if self.traces is not None:
            self.traces.stop()
        if self.pg_cluster is None:
            self.pg.stop()
        else:
            self.pg_cluster.stop()
        for node in self.cql_nodes:
            node.stop()
        # A later plain `up` starts the documented defaults, not what this one was scaled or set to.
        (self.run_dir / "cql-nodes").unlink(missing_ok=True)
        (self.run_dir / "pg-nodes").unlink(missing_ok=True)
        self.replicas_file.unlink(missing_ok=True)

    # ---- scaling and rollouts, with Envoy running on ----------------------------------------------
    def _wait_serving(self, svc: str, port: int, timeout: float = 60.0) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        def serving() -> bool:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                try:
                    stub: Any = health_pb2_grpc.HealthStub(ch)
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                except grpc.RpcError:
                    return False
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

        procs.wait_until(
            f"{svc} replica on port {port}",
            serving,
            timeout,
            log=self.spec.logs / f"{svc}-{port}.log",
            pid=self.replica_pid(svc, port),
        )

    def add_replica(self, svc: str, extra_env: dict[str, str] | None = None) -> int:
        """Starts one more replica of `svc` (with settings of its own on top of the stack's, if any);
        returns once Envoy routes to it."""
        ports = self.replica_ports()
        port = self.spec.base_ports[svc]
        while (
            port in ports[svc]
            or self.replica_pid(svc, port)
            or procs.port_open(port)
            or procs.port_open(metrics_port(port))
        ):
            port += 1
        self.start_replica(svc, port, extra_env)
        self._wait_serving(svc, port)
        ports[svc].append(port)
        self._save_replica_ports(ports)
        self.write_eds(ports)
        self.wait_healthy(ports)
        say(f"{svc} replica {port} serving behind Envoy")
        return port

    def retire_replica(self, svc: str, port: int) -> None:
        """Takes a replica out of Envoy and stops it: it reports NOT_SERVING, waits for Envoy to
        notice, flushes its open streams (ended with UNAVAILABLE), finishes its calls, exits."""
        ports = self.replica_ports()
        ports[svc] = [p for p in ports[svc] if p != port]
        self._save_replica_ports(ports)
        self.write_eds(ports)
        procs.stop(self.replica_pid(svc, port), timeout=60)
        say(f"{svc} replica {port} retired")

    def scale(self, counts: dict[str, int]) -> None:
        for svc, want in counts.items():
            while len(self.replica_ports()[svc]) < want:
                self.add_replica(svc)
            while len(self.replica_ports()[svc]) > want:
                self.retire_replica(svc, self.replica_ports()[svc][-1])
        self.wait_healthy(self.replica_ports())

    def rollout(self) -> None:
        """Replaces every replica, one at a time: a new one serves before an old one leaves."""
        for svc in SERVICES:
            for old in list(self.replica_ports()[svc]):
                self.add_replica(svc)
                self.retire_replica(svc, old)
        self.wait_healthy(self.replica_ports())

    def processes(self) -> list[dict[str, object]]:
        """Every process the stack runs: kind, address, pid, metrics port, Envoy's health of it, load."""
        s = self.spec
        out: list[dict[str, object]] = []
        if s.scylla_hosts is None:
            out += [
                {"kind": "cql-node", "address": f"{node.address}:{s.cql_port}", "pid": node.pid()}
                for node in self.cql_nodes
            ]
        else:
            out.append({"kind": "cql-store", "address": f"{s.scylla_hosts}:{s.cql_port}", "pid": None})
        if s.database_url is None and self.pg_cluster is not None:
            pg = self.pg_cluster.status()
            for member in pg["members"]:
                out.append({"kind": "postgresql"} | {k: member[k] for k in ("address", "pid", "role", "state")})
                out.append({"kind": "patroni", "address": member["patroni_api"], "pid": member["patroni_pid"]})
            out.append({"kind": "etcd", "address": pg["etcd"]["address"], "pid": pg["etcd"]["pid"]})
        elif s.database_url is None:
            out.append({"kind": "postgresql", "address": f"127.0.0.1:{s.pg_port}", "pid": self.pg.pid()})
        else:
            out.append({"kind": "postgresql", "address": "DATABASE_URL", "pid": None})
        health = self.host_health() if self.envoy_pid() else {svc: {} for svc in SERVICES}
        for svc, ports in self.replica_ports().items():
            for port in ports:
                load = self.replica_load(port)
                out.append(
                    {
                        "kind": f"{svc}-replica",
                        "address": f"127.0.0.1:{port}",
                        "pid": self.replica_pid(svc, port),
                        "metrics_port": metrics_port(port),
                        "envoy_health": health[svc].get(port, "-"),
                        "load": None
                        if load is None
                        else {"streams_open": load["streams_open"], "calls_in_flight": load["in_flight"]},
                    }
                )
        out.append({"kind": "envoy", "address": self.envoy_address, "pid": self.envoy_pid(), "admin": self.admin_url})
        out.append({"kind": "autoscaler", "address": "-", "pid": self.autoscaler_pid()})
        if self.traces is not None:
            out.append({"kind": "traces", "address": self.traces.ui, "pid": self.traces.pid()})
        return out

    def status(self) -> list[tuple[str, str, str]]:
        rows: list[tuple[str, str, str]] = []
        for p in self.processes():
            state = "running" if p["pid"] else ("external" if p["kind"] == "cql-store" else "stopped")
            if p["address"] == "DATABASE_URL":
                state = "external"
            if "metrics_port" in p:
                load = p["load"]
                what = (
                    "no metrics"
                    if not isinstance(load, dict)
                    else (f"streams open {load['streams_open']:.0f}, calls in flight {load['calls_in_flight']:.0f}")
                )
                state += f", envoy: {p['envoy_health']}, metrics :{p['metrics_port']}, {what}"
            if p["kind"] == "envoy":
                state += f" (admin {p['admin']}, Prometheus: {p['admin']}/stats/prometheus)"
            if p.get("role"):
                state += f", {'primary' if p['role'] == 'leader' else p['role']} ({p.get('state')})"
            rows.append((str(p["kind"]), str(p["address"]), state))
        return rows
