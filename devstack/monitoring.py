"""Prometheus and Alertmanager (Debian's `prometheus` and `prometheus-alertmanager`, devstack/host.py) on
loopback for a running Stack: Prometheus scrapes the stack's replicas and Envoy's admin `/stats/prometheus`
with the labels the rules expect (`namespace`, `pod`, `component`), loads deploy/prometheus/'s rule files
and sends its alerts to Alertmanager, which posts them (and their resolution) to a webhook.

The rules may be loaded with their windows shortened (`shorten`): every range (`[5m]`) and every `for:`
divided by a factor, so that an alert meant to fire after minutes of a fault fires after seconds of it.
The files are rendered from deploy/prometheus/ each time, never kept as a copy.

    python -m devstack.monitoring up [--webhook URL] [--factor N]   # RUNTRACK_STACK=test: the test stack's
    python -m devstack.monitoring down
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deploy import grafana
from deploy import prometheus as rules
from devstack import procs
from devstack.stack import SERVICES, Stack, StackSpec, metrics_port

# Prometheus's duration units, longest first where one is the other's prefix (ms before m).
UNITS_MS = {
    "ms": 1,
    "y": 365 * 86_400_000,
    "w": 7 * 86_400_000,
    "d": 86_400_000,
    "h": 3_600_000,
    "m": 60_000,
    "s": 1000,
}
_DURATION = re.compile(r"(\d+)(ms|y|w|d|h|m|s)")
_RANGE = re.compile(r"\[((?:\d+(?:ms|[ywdhms]))+)(?::((?:\d+(?:ms|[ywdhms]))*))?\]")
# (Prometheus, Alertmanager) ports by stack: the usual ones for the developer's, others for the tests'
# (the local Kubernetes cluster's Prometheus takes 19090).
PORTS = {"dev": (9090, 9093), "test": (19390, 19393)}


def parse_duration(text: str) -> int:
    """A Prometheus duration ("1h30m", "5m", "500ms") in milliseconds."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * UNITS_MS[u] for n, u in parts)


def format_duration(ms: int) -> str:
    ms = max(1, ms)
    for unit in ("h", "m", "s"):
        if ms % UNITS_MS[unit] == 0:
            return f"{ms // UNITS_MS[unit]}{unit}"
    return f"{ms}ms"


def _scaled(text: str, factor: float) -> str:
    return format_duration(round(parse_duration(text) / factor))


def shorten_expr(expr: str, factor: float) -> str:
    """`expr` with every range and subquery window divided by `factor` ([5m] -> [10s] at 30)."""

    def one(m: re.Match[str]) -> str:
        window = _scaled(m.group(1), factor)
        if m.group(2) is None:
            return f"[{window}]"
        return f"[{window}:{_scaled(m.group(2), factor) if m.group(2) else ''}]"

    return _RANGE.sub(one, expr)


def shorten(groups: dict[str, Any], factor: float) -> dict[str, Any]:
    """A rule file's document with its windows and `for:` durations divided by `factor`; names, labels and
    annotations as they are (a recording rule named ..._rate5m then holds the shortened window)."""
    out: dict[str, Any] = json.loads(json.dumps(groups))  # a deep copy, plain types
    for group in out["groups"]:
        if "interval" in group:
            group["interval"] = _scaled(group["interval"], factor)
        for rule in group["rules"]:
            rule["expr"] = shorten_expr(rule["expr"], factor)
            if "for" in rule:
                rule["for"] = _scaled(rule["for"], factor)
    return out


def rendered_rules(factor: float = 1.0) -> dict[str, dict[str, Any]]:
    """deploy/prometheus/'s rule files by name, as shipped or `shorten`ed by `factor`."""
    out = {}
    for path in rules.rule_files():
        doc = yaml.safe_load(path.read_text())
        out[path.name] = shorten(doc, factor) if factor != 1 else doc
    return out


def shortest_window_ms(groups: dict[str, Any]) -> int:
    return min(
        (parse_duration(m.group(1)) for g in groups["groups"] for r in g["rules"] for m in _RANGE.finditer(r["expr"])),
        default=0,
    )


def http_get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def alertmanager_config(webhook: str | None, group_wait_s: float = 1.0) -> dict[str, Any]:
    """Alertmanager's configuration: every alert posted to `webhook` (None: kept in Alertmanager, on its
    own page) as it fires and as it resolves."""
    wait = format_duration(round(group_wait_s * 1000))
    receiver: dict[str, Any] = {"name": "runtrack"}
    if webhook:
        receiver["webhook_configs"] = [{"url": webhook, "send_resolved": True}]
    return {
        "route": {
            "receiver": "runtrack",
            # Each alert (each label set) a group of its own: its firing and its resolution posted
            # as they happen, not batched with another alert's.
            "group_by": ["..."],
            "group_wait": wait,
            "group_interval": wait,
            "repeat_interval": "1h",
        },
        "receivers": [receiver],
    }


@dataclass
class Monitoring:
    """Prometheus and Alertmanager for `stack`, alerts posted to `webhook` (none: kept in Alertmanager)."""

    stack: Stack
    webhook: str | None = None
    factor: float = 1.0
    scrape_interval_s: float = 1.0
    group_wait_s: float = 1.0
    # More Envoys to scrape beside the stack's (a test's own: one near its heap limit, one serving a
    # certificate about to expire), by pod name: their admin ports.
    extra_envoys: dict[str, int] = field(default_factory=dict)

    @property
    def spec(self) -> StackSpec:
        return self.stack.spec

    @property
    def ports(self) -> tuple[int, int]:
        return PORTS.get(self.spec.name, (self.spec.envoy_admin_port + 3489, self.spec.envoy_admin_port + 3492))

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[1]}"

    @property
    def dir(self) -> Path:
        return self.stack.run_dir / "monitoring"

    @property
    def namespace(self) -> str:
        """What the replicas' series carry as `namespace`: the stack's name, as a cluster's namespace."""
        return f"runtrack-{self.spec.name}"

    def _pid_file(self, name: str) -> Path:
        return self.stack.run_dir / f"{name}.pid"

    def pid(self, name: str) -> int | None:
        pid = procs.read_pid(self._pid_file(name))
        return pid if procs.alive(pid) else None

    # ---- what Prometheus and Alertmanager are given ----------------------------------------------
    def targets(self) -> list[dict[str, Any]]:
        """The replicas the stack has now (a killed one stays, scraped as down), each as a pod."""
        ports = self.stack.replica_ports()
        return [
            {
                "targets": [f"127.0.0.1:{metrics_port(port)}"],
                "labels": {"namespace": self.namespace, "component": svc, "pod": f"{svc}-{port}"},
            }
            for svc in SERVICES
            for port in ports[svc]
        ]

    def envoy_targets(self) -> list[dict[str, Any]]:
        """The stack's Envoy and the extra ones, each as a pod, by their admin ports."""
        envoys = {"envoy": self.spec.envoy_admin_port, **self.extra_envoys}
        return [
            {
                "targets": [f"127.0.0.1:{port}"],
                "labels": {"namespace": self.namespace, "component": "envoy", "pod": pod},
            }
            for pod, port in envoys.items()
        ]

    def write_targets(self) -> None:
        """Rewrites the target files (Prometheus reads them again within a scrape interval): after a
        scale, or an Envoy added."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for name, targets in (("targets.json", self.targets()), ("envoys.json", self.envoy_targets())):
            tmp = self.dir / f".{name}.tmp"
            tmp.write_text(json.dumps(targets, indent=1))
            tmp.replace(self.dir / name)

    def scrape_envoy(self, pod: str, admin_port: int | None) -> None:
        """Adds an Envoy to scrape (None: stops scraping it)."""
        if admin_port is None:
            self.extra_envoys.pop(pod, None)
        else:
            self.extra_envoys[pod] = admin_port
        self.write_targets()

    def write_rules(self) -> list[Path]:
        out = []
        for name, rendered in rendered_rules(self.factor).items():
            shortest = shortest_window_ms(rendered)
            if shortest and shortest < 4 * self.scrape_interval_s * 1000:
                raise ValueError(
                    f"{name} shortened {self.factor:g} times has a {shortest} ms window: fewer than 4 scrapes"
                )
            target = self.dir / "rules" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(yaml.safe_dump(rendered, sort_keys=False, width=1000))
            out.append(target)
        return out

    def prometheus_config(self, rule_files: list[Path]) -> dict[str, Any]:
        interval = format_duration(round(self.scrape_interval_s * 1000))
        return {
            "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
            "rule_files": [str(p) for p in rule_files],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{self.ports[1]}"]}]}]},
            "scrape_configs": [
                {
                    "job_name": "runtrack-replicas",
                    "file_sd_configs": [{"files": [str(self.dir / "targets.json")], "refresh_interval": interval}],
                },
                {
                    "job_name": "envoy",
                    "metrics_path": "/stats/prometheus",
                    "file_sd_configs": [{"files": [str(self.dir / "envoys.json")], "refresh_interval": interval}],
                },
            ],
        }

    def alertmanager_config(self) -> dict[str, Any]:
        return alertmanager_config(self.webhook, self.group_wait_s)

    # ---- the processes ----------------------------------------------------------------------------
    def up(self, timeout: float = 60.0) -> None:
        for program in ("prometheus", "prometheus-alertmanager"):
            if shutil.which(program) is None:
                raise SystemExit(f"{program} is missing: python -m devstack.host install test")
        self.down()
        for sub in ("prometheus-data", "alertmanager-data"):
            shutil.rmtree(self.dir / sub, ignore_errors=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        procs.reserve_ports([(p, p) for p in self.ports])
        self.write_targets()
        prometheus_yml = self.dir / "prometheus.yml"
        prometheus_yml.write_text(yaml.safe_dump(self.prometheus_config(self.write_rules()), sort_keys=False))
        alertmanager_yml = self.dir / "alertmanager.yml"
        alertmanager_yml.write_text(yaml.safe_dump(self.alertmanager_config(), sort_keys=False))
        logs = self.spec.logs
        am = procs.start(
            [
                "prometheus-alertmanager",
                f"--config.file={alertmanager_yml}",
                f"--storage.path={self.dir / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{self.ports[1]}",
                "--cluster.listen-address=",  # one Alertmanager, no peers to gossip with
            ],
            log=logs / "alertmanager.log",
            pid_file=self._pid_file("alertmanager"),
        )
        prom = procs.start(
            [
                "prometheus",
                f"--config.file={prometheus_yml}",
                f"--storage.tsdb.path={self.dir / 'prometheus-data'}",
                "--storage.tsdb.retention.time=1d",
                f"--web.listen-address=127.0.0.1:{self.ports[0]}",
                # A firing alert sent again every evaluation, not every minute.
                f"--rules.alert.resend-delay={format_duration(round(self.scrape_interval_s * 1000))}",
            ],
            log=logs / "prometheus.log",
            pid_file=self._pid_file("prometheus"),
        )
        procs.wait_until(
            "Alertmanager", lambda: self._ready(self.alertmanager_url), timeout, pid=am, log=logs / "alertmanager.log"
        )
        procs.wait_until(
            "Prometheus", lambda: self._ready(self.prometheus_url), timeout, pid=prom, log=logs / "prometheus.log"
        )
        procs.wait_until(
            "Prometheus's first scrapes", self.all_targets_scraped, timeout, pid=prom, log=logs / "prometheus.log"
        )

    def down(self) -> None:
        for name in ("prometheus", "alertmanager"):
            procs.stop(self.pid(name), timeout=10)

    @staticmethod
    def _ready(url: str) -> bool:
        try:
            with urllib.request.urlopen(url + "/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    # ---- what Prometheus says -----------------------------------------------------------------------
    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        return list(http_get_json(url)["data"]["result"])

    def query_range(self, expr: str, start: float, end: float, step_s: float = 1.0) -> list[tuple[float, float]]:
        """The values of `expr` (one series) from `start` to `end` (Unix times), every `step_s`."""
        params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step_s})
        result = http_get_json(f"{self.prometheus_url}/api/v1/query_range?{params}")["data"]["result"]
        return [(float(t), float(v)) for t, v in result[0]["values"]] if result else []

    def value(self, expr: str) -> float | None:
        """The one value `expr` has now (None: no series)."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def alerts(self) -> list[dict[str, Any]]:
        """Prometheus's pending and firing alerts."""
        return list(http_get_json(f"{self.prometheus_url}/api/v1/alerts")["data"]["alerts"])

    def scrape_health(self) -> dict[str, str]:
        """Each target's last scrape ("up", "down", "unknown") by its pod label."""
        active = http_get_json(f"{self.prometheus_url}/api/v1/targets?state=active")["data"]["activeTargets"]
        return {t["labels"].get("pod", t["scrapeUrl"]): t["health"] for t in active}

    def all_targets_scraped(self) -> bool:
        try:
            health = self.scrape_health()
        except OSError:
            return False
        wanted = {t["labels"]["pod"] for t in [*self.targets(), *self.envoy_targets()]}
        return wanted <= set(health) and all(health[pod] == "up" for pod in wanted)

    def wait_scraped(self, timeout: float = 30.0) -> None:
        """Until every target's last scrape succeeded (after a fault ends, before the next one)."""
        procs.wait_until("every target scraped", self.all_targets_scraped, timeout)


def _spec(name: str) -> StackSpec:
    from devstack.stack import backup_test_spec, cluster_test_spec, dev_spec, test_spec

    specs = {"test": test_spec, "test-cluster": cluster_test_spec, "test-backup": backup_test_spec}
    return specs.get(name, dev_spec)()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start Prometheus and Alertmanager for the running stack")
    up.add_argument("--webhook", help="where Alertmanager posts alerts (default: nowhere; see its own page)")
    up.add_argument("--factor", type=float, default=1.0, help="divide the rules' windows by this (default 1)")
    up.add_argument("--scrape-interval", type=float, default=5.0, help="seconds between scrapes (default 5)")
    sub.add_parser("down", help="stop them")
    args = parser.parse_args(argv)
    stack = Stack(_spec(os.environ.get("RUNTRACK_STACK", "")))
    if args.command == "down":
        Monitoring(stack).down()
        return 0
    mon = Monitoring(stack, args.webhook, args.factor, args.scrape_interval)
    mon.up()
    print(f"Prometheus:   {mon.prometheus_url}  (alerts: {mon.prometheus_url}/alerts)", file=sys.stderr)
    print(f"Alertmanager: {mon.alertmanager_url}", file=sys.stderr)
    print(f"config, rules: {mon.dir}; logs: {stack.spec.logs}/{{prometheus,alertmanager}}.log", file=sys.stderr)
    for path in grafana.files():  # the chart's Grafana dashboards, as Prometheus's own graph pages
        print(f"dashboard {path.stem}: {grafana.graph_url(mon.prometheus_url, path.stem)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
