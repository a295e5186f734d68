"""The CQL statements by name: every block of queries.cql is a field of `Statements` (so a statement
added to the file without a name in the code, or named in the code and not in the file, fails here
and not at a replica's first connect), and the lightweight transactions are the ones not resent (nor
retried on another node after a coordinator's write timeout)."""

import dataclasses
from typing import Any

from cassandra import ConsistencyLevel, WriteType
from cassandra.policies import RetryPolicy
from cassandra.query import BatchStatement, BatchType, SimpleStatement

from runtrack_common import queries
from tracking_service.cql_session import HERE, NOT_IDEMPOTENT, IdempotentWriteRetryPolicy, Statements, _run


def test_every_statement_of_queries_cql_is_a_named_field():
    in_file = set(queries.load(HERE / "queries.cql"))
    assert {f.name for f in dataclasses.fields(Statements)} == in_file


def test_only_the_lightweight_transactions_are_not_sent_twice():
    text = {name: cql.upper() for name, cql in queries.load(HERE / "queries.cql").items()}
    assert {name for name, cql in text.items() if " IF " in cql or cql.rstrip(";").endswith("IF NOT EXISTS")} == set(
        NOT_IDEMPOTENT
    )


def test_a_write_the_coordinator_timed_out_goes_once_to_the_next_node_only_when_idempotent():
    policy = IdempotentWriteRetryPolicy()
    batch = BatchStatement(batch_type=BatchType.UNLOGGED)
    batch.is_idempotent = True
    claim = SimpleStatement("INSERT ... IF NOT EXISTS", is_idempotent=False)
    quorum = ConsistencyLevel.LOCAL_QUORUM

    def decide(query, write_type, retry_num=0):
        return policy.on_write_timeout(query, quorum, write_type, 2, 1, retry_num)[0]

    assert decide(batch, WriteType.UNLOGGED_BATCH) == RetryPolicy.RETRY_NEXT_HOST
    assert decide(SimpleStatement("INSERT", is_idempotent=True), WriteType.SIMPLE) == RetryPolicy.RETRY_NEXT_HOST
    assert decide(batch, WriteType.UNLOGGED_BATCH, retry_num=1) == RetryPolicy.RETHROW  # then the writer's retries
    assert decide(claim, WriteType.SIMPLE) == RetryPolicy.RETHROW
    assert decide(SimpleStatement("UPDATE ... IF", is_idempotent=True), WriteType.CAS) == RetryPolicy.RETHROW


class TwiceAnswered:
    """A driver's ResponseFuture under speculative execution whose two attempts both answered: it runs
    the callbacks once per answer, each page twice (the second answer's state as the first's)."""

    def __init__(self, pages: list[list[int]]) -> None:
        self.pages, self.at, self._paging_state = pages, 0, None
        self.callback: Any = None

    def add_callbacks(self, callback: Any, errback: Any) -> None:
        self.callback = callback
        self._answer()

    def _answer(self) -> None:
        page = self.pages[self.at]
        self._paging_state = f"after-{self.at}" if self.at + 1 < len(self.pages) else None
        for _ in range(2):  # both attempts answer
            self.callback(page)

    def start_fetching_next_page(self) -> None:
        self.at += 1
        self._answer()

    def clear_callbacks(self) -> None:
        pass


class Session:
    def __init__(self, pages: list[list[int]]) -> None:
        self.pages = pages

    def execute_async(self, statement: Any, params: Any) -> TwiceAnswered:
        return TwiceAnswered(self.pages)


async def test_a_page_answered_twice_by_a_speculative_attempt_is_taken_once():
    assert await _run(Session([[1, 2, 3]]), "SELECT", None, False) == [1, 2, 3]
    assert await _run(Session([[1, 2], [3, 4], [5]]), "SELECT", None, True) == [1, 2, 3, 4, 5]
    assert await _run(Session([[]]), "INSERT", None, False) == []
