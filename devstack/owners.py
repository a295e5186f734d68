"""`scripts/dev owners`: the runs whose two stores disagree on who owns them.

A run's owner of record is the CQL store's `runs` row, claimed once with a lightweight transaction
by whichever method first named the run (RecordTrack, StopRun, ImportRun, DeleteRun). The dashboard's
row in PostgreSQL is written only after that claim, so the two agree for every run stored since.
Rows written before (when StopRun did not claim) may not: this lists them.

- `owner_mismatch`: both stores name an owner and they differ (a run taken over through StopRun):
  the trail's owner is the runner who recorded it.
- `unclaimed`: a dashboard row whose run has no owner of record (stopped without points, before
  StopRun claimed); `--claim` claims each for its dashboard row's runner (safe: nobody else can
  have named it, or the claim would exist).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from devstack.stack import Stack
from devstack.store_scan import rows_with_cql


@dataclass(frozen=True)
class Disagreement:
    run_id: str
    kind: str  # "owner_mismatch" or "unclaimed"
    dashboard_owner: str
    owner_of_record: str | None

    def as_dict(self) -> dict[str, str | None]:
        return {
            "run_id": self.run_id,
            "kind": self.kind,
            "dashboard_owner": self.dashboard_owner,
            "owner_of_record": self.owner_of_record,
        }


def check(stack: Stack, *, claim: bool = False) -> tuple[int, list[Disagreement]]:
    """Every dashboard row against the owner of record: (rows checked, disagreements)."""
    checked, found = 0, []
    claim_run = None
    for (run_id, user_id), result, session in rows_with_cql(
        stack,
        "SELECT run_id, user_id FROM runs ORDER BY run_id",
        "SELECT user_id FROM runs WHERE run_id = ?",
        concurrency=64,
    ):
        checked += 1
        row = result.one()
        owner = row[0] if row is not None else None
        if owner is None and claim:
            claim_run = claim_run or session.prepare(
                "INSERT INTO runs (run_id, user_id, created_at) VALUES (?, ?, toTimestamp(now())) IF NOT EXISTS"
            )
            won = session.execute(claim_run, (uuid.UUID(run_id), user_id)).one()
            owner = user_id if won[0] else won.user_id
            if owner == user_id:
                continue
        if owner is None:
            found.append(Disagreement(run_id, "unclaimed", user_id, None))
        elif owner != user_id:
            found.append(Disagreement(run_id, "owner_mismatch", user_id, owner))
    return checked, found
