"""Loads named query blocks from .sql/.cql files: `-- name: <name>` starts a block."""

from __future__ import annotations

import re
from pathlib import Path

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def load(path: Path) -> dict[str, str]:
    text = path.read_text()
    parts = _NAME.split(text)
    blocks: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        body = "\n".join(line for line in body.strip().splitlines() if not line.lstrip().startswith("--"))
        blocks[name] = body.strip().rstrip(";")
    return blocks
