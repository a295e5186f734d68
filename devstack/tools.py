"""Installs the tools the stack needs that pip does not bring: the CQL node's jars, grpcurl, ghz, the
OpenAPI generator, the web page's npm packages, a browser for its tests and the GPX/TCX schemas."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from devstack.paths import ROOT, VENV_BIN, WEB, WEB_DIST, cache_dir, once_per_machine

CASSANDRA_VERSION = "5.0.9"
GRPCURL_VERSION = "v1.9.3"
GHZ_VERSION = "v0.121.0"
OPENAPI_GENERATOR_VERSION = "v0.7.1"
# PostgreSQL's backups: Barman (3.19 is the last release for Python 3.11; PostgreSQL 18 supported since
# 3.16), in a virtualenv of its own with these exact packages. Barman asks for psycopg2, which builds
# from source against libpq; psycopg2-binary is the same module prebuilt, so it is installed without
# its dependencies resolved (--no-deps) and the project's .venv keeps psycopg 3 only.
BARMAN_VERSION = "3.19.1"
BARMAN_PACKAGES = (f"barman=={BARMAN_VERSION}", "psycopg2-binary==2.9.13", "python-dateutil==4.0.0", "tzdata==2026.6")

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
    with once_per_machine(home.name):
        if not done.exists():
            _fetch_cassandra(home, lib, done)
    return lib


def _fetch_cassandra(home: Path, lib: Path, done: Path) -> None:
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


def barman() -> Path:
    """Barman's command, installed once per machine into a virtualenv of its own, linked into .venv/bin."""
    home = cache_dir() / f"barman-{BARMAN_VERSION}"
    exe, done = home / "bin" / "barman", home / ".complete"
    with once_per_machine(home.name):
        if not done.exists():
            _install_barman(home, done)
    return link_into_venv("barman", exe)


def _install_barman(home: Path, done: Path) -> None:
    say(f"setup: installing Barman {BARMAN_VERSION} from PyPI into {home} (once per machine)")
    if home.exists():
        shutil.rmtree(home)
    subprocess.run([sys.executable, "-m", "venv", str(home)], check=True, stdout=sys.stderr)
    pip = [str(home / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps"]
    subprocess.run([*pip, *BARMAN_PACKAGES], check=True, stdout=sys.stderr)
    done.write_text("\n".join(BARMAN_PACKAGES) + "\n")


def _go_tool(name: str, module: str, version: str) -> Path:
    """A Go command built from its module through the Go module proxy, once per machine and
    version, linked into .venv/bin so that it is at hand (`.venv/bin/grpcurl`)."""
    exe = cache_dir() / "bin" / f"{name}-{version}"
    with once_per_machine(exe.name):
        if not exe.exists():
            if shutil.which("go") is None:
                raise SystemExit(f"{name} is installed with Go: put `go` on PATH")
            say(f"setup: installing {name} {version} through the Go module proxy (once per machine)")
            with tempfile.TemporaryDirectory() as gobin:
                env = dict(os.environ, GOBIN=gobin)
                subprocess.run(["go", "install", f"{module}@{version}"], check=True, stdout=sys.stderr, env=env)
                exe.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(Path(gobin) / name), exe)
        return link_into_venv(name, exe)


def link_into_venv(name: str, exe: Path) -> Path:
    """Links a cached command into .venv/bin under `name` (so that it is at hand); returns `exe`."""
    link = VENV_BIN / name
    if os.path.realpath(link) != str(exe):
        tmp = link.with_name(f".{name}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(exe)
        tmp.replace(link)  # atomic: another process never sees the link missing
    return exe


def grpcurl() -> Path:
    return _go_tool("grpcurl", "github.com/fullstorydev/grpcurl/cmd/grpcurl", GRPCURL_VERSION)


def ghz() -> Path:
    """The gRPC load tester, for calls by reflection through Envoy."""
    return _go_tool("ghz", "github.com/bojand/ghz/cmd/ghz", GHZ_VERSION)


def protoc_gen_openapi() -> Path:
    """gnostic's protoc plugin: an OpenAPI 3 document from the protos' google.api.http annotations."""
    return _go_tool("protoc-gen-openapi", "github.com/google/gnostic/cmd/protoc-gen-openapi", OPENAPI_GENERATOR_VERSION)


def web() -> Path:
    """The web page, built into web/dist: `npm ci` from the committed lockfile when it changed, then
    the type check and the bundle (`npm run build`). Returns the built directory."""
    if shutil.which("npm") is None:
        raise SystemExit("the web page is built with Node.js: put `node` and `npm` on PATH")
    lock = WEB / "package-lock.json"
    stamp = WEB / "node_modules" / ".runtrack-lock-sha256"
    want = hashlib.sha256(lock.read_bytes()).hexdigest()
    # One checkout's page, built by one process at a time; again only when its sources changed.
    with once_per_machine(f"web-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}"):
        if not stamp.exists() or stamp.read_text() != want:
            say("setup: installing the web page's npm packages (npm ci)")
            subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=WEB, check=True, stdout=sys.stderr
            )
            stamp.write_text(want)
        built = WEB_DIST / ".runtrack-sources-sha256"
        sources = _web_sources_digest()
        if not built.exists() or built.read_text() != sources:
            subprocess.run(["npm", "run", "--silent", "build"], cwd=WEB, check=True, stdout=sys.stderr)
            built.write_text(sources)
    return WEB_DIST


def _web_sources_digest() -> str:
    """What the page's build reads: every file under web/ but its packages and its output, and the
    tile server's address (web/build.mjs)."""
    digest = hashlib.sha256(os.environ.get("RUNTRACK_TILE_URL", "").encode() + b"\0")
    for path in sorted(WEB.rglob("*")):
        parts = path.relative_to(WEB).parts
        if parts[0] in ("node_modules", "dist") or not path.is_file():
            continue
        digest.update(str(path.relative_to(WEB)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


# The GPX 1.1 and TCX v2 schemas, as Debian's pytrainer package ships them (it validates files with
# them): the exports are checked against these bytes, whichever package version brings them.
SCHEMAS = {
    "gpx11.xsd": (
        "usr/share/pytrainer/schemas/Topografix_gpx11.xsd",
        "e0e4cb84f096f65b03fb2d391d74a5389563fe015f17a011ccfe7e37c01267f0",
    ),
    "tcx2.xsd": (
        "usr/share/pytrainer/schemas/GarminTrainingCenterDatabase_v2.xsd",
        "d64d687488dfe429ea3ce2ac4f1fbc7c333d80776a478b2b6843c7cc0403cda9",
    ),
}


def file_schemas() -> Path:
    """A directory holding gpx11.xsd and tcx2.xsd, taken once from Debian's pytrainer package."""
    out = cache_dir() / "schemas"
    if all((out / name).is_file() for name in SCHEMAS):
        return out
    with once_per_machine("schemas"):
        if not all((out / name).is_file() for name in SCHEMAS):
            _fetch_schemas(out)
    return out


def _fetch_schemas(out: Path) -> None:
    say("setup: the GPX and TCX schemas from Debian's pytrainer package (once per machine)")
    with tempfile.TemporaryDirectory() as tmp:
        download = ["apt-get", "download", "pytrainer"]
        if subprocess.run(download, cwd=tmp, stdout=sys.stderr).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], check=True, stdout=sys.stderr)
            subprocess.run(download, cwd=tmp, check=True, stdout=sys.stderr)
        (deb,) = Path(tmp).glob("pytrainer_*.deb")
        subprocess.run(["dpkg-deb", "-x", str(deb), f"{tmp}/x"], check=True)
        out.mkdir(parents=True, exist_ok=True)
        for name, (path, sha256) in SCHEMAS.items():
            data = (Path(tmp) / "x" / path).read_bytes()
            if hashlib.sha256(data).hexdigest() != sha256:
                raise SystemExit(f"{deb.name}: {path} is not the schema expected (sha256 differs)")
            (out / name).write_bytes(data)


def _debian_binary(names: tuple[str, ...], package: str, what: str) -> Path:
    """The first of `names` on PATH, after installing Debian's `package` once when none is (as root)."""
    for name in names:
        found = shutil.which(name)
        if found:
            return Path(found)
    if os.geteuid() != 0:
        raise SystemExit(f"{what} needs {names[0]}: `sudo apt-get install {package}`")
    with once_per_machine("apt"):
        return _apt_install(names, package)


def _apt_install(names: tuple[str, ...], package: str) -> Path:
    found = shutil.which(names[0])
    if found:  # another process installed it meanwhile
        return Path(found)
    say(f"setup: installing {package} from Debian's packages (once per machine)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-qq", package]
    if subprocess.run(install, stdout=sys.stderr, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], check=True, stdout=sys.stderr, env=env)
        subprocess.run(install, check=True, stdout=sys.stderr, env=env)
    found = shutil.which(names[0])
    if not found:
        raise SystemExit(f"apt-get installed {package}, yet {names[0]} is not on PATH")
    return Path(found)


def certutil() -> Path:
    """NSS's certutil (Debian's libnss3-tools): the browser tests trust the local CA through an NSS
    database, as Chromium on Linux does."""
    return _debian_binary(("certutil",), "libnss3-tools", "the TLS browser test")


def chromium() -> Path:
    """Debian's Chromium for the browser tests."""
    return _debian_binary(("chromium", "chromium-browser"), "chromium", "the browser tests")


def envoy() -> Path:
    exe = VENV_BIN / "envoy"
    if not exe.exists():
        raise SystemExit("envoy is missing from the virtualenv: reinstall the project with its [dev] extra")
    return exe
