"""Which backup sets a restore loads and which the retention drops (devstack/backup.py), on manifests
alone: no store, no process."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace

import pytest

from devstack import backup
from devstack.stack import Stack, backup_test_spec

T0 = dt.datetime(2026, 11, 1, 0, 0, tzinfo=dt.UTC)


def stack_with(tmp_path, *sets: tuple[int, str]) -> Stack:
    """A stack whose repository holds sets taken `days` after T0, each "full" or "incremental"."""
    stack = Stack(replace(backup_test_spec(), state=tmp_path))
    backup.sets_dir(stack).mkdir(parents=True)
    base = ""
    for days, kind in sets:
        at = T0 + dt.timedelta(days=days)
        set_id = at.strftime("%Y%m%dT%H%M%S%fZ")
        base = set_id if kind == "full" else base
        manifest = {
            "id": set_id,
            "created_at": at.isoformat(),
            "base": base,
            "cql": {"kind": kind, "taken_at": at.isoformat()},
        }
        (backup.sets_dir(stack) / f"{set_id}.json").write_text(json.dumps(manifest))
    return stack


def ids(stack: Stack, *days: int) -> list[str]:
    return [(T0 + dt.timedelta(days=d)).strftime("%Y%m%dT%H%M%S%fZ") for d in days]


def test_a_restore_loads_the_last_set_before_the_time_and_its_chain_back_to_the_full_one(tmp_path):
    stack = stack_with(tmp_path, (0, "full"), (1, "incremental"), (2, "full"), (3, "incremental"), (4, "incremental"))
    at = T0 + dt.timedelta(days=3, hours=12)
    assert backup.chain_before(stack, at) == ids(stack, 2, 3)
    assert backup.chain_before(stack, T0 + dt.timedelta(days=1, hours=1)) == ids(stack, 0, 1)
    assert backup.chain_before(stack, T0 + dt.timedelta(days=2)) == ids(stack, 2), "a set taken at the time counts"


def test_a_time_before_every_set_is_refused(tmp_path):
    stack = stack_with(tmp_path, (1, "full"))
    with pytest.raises(SystemExit, match="no CQL snapshot taken before"):
        backup.chain_before(stack, T0)


def test_retention_keeps_the_chain_that_restores_the_oldest_time_of_the_window(tmp_path):
    stack = stack_with(tmp_path, (0, "full"), (1, "incremental"), (7, "full"), (8, "incremental"), (14, "full"))
    now = T0 + dt.timedelta(days=15)  # the window starts at day 8: the chain from day 7 is needed
    assert backup._retain(stack, now) == ids(stack, 0, 1)
    assert [m["id"] for m in backup.manifests(stack)] == ids(stack, 7, 8, 14)
    assert backup._retain(stack, now) == []


def test_times_are_iso_8601_and_utc_without_an_offset():
    assert backup.parse_time("2026-12-06T21:30:00Z") == dt.datetime(2026, 12, 6, 21, 30, tzinfo=dt.UTC)
    assert backup.parse_time("2026-12-06T22:30:00+01:00") == dt.datetime(2026, 12, 6, 21, 30, tzinfo=dt.UTC)
    assert backup.parse_time("2026-12-06 21:30") == dt.datetime(2026, 12, 6, 21, 30, tzinfo=dt.UTC)
    with pytest.raises(SystemExit, match="not an ISO 8601 time"):
        backup.parse_time("yesterday")
