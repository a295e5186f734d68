"""Which timeline a PostgreSQL restore to a time follows, and which backups lie on it
(devstack/pg_backup.py), on a repository's history files and restore records alone: no process."""

from __future__ import annotations

import datetime as dt
import gzip
import json

from devstack.pg_backup import SERVER, PgBackup, lsn, on_history
from devstack.pg_node import PgNode

T0 = dt.datetime(2026, 11, 1, 0, 0, tzinfo=dt.UTC)


def repository(tmp_path, histories: dict[int, str], restores: list[tuple[int, int]]) -> PgBackup:
    """A repository holding TLI.history files (gzip, as Barman stores them) and the restores done,
    each (minutes after T0 it ended, the timeline it began)."""
    pgb = PgBackup(PgNode(tmp_path / "node", tmp_path / "node.log", port=1), tmp_path)
    wals = pgb.home / SERVER / "wals"
    wals.mkdir(parents=True)
    for tli, text in histories.items():
        (wals / f"{tli:08X}.history").write_bytes(gzip.compress(text.encode()))
    pgb.restores_file.write_text(
        "".join(
            json.dumps({"at": (T0 + dt.timedelta(minutes=m)).isoformat(), "timeline": tli}) + "\n"
            for m, tli in restores
        )
    )
    return pgb


def at(minutes: int) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def test_one_timeline_and_no_history(tmp_path):
    assert repository(tmp_path, {}, []).timeline_at(at(5)) == 1


def test_a_switchover_s_timeline_continues_its_parent_at_any_time(tmp_path):
    pgb = repository(tmp_path, {2: "1\t0/60000A0\tno recovery target specified\n"}, [])
    assert pgb.timeline_at(at(1)) == pgb.timeline_at(at(90)) == 2


def test_a_restore_s_branch_is_followed_only_from_when_it_began(tmp_path):
    # 1 -> 2 (switchover); restored at minute 30 to a time on 1: branch 3; 3 -> 4 (failover).
    histories = {
        2: "1\t0/60000A0\tno recovery target specified\n",
        3: "1\t0/5000100\tbefore 2026-11-01 00:10:00+00\n",
        4: "1\t0/5000100\tbefore 2026-11-01 00:10:00+00\n3\t0/7000000\tno recovery target specified\n",
    }
    pgb = repository(tmp_path, histories, [(30, 3)])
    assert pgb.timeline_at(at(20)) == 2, "before the restore: the line it left"
    assert pgb.timeline_at(at(40)) == 4, "after it: its branch, to the failover's timeline"


def test_a_branch_left_by_a_later_restore_is_not_followed(tmp_path):
    # Restored at minute 30 (branch 3, off 1), then at minute 50 to a time on 3 (branch 4, off 3).
    histories = {
        2: "1\t0/60000A0\tno recovery target specified\n",
        3: "1\t0/5000100\tbefore\n",
        4: "1\t0/5000100\tbefore\n3\t0/8000000\tbefore\n",
    }
    pgb = repository(tmp_path, histories, [(30, 3), (50, 4)])
    assert pgb.timeline_at(at(40)) == 3
    assert pgb.timeline_at(at(10)) == 2
    assert pgb.timeline_at(at(60)) == 4


def test_a_backup_lies_on_a_timeline_s_history_up_to_where_the_line_left_its_timeline():
    histories = {3: [(1, lsn("0/5000100")), (2, lsn("0/7000000"))]}
    assert on_history(histories, 3, 3, lsn("0/9000000"))
    assert on_history(histories, 3, 1, lsn("0/5000000"))
    assert not on_history(histories, 3, 1, lsn("0/6000000")), "WAL of 1 after 3's line left it"
    assert on_history(histories, 3, 2, lsn("0/7000000"))
    assert not on_history(histories, 3, 4, lsn("0/1000000"))
    assert lsn("1/0") == 1 << 32
