"""scripts/bench phones --compare REF: the same phones bench on another commit and on this checkout,
back to back on this machine, and both printed side by side.

REF (a commit, branch or tag) is checked out once in a worktree of its own under .dev/compare/, with
its own .venv and dev stack (its bootstrap, its `scripts/bench`), so that its replicas run its code.
The two dev stacks share their ports: this checkout's stack is stopped before REF's starts, and REF's
before this one's. Each bench writes its JSON in its own checkout (`.dev/bench/phones.json`); the
table compares them step by step: failed streams, p99 arrival to durable, the replicas', the CQL
node's and Envoy's CPU per point in the steady window, and the replica/Envoy ratio of each.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from devstack.paths import ROOT


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def resolve(ref: str, root: Path = ROOT) -> str:
    """The commit `ref` names; SystemExit naming it when it names none."""
    out = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"--compare {ref}: not a commit of this repository")
    return out.stdout.strip()


def bench_args(argv: list[str]) -> list[str]:
    """The phones bench's own arguments of `scripts/bench` ARGV: after `phones`, without --compare."""
    rest = argv[argv.index("phones") + 1 :]
    out: list[str] = []
    skip = False
    for arg in rest:
        if skip:
            skip = False
        elif arg == "--compare":
            skip = True
        elif not arg.startswith("--compare="):
            out.append(arg)
    return out


def worktree(commit: str, root: Path = ROOT) -> Path:
    """A detached worktree of `commit` under .dev/compare/ (made once, kept for the next comparison)."""
    path = root / ".dev" / "compare" / commit[:12]
    if not (path / ".git").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "-C", str(root), "worktree", "prune"], check=True)
        subprocess.run(
            ["git", "-C", str(root), "worktree", "add", "--detach", str(path), commit],
            check=True,
            stdout=sys.stderr,
        )
    return path


def bench_in(checkout: Path, argv: list[str]) -> dict[str, Any]:
    """`scripts/bench phones ARGV` in `checkout` (its own stack, stopped afterwards); its JSON."""
    result = checkout / ".dev" / "bench" / "phones.json"
    result.unlink(missing_ok=True)
    try:
        subprocess.run([str(checkout / "scripts" / "bench"), "phones", *argv], cwd=checkout, check=True)
    finally:
        subprocess.run([str(checkout / "scripts" / "dev"), "down"], cwd=checkout, check=False)
    data: dict[str, Any] = json.loads(result.read_text())
    return data


def _steady(step: dict[str, Any], component: str) -> float | None:
    figures = step.get("steady_us_per_point") or step.get("cpu_us_per_point") or {}
    value = figures.get(component)
    return None if value is None else float(value)


def _ratio(step: dict[str, Any]) -> float | None:
    tracking, envoy = _steady(step, "tracking"), _steady(step, "envoy")
    return tracking / envoy if tracking is not None and envoy else None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(ref: str, theirs: dict[str, Any], ours: dict[str, Any]) -> str:
    """Both benches' steps side by side (a step of one missing in the other: its figures alone)."""
    by_phones: dict[int, dict[str, dict[str, Any]]] = {}
    for name, data in ((ref, theirs), ("this", ours)):
        for step in data["steps"]:
            by_phones.setdefault(int(step["phones"]), {})[name] = step
    header = (
        f"{'phones':>7} {'commit':>12} {'failed':>6} {'p99 ms':>8} {'tracking µs/pt':>14}"
        f" {'cql µs/pt':>9} {'envoy µs/pt':>11} {'replica/envoy':>13}"
    )
    lines = [header]
    for phones in sorted(by_phones):
        for name in (ref, "this"):
            step = by_phones[phones].get(name)
            if step is None:
                continue
            lines.append(
                f"{phones:>7} {name[:12]:>12} {step['streams_failed']:>6} {_fmt(step.get('durable_p99_ms'), '.0f'):>8}"
                f" {_fmt(_steady(step, 'tracking'), '.1f'):>14} {_fmt(_steady(step, 'cql'), '.1f'):>9}"
                f" {_fmt(_steady(step, 'envoy'), '.1f'):>11} {_fmt(_ratio(step), '.2f'):>13}"
            )
    lines.append(f"ceiling: {ref} {theirs.get('ceiling')} phones, this checkout {ours.get('ceiling')} phones")
    return "\n".join(lines)


def run(ref: str, argv: list[str]) -> None:
    """REF's bench, then this checkout's, with the same arguments; the comparison printed."""
    commit = resolve(ref)
    other = worktree(commit)
    subprocess.run([str(ROOT / "scripts" / "dev"), "down"], cwd=ROOT, check=False)  # the ports are shared
    say(f"compare: scripts/bench phones {' '.join(argv)} on {ref} ({commit[:12]}, {other})")
    theirs = bench_in(other, argv)
    say("compare: the same on this checkout")
    ours = bench_in(ROOT, argv)
    print(table(ref, theirs, ours), flush=True)
    out = ROOT / ".dev" / "bench" / "phones-compare.json"
    out.write_text(json.dumps({"ref": ref, "commit": commit, "ref_result": theirs, "this_result": ours}, indent=2))
    print(f"JSON: {out}")
