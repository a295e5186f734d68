"""Where the project, its state and its caches live."""

from __future__ import annotations

import os
import sys
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
