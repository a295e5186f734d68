"""What the suite's later tests build, built ahead while its first tests run: `python -m tests.prebuild`,
started by tests/conftest.py at the lowest CPU priority when the session holds the Kubernetes tests.

On a fresh machine the later tests need commands built from the Go module proxy (etcd, Kubernetes'
own, the cluster's tools, the phone generator, Toxiproxy, Jaeger), the Kotlin phone (Maven) and the
cluster's images: about 20 minutes of two cores if each test builds what it needs when it gets there.
The test stack's tests leave a core idle most of the time, so this builds then, below them. Each step
is the call the test itself makes (each holds a machine-wide lock and skips what is built): a test
that gets there first waits for the step in progress, and on a warm machine this takes a second."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any


def steps() -> list[tuple[str, Callable[[], Any]]]:
    """In the order the suite's tests need them."""
    from bench.generator import phonegen
    from deploy.images import build as images
    from deploy.k8s import netpol, node
    from devstack import phone, tools, toxiproxy, traces

    return [
        ("Barman", tools.barman),  # the backup drills
        ("etcd", lambda: node.tool("etcd")),  # PostgreSQL as two nodes
        ("Toxiproxy", toxiproxy.toxiproxy_bin),  # the phone's network faults
        ("the Kotlin phone", phone.classpath),
        ("Kubernetes' commands and the cluster's tools", node.build),
        ("kube-router", netpol.build),
        ("the phone generator", phonegen),
        ("the images", images.build_all),
        ("Jaeger", traces.jaeger),  # the tests that read traces run last (tests/conftest.py)
    ]


def main() -> int:
    failed = 0
    for name, step in steps():
        started = time.monotonic()
        try:
            step()
        # The test that needs it fails with the same error, in its place.
        except (OSError, RuntimeError, subprocess.CalledProcessError, SystemExit) as e:
            failed += 1
            print(f"prebuild: {name} failed: {e!r}", file=sys.stderr, flush=True)
            continue
        print(f"prebuild: {name} ready in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
