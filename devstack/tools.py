"""Installs the tools the stack needs that pip does not bring: the CQL node's jars and grpcurl."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from devstack.paths import VENV_BIN, cache_dir

CASSANDRA_VERSION = "5.0.9"
GRPCURL_VERSION = "v1.9.3"
GHZ_VERSION = "v0.121.0"

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
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(home / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={lib}",
            "-DincludeScope=runtime",
        ],
        check=True,
        stdout=sys.stderr,
    )
    done.write_text(CASSANDRA_VERSION + "\n")
    return lib


def _go_tool(name: str, module: str, version: str) -> Path:
    """A Go command built from its module through the Go module proxy, once per machine and
    version, linked into .venv/bin so that it is at hand (`.venv/bin/grpcurl`)."""
    exe = cache_dir() / "bin" / f"{name}-{version}"
    if not exe.exists():
        if shutil.which("go") is None:
            raise SystemExit(f"{name} is installed with Go: put `go` on PATH")
        say(f"setup: installing {name} {version} through the Go module proxy (once per machine)")
        with tempfile.TemporaryDirectory() as gobin:
            env = dict(os.environ, GOBIN=gobin)
            subprocess.run(["go", "install", f"{module}@{version}"], check=True, stdout=sys.stderr, env=env)
            exe.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(gobin) / name), exe)
    link = VENV_BIN / name
    if os.path.realpath(link) != str(exe):
        if os.path.lexists(link):
            link.unlink()
        link.symlink_to(exe)
    return exe


def grpcurl() -> Path:
    return _go_tool("grpcurl", "github.com/fullstorydev/grpcurl/cmd/grpcurl", GRPCURL_VERSION)


def ghz() -> Path:
    """The gRPC load tester, for calls by reflection through Envoy."""
    return _go_tool("ghz", "github.com/bojand/ghz/cmd/ghz", GHZ_VERSION)


def envoy() -> Path:
    exe = VENV_BIN / "envoy"
    if not exe.exists():
        raise SystemExit("envoy is missing from the virtualenv: reinstall the project with its [dev] extra")
    return exe
