"""`scripts/dev trails`: the dashboard rows whose trail is missing or shorter than their point_count.

StopRun writes a run's dashboard row (PostgreSQL) after its trail (the CQL store); the two stores are
backed up and restored each on its own (devstack/backup.py). A run stopped between the CQL snapshot
and the PostgreSQL point restored to comes back with its row but without its trail, or part of it:
this lists each, never leaving it silently half-there.

- `trail_missing`: no point of the run in the CQL store;
- `trail_short`: fewer points than the row's point_count.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import psycopg

from devstack.stack import Stack

BATCH = 500


@dataclass(frozen=True)
class TrailFinding:
    run_id: str
    kind: str  # "trail_missing" or "trail_short"
    user_id: str
    point_count: int
    points_stored: int

    def as_dict(self) -> dict[str, str | int]:
        return self.__dict__.copy()


def check(stack: Stack) -> tuple[int, list[TrailFinding]]:
    """Every dashboard row against its trail: (rows checked, findings)."""
    from cassandra.cluster import Cluster as CqlCluster  # scylla-driver
    from cassandra.concurrent import execute_concurrent_with_args

    with psycopg.connect(stack.database_url) as conn:
        rows = [
            (str(r), str(u), int(n))
            for r, u, n in conn.execute("SELECT run_id, user_id, point_count FROM runs ORDER BY run_id")
        ]
    cluster = CqlCluster(stack.scylla_hosts.split(","), port=stack.scylla_port)
    found: list[TrailFinding] = []
    try:
        session = cluster.connect(stack.spec.keyspace)
        # Right after a restore the node compacts what it loaded: a count may take longer than usual.
        session.default_timeout = 60
        count = session.prepare("SELECT COUNT(*) FROM track_points WHERE run_id = ?")
        for start in range(0, len(rows), BATCH):
            batch = rows[start : start + BATCH]
            results = execute_concurrent_with_args(
                session, count, [(uuid.UUID(r),) for r, _, _ in batch], concurrency=16, raise_on_first_error=True
            )
            for (run_id, user_id, point_count), (_, result) in zip(batch, results, strict=True):
                stored = int(result.one()[0])
                if stored == 0 and point_count > 0:
                    found.append(TrailFinding(run_id, "trail_missing", user_id, point_count, 0))
                elif stored < point_count:
                    found.append(TrailFinding(run_id, "trail_short", user_id, point_count, stored))
    finally:
        cluster.shutdown()
    return len(rows), found
