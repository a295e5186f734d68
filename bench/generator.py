"""The phone load generator: a Go command (bench/phonegen) that streams GPS points like many
phones at once through Envoy, one RecordTrack stream and one goroutine per phone, at a small cost per
phone. It reads the message types from generated/runtrack_descriptor.pb at run time (no generated Go
code), so it is built once per machine and version, with the module versions its go.mod and go.sum pin
(fetched through the Go module proxy).

    phonegen --token-file tokens.txt --phones 1000 --seconds 20 --out result.json --run-ids runs.txt

`phonegen --help` lists the flags; the JSON result holds streams ok and failed (with their statuses),
points sent and acknowledged, the generator's lag behind its schedule and its own CPU time.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from devstack.paths import ROOT, cache_dir, once_per_machine
from devstack.tools import link_into_venv

NAME = "phonegen"
SOURCE = ROOT / "bench" / "phonegen"


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def version() -> str:
    """The version main.go declares; a change to the module comes with a new one."""
    found = re.search(r'^const version = "([^"]+)"', (SOURCE / "main.go").read_text(), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no `const version` in {SOURCE / 'main.go'}")
    return found.group(1)


def _build(exe: Path) -> None:
    if shutil.which("go") is None:
        raise SystemExit(f"{NAME} is built with Go: put `go` on PATH")
    say(f"setup: building {NAME} {version()} through the Go module proxy (once per machine)")
    exe.parent.mkdir(parents=True, exist_ok=True)
    tmp = exe.with_name(f".{exe.name}.tmp")
    env = dict(os.environ, CGO_ENABLED="0")
    build = ["go", "build", "-trimpath", "-buildvcs=false", "-o", str(tmp), "."]
    subprocess.run(build, cwd=SOURCE, check=True, stdout=sys.stderr, env=env)
    tmp.replace(exe)


def phonegen() -> Path:
    """The generator, built from bench/phonegen once per machine and version, linked into
    .venv/bin so that it is at hand (`.venv/bin/phonegen`)."""
    exe = cache_dir() / "bin" / f"{NAME}-{version()}"
    if not exe.exists():
        with once_per_machine(exe.name):
            if not exe.exists():
                _build(exe)
    return link_into_venv(NAME, exe)
