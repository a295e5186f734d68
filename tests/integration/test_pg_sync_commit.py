"""A commit the synchronous standby never confirmed is not acknowledged.

PostgreSQL waits at COMMIT for the standby named in `synchronous_standby_names`; when that wait is
cancelled (a cancel request: a client that gave up, an operator's pg_cancel_backend) the row stays
committed on the primary and the statement answers success with only a WARNING. A failover then would
lose a write the runner was told is safe, so the store answers UNAVAILABLE instead, and the client's
retry (StopRun is idempotent) answers once the standby has it. On a PostgreSQL node of its own, whose
standby never comes (`synchronous_standby_names` names one that does not exist), so the wait is certain.
"""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from devstack import procs
from devstack.paths import ROOT
from devstack.pg_node import PgNode
from runtrack_common.config import Settings
from runtrack_common.errors import Unavailable
from summary_service.domain import Overview
from summary_service.migrate import migrate
from summary_service.pg_store import PgRunStore


@pytest.fixture(scope="module")
def waiting_node():
    home = ROOT / ".dev" / "test" / f"pg-sync-{uuid.uuid4().hex[:6]}"
    node = PgNode(
        home,
        ROOT / ".dev" / "logs" / "test" / "pg-sync.log",
        port=procs.free_port(),
    )
    node.start()
    try:
        yield node
    finally:
        node.stop()
        import shutil

        shutil.rmtree(home, ignore_errors=True)


def overview() -> Overview:
    start_us = 1_780_000_000 * 1_000_000
    return Overview(
        start_us=start_us,
        end_us=start_us + 1_800_000_000,
        distance_m=5000.0,
        moving_time_us=1_790_000_000,
        elevation_gain_m=0.0,
        point_count=0,
        avg_heart_rate_bpm=None,
        polyline="",
    )


async def cancel_the_waiting_commit(url: str) -> int:
    """Cancels the backend waiting for the standby (wait event SyncRep) once there is one; its pid."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        conn.add_notice_handler(lambda _diag: None)
        for _ in range(200):
            row = await (
                await conn.execute("SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep' LIMIT 1")
            ).fetchone()
            if row is not None:
                await conn.execute("SELECT pg_cancel_backend(%s)", (row[0],))
                return int(row[0])
            await asyncio.sleep(0.05)
    raise AssertionError("no commit ever waited for the synchronous standby")


async def test_a_commit_whose_wait_for_the_standby_is_cancelled_answers_unavailable(waiting_node):
    url = waiting_node.url
    await migrate(url)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("ALTER SYSTEM SET synchronous_standby_names = 'standby_that_never_comes'")
        await conn.execute("SELECT pg_reload_conf()")

    store = PgRunStore(Settings.from_env({"DATABASE_URL": url, "PG_POOL_MIN": "1", "PG_POOL_MAX": "1"}))
    await store.ensure_ready()
    run_id = uuid.uuid4()
    try:
        insert = asyncio.create_task(store.insert_run(run_id, "runner-sync", overview()))
        await cancel_the_waiting_commit(url)
        with pytest.raises(Unavailable, match="not confirmed by the synchronous standby"):
            await asyncio.wait_for(insert, 30)
        # The row is on this node (committed locally): the runner's retry finds it and answers it.
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            found = await (await conn.execute("SELECT count(*) FROM runs WHERE run_id = %s", (run_id,))).fetchone()
        assert found == (1,)
        # The pool's one connection answers the next call: the warning marked that commit only.
        got = await store.get_run(run_id)
        assert got is not None and got.run_id == run_id
    finally:
        await store.close()
