"""Every program the scripts run on this machine, where it comes from, and which scripts need it: one
table. Each script's preflight installs what is missing from Debian's packages (as root, with
apt-get, once per machine) or stops naming every missing program with its package, so that a fresh
machine never fails half-way on the first one nobody installed.

    python -m devstack.host check dev|test|k8s|image   # names what is missing; installs nothing
    python -m devstack.host install dev|test|k8s|image # what `scripts/<name>` does first
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SCRIPTS = ("dev", "test", "k8s", "image")
ALL = frozenset(SCRIPTS)
# What the test suite runs includes what the stacks it starts run.
DEV, TEST, K8S, IMAGE = (
    frozenset({"dev", "test"}),
    frozenset({"test"}),
    frozenset({"k8s", "test"}),
    frozenset({"image", "k8s", "test"}),
)


@dataclass(frozen=True)
class Program:
    package: str  # the Debian package that brings it; "" when it is not one (see `source`)
    scripts: frozenset[str]
    source: str = ""  # where it comes from when no Debian package has a recent enough one


# Program (a name on PATH, or an absolute path) -> its package and the scripts that run it.
PROGRAMS: dict[str, Program] = {
    # The local stack: the CQL node (Cassandra's jars from Maven Central), the web page's build, the
    # Go tools (grpcurl, ghz, protoc-gen-openapi, Kubernetes' own commands) from the Go module proxy.
    "java": Program("openjdk-17-jre-headless", DEV),
    "mvn": Program("maven", DEV),
    "npm": Program("npm", DEV),
    "go": Program("", DEV | K8S, "Go 1.24 or later from https://go.dev/dl (Debian 12's golang-go is 1.19)"),
    "git": Program("git", DEV | IMAGE),
    # PostgreSQL's backups (Barman restores a backup's files and WAL with rsync).
    "rsync": Program("rsync", DEV),
    # The alerting rules' unit tests (`promtool test rules`, deploy/prometheus/), and the alerts fired
    # for real on the test stack (devstack/monitoring.py: Prometheus with the prometheus package below,
    # Alertmanager) and on the local cluster.
    "promtool": Program("prometheus", TEST),
    "prometheus-alertmanager": Program("prometheus-alertmanager", K8S),
    # The suite's browser tests and the GPX/TCX schemas the exports are checked against.
    "chromium": Program("chromium", TEST),
    "certutil": Program("libnss3-tools", TEST),
    "apt-get": Program("apt", TEST | K8S | IMAGE),
    # What the later tests need, built while the first run, below them (tests/conftest.py).
    "chrt": Program("util-linux", TEST),
    "ionice": Program("util-linux", TEST),
    "dpkg-deb": Program("dpkg", TEST),
    # Images built without a Docker daemon or a registry, and checked in a containerd of their own.
    "mmdebstrap": Program("mmdebstrap", IMAGE),
    "buildah": Program("buildah", IMAGE),
    "tar": Program("tar", IMAGE),
    "chroot": Program("coreutils", IMAGE),
    "containerd": Program("containerd", IMAGE),
    "ctr": Program("containerd", IMAGE),
    "runc": Program("runc", IMAGE),
    # The local Kubernetes cluster: its node's runtime, network and kernel modules, the pause image
    # built from source, and Prometheus (Alertmanager above).
    "/usr/lib/cni/bridge": Program("containernetworking-plugins", K8S),
    "prometheus": Program("prometheus", K8S),
    "conntrack": Program("conntrack", K8S),
    "ipset": Program("ipset", K8S),
    "iptables": Program("iptables", K8S),
    "modprobe": Program("kmod", K8S),
    "sysctl": Program("procps", K8S),
    "ip": Program("iproute2", K8S),
    "umount": Program("mount", K8S),
    "nice": Program("coreutils", K8S),
    "gcc": Program("gcc", K8S),
    "strip": Program("binutils", K8S),
}


def needed(script: str) -> dict[str, Program]:
    if script not in SCRIPTS:
        raise ValueError(f"no script {script!r}: one of {', '.join(SCRIPTS)}")
    return {name: p for name, p in PROGRAMS.items() if script in p.scripts}


def _found(name: str, path: str | None) -> bool:
    return Path(name).exists() if name.startswith("/") else shutil.which(name, path=path) is not None


def missing(script: str, path: str | None = None) -> dict[str, Program]:
    """The programs `script` runs that are not on `path` (default: $PATH)."""
    return {name: p for name, p in needed(script).items() if not _found(name, path)}


def describe(absent: dict[str, Program]) -> str:
    return "\n".join(
        f"  {name:22} {'Debian package ' + p.package if p.package else p.source}" for name, p in sorted(absent.items())
    )


def packages(absent: Iterable[Program]) -> list[str]:
    return sorted({p.package for p in absent if p.package})


def preflight(script: str) -> None:
    """Installs the Debian packages of what `script` lacks (as root); stops naming each program it
    cannot install, with where it comes from."""
    absent = missing(script)
    if not absent:
        return
    installable = packages(absent.values())
    if installable and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"setup: installing {' '.join(installable)} from Debian's packages (once per machine)", file=sys.stderr)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, stdout=sys.stderr, env=env)
        install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *installable]
        subprocess.run(install, check=True, stdout=sys.stderr, env=env)
        absent = missing(script)
    if absent:
        how = f"\n(as root: apt-get install {' '.join(packages(absent.values()))})" if packages(absent.values()) else ""
        raise SystemExit(f"scripts/{script} needs these programs, not found on PATH:\n{describe(absent)}{how}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("check", "install"))
    parser.add_argument("script", choices=SCRIPTS)
    args = parser.parse_args(argv)
    if args.action == "install":
        preflight(args.script)
        return 0
    absent = missing(args.script)
    if absent:
        print(f"scripts/{args.script} lacks:\n{describe(absent)}")
        return 1
    print(f"scripts/{args.script}: every program it runs is here")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
