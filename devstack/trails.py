"""`scripts/dev trails`: the dashboard rows whose trail is missing or shorter than their point_count.

StopRun writes a run's dashboard row (PostgreSQL) after its trail (the CQL store); the two stores are
backed up and restored each on its own (devstack/backup.py). A run stopped between the CQL snapshot
and the PostgreSQL point restored to comes back with its row but without its trail, or part of it:
this lists each, never leaving it silently half-there.

- `trail_missing`: no point of the run in the CQL store;
- `trail_short`: fewer points than the row's point_count.
"""

from __future__ import annotations

from dataclasses import dataclass

from devstack.stack import Stack
from devstack.store_scan import rows_with_cql


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
    checked, found = 0, []
    for (run_id, user_id, point_count), result, _ in rows_with_cql(
        stack,
        "SELECT run_id, user_id, point_count FROM runs ORDER BY run_id",
        "SELECT COUNT(*) FROM track_points WHERE run_id = ?",
        concurrency=16,
        # Right after a restore the node compacts what it loaded: a count may take longer than usual.
        timeout_s=60,
    ):
        checked += 1
        stored = int(result.one()[0])
        if stored == 0 and point_count > 0:
            found.append(TrailFinding(run_id, "trail_missing", user_id, point_count, 0))
        elif stored < point_count:
            found.append(TrailFinding(run_id, "trail_short", user_id, point_count, stored))
    return checked, found
