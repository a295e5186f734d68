"""`scripts/bench phones --compare REF` (bench/compare.py): its arguments, the commit it names and the
table it prints; the benches themselves are run by hand (docs/benchmarks.md)."""

import subprocess

import pytest

from bench import compare
from devstack.paths import ROOT


def step(phones: int, failed: int, tracking: float, envoy: float, p99: float = 120.0) -> dict:
    return {
        "phones": phones,
        "streams_failed": failed,
        "durable_p99_ms": p99,
        "steady_us_per_point": {"tracking": tracking, "cql": 70.0, "envoy": envoy},
        "cpu_us_per_point": {"tracking": tracking + 20, "cql": 80.0, "envoy": envoy + 5},
    }


def test_the_bench_gets_its_own_arguments_without_compare():
    argv = ["phones", "--max", "2000", "--compare", "HEAD~3", "--seconds", "40"]
    assert compare.bench_args(argv) == ["--max", "2000", "--seconds", "40"]
    assert compare.bench_args(["phones", "--compare=v1", "--step", "500"]) == ["--step", "500"]


def test_a_ref_is_resolved_to_its_commit_and_a_stranger_is_refused():
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    assert compare.resolve("HEAD") == head.stdout.strip()
    with pytest.raises(SystemExit, match="no-such-ref-anywhere: not a commit"):
        compare.resolve("no-such-ref-anywhere")


def test_the_table_puts_each_step_of_both_side_by_side_with_the_ratio_against_envoy():
    theirs = {"steps": [step(1000, 0, 74.0, 18.5), step(2000, 3, 90.0, 18.0)], "ceiling": 1000}
    ours = {"steps": [step(1000, 0, 37.0, 18.5)], "ceiling": 1000}
    lines = compare.table("abc123", theirs, ours).splitlines()
    assert lines[0].split()[:3] == ["phones", "commit", "failed"]
    rows = [line.split() for line in lines[1:-1]]
    assert rows == [
        ["1000", "abc123", "0", "120", "74.0", "70.0", "18.5", "4.00"],
        ["1000", "this", "0", "120", "37.0", "70.0", "18.5", "2.00"],
        ["2000", "abc123", "3", "120", "90.0", "70.0", "18.0", "5.00"],
    ]
    assert lines[-1] == "ceiling: abc123 1000 phones, this checkout 1000 phones"
