"""The Grafana dashboards of deploy/grafana/: each a dashboard Grafana imports (a unique uid, panels on
the grid, queries on the `${datasource}` variable), every query valid PromQL (promtool checks each as a
recording rule) and naming only metrics the replicas export. tests/integration/test_dashboards.py runs
every query against Prometheus scraping the real stack."""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.parse

import pytest
import yaml

from deploy import grafana
from devstack.paths import ROOT

PRODUCT = ("tracking_service", "summary_service", "runtrack_common")


def exported_metrics() -> set[str]:
    """The names of the product's metrics (prometheus_client's constructors in its source)."""
    names = set()
    for folder in PRODUCT:
        for path in (ROOT / folder).rglob("*.py"):
            names |= set(re.findall(r'(?:Counter|Gauge|Histogram)\(\s*"([a-z_]+)"', path.read_text()))
    return names


def test_there_are_the_four_dashboards_each_with_its_own_uid():
    stems = {p.stem for p in grafana.files()}
    assert stems == {"ingest", "dashboard", "live", "stores"}
    uids = [grafana.load(p)["uid"] for p in grafana.files()]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("path", grafana.files(), ids=lambda p: p.stem)
def test_every_panel_has_a_title_a_place_a_unit_and_queries_on_the_datasource_variable(path):
    board = grafana.load(path)
    assert board["schemaVersion"] >= 36 and board["title"].startswith("RunTrack")
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(set(ids)) == len(ids)
    places = set()
    for panel in board["panels"]:
        assert panel["title"] and panel["description"], panel
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        grid = panel["gridPos"]
        assert (grid["x"], grid["y"]) not in places and grid["x"] + grid["w"] <= 24
        places.add((grid["x"], grid["y"]))
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}" and target["expr"], panel["title"]


def test_every_query_names_only_metrics_the_replicas_export():
    exported = exported_metrics()
    assert "runtrack_points_stored_total" in exported and "grpc_server_handled_total" in exported
    suffixes = ("_bucket", "_count", "_sum", "_total")
    for query in grafana.queries():
        for name in re.findall(r"\b((?:runtrack|grpc_server)_[a-z_]+)", query.expr):
            base = next((name[: -len(s)] for s in suffixes if name.endswith(s) and name[: -len(s)] in exported), name)
            assert name in exported or base in exported, f"{query.dashboard}/{query.panel}: {name} is not exported"


def test_every_query_is_valid_promql(tmp_path):
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: python -m devstack.host install test (Debian's prometheus package)")
    rules = [{"record": f"dashboard:query:{i}", "expr": q.expr} for i, q in enumerate(grafana.queries())]
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    out = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_each_dashboard_has_a_prometheus_graph_page_of_its_queries():
    for path in grafana.files():
        url = grafana.graph_url("http://127.0.0.1:9090", path.stem)
        params = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        shown = sorted(v[0] for k, v in params.items() if k.endswith(".expr"))
        assert shown == sorted(q.expr for q in grafana.queries() if q.dashboard == path.stem)
    with pytest.raises(ValueError):
        grafana.graph_url("http://127.0.0.1:9090", "nothing")


def test_a_whole_number_bucket_is_matched_as_either_client_writes_it():
    """prometheus_client writes le="1.0", other clients le="1": a query matching one form finds no data."""
    for query in grafana.queries():
        assert not re.search(r'le="\d+"', query.expr), f'{query.dashboard}/{query.panel}: le=~"1|1\\\\.0"'
