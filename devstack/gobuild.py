"""Commands built from the Go module proxy, once per machine: a wrapper module of the project's (its
go.mod and go.sum pin every version) and `go build` in it. Used for Jaeger (devstack/traces.py) and the
local Kubernetes cluster's commands (deploy/k8s/node.py)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def go_build(module_dir: Path, out: Path, packages: list[str], ldflags: str = "-s -w") -> None:
    """Builds `packages` of the module in `module_dir` into `out`, and says what it cost: wall time and
    CPU time (a cold machine's largest share). Niced: it may build beside running services (a test
    suite's), which come first."""
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=mod")
    build = ["nice", "-n", "10", "go", "build", "-trimpath", "-ldflags", ldflags, "-o", str(out), *packages]
    started, cpu = time.monotonic(), _children_cpu()
    subprocess.run(build, cwd=module_dir, env=env, check=True)
    print(
        f"built {module_dir.name} in {time.monotonic() - started:.0f} s, {_children_cpu() - cpu:.0f} s of CPU",
        file=sys.stderr,
        flush=True,
    )


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
