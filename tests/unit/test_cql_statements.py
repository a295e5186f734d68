"""The CQL statements by name: every block of queries.cql is a field of `Statements` (so a statement
added to the file without a name in the code, or named in the code and not in the file, fails here
and not at a replica's first connect), and the lightweight transactions are the ones not resent."""

import dataclasses

from runtrack_common import queries
from tracking_service.cql_session import HERE, NOT_IDEMPOTENT, Statements


def test_every_statement_of_queries_cql_is_a_named_field():
    in_file = set(queries.load(HERE / "queries.cql"))
    assert {f.name for f in dataclasses.fields(Statements)} == in_file


def test_only_the_lightweight_transactions_are_not_sent_twice():
    text = {name: cql.upper() for name, cql in queries.load(HERE / "queries.cql").items()}
    assert {name for name, cql in text.items() if " IF " in cql or cql.rstrip(";").endswith("IF NOT EXISTS")} == set(
        NOT_IDEMPOTENT
    )
