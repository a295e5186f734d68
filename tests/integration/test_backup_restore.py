"""Restore drills, on a stack of their own (devstack.stack.backup_test_spec): real processes, real
backups (Barman, nodetool), restores by `scripts/dev restore --to TIME`.

One scenario, run once for the module: runs stopped, a full set, one more run, an incremental set,
a run stopped after the CQL snapshot, the time noted, more runs stopped and one of the first deleted
by mistake, then the restore to the time. The tests read what came back:
(a) PostgreSQL at the time: the runs before it, not those after, the deleted one back;
(b) the CQL store, restored from its sets into a fresh node: every trail whole, by seq, as long as
    its run's point_count;
(c) the run stopped between the CQL snapshot and the time: reported by the restore and by
    `scripts/dev trails`, not silently half-there.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio

from devstack.paths import ROOT
from devstack.stack import Stack, backup_test_spec
from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from tests.helpers import point, token_channel
from tests.integration.test_dashboard import overview

pytestmark = pytest.mark.integration
START = dt.datetime(2026, 6, 1, 7, 0, tzinfo=dt.UTC)


def dev(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """`scripts/dev ARGS` against the drills' stack."""
    return subprocess.run(
        [sys.executable, "-m", "devstack", *args],
        env=dict(os.environ, RUNTRACK_STACK=stack.spec.name),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )


async def stop_run(channel, run_id: str, points: int) -> None:
    """A run recorded (`points` points, 300 a message) and stopped, its overview saying so."""
    start_ms = int(START.timestamp() * 1000)
    batches = [
        tracking_pb2.RecordTrackRequest(
            run_id=run_id, points=[point(s, start_ms=start_ms) for s in range(first, min(first + 300, points + 1))]
        )
        for first in range(1, points + 1, 300)
    ]
    reply = await tracking_pb2_grpc.TrackingServiceStub(channel).RecordTrack(iter(batches))
    assert reply.contiguous_seq == points
    ov = overview(START, minutes=points // 60 or 1)
    ov.point_count = points
    await summary_pb2_grpc.SummaryServiceStub(channel).StopRun(summary_pb2.StopRunRequest(run_id=run_id, overview=ov))


async def trail_seqs(channel, run_id: str) -> list[int]:
    stub = tracking_pb2_grpc.TrackingServiceStub(channel)
    seqs: list[int] = []
    token = ""
    while True:
        page = await stub.GetTrack(tracking_pb2.GetTrackRequest(run_id=run_id, page_size=1000, page_token=token))
        seqs += [p.seq for p in page.points]
        token = page.next_page_token
        if not token:
            return seqs


@dataclass
class Drill:
    stack: Stack
    user: str
    before: dict[str, int] = field(default_factory=dict)  # run -> points, stopped before the CQL snapshot
    between: str = ""  # stopped after the CQL snapshot, before the time
    after: list[str] = field(default_factory=list)  # stopped after the time
    deleted: str = ""  # one of `before`, deleted after the time
    backups: list[str] = field(default_factory=list)  # what `scripts/dev backup` printed
    restored: dict[str, Any] = field(default_factory=dict)  # `scripts/dev restore --json`
    restore_rc: int = 0
    cql_pid_before: int | None = None


@pytest_asyncio.fixture(scope="module")
async def drill():
    spec = backup_test_spec()
    stack = Stack(spec)
    await asyncio.to_thread(stack.down)
    shutil.rmtree(spec.state, ignore_errors=True)  # a new repository and new stores each time
    try:
        await asyncio.to_thread(stack.up)
        d = Drill(stack, f"runner-{uuid.uuid4().hex[:12]}")
        await _scenario(d)
        yield d
    finally:
        if os.environ.get("RUNTRACK_KEEP_TEST_STACK") != "1":
            await asyncio.to_thread(stack.down)


async def _scenario(d: Drill) -> None:
    async with token_channel(d.stack.envoy_address, d.stack.issuer.token(d.user)) as channel:
        for points in (1200, 361, 45):
            run_id = str(uuid.uuid4())
            await stop_run(channel, run_id, points)
            d.before[run_id] = points
        d.backups.append(await asyncio.to_thread(_backup, d.stack, "--full"))
        run_id = str(uuid.uuid4())
        await stop_run(channel, run_id, 700)
        d.before[run_id] = 700
        d.backups.append(await asyncio.to_thread(_backup, d.stack))
        d.between = str(uuid.uuid4())
        await stop_run(channel, d.between, 120)
        await asyncio.sleep(1)
        to = dt.datetime.now(dt.UTC)
        await asyncio.sleep(1)
        for points in (90, 600):
            run_id = str(uuid.uuid4())
            await stop_run(channel, run_id, points)
            d.after.append(run_id)
        d.deleted = next(iter(d.before))
        await summary_pb2_grpc.SummaryServiceStub(channel).DeleteRun(summary_pb2.DeleteRunRequest(run_id=d.deleted))
    d.cql_pid_before = d.stack.cql.pid()
    started = time.monotonic()
    out = await asyncio.to_thread(dev, d.stack, "restore", "--to", to.isoformat(), "--json")
    print(f"restore: {time.monotonic() - started:.1f}s", file=sys.stderr)
    d.restore_rc = out.returncode
    assert out.stdout.strip(), out.stderr[-3000:]
    d.restored = json.loads(out.stdout)


def _backup(stack: Stack, *args: str) -> str:
    out = dev(stack, "backup", *args)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    return out.stdout


def test_a_backup_says_where_each_store_went_and_which_points_match(drill):
    full, incremental = drill.backups
    repo = drill.stack.spec.backup_dir
    assert "(full)" in full and "(incremental)" in incremental
    for said in (full, incremental):
        assert f"repository {repo}" in said and "PostgreSQL: Barman backup" in said and f"{repo}/cql/" in said
    sets = sorted((repo / "sets").glob("*.json"))
    assert len(sets) == 2
    first, second = (json.loads(p.read_text()) for p in sets)
    assert (first["postgres"]["kind"], second["postgres"]["kind"]) == ("full", "incremental")
    assert (first["cql"]["kind"], second["cql"]["kind"]) == ("full", "incremental")
    assert second["base"] == first["id"]
    # Each CQL set names the PostgreSQL point it matches, after that set's PostgreSQL backup.
    for m in (first, second):
        assert m["cql"]["postgres_lsn"] and m["cql"]["taken_at"] >= m["postgres"]["end_time"]
    assert second["cql"]["files"] > 0, "the incremental set holds the sstables flushed since the full one"


async def test_point_in_time_the_runs_before_are_back_the_later_ones_are_not_the_deleted_one_is(drill):
    assert drill.restored["postgres_reached"] == drill.restored["to"]
    async with token_channel(drill.stack.envoy_address, drill.stack.issuer.token(drill.user)) as channel:
        listed = await summary_pb2_grpc.SummaryServiceStub(channel).ListRuns(summary_pb2.ListRunsRequest(page_size=100))
        runs = {r.run_id: r for r in listed.runs}
        assert set(runs) == {*drill.before, drill.between}
        assert drill.deleted in runs, "the run deleted after the time is back"
        assert not set(drill.after) & set(runs)


async def test_every_trail_restored_into_a_fresh_node_reads_back_whole(drill):
    assert drill.stack.cql.pid() not in (None, drill.cql_pid_before), "a fresh CQL node"
    assert drill.restored["cql_sets"] == [
        json.loads(p.read_text())["id"] for p in sorted((drill.stack.spec.backup_dir / "sets").glob("*.json"))
    ]
    async with token_channel(drill.stack.envoy_address, drill.stack.issuer.token(drill.user)) as channel:
        summary = summary_pb2_grpc.SummaryServiceStub(channel)
        for run_id, points in drill.before.items():
            run = await summary.GetRun(summary_pb2.GetRunRequest(run_id=run_id))
            assert run.overview.point_count == points
            assert await trail_seqs(channel, run_id) == list(range(1, points + 1)), run_id


def test_a_run_stopped_between_the_two_backup_points_is_reported(drill):
    found = [(f["run_id"], f["kind"], f["point_count"]) for f in drill.restored["trail_findings"]]
    assert found == [(drill.between, "trail_missing", 120)]
    assert drill.restore_rc == 1, "a restore that leaves a run half-there says so by its exit status"
    assert drill.restored["runs_checked"] == len(drill.before) + 1
    out = dev(drill.stack, "trails", "--json")
    assert out.returncode == 1, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert [(f["run_id"], f["kind"]) for f in report["findings"]] == [(drill.between, "trail_missing")]
    plain = dev(drill.stack, "trails")
    assert drill.between in plain.stdout and "1 with a trail missing or short" in plain.stdout
