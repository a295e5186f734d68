"""`scripts/dev backup` and `scripts/dev restore --to TIME`: both stores at once.

A backup set is a PostgreSQL base backup (Barman: full, or incremental on the last one) and a CQL
set (nodetool: a full snapshot, or the sstables flushed since the last set), with a manifest,
state/backups/sets/SET.json, that records which PostgreSQL point (WAL LSN and clock) the CQL
snapshot matches. WAL is archived continuously between sets, so PostgreSQL restores to any time
after its first backup; the CQL store restores to its last set at or before that time. A run
stopped between the two is found by `scripts/dev trails` (devstack/trails.py), which a restore runs
at its end.

Full sets are taken by `--full`, when there is none yet, when the last is older than FULL_EVERY, and
after a restore (a new PostgreSQL timeline, fresh CQL nodes); retention keeps RETENTION of sets.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from devstack import procs
from devstack.cql_backup import CqlBackup
from devstack.pg_backup import PgBackup, current_point, pg_backup_settings
from devstack.pg_node import PgNode
from devstack.stack import SERVICES, Stack, say

T = TypeVar("T")
FULL_EVERY = dt.timedelta(days=7)
RETENTION = dt.timedelta(days=7)  # as Barman's RECOVERY WINDOW (devstack/pg_backup.py)


def _local(stack: Stack) -> None:
    if not stack.spec.backups:
        raise SystemExit(f"the {stack.spec.name} stack keeps no backups (StackSpec.backups)")
    if stack.spec.database_url or stack.spec.scylla_hosts:
        raise SystemExit("backup and restore act on the local stores: unset DATABASE_URL and SCYLLA_HOSTS")


def pg_backup(stack: Stack) -> PgBackup:
    return stack.pg_backup()


def cql_backup(stack: Stack) -> CqlBackup:
    return CqlBackup(stack.cql_nodes, stack.spec.keyspace, stack.spec.backup_dir)


def sets_dir(stack: Stack) -> Path:
    return stack.spec.backup_dir / "sets"


def manifests(stack: Stack) -> list[dict[str, Any]]:
    """Every set's manifest, oldest first."""
    found = [json.loads(p.read_text()) for p in sorted(sets_dir(stack).glob("*.json"))]
    return sorted(found, key=lambda m: str(m["id"]))


def _next_full_marker(stack: Stack) -> Path:
    return stack.spec.backup_dir / "next-is-full"


def _at(iso: str) -> dt.datetime:
    return dt.datetime.fromisoformat(iso)


def backup(stack: Stack, *, full: bool = False) -> dict[str, Any]:
    """One set of both stores; returns its manifest (also written to sets/SET.json)."""
    _local(stack)
    if not _pg_serving(stack) or not all(n.pid() for n in stack.cql_nodes):
        raise SystemExit("the stores are not running: `scripts/dev up` first")
    now = dt.datetime.now(dt.UTC)
    done = manifests(stack)
    fulls = [m for m in done if m["cql"]["kind"] == "full"]
    full = full or not fulls or now - _at(fulls[-1]["created_at"]) > FULL_EVERY or _next_full_marker(stack).exists()
    set_id = now.strftime("%Y%m%dT%H%M%S%fZ")
    started = time.monotonic()
    pgb = pg_backup(stack)
    pgb.prepare()
    pg = pgb.backup(full=full)
    # The PostgreSQL point before the flush: every CQL write acknowledged before it is in the set.
    lsn, pg_time = current_point(pgb)
    cql = cql_backup(stack).backup(set_id, full=full)
    manifest = {
        "id": set_id,
        "created_at": now.isoformat(),
        "stack": stack.spec.name,
        "keyspace": stack.spec.keyspace,
        "base": set_id if full else fulls[-1]["id"],
        "postgres": pg.as_dict(),
        "cql": cql.as_dict() | {"taken_at": pg_time, "postgres_lsn": lsn, "nodes": len(stack.cql_nodes)},
        "seconds": round(time.monotonic() - started, 2),
        "repository": str(stack.spec.backup_dir),
    }
    sets_dir(stack).mkdir(parents=True, exist_ok=True)
    tmp = sets_dir(stack) / f".{set_id}.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(sets_dir(stack) / f"{set_id}.json")
    _next_full_marker(stack).unlink(missing_ok=True)
    manifest["removed"] = _retain(stack, now)
    return manifest


def _pg_serving(stack: Stack) -> bool:
    if stack.pg_cluster is None:
        return stack.pg.pid() is not None
    return stack.pg_cluster.primary() is not None


def _retain(stack: Stack, now: dt.datetime) -> list[str]:
    """Drops the CQL sets no restore within RETENTION needs: those before the newest full set that is
    itself older than the window (Barman applies the same window to PostgreSQL's)."""
    done = manifests(stack)
    horizon = now - RETENTION
    old_fulls = [m for m in done if m["cql"]["kind"] == "full" and _at(m["cql"]["taken_at"]) <= horizon]
    if not old_fulls:
        return []
    keep_from = old_fulls[-1]["id"]
    removed = [m["id"] for m in done if m["id"] < keep_from]
    for set_id in removed:
        cql_backup(stack).remove(set_id)
        (sets_dir(stack) / f"{set_id}.json").unlink(missing_ok=True)
    return removed


def chain_before(stack: Stack, to: dt.datetime) -> list[str]:
    """The CQL sets a restore to `to` loads: the last set taken at or before it, back to its full set."""
    done = [m for m in manifests(stack) if _at(m["cql"]["taken_at"]) <= to]
    if not done:
        raise SystemExit(f"no CQL snapshot taken before {to.isoformat()}: nothing to restore from")
    last = done[-1]
    return [m["id"] for m in done if m["base"] == last["base"] and m["id"] <= last["id"]]


def restore(stack: Stack, to: dt.datetime) -> dict[str, Any]:
    """PostgreSQL to `to` (PITR), the CQL store to its last set at or before `to` (fresh nodes), with
    the replicas stopped meanwhile; then the trails check. Returns what was done."""
    _local(stack)
    if to > dt.datetime.now(dt.UTC):
        raise SystemExit(f"{to.isoformat()} is in the future")
    chain = chain_before(stack, to)
    pgb = pg_backup(stack)
    pgb.prepare()
    pgb.archive_wal()  # the timelines' histories the nodes archived, into the repository
    pgb.backup_before(to, pgb.timeline_at(to))  # refuse before stopping anything
    timings: dict[str, float] = {}
    started = time.monotonic()
    if _pg_serving(stack):
        pgb.switch_wal()  # the WAL written until now, into the repository
    ports = stack.replica_ports()
    say("restore: stopping the replicas")
    for svc in SERVICES:
        for port in ports[svc]:
            procs.stop(stack.replica_pid(svc, port), timeout=30)
    # PostgreSQL restored while the fresh CQL nodes start (each takes tens of seconds).
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        say(f"restore: PostgreSQL to {to.isoformat()}, meanwhile fresh CQL node(s) for set(s) {', '.join(chain)}")
        if stack.pg_cluster is None:
            stack.pg.stop()
            pg_done = pool.submit(_timed, pgb.restore, to)
        else:
            pg_done = pool.submit(_timed, lambda at: _restore_cluster(stack, at), to)
        t = time.monotonic()
        for node in stack.cql_nodes:
            node.stop()
        for node in stack.cql_nodes:
            procs.wait_until("CQL node to exit", lambda n=node: n.pid() is None, 60)  # type: ignore[misc]
            _wipe(node.home / "data")
        for group in (stack.cql_nodes[:1], stack.cql_nodes[1:]):
            for node in group:
                node.start()
            for node in group:
                node.wait_ready()
        (pg_backup_id, pg_reached), timings["postgres_s"] = pg_done.result()
    stack.migrate()
    loaded = cql_backup(stack).load(chain)
    timings["cql_s"] = round(time.monotonic() - t, 2)
    say("restore: starting the replicas")
    for svc in SERVICES:
        for port in ports[svc]:
            stack.start_replica(svc, port)
    if stack.envoy_pid():
        stack.wait_healthy(ports)
    timings["total_s"] = round(time.monotonic() - started, 2)
    _next_full_marker(stack).parent.mkdir(parents=True, exist_ok=True)
    _next_full_marker(stack).write_text(f"restored to {to.isoformat()}\n")
    from devstack.trails import check

    checked, findings = check(stack)
    return {
        "to": to.isoformat(),
        "postgres_backup": pg_backup_id,
        "postgres_reached": pg_reached,
        "cql_sets": chain,
        "cql_snapshot_taken_at": next(m for m in manifests(stack) if m["id"] == chain[-1])["cql"]["taken_at"],
        "cql_sstables_loaded": loaded,
        "timings": timings,
        "runs_checked": checked,
        "trail_findings": [f.as_dict() for f in findings],
    }


def _restore_cluster(stack: Stack, to: dt.datetime) -> tuple[str, str]:
    """The two-node PostgreSQL restored: both Patroni nodes stopped; the first node's data directory
    restored as one PostgreSQL (as a single node is: the backup, the WAL to `to` on the timeline
    current then, promoted) and stopped; then Patroni, on a fresh cluster state, starts it as the
    leader and copies the second node, emptied, from it as the synchronous standby."""
    cluster = stack.pg_cluster
    assert cluster is not None
    first = cluster.nodes[0]
    say("restore: stopping both PostgreSQL nodes (Patroni)")
    cluster.stop()
    settings = pg_backup_settings(stack.spec.backup_dir, incremental=False) | {
        "synchronous_standby_names": "",  # Patroni's, in the restored files: no standby to wait for yet
        "logging_collector": "off",  # the recovery's messages into the log the restore reads
    }
    node = PgNode(first.home, stack.spec.logs / "pg-restore.log", port=first.pg_port, settings=settings)
    done = PgBackup(node, stack.spec.backup_dir).restore(to)
    # Barman's recovery settings go: the standby copied from this node would start with them.
    with psycopg.connect(f"postgresql://postgres@{node.host}:{node.port}/postgres", autocommit=True) as conn:
        conn.execute("ALTER SYSTEM RESET ALL")
    node.stop()
    say(f"restore: Patroni takes {first.name} over as the primary; the other node copied from it")
    cluster.take_over(first)
    return done


def _timed(fn: Callable[[dt.datetime], T], arg: dt.datetime) -> tuple[T, float]:
    t = time.monotonic()
    return fn(arg), round(time.monotonic() - t, 2)


def _wipe(data: Path) -> None:
    import shutil

    shutil.rmtree(data, ignore_errors=True)


def parse_time(text: str) -> dt.datetime:
    """ISO 8601; without an offset it is UTC."""
    try:
        at = dt.datetime.fromisoformat(text)
    except ValueError as err:
        raise SystemExit(f"--to {text!r}: not an ISO 8601 time ({err})") from None
    return at if at.tzinfo else at.replace(tzinfo=dt.UTC)
