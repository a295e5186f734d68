"""Where the project, its state and its caches live."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GENERATED = ROOT / "generated"
DESCRIPTOR_SET = GENERATED / "runtrack_descriptor.pb"
OPENAPI = GENERATED / "openapi.json"
WEB = ROOT / "web"
# The web page as built (`npm run build` in web/): what Envoy serves at / (not tracked).
WEB_DIST = WEB / "dist"
VENV_BIN = Path(sys.executable).parent


def cache_dir() -> Path:
    """Downloads shared by every checkout on this machine (CQL node jars, grpcurl)."""
    base = os.environ.get("RUNTRACK_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "runtrack"
    )
    return Path(base)


@contextlib.contextmanager
def once_per_machine(what: str) -> Iterator[None]:
    """Held while `what` is installed or built into the cache: two processes (the test suite's two
    lanes, a `scripts/dev up` beside `scripts/test`) that both find it missing build it once, the
    second waiting and then finding it there."""
    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{what}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
