"""The fenced code blocks of README.md and docs/*.md, each with the marker on the line before it.

Every block says whether it is meant to run, in an HTML comment (hidden when rendered) on the line
just before its opening fence:

    <!-- runs: what it shows, against the local stack -->
    <!-- not run: why not (needs a Kubernetes cluster, an output sample, takes minutes...) -->

`runs:` blocks are bash, run one by one against the test stack by tests/e2e/test_docs_blocks.py;
tests/tooling/test_docs_blocks.py fails on a block without a marker. Pure: reads files, runs nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

RUNS = "runs"
NOT_RUN = "not run"

_MARKER = re.compile(r"^\s*<!--\s*(runs|not run):\s*(.*?)\s*-->\s*$")
_OPENING = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    """One fenced code block."""

    file: str  # relative to the root: "README.md", "docs/api.md"
    line: int  # of the opening fence, from 1
    language: str  # the info string's first word; "" without one
    code: str  # the lines between the fences, less the opening fence's indentation
    marker: str | None  # RUNS, NOT_RUN, or None when the line before is no marker
    reason: str  # the marker's text after the colon

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def doc_files(root: Path) -> list[Path]:
    """README.md and every docs/*.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def blocks_in(text: str, file: str) -> list[Block]:
    """The fenced blocks of one Markdown text (backtick or tilde fences, indented as in a list item;
    a block left open runs to the end)."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _OPENING.match(lines[i])
        if not opening or (opening["fence"][0] == "`" and "`" in opening["info"]):
            i += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        end = i + 1
        while end < len(lines) and not _closes(lines[end], fence):
            end += 1
        marker = _MARKER.match(lines[i - 1]) if i > 0 else None
        info = opening["info"].strip()
        blocks.append(
            Block(
                file=file,
                line=i + 1,
                language=info.split()[0] if info else "",
                code="".join(_dedent(line, indent) + "\n" for line in lines[i + 1 : end]),
                marker=marker[1] if marker else None,
                reason=marker[2] if marker else "",
            )
        )
        i = end + 1
    return blocks


def stray_markers(text: str) -> list[int]:
    """Lines (from 1) holding a marker that no opening fence follows."""
    lines = text.splitlines()
    opening_lines = {b.line for b in blocks_in(text, "")}
    return [n for n, line in enumerate(lines, 1) if _MARKER.match(line) and n + 1 not in opening_lines]


def doc_blocks(root: Path) -> list[Block]:
    """Every fenced block of README.md and docs/*.md, in file order."""
    return [b for path in doc_files(root) for b in blocks_in(path.read_text(), str(path.relative_to(root)))]


def readme_demo(root: Path) -> Block:
    """The README's demo: the first bash block under its `## Demo` heading."""
    text = (root / "README.md").read_text()
    heading = next(n for n, line in enumerate(text.splitlines(), 1) if line.startswith("## Demo"))
    return next(b for b in blocks_in(text, "README.md") if b.line > heading and b.language == "bash")


def _closes(line: str, fence: str) -> bool:
    stripped = line.strip()
    return len(stripped) >= len(fence) and set(stripped) == {fence[0]}


def _dedent(line: str, indent: int) -> str:
    """The line less up to `indent` leading spaces (as CommonMark takes a fence's indentation off)."""
    return line[min(indent, len(line) - len(line.lstrip(" "))) :]
