"""Every `<!-- runs: ... -->` block of README.md and docs/*.md (tests/docs_blocks.py), run with bash
from the repository's root against the test stack, as a newcomer pastes it into the shell where the
README's demo ran (its TOKEN, AUTH and RUN set): only the local stack's addresses and CA become the
test stack's. Each must exit 0; where its output says something, that is checked too."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from devstack import tools
from devstack.paths import ROOT
from devstack.stack import dev_spec
from tests.docs_blocks import RUNS, Block, doc_blocks, readme_demo

BLOCKS = [b for b in doc_blocks(ROOT) if b.marker == RUNS]


def on_the_test_stack(code: str, stack) -> str:
    """The block with the local stack's addresses and CA (as the docs spell them) the test stack's."""
    dev = dev_spec({})
    for local, test in {
        f"127.0.0.1:{dev.envoy_tls_port}": f"127.0.0.1:{stack.spec.envoy_tls_port}",
        f"127.0.0.1:{dev.envoy_port}": f"127.0.0.1:{stack.spec.envoy_port}",
        f"127.0.0.1:{dev.envoy_admin_port}": f"127.0.0.1:{stack.spec.envoy_admin_port}",
        f"127.0.0.1:{dev.traces_ui_port}": f"127.0.0.1:{stack.spec.traces_ui_port}",
        ".dev/tls/ca.pem": str(stack.tls_ca),
    }.items():
        code = code.replace(local, test)
    ports = f"{dev.envoy_tls_port}|{dev.envoy_port}|{dev.envoy_admin_port}|{dev.traces_ui_port}"
    left = re.findall(rf"localhost|\b(?:{ports})\b|\.dev/tls/", code)
    assert not left, f"the block would reach the local stack, not the test stack: {left}"
    return code


def bash(code: str, env: dict[str, str], timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "RUNTRACK_STACK": "test", **env},
    )


def json_documents(text: str) -> list[Any]:
    """The JSON documents printed one after the other (multi-line or one a line)."""
    decoder, text, docs = json.JSONDecoder(), text.strip(), []
    while text:
        doc, end = decoder.raw_decode(text)
        docs.append(doc)
        text = text[end:].strip()
    return docs


@pytest.fixture(scope="module")
def demo_shell(stack) -> dict[str, str]:
    """What the README's demo leaves in its shell, on the test stack: TOKEN, AUTH and RUN."""
    tools.grpcurl(), tools.ghz()  # built once per machine, linked into .venv/bin as the docs use them
    out = bash(on_the_test_stack(readme_demo(ROOT).code, stack) + 'echo "$TOKEN $RUN"\n', {})
    assert out.returncode == 0, out.stderr
    token, run = out.stdout.strip().splitlines()[-1].split()
    return {"TOKEN": token, "AUTH": f"authorization: Bearer {token}", "RUN": run}


@pytest.fixture
def root_left_as_found() -> Iterator[None]:
    """Files a block makes in the root (a GPX to import, ghz's data) are taken away after it."""
    before = set(ROOT.iterdir())
    yield
    for path in set(ROOT.iterdir()) - before:
        if path.is_file():
            path.unlink()


@dataclass
class Ran:
    """A block that ran: what it printed, its code as run, the stack and the demo's shell."""

    out: str
    code: str
    stack: Any
    shell: dict[str, str]


def demo(ran: Ran) -> None:
    # Each answer is checked in tests/e2e/test_readme_demo.py; here: all of them, the last the 401.
    docs = json_documents(ran.out)
    assert len(docs) == 9 and docs[-1]["code"] == 16


def debugging(ran: Ran) -> None:
    out = ran.out
    assert "runtrack.v1.TrackingService\n" in out and "runtrack.v1.SummaryService\n" in out  # list
    assert "rpc RecordTrack ( stream .runtrack.v1.RecordTrackRequest )" in out  # describe
    assert "message TrackPoint {" in out
    assert '"contiguous_seq": 3' in out  # the demo's run: three points in a row (grpcurl: proto names)
    assert '"status": "SERVING"' in out
    assert re.search(r"\[OK\]\s+1000 responses", out) and "Error distribution" not in out  # ghz


def live_link(ran: Ran) -> None:
    link, *lines = json_documents(ran.out)
    assert link["run_id"] == ran.shell["RUN"] and "#live=" in link["url"]  # grpcurl: proto names
    events = [line.get("result", line) for line in lines]  # Envoy's stream: one {"result": RunEvent} a line
    # The demo's run, stopped, as anyone but ada sees it: not the point at her door, then STOPPED.
    seqs = [p["seq"] for e in events for p in e.get("points", {}).get("points", [])]
    assert seqs == [2, 3], events
    assert events[-1]["state"]["state"] == "STOPPED", events


def file_import(ran: Ran) -> None:
    imported, broken = json_documents(ran.out)
    assert imported["name"] == "Canal loop" and imported["overview"]["pointCount"] == 3
    # The answer the block's comment shows.
    shown = re.search(r'^# \{"code":3,"message":"([^"]+)"', ran.code, re.M)
    assert shown and broken["code"] == 3 and broken["message"] == shown[1], broken


def sign_in_url(ran: Ran) -> None:
    assert re.fullmatch(rf"http://{re.escape(ran.stack.envoy_address)}/#token=ey[\w.-]+\n", ran.out), ran.out


def ghz_streams(ran: Ran) -> None:
    assert re.search(r"\[OK\]\s+300 responses", ran.out) and "Error distribution" not in ran.out, ran.out


# What a block's output must show, for the block whose code holds the key.
CHECKS: dict[str, Callable[[Ran], None]] = {
    "RecordTrack <<EOF": demo,
    "describe runtrack.v1.TrackPoint": debugging,
    "TrackingService/CreateLiveLink": live_link,
    "/v1/runs:import": file_import,
    "scripts/dev token ada --url": sign_in_url,
    "-D points.json": ghz_streams,
}


def reads_traces(block: Block) -> bool:
    return f"127.0.0.1:{dev_spec({}).traces_ui_port}" in block.code


@pytest.mark.parametrize(
    "block",
    [pytest.param(b, marks=pytest.mark.traces) if reads_traces(b) else b for b in BLOCKS],
    ids=[b.where for b in BLOCKS],
)
def test_the_block_runs(block: Block, stack, demo_shell, root_left_as_found) -> None:
    if reads_traces(block):
        stack.start_traces()  # the test stack starts Jaeger for the blocks that read it
    code = on_the_test_stack(block.code, stack)
    out = bash(code, demo_shell)
    assert out.returncode == 0, f"{block.where} exited {out.returncode}:\n{out.stderr}"
    for key, check in CHECKS.items():
        if key in block.code:
            check(Ran(out.stdout, code, stack, demo_shell))


def test_each_output_check_has_its_block() -> None:
    assert {key: sum(key in b.code for b in BLOCKS) for key in CHECKS} == {key: 1 for key in CHECKS}
