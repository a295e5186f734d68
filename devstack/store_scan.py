"""The consistency checks' one pass: every dashboard row (PostgreSQL), each with one CQL query's answer,
asked concurrently a batch of rows at a time (`scripts/dev owners`, `scripts/dev trails`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg

from devstack.stack import Stack

BATCH = 500


def rows_with_cql(
    stack: Stack, pg_query: str, cql_query: str, *, concurrency: int, timeout_s: float | None = None
) -> Iterator[tuple[tuple[Any, ...], Any, Any]]:
    """(dashboard row, the CQL answer for its run id, the session) for every row `pg_query` returns;
    the row's first column is the run id (as text), the CQL query's only parameter."""
    from cassandra.cluster import Cluster as CqlCluster  # scylla-driver
    from cassandra.concurrent import execute_concurrent_with_args

    with psycopg.connect(stack.database_url) as conn:
        rows = [tuple(str(v) if isinstance(v, uuid.UUID) else v for v in r) for r in conn.execute(pg_query)]
    cluster = CqlCluster(stack.scylla_hosts.split(","), port=stack.scylla_port)
    try:
        session = cluster.connect(stack.spec.keyspace)
        if timeout_s is not None:
            session.default_timeout = timeout_s
        statement = session.prepare(cql_query)
        for start in range(0, len(rows), BATCH):
            batch = rows[start : start + BATCH]
            results = execute_concurrent_with_args(
                session,
                statement,
                [(uuid.UUID(r[0]),) for r in batch],
                concurrency=concurrency,
                raise_on_first_error=True,
            )
            for row, (_, result) in zip(batch, results, strict=True):
                yield row, result, session
    finally:
        cluster.shutdown()
