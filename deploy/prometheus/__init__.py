"""RunTrack's Prometheus rules as plain rule files (`slos.yaml`: the objectives of docs/slos.md and their
burn-rate alerts; `causes.yaml`: what breaks them), their `promtool test rules` files (`tests/`), and the
checks run on them. The chart ships the same files as a PrometheusRule (its `files/prometheus/` links here).

Every alert's `runbook_url` is RUNBOOK_URL_PREFIX followed by the runbook's path in this repository,
`docs/runbooks/<alert>.md`; the chart replaces the prefix with `prometheusRule.runbookUrlPrefix`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

RULES = Path(__file__).resolve().parent
RUNBOOK_URL_PREFIX = "https://runtrack.example.com/"
RUNBOOKS = "docs/runbooks"


def rule_files() -> list[Path]:
    return sorted(RULES.glob("*.yaml"))


def test_files() -> list[Path]:
    return sorted((RULES / "tests").glob("*_test.yaml"))


def promtool(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`promtool` (Debian's prometheus package, devstack/host.py) run in the rules' folder."""
    return subprocess.run(["promtool", *args], cwd=RULES, capture_output=True, text=True, timeout=timeout)
