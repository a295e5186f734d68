"""The one table of host programs (devstack/host.py): every program the scripts run is in it, and a
script's preflight on a machine that has none of them names each with where it comes from."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devstack import host
from devstack.paths import ROOT

RUNNERS = {"run", "Popen", "check_output", "check_call", "call", "which"}
# Run by absolute path or built by the project (the cache's Go tools, Kubernetes' commands), not the host's.
NOT_HOST = {"python", "python3", "envoy"}


def programs_run(source: Path) -> set[str]:
    """Literal program names passed to subprocess-like calls (`run("ip", ...)`, `subprocess.run(["tar", ...])`,
    `shutil.which("go")`) in one module."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name not in RUNNERS:
            continue
        first = node.args[0]
        if isinstance(first, ast.List) and first.elts:
            first = first.elts[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str) and " " not in first.value:
            found.add(first.value)
    return found


def test_every_program_the_scripts_run_is_in_the_table():
    sources = [
        *ROOT.glob("devstack/*.py"),
        *ROOT.glob("deploy/**/*.py"),
        *ROOT.glob("bench/*.py"),
        *ROOT.glob("edge/*.py"),
    ]
    seen = {p: str(src.relative_to(ROOT)) for src in sources for p in programs_run(src)}
    unknown = {p: where for p, where in seen.items() if p not in host.PROGRAMS and p not in NOT_HOST}
    assert not unknown, f"add these to devstack/host.py PROGRAMS with their Debian package: {unknown}"
    assert {"modprobe", "ip", "buildah", "java", "npm"} <= set(seen), "the scan finds the calls"


@pytest.mark.parametrize("script", host.SCRIPTS)
def test_a_preflight_without_any_program_names_each_with_its_package(script, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "devstack.host", "check", script],
        cwd=ROOT,
        env=dict(os.environ, PATH=str(empty)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    for name, program in host.needed(script).items():
        if name.startswith("/"):
            continue  # found by its path whatever PATH says
        (line,) = [x for x in lines if x.split() and x.split()[0] == name]
        assert (f"Debian package {program.package}" if program.package else program.source) in line


def test_the_scripts_run_their_preflight_first():
    assert "devstack.host install test" in (ROOT / "scripts" / "test").read_text()
    assert 'host.preflight("dev")' in (ROOT / "devstack" / "__main__.py").read_text()
    assert 'host.preflight("k8s")' in (ROOT / "deploy" / "k8s" / "cluster.py").read_text()
    assert 'host.preflight("image")' in (ROOT / "deploy" / "images" / "build.py").read_text()
