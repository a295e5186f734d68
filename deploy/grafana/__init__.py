"""RunTrack's Grafana dashboards, one JSON file each (the form Grafana imports and exports; edit them in
Grafana and save the export here): `ingest.json`, `dashboard.json` (the dashboard's reads and StopRun),
`live.json` (live following), `stores.json`. Every panel's queries are PromQL over the metrics the
replicas export (docs/operating.md, Metrics) and use the `${datasource}` variable. The chart ships them as
ConfigMaps for Grafana's dashboard sidecar (`dashboards.enabled`; its `files/grafana/` links here)."""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARDS = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Query:
    dashboard: str  # the file's stem
    panel: str  # the panel's title
    legend: str
    expr: str


def files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def queries() -> list[Query]:
    """Every query of every panel of every dashboard."""
    return [
        Query(path.stem, panel["title"], target.get("legendFormat", ""), target["expr"])
        for path in files()
        for panel in load(path)["panels"]
        for target in panel["targets"]
    ]


def graph_url(prometheus_url: str, dashboard: str) -> str:
    """Prometheus's own graph page showing the queries of `dashboard` (a file's stem), one graph each:
    the dashboards without a Grafana (`python -m devstack.monitoring up` prints one per dashboard)."""
    params: dict[str, str] = {}
    for i, query in enumerate(q for q in queries() if q.dashboard == dashboard):
        params |= {f"g{i}.expr": query.expr, f"g{i}.tab": "0", f"g{i}.range_input": "1h"}
    if not params:
        raise ValueError(f"no dashboard {dashboard!r} in {DASHBOARDS}")
    return f"{prometheus_url}/graph?{urllib.parse.urlencode(params)}"
