"""The rule files as devstack/monitoring.py loads them beside the test stack: rendered from
deploy/prometheus/ with every range window and `for:` divided by a factor, and still valid rules."""

from __future__ import annotations

import re

import pytest
import yaml

from deploy import prometheus
from devstack.monitoring import format_duration, parse_duration, shorten, shorten_expr


def test_durations_are_read_and_written_as_prometheus_does():
    assert parse_duration("5m") == 300_000
    assert parse_duration("1h30m") == 5_400_000
    assert parse_duration("500ms") == 500
    assert [format_duration(ms) for ms in (10_000, 120_000, 7_200_000, 1500)] == ["10s", "2m", "2h", "1500ms"]
    with pytest.raises(ValueError):
        parse_duration("5 minutes")


def test_ranges_and_subqueries_are_divided_and_label_regexes_left_alone():
    expr = 'rate(a{le=~"1|1\\\\.0", x=~"[0-9]+"}[5m]) / max_over_time(b[1h:1m])'
    assert shorten_expr(expr, 30) == 'rate(a{le=~"1|1\\\\.0", x=~"[0-9]+"}[10s]) / max_over_time(b[2m:2s])'


@pytest.mark.parametrize("path", prometheus.rule_files(), ids=lambda p: p.name)
def test_every_window_and_for_of_the_real_files_is_divided(path):
    doc = yaml.safe_load(path.read_text())
    short = shorten(doc, 30)
    windows = re.compile(r"\[(\w+)\]")
    divided = 0
    for group, short_group in zip(doc["groups"], short["groups"], strict=True):
        for rule, short_rule in zip(group["rules"], short_group["rules"], strict=True):
            assert {k: v for k, v in rule.items() if k not in ("expr", "for")} == {
                k: v for k, v in short_rule.items() if k not in ("expr", "for")
            }
            before = [parse_duration(w) for w in windows.findall(rule["expr"])]
            after = [parse_duration(w) for w in windows.findall(short_rule["expr"])]
            assert after == [round(w / 30) for w in before], rule.get("alert") or rule.get("record")
            divided += len(before)
            if "for" in rule:
                assert parse_duration(short_rule["for"]) == parse_duration(rule["for"]) // 30
    assert divided >= 4, "the files' windows were found"


def test_the_shortened_files_are_valid_rules(tmp_path):
    files = []
    for path in prometheus.rule_files():
        target = tmp_path / path.name
        target.write_text(yaml.safe_dump(shorten(yaml.safe_load(path.read_text()), 30), sort_keys=False))
        files.append(target)
    out = prometheus.promtool("check", "rules", *files)
    assert out.returncode == 0, out.stdout + out.stderr
