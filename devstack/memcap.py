"""A command run under a memory cap like a pod's: in a cgroup of its own with a hard memory limit,
so that going over it gets the process killed by the kernel's OOM killer, as the kubelet's limit
would. A cgroup v2 hierarchy (`memory.max`) is used where the memory controller is there, else a
cgroup v1 memory hierarchy (`memory.limit_in_bytes`), in both cases a child of this process's own
cgroup (the caller's limits still apply above it). Needs root (or a delegated cgroup).

RLIMIT_AS would be a poor stand-in: it caps address space, not resident memory, and grpc's and
numpy's threads reserve far more address space than they touch.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from devstack.paths import ROOT

CGROUP_ROOT = Path("/sys/fs/cgroup")
VALUES = ROOT / "deploy" / "helm" / "runtrack" / "values.yaml"
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9, "": 1}


@dataclass(frozen=True)
class CappedRun:
    returncode: int
    oom_kills: int  # processes the kernel killed in the cgroup for going over the cap
    peak_bytes: int  # the cgroup's highest memory use (resident memory and page cache)
    limit_bytes: int
    cgroup: str  # "v1" or "v2"
    stdout: str
    stderr: str

    @property
    def killed(self) -> bool:
        return self.oom_kills > 0 or self.returncode in (-9, 137)


def pod_memory_limit(component: str = "summary") -> int:
    """The chart's memory limit for a component's pods, in bytes (deploy/helm/runtrack/values.yaml)."""
    values = yaml.safe_load(VALUES.read_text())
    return quantity_bytes(str(values[component]["resources"]["limits"]["memory"]))


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes quantity ("512Mi", "1G") in bytes."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]i?)?", quantity.strip())
    if found is None:
        raise ValueError(f"not a memory quantity: {quantity!r}")
    return int(float(found.group(1)) * UNITS[found.group(2) or ""])


def _own_cgroups() -> tuple[str | None, str | None]:
    """This process's cgroup in the v1 memory hierarchy and in the v2 one (either may be None)."""
    v1 = v2 = None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            v1 = path
        elif hierarchy == "0" and controllers == "":
            v2 = path
    return v1, v2


def _make_cgroup(limit_bytes: int) -> tuple[Path, str]:
    name = f"runtrack-memcap-{uuid.uuid4().hex[:8]}"
    v1, v2 = _own_cgroups()
    v2_root = CGROUP_ROOT if (CGROUP_ROOT / "cgroup.controllers").exists() else CGROUP_ROOT / "unified"
    if v2 is not None and "memory" in (v2_root / "cgroup.controllers").read_text().split():
        parent = v2_root / v2.lstrip("/")
        if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
            (parent / "cgroup.subtree_control").write_text("+memory")
        group = parent / name
        group.mkdir()
        (group / "memory.max").write_text(str(limit_bytes))
        (group / "memory.swap.max").write_text("0")
        return group, "v2"
    if v1 is not None and (CGROUP_ROOT / "memory").is_dir():
        group = CGROUP_ROOT / "memory" / v1.lstrip("/") / name
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(limit_bytes))
        return group, "v1"
    raise RuntimeError("no cgroup memory controller to cap a process with (root and cgroup v1 or v2 needed)")


def _oom_kills(group: Path, version: str) -> int:
    name = "memory.events" if version == "v2" else "memory.oom_control"
    for line in (group / name).read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0


def _peak(group: Path, version: str) -> int:
    name = "memory.peak" if version == "v2" else "memory.max_usage_in_bytes"
    try:
        return int((group / name).read_text())
    except OSError:  # memory.peak needs Linux 5.19
        return 0


def run_capped(
    argv: Sequence[str], limit_bytes: int, *, timeout_s: float, env: dict[str, str] | None = None
) -> CappedRun:
    """Runs `argv` (from the project's root) inside a new cgroup capped at `limit_bytes`; the cgroup
    is removed afterwards."""
    group, version = _make_cgroup(limit_bytes)
    try:
        # The shell joins the cgroup, then becomes the command: everything it starts is capped.
        wrapper = ["/bin/sh", "-c", f'echo $$ > "{group}/cgroup.procs" && exec "$@"', "memcap", *argv]
        done = subprocess.run(
            wrapper,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            check=False,
        )
        return CappedRun(
            returncode=done.returncode,
            oom_kills=_oom_kills(group, version),
            peak_bytes=_peak(group, version),
            limit_bytes=limit_bytes,
            cgroup=version,
            stdout=done.stdout,
            stderr=done.stderr,
        )
    finally:
        for _ in range(50):  # the cgroup empties once the killed process is reaped
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)
