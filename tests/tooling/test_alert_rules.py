"""The Prometheus rules of deploy/prometheus/: valid (`promtool check rules`), every alert fired by a
`promtool test rules` file (deploy/prometheus/tests/), and every alert told to an operator with a
severity, a summary and a runbook that exists. promtool is Debian's (prometheus package), installed by
`python -m devstack.host install test` as `scripts/test` does first."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy import prometheus
from devstack.paths import ROOT

SEVERITIES = {"page", "ticket"}


def rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for path in prometheus.rule_files() for rule in rules(path) if "alert" in rule]


@pytest.fixture(scope="module", autouse=True)
def promtool_on_path() -> None:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: python -m devstack.host install test (Debian's prometheus package)")


def test_there_are_rule_files_and_a_test_file_for_each():
    files = {p.name for p in prometheus.rule_files()}
    assert {"slos.yaml", "causes.yaml"} <= files
    tested = {Path(f).name for t in prometheus.test_files() for f in yaml.safe_load(t.read_text())["rule_files"]}
    assert files == tested


def test_promtool_finds_every_rule_file_valid():
    out = prometheus.promtool("check", "rules", *prometheus.rule_files())
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("test_file", prometheus.test_files(), ids=lambda p: p.name)
def test_the_rules_fire_as_their_promtool_tests_expect(test_file):
    out = prometheus.promtool("test", "rules", test_file)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_is_fired_by_some_promtool_test():
    tested = {
        case["alertname"]
        for t in prometheus.test_files()
        for group in yaml.safe_load(t.read_text())["tests"]
        for case in group.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert {a["alert"] for a in alerts()} <= tested


def test_every_alert_has_a_severity_a_summary_and_a_runbook_that_exists():
    for alert in alerts():
        name = alert["alert"]
        assert alert["labels"]["severity"] in SEVERITIES, name
        assert alert["annotations"]["summary"], name
        url = alert["annotations"]["runbook_url"]
        assert url == f"{prometheus.RUNBOOK_URL_PREFIX}{prometheus.RUNBOOKS}/{name}.md", name
        assert (ROOT / url.removeprefix(prometheus.RUNBOOK_URL_PREFIX)).is_file(), f"{name}: no runbook {url}"


def test_every_runbook_belongs_to_an_alert():
    names = {a["alert"] for a in alerts()}
    assert {p.stem for p in (ROOT / prometheus.RUNBOOKS).glob("*.md")} - {"README"} == names
