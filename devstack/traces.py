"""Where a local stack's traces go: Jaeger (v2, the OpenTelemetry Collector with Jaeger's storage and UI),
built once per machine from the Go module proxy (the module in devstack/gomod/jaeger pins it), on
loopback: OTLP/gRPC in from Envoy and the replicas, traces kept in memory, the UI and its HTTP API out.

    http://127.0.0.1:16686            the developer's stack's traces (`scripts/dev up` prints it)
    http://127.0.0.1:16696            the test stack's
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from devstack import gobuild, procs
from devstack.paths import ROOT, cache_dir

# The module version of Jaeger's repository that holds Jaeger v2's `cmd/jaeger`.
JAEGER_MODULE_VERSION = "v1.75.0"
GOMOD = ROOT / "devstack" / "gomod" / "jaeger"
# Traces kept (the oldest let go first): a developer's afternoon, bounded.
MAX_TRACES = 20_000


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def jaeger() -> Path:
    """The Jaeger command, built when missing (once per machine and version; ~8 CPU-minutes cold)."""
    return gobuild.command(
        cache_dir() / "bin" / f"jaeger-{JAEGER_MODULE_VERSION}",
        f"Jaeger ({JAEGER_MODULE_VERSION})",
        GOMOD,
        ["github.com/jaegertracing/jaeger/cmd/jaeger"],
    )


@dataclass(frozen=True)
class Collector:
    """One Jaeger for one stack: OTLP/gRPC on `otlp_port`, the UI and API on `ui_port` (its gRPC query
    API on `ui_port - 1`)."""

    state: Path
    log: Path
    otlp_port: int
    ui_port: int
    # Where OTLP is taken (the local cluster's pods reach the node's bridge address); the API stays on loopback.
    otlp_host: str = "127.0.0.1"

    @property
    def pid_file(self) -> Path:
        return self.state / "run" / "jaeger.pid"

    @property
    def endpoint(self) -> str:
        """What the replicas' OTEL_EXPORTER_OTLP_ENDPOINT says."""
        return f"http://{self.otlp_host}:{self.otlp_port}"

    @property
    def ui(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    def config(self) -> dict[str, Any]:
        return {
            "service": {
                "extensions": ["jaeger_storage", "jaeger_query"],
                "pipelines": {
                    "traces": {
                        "receivers": ["otlp"],
                        "processors": ["batch"],
                        "exporters": ["jaeger_storage_exporter"],
                    }
                },
                # Its own metrics off: they would take port 8888, whichever stack asked first.
                "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
            },
            "extensions": {
                "jaeger_storage": {"backends": {"memstore": {"memory": {"max_traces": MAX_TRACES}}}},
                "jaeger_query": {
                    "storage": {"traces": "memstore"},
                    "http": {"endpoint": f"127.0.0.1:{self.ui_port}"},
                    "grpc": {"endpoint": f"127.0.0.1:{self.ui_port - 1}"},
                },
            },
            "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"{self.otlp_host}:{self.otlp_port}"}}}},
            "processors": {"batch": {}},
            "exporters": {"jaeger_storage_exporter": {"trace_storage": "memstore"}},
        }

    def pid(self) -> int | None:
        pid = procs.read_pid(self.pid_file)
        return pid if procs.alive(pid) else None

    def start(self) -> int:
        running = self.pid()
        if running:
            return running
        exe = jaeger()
        config = self.state / "run" / "jaeger.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        # Its own traces off: it would send them to 127.0.0.1:4317 (the developer's Jaeger, or no one).
        env = dict(os.environ, OTEL_TRACES_EXPORTER="none", OTEL_SDK_DISABLED="true")
        pid = procs.start([str(exe), "--config", str(config)], log=self.log, pid_file=self.pid_file, cwd=ROOT, env=env)
        procs.wait_until(
            "Jaeger",
            lambda: procs.port_open(self.otlp_port, self.otlp_host) and self.ready(),
            60,
            log=self.log,
            pid=pid,
        )
        return pid

    def stop(self) -> None:
        procs.stop(self.pid(), timeout=10)

    def ready(self) -> bool:
        try:
            self._get("/api/services")
            return True
        except (OSError, ValueError):
            return False

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.ui + path, timeout=5) as resp:
            return json.loads(resp.read())

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        """The spans Jaeger holds of one trace, each with its `service` (empty while it holds none)."""
        try:
            data = self._get(f"/api/traces/{trace_id}")
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return []
            raise
        spans: list[dict[str, Any]] = []
        for t in data.get("data") or []:
            processes = t.get("processes", {})
            for span in t.get("spans", []):
                service = processes.get(span.get("processID"), {}).get("serviceName", "")
                spans.append(span | {"service": service})
        return spans
