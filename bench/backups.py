"""Backup and restore of a store of --runs runs of --points points each (default 1,000 runs of an hour
at 1 Hz: 3,600,000 points), written straight to both stores, on the restore drills' stack (its own
ports; started anew, its stores and repository emptied first):

    python -m bench.backups [--runs N] [--points N]

Measures a full set, an incremental set after 1% more runs, and a restore to a time after both, with
each store's part and the repository's size; checks that every trail came back whole; writes JSON to
.dev/bench/backups.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from devstack.paths import ROOT
from devstack.stack import Stack, backup_test_spec

START = dt.datetime(2026, 5, 1, 6, 0, tzinfo=dt.UTC)


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def seed(stack: Stack, runs: int, points: int, user: str) -> float:
    """`runs` runs of `points` points each, straight into both stores; returns seconds."""
    from cassandra.cluster import Cluster
    from cassandra.concurrent import execute_concurrent_with_args
    from cassandra.query import BatchStatement, BatchType

    started = time.monotonic()
    cluster = Cluster(stack.scylla_hosts.split(","), port=stack.scylla_port)
    session = cluster.connect(stack.spec.keyspace)
    insert = session.prepare(
        "INSERT INTO track_points (run_id, seq, recorded_at, latitude, longitude, altitude_m,"
        " horizontal_accuracy_m, speed_mps, heart_rate_bpm, cadence_spm) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    owner = session.prepare("INSERT INTO runs (run_id, user_id, created_at) VALUES (?, ?, ?)")
    ids = [uuid.uuid4() for _ in range(runs)]

    def batches() -> Any:
        for i, run_id in enumerate(ids):
            t0 = START + dt.timedelta(hours=i)
            for first in range(1, points + 1, 100):
                b = BatchStatement(batch_type=BatchType.UNLOGGED)
                for seq in range(first, min(first + 100, points + 1)):
                    b.add(
                        insert,
                        (
                            run_id,
                            seq,
                            t0 + dt.timedelta(seconds=seq - 1),
                            48.85 + seq * 1e-5,
                            2.35 + seq * 1e-5,
                            35.0 + seq % 7,
                            4.5,
                            3.1,
                            140 + seq % 20,
                            170,
                        ),
                    )
                yield b

    # One unlogged batch of 100 points a partition, as the replicas write; 2,000 batches at a time.
    pending: list[BatchStatement] = []
    for b in batches():
        pending.append(b)
        if len(pending) >= 2000:
            _flush(session, pending)
            pending = []
    _flush(session, pending)
    execute_concurrent_with_args(
        session, owner, [(r, user, START) for r in ids], concurrency=64, raise_on_first_error=True
    )
    cluster.shutdown()
    with (
        psycopg.connect(stack.database_url) as conn,
        conn.cursor() as cur,
        cur.copy(
            "COPY runs (run_id, user_id, start_time, end_time, distance_m, moving_time_us, elevation_gain_m,"
            " point_count) FROM STDIN"
        ) as copy,
    ):
        for i, run_id in enumerate(ids):
            t0 = START + dt.timedelta(hours=i)
            copy.write_row(
                (run_id, user, t0, t0 + dt.timedelta(seconds=points), 10_000.0, points * 1_000_000, 50.0, points)
            )
    return time.monotonic() - started


def _flush(session: Any, pending: list[Any]) -> None:
    from cassandra.concurrent import execute_concurrent

    if pending:
        execute_concurrent(session, [(b, ()) for b in pending], concurrency=48, raise_on_first_error=True)


def dev(stack: Stack, *args: str) -> dict[str, Any]:
    """`scripts/dev ARGS --json` on the stack; its JSON."""
    out = subprocess.run(
        [sys.executable, "-m", "devstack", *args, "--json"],
        env=dict(os.environ, RUNTRACK_STACK=stack.spec.name),
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if not out.stdout.strip():
        raise SystemExit(f"scripts/dev {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--points", type=int, default=3600)
    args = parser.parse_args(argv)
    stack = Stack(backup_test_spec())
    stack.down()
    shutil.rmtree(stack.spec.state, ignore_errors=True)  # the drills' stack: new stores, a new repository
    stack.up()
    user = f"bench-{uuid.uuid4().hex[:8]}"
    report: dict[str, Any] = {"runs": args.runs, "points_per_run": args.points}
    report["seed_s"] = round(seed(stack, args.runs, args.points, user), 1)
    print(f"seeded {args.runs} runs x {args.points} points in {report['seed_s']}s", file=sys.stderr)
    t = time.monotonic()
    report["full"] = dev(stack, "backup", "--full") | {"wall_s": round(time.monotonic() - t, 1)}
    report["seed_incremental_s"] = round(seed(stack, max(1, args.runs // 100), args.points, user), 1)
    t = time.monotonic()
    report["incremental"] = dev(stack, "backup") | {"wall_s": round(time.monotonic() - t, 1)}
    time.sleep(1)
    to = dt.datetime.now(dt.UTC)
    time.sleep(1)
    with psycopg.connect(stack.database_url) as conn:
        conn.execute("INSERT INTO deleted_runs (run_id, user_id) VALUES (%s, %s)", (uuid.uuid4(), user))
    repo = stack.spec.backup_dir
    report["repository_bytes"] = {"postgres": du(repo / "postgres"), "cql": du(repo / "cql")}
    t = time.monotonic()
    restore = subprocess.run(
        [sys.executable, "-m", "devstack", "restore", "--to", to.isoformat(), "--json"],
        env=dict(os.environ, RUNTRACK_STACK=stack.spec.name),
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if not restore.stdout.strip():
        raise SystemExit(f"scripts/dev restore failed:\n{restore.stderr[-3000:]}")
    report["restore"] = json.loads(restore.stdout) | {"wall_s": round(time.monotonic() - t, 1)}
    report["restore"]["exit"] = restore.returncode
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute("SELECT count(*), sum(point_count) FROM runs WHERE user_id = %s", (user,)).fetchone()
    report["restored_rows"], report["restored_points_per_dashboard"] = (int(row[0]), int(row[1])) if row else (0, 0)
    out = ROOT / ".dev" / "bench" / "backups.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
