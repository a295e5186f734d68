"""The CQL store's schema brought up to this release: `python -m tracking_service.migrate`.

Every statement of schema.cql, in order, against SCYLLA_HOSTS / SCYLLA_KEYSPACE / SCYLLA_REPLICATION.
Safe to run again and from two places at once: a CREATE ... IF NOT EXISTS of what exists does
nothing, and an ALTER TABLE ... ADD of a column the table has is skipped (Cassandra 5 and ScyllaDB
accept neither IF NOT EXISTS form for it). Replicas never change the schema: at connect they
prepare the statements they use, and one that names what is not there keeps them NOT_SERVING with
this command in the reason (cql_session.py)."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

from cassandra import DriverException, InvalidRequest
from cassandra.cluster import Cluster, NoHostAvailable, Session

from runtrack_common import logs, queries
from runtrack_common.config import Settings

log = logging.getLogger("tracking_service.migrate")
SCHEMA = Path(__file__).parent / "schema.cql"

# What Cassandra 5 and ScyllaDB answer to an ADD of a column the table already has.
COLUMN_EXISTS = ("already exists", "conflicts with an existing column")
_ADD = re.compile(r"^\s*ALTER\s+TABLE\s+(\w+)\.(\w+)\s+ADD\s+(\w+)\s", re.I)
_CREATE = re.compile(r"^\s*CREATE\s+(KEYSPACE|TABLE)\s+IF\s+NOT\s+EXISTS\s+(\w+)(?:\.(\w+))?", re.I)


def statements(settings: Settings) -> dict[str, str]:
    """schema.cql's statements by name, for this keyspace and replication."""
    return {
        name: cql.format(keyspace=settings.keyspace, replication=settings.replication)
        for name, cql in queries.load(SCHEMA).items()
    }


def present(cluster: Cluster, cql: str) -> bool:
    """Whether what the statement makes is already in the cluster's schema."""
    meta = cluster.metadata
    if added := _ADD.match(cql):
        keyspace, table, column = added.groups()
        ks = meta.keyspaces.get(keyspace)
        return ks is not None and table in ks.tables and column in ks.tables[table].columns
    if created := _CREATE.match(cql):
        kind, keyspace, table = created.groups()
        ks = meta.keyspaces.get(keyspace)
        return ks is not None and (kind.upper() == "KEYSPACE" or table in ks.tables)
    return False


def apply(session: Session, cql: str) -> None:
    """One statement; an ADD of a column another migration added in the meantime is skipped."""
    try:
        session.execute(cql, timeout=60)
    except InvalidRequest as err:
        if not (_ADD.match(cql) and any(m in str(err) for m in COLUMN_EXISTS)):
            raise


def migrate(settings: Settings) -> list[tuple[str, bool]]:
    """Applies what is missing; each statement's name and whether this run applied it."""
    cluster = Cluster(
        contact_points=list(settings.scylla_hosts),
        port=settings.scylla_port,
        connect_timeout=settings.cql_connect_timeout_s,
        protocol_version=4,
    )
    try:
        session = cluster.connect()
        done: list[tuple[str, bool]] = []
        for name, cql in statements(settings).items():
            if present(cluster, cql):
                done.append((name, False))
                continue
            apply(session, cql)
            done.append((name, True))
        return done
    finally:
        cluster.shutdown()


def main() -> int:
    logs.setup("tracking_service.migrate")
    settings = Settings.from_env()
    try:
        done = migrate(settings)
    except (DriverException, NoHostAvailable, OSError) as err:
        log.error("schema not migrated keyspace=%s hosts=%s error=%r", settings.keyspace, settings.scylla_hosts, err)
        return 1
    applied = [name for name, new in done if new]
    log.info(
        "schema ready keyspace=%s statements=%d applied=%s",
        settings.keyspace,
        len(done),
        ",".join(applied) or "none",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
