"""PostgreSQL's backups with Barman: full and incremental base backups (pg_basebackup, and
pg_combinebackup at restore), WAL archived continuously into the repository, and point-in-time
restore into the node's data directory.

The node archives each WAL segment with `archive-wal` (a copy into Barman's incoming directory, as
the PostgreSQL user); `barman archive-wal` files them into the repository at each backup and restore.
A segment is archived when full, at a backup, at a restore (switched first when the node runs) and
at the latest after archive_timeout: that is the recovery point when the node is lost.

Timelines: a failover or a switchover starts a new timeline that continues its parent, and a restore
starts one that branches off where it stopped (the WAL written after that point stays in the
archive, on the timelines the restore left). A restore to a time follows the timeline that was
current then: the branch the last restore before that time started (restores.jsonl, beside the
repository), to its newest descendant that no later restore left behind; and it starts from a backup
on that timeline's history (one taken on a timeline before its switch point).
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from devstack import procs, tools
from devstack.pg_node import PgNode

SERVER = "runtrack"
# A WAL segment is archived at the latest this long after it began: the recovery point when the node
# is lost with its disk.
ARCHIVE_TIMEOUT_S = 60
RETENTION = "RECOVERY WINDOW OF 7 DAYS"

ARCHIVE_SCRIPT = """#!/bin/sh
# archive_command: copies WAL segment $1 (%p) as $2 (%f) into Barman's incoming directory, once.
set -e
incoming={incoming}
if [ -f "$incoming/$2" ]; then
  cmp -s "$1" "$incoming/$2"  # already archived: fine if the same bytes, an error otherwise
  exit $?
fi
cp "$1" {staging}/"$2"
mv {staging}/"$2" "$incoming/$2"
"""


def _home(backup_dir: Path) -> Path:
    return backup_dir / "postgres"


def _incoming(backup_dir: Path) -> Path:
    return _home(backup_dir) / SERVER / "incoming"


def _archive_script(backup_dir: Path) -> Path:
    return _home(backup_dir) / "archive-wal"


def pg_backup_settings(backup_dir: Path, *, incremental: bool = True) -> dict[str, str]:
    """The node's settings for continuous archiving and, with `incremental`, incremental backups (the
    WAL summarizer). Not on a primary that may fail over: the summarizer, which sleeps in 5 s quanta,
    held a standby's promotion back by 6 s (measured: "archive recovery complete" to "ready to accept
    connections"), and a failover's time is the dashboard's outage. Backups there are full ones."""
    return {
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": f"{_archive_script(backup_dir)} %p %f",
        "archive_timeout": str(ARCHIVE_TIMEOUT_S),
        "summarize_wal": "on" if incremental else "off",
    }


@dataclass(frozen=True)
class PgBackupInfo:
    backup_id: str
    kind: str  # "full" or "incremental"
    begin_lsn: str
    end_lsn: str
    end_time: str  # ISO 8601, UTC
    size_bytes: int  # this backup's own files (an incremental's changed blocks only)
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _conninfo(addresses: list[str], **more: str) -> str:
    """A libpq keyword string naming every node; with more than one, the connection goes to the node
    that takes writes (target_session_attrs=read-write), whichever that is now."""
    hosts, ports = zip(*(a.rsplit(":", 1) for a in addresses), strict=True)
    words = {"host": ",".join(hosts), "port": ",".join(ports), "user": "postgres", **more}
    if len(addresses) > 1:
        words["target_session_attrs"] = "read-write"
    return " ".join(f"{k}={v}" for k, v in words.items())


class PgBackup:
    """Barman for the stack's PostgreSQL: `node` (one node), or with `addresses` a primary and its
    standby (Patroni), where every node archives while it is the primary and a base backup is taken
    from the primary of the moment."""

    def __init__(self, node: PgNode, backup_dir: Path, addresses: list[str] | None = None) -> None:
        self.node, self.backup_dir = node, backup_dir
        self.addresses = addresses or [f"{node.host}:{node.port}"]
        self.home = _home(backup_dir)
        self.config = self.home / "barman.conf"

    @property
    def clustered(self) -> bool:
        return len(self.addresses) > 1

    def connect(self) -> psycopg.Connection[Any]:
        """A connection to the primary, in autocommit."""
        return psycopg.connect(_conninfo(self.addresses, dbname="postgres"), autocommit=True)

    def prepare(self) -> None:
        """The repository's directories and the node's archive_command, before the node starts."""
        incoming, staging = _incoming(self.backup_dir), self.home / SERVER / "incoming-staging"
        for d in (self.home, incoming.parent, incoming, staging):
            d.mkdir(parents=True, exist_ok=True)
        script = _archive_script(self.backup_dir)
        script.write_text(ARCHIVE_SCRIPT.format(incoming=incoming, staging=staging))
        script.chmod(0o755)
        if self.node.user is not None:  # the node runs as its own user: it writes there
            import pwd

            entry = pwd.getpwnam(self.node.user)
            for d in (incoming, staging):
                os.chown(d, entry.pw_uid, entry.pw_gid)
        bin_dir = self.node.bin_dir
        self.config.write_text(
            f"""[barman]
barman_home = {self.home}
barman_user = {_user()}
log_file = {self.home / "barman.log"}
log_level = INFO
configuration_files_directory = {self.home / "conf.d"}

[{SERVER}]
description = RunTrack's PostgreSQL
conninfo = {_conninfo(self.addresses, dbname="postgres")}
streaming_conninfo = {_conninfo(self.addresses)}
backup_method = postgres
immediate_checkpoint = true
compression = gzip
archiver = on
incoming_wals_directory = {incoming}
path_prefix = {bin_dir}
retention_policy = {RETENTION}
minimum_redundancy = 1
staging_path = {self.home / "staging"}
staging_location = local
"""
        )
        (self.home / "conf.d").mkdir(exist_ok=True)

    def barman(self, *args: str, as_json: bool = False) -> str:
        argv = [str(tools.barman()), "-c", str(self.config), *(["-f", "json"] if as_json else []), *args]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=3600, cwd="/")
        if out.returncode != 0:
            raise RuntimeError(f"barman {' '.join(args)} failed:\n{(out.stdout + out.stderr)[-3000:]}")
        return out.stdout

    def archive_wal(self) -> None:
        """Files the segments the node archived into the repository."""
        self.barman("archive-wal", SERVER)

    def switch_wal(self) -> None:
        """Closes the node's current WAL segment and waits until the repository holds it. A commit is
        written first: a restore to a time after every other commit finds one after it, and stops."""
        with self.connect() as conn:
            conn.execute("SELECT pg_current_xact_id()")
        self.barman("switch-wal", "--force", "--archive", "--archive-timeout", "60", SERVER)

    def backups(self) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = json.loads(self.barman("list-backups", SERVER, as_json=True))[SERVER]
        return [b for b in listed if b.get("status") == "DONE"]

    def show(self, backup_id: str) -> dict[str, Any]:
        shown: dict[str, Any] = json.loads(self.barman("show-backup", SERVER, backup_id, as_json=True))[SERVER]
        return shown

    def backup(self, *, full: bool) -> PgBackupInfo:
        self.archive_wal()
        incremental = not full and bool(self.backups()) and self._summarizing()
        started = dt.datetime.now(dt.UTC)
        self.barman("backup", SERVER, "--wait", *(["--incremental", "latest"] if incremental else []))
        seconds = (dt.datetime.now(dt.UTC) - started).total_seconds()
        self.archive_wal()
        # Retention: backups and WAL older than the window go (`cron` runs no archiver with nothing queued).
        self.barman("cron")
        info = self.show("latest")
        base = info["base_backup_information"]
        return PgBackupInfo(
            backup_id=info["backup_id"],
            kind=info.get("backup_type", "full"),
            begin_lsn=base["begin_lsn"],
            end_lsn=base["end_lsn"],
            end_time=dt.datetime.fromtimestamp(int(base["end_time_timestamp"]), dt.UTC).isoformat(),
            size_bytes=int(base["backup_size_bytes"]),
            seconds=round(seconds, 2),
        )

    def _summarizing(self) -> bool:
        """Whether the primary keeps the WAL summaries an incremental backup is made from."""
        with self.connect() as conn:
            row = conn.execute("SHOW summarize_wal").fetchone()
        return row is not None and row[0] == "on"

    def backup_before(self, to: dt.datetime, timeline: int | None = None) -> str:
        """The newest backup that ended at or before `to` (a restore replays WAL from its end on) and,
        with `timeline`, lies on that timeline's history."""
        done = [b for b in self.backups() if int(b["end_time_timestamp"]) <= to.timestamp()]
        for b in sorted(done, key=lambda b: int(b["end_time_timestamp"]), reverse=True):
            if timeline is None:
                return str(b["backup_id"])
            base = self.show(str(b["backup_id"]))["base_backup_information"]
            if on_history(self.histories(), timeline, int(base["timeline"]), lsn(str(base["end_lsn"]))):
                return str(b["backup_id"])
        on = "" if timeline is None else f" on timeline {timeline}'s history"
        raise SystemExit(f"no PostgreSQL backup ended before {to.isoformat()}{on}: nothing to restore from")

    # ---- timelines -------------------------------------------------------------------------------
    @property
    def restores_file(self) -> Path:
        return self.home / "restores.jsonl"

    def restores(self) -> list[dict[str, Any]]:
        """The restores done, oldest first: when each ended (`at`), to what time, the timeline it began."""
        if not self.restores_file.exists():
            return []
        return [json.loads(line) for line in self.restores_file.read_text().splitlines() if line.strip()]

    def histories(self) -> dict[int, list[tuple[int, int]]]:
        """Each archived timeline's history: its ancestors, oldest first, each with the LSN where its
        child began (PostgreSQL's TLI.history files)."""
        out: dict[int, list[tuple[int, int]]] = {}
        for path in (self.home / SERVER / "wals").glob("*.history"):
            raw = path.read_bytes()
            text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode()
            entries = []
            for line in text.splitlines():
                words = line.split()
                if len(words) >= 2 and words[0].isdigit():
                    entries.append((int(words[0]), lsn(words[1])))
            out[int(path.name.split(".")[0], 16)] = entries
        return out

    def timeline_at(self, to: dt.datetime) -> int:
        """The timeline a restore to `to` follows: the newest descendant of the branch current at
        `to` (the one the last restore before `to` began, else the first) that no restore after `to`
        left behind."""
        histories = self.histories()
        restores = self.restores()
        before = [r for r in restores if _at(r["at"]) <= to]
        root = int(before[-1]["timeline"]) if before else 1
        left = {int(r["timeline"]) for r in restores if _at(r["at"]) > to}
        candidates = [root] + [
            tli
            for tli, history in histories.items()
            if root in {parent for parent, _ in history} and not left & ({parent for parent, _ in history} | {tli})
        ]
        return max(candidates)

    def _record_restore(self, to: dt.datetime, backup_id: str, timeline: int) -> None:
        entry = {"at": dt.datetime.now(dt.UTC).isoformat(), "to": to.isoformat(), "backup": backup_id}
        with open(self.restores_file, "a") as f:
            f.write(json.dumps(entry | {"timeline": timeline}) + "\n")

    def restore(self, to: dt.datetime) -> tuple[str, str]:
        """The node's data directory replaced by the backup before `to` plus the archived WAL up to
        `to`; the node started and promoted. Returns the backup's id and the point reached: `to`, or
        the end of the archived WAL when it holds no commit after `to` (the node was lost before it
        wrote one). The node must be stopped."""
        if self.clustered:
            raise RuntimeError("a restore goes into one node (PgBackup without addresses)")
        if self.node.pid():
            raise RuntimeError("stop PostgreSQL before restoring it")
        self.archive_wal()
        timeline = self.timeline_at(to)
        backup_id = self.backup_before(to, timeline)
        tli = ("--target-tli", str(timeline))
        data = self.node.data
        aside = data.with_name("data.before-restore")
        if aside.exists():  # a restore that failed: the data it set aside is the node's own
            shutil.rmtree(data, ignore_errors=True)
        elif data.exists():
            data.rename(aside)
        reached = to.isoformat()
        log_from = self.node.log.stat().st_size if self.node.log.exists() else 0
        try:
            self._recover(backup_id, "--target-time", to.isoformat(), *tli)
        except (subprocess.CalledProcessError, psycopg.OperationalError, RuntimeError):
            procs.wait_until("PostgreSQL to exit", lambda: self.node.pid() is None, 30)
            if "recovery ended before configured recovery target was reached" not in _since(self.node.log, log_from):
                raise
            # No commit after `to` in the archive: every commit in it is before `to`, so its end is the point.
            shutil.rmtree(data)
            self._recover(backup_id, *tli)
            reached = "end of the archived WAL"
        shutil.rmtree(aside, ignore_errors=True)
        self._record_restore(to, backup_id, _timeline_now(self.node))
        return backup_id, reached

    def _recover(self, backup_id: str, *target: str) -> None:
        data = self.node.data
        # With a time, promoted there; with a timeline only, at the end of its WAL.
        action = ("--target-action", "promote") if "--target-time" in target else ()
        self.barman("recover", SERVER, backup_id, str(data), *target, *action)
        _chown_tree(data, self.node.user)
        data.chmod(0o700)
        # Barman turns archive_command off in the restored configuration; the node's own `-c` settings
        # win over it, so archiving goes on (a new timeline) as soon as the node is promoted.
        self.node.start()
        _wait_promoted(self.node)


def lsn(text: str) -> int:
    """A WAL position ("0/60000A0") as a number."""
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def on_history(histories: dict[int, list[tuple[int, int]]], timeline: int, tli: int, end_lsn: int) -> bool:
    """Whether WAL up to `end_lsn` on timeline `tli` is part of `timeline`'s history: the same timeline,
    or an ancestor that `timeline`'s line left only after `end_lsn`."""
    if tli == timeline:
        return True
    return any(parent == tli and end_lsn <= switch for parent, switch in histories.get(timeline, []))


def _at(iso: str) -> dt.datetime:
    return dt.datetime.fromisoformat(iso)


def _timeline_now(node: PgNode) -> int:
    """The timeline the (promoted) node writes now."""
    with psycopg.connect(f"postgresql://postgres@{node.host}:{node.port}/postgres", autocommit=True) as conn:
        row = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
    assert row is not None
    return int(str(row[0])[:8], 16)


def _since(log: Path, offset: int) -> str:
    with open(log, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def _wait_promoted(node: PgNode, timeout: float = 120.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.pid() is None:
            raise RuntimeError(f"the restored PostgreSQL exited (see {node.log})")
        with psycopg.connect(f"postgresql://postgres@{node.host}:{node.port}/postgres", autocommit=True) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if row is not None and not row[0]:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the restored PostgreSQL is still in recovery after {timeout:.0f}s (see {node.log})")


def _chown_tree(top: Path, user: str | None) -> None:
    if user is None:
        return
    import pwd

    entry = pwd.getpwnam(user)
    os.chown(top, entry.pw_uid, entry.pw_gid)
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def current_point(pgb: PgBackup) -> tuple[str, str]:
    """PostgreSQL's WAL position and clock now (on the primary): the point a CQL snapshot taken now
    matches."""
    with pgb.connect() as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text, clock_timestamp()").fetchone()
    assert row is not None
    return str(row[0]), row[1].astimezone(dt.UTC).isoformat()
