"""The LiveStore on the CQL store (a run's live state and links, the live feed, the runs followed) and
the webhooks' outbox."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Sequence

from cassandra.query import BatchStatement, BatchType

from tracking_service.cql_session import CqlSession, _execute, _execute_batch
from tracking_service.cql_store import _point, _utc, point_values
from tracking_service.live import FEED_SHARDS, DurablePoints, FeedRow, LinkRecord, LiveRow, feed_shard
from tracking_service.webhooks import OUTBOX_SHARDS, Delivery, outbox_shard


class CqlLiveStore:
    """LiveStore (tracking_service.store) on the shared CQL session."""

    def __init__(self, cql: CqlSession) -> None:
        self.cql = cql

    async def live_row(self, run_id: uuid.UUID) -> LiveRow:
        rows = await _execute(self.cql.ready(), self.cql.q.live_row, (run_id,), all_pages=True)
        if not rows:
            return LiveRow()
        first = rows[0]
        links = {
            r["link_id"]: LinkRecord(
                link_id=r["link_id"],
                created_at=_utc(r["created_at"]),
                expire_at=_utc(r["expire_at"]) if r["expire_at"] is not None else None,
                webhook_url=r["webhook_url"] or "",
                webhook_secret=r["webhook_secret"] or "",
            )
            for r in rows
            if r["link_id"] is not None and r["created_at"] is not None
        }
        return LiveRow(
            state=first["state"],
            state_at=_utc(first["state_at"]) if first["state_at"] is not None else None,
            stopped_at=_utc(first["stopped_at"]) if first["stopped_at"] is not None else None,
            links=links,
        )

    async def add_link(self, run_id: uuid.UUID, link: LinkRecord) -> None:
        values = (run_id, link.link_id, link.created_at, link.expire_at, link.webhook_url, link.webhook_secret)
        await _execute(self.cql.ready(), self.cql.q.insert_link, values)

    async def delete_link(self, run_id: uuid.UUID, link_id: str) -> None:
        await _execute(self.cql.ready(), self.cql.q.delete_link, (run_id, link_id))

    async def change_state(self, run_id: uuid.UUID, new: str, at: dt.datetime, expected: str | None) -> str | None:
        rows = await _execute(self.cql.ready(), self.cql.q.change_state, (new, at, run_id, expected))
        row = rows[0]
        return new if row["[applied]"] else row.get("state")

    async def mark_stopped(self, run_id: uuid.UUID, at: dt.datetime) -> None:
        await _execute(self.cql.ready(), self.cql.q.mark_stopped, (at, at, run_id))

    async def mark_live_deleted(self, run_id: uuid.UUID, at: dt.datetime, link_ids: Sequence[str]) -> None:
        session = self.cql.ready()
        await _execute(session, self.cql.q.mark_live_deleted, (at, run_id))
        for link_id in link_ids:
            await _execute(session, self.cql.q.delete_link, (run_id, link_id))

    # ---- the live feed ----------------------------------------------------------------------

    async def feed_points(self, bucket: int, rows: Sequence[DurablePoints]) -> None:
        statement = BatchStatement(batch_type=BatchType.UNLOGGED)
        statement.is_idempotent = True
        insert = self.cql.q.feed_point
        for row in rows:
            shard = feed_shard(row.run_id)
            arrived_at = dt.datetime.fromtimestamp(row.arrived_at, dt.UTC)
            for p in row.points:
                statement.add(insert, (bucket, shard, *point_values(row.run_id, p), arrived_at))
        await _execute_batch(self.cql.ready(), statement)

    async def feed_event(self, bucket: int, run_id: uuid.UUID, event: str) -> None:
        await _execute(self.cql.ready(), self.cql.q.feed_event, (bucket, feed_shard(run_id), run_id, event))

    async def read_feed(self, bucket: int) -> list[FeedRow]:
        session = self.cql.ready()
        pages = await asyncio.gather(
            *(_execute(session, self.cql.q.feed_read, (bucket, shard), all_pages=True) for shard in range(FEED_SHARDS))
        )
        return [
            FeedRow(r["run_id"], r["event"], None)
            if r["event"]
            else FeedRow(r["run_id"], "", _point(r), _utc(r["arrived_at"]).timestamp() if r["arrived_at"] else None)
            for page in pages
            for r in page
        ]

    async def mark_watched(self, run_ids: Sequence[uuid.UUID]) -> None:
        statement = BatchStatement(batch_type=BatchType.UNLOGGED)
        statement.is_idempotent = True
        for run_id in run_ids:
            statement.add(self.cql.q.mark_watched, (feed_shard(run_id), run_id))
        await _execute_batch(self.cql.ready(), statement)

    async def watched_runs(self) -> set[uuid.UUID]:
        session = self.cql.ready()
        pages = await asyncio.gather(
            *(_execute(session, self.cql.q.watched_runs, (shard,), all_pages=True) for shard in range(FEED_SHARDS))
        )
        return {r["run_id"] for page in pages for r in page}


class CqlOutbox:
    """The webhooks' Outbox (tracking_service.webhooks) on the shared CQL session."""

    def __init__(self, cql: CqlSession) -> None:
        self.cql = cql

    async def outbox_put(self, d: Delivery, lease_until: dt.datetime) -> None:
        values = (outbox_shard(d.event_id), d.event_id, uuid.UUID(d.run_id), d.link_id, d.url, d.secret, d.state)
        await _execute(self.cql.ready(), self.cql.q.outbox_put, (*values, d.at, d.reason, lease_until))

    async def outbox_waiting(self) -> list[tuple[Delivery, dt.datetime]]:
        session = self.cql.ready()
        pages = await asyncio.gather(
            *(_execute(session, self.cql.q.outbox_shard, (shard,), all_pages=True) for shard in range(OUTBOX_SHARDS))
        )
        return [
            (
                Delivery(
                    str(r["run_id"]),
                    r["link_id"],
                    r["url"],
                    r["secret"],
                    r["state"],
                    r["at"],
                    r["reason"],
                    event_id=r["event_id"],
                    attempts=r["attempts"] or 0,
                ),
                _utc(r["lease_until"]),
            )
            for page in pages
            for r in page
            if r["lease_until"] is not None
        ]

    async def outbox_take(self, event_id: uuid.UUID, held_until: dt.datetime, lease_until: dt.datetime) -> bool:
        params = (lease_until, outbox_shard(event_id), event_id, held_until)
        rows = await _execute(self.cql.ready(), self.cql.q.outbox_take, params)
        return bool(rows[0]["[applied]"])

    async def outbox_renew(self, event_id: uuid.UUID, attempts: int, lease_until: dt.datetime) -> None:
        params = (lease_until, attempts, outbox_shard(event_id), event_id)
        await _execute(self.cql.ready(), self.cql.q.outbox_renew, params)

    async def outbox_done(self, event_id: uuid.UUID) -> None:
        await _execute(self.cql.ready(), self.cql.q.outbox_done, (outbox_shard(event_id), event_id))
