"""Commands built from the Go module proxy, once per machine: a wrapper module of the project's (its
go.mod and go.sum pin every version) and `go build` in it. Used for Jaeger (devstack/traces.py),
Toxiproxy (devstack/toxiproxy.py) and the local Kubernetes cluster's commands (deploy/k8s/)."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from devstack.paths import once_per_machine


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


def command(exe: Path, what: str, module_dir: Path, packages: list[str], ldflags: str = "-s -w") -> Path:
    """`exe`, built from `module_dir` when missing: once per machine (a lock named after it), into a
    temporary file moved into place only once complete."""
    if exe.exists():
        return exe
    with once_per_machine(exe.name):
        if not exe.exists():
            if shutil.which("go") is None:
                raise SystemExit(f"{what} is built with Go: put `go` on PATH")
            print(f"setup: building {what} from the Go module proxy, once per machine", file=sys.stderr, flush=True)
            exe.parent.mkdir(parents=True, exist_ok=True)
            tmp = exe.with_name(f".{exe.name}.tmp")
            go_build(module_dir, tmp, packages, ldflags)
            tmp.replace(exe)
    return exe


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
