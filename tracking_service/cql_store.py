"""The TrackStore on the CQL store: a run's points, its owner of record, its cursor, deletion, the
runner's privacy zones."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from cassandra.query import UNSET_VALUE, BatchStatement, BatchType

from tracking_service.cql_session import EPOCH, CqlSession, _execute, _execute_batch, _opt
from tracking_service.domain import Cursor, Point, cursor_from_seqs
from tracking_service.privacy import Zone

# The write timestamp (microseconds) of a deletion: far above any real write's, so it shadows them all.
DELETED_FOREVER_US = 2**62


class CqlTrackStore:
    """TrackStore (tracking_service.store) on the shared CQL session."""

    def __init__(self, cql: CqlSession) -> None:
        self.cql = cql

    async def ensure_ready(self) -> None:
        await self.cql.ensure_ready()

    async def close(self) -> None:
        await self.cql.close()

    async def claim_run(self, run_id: uuid.UUID, user_id: str) -> str:
        now = dt.datetime.now(dt.UTC)
        rows = await _execute(self.cql.ready(), self.cql.q.claim_run, (run_id, user_id, now))
        row = rows[0]
        return user_id if row["[applied]"] else str(row["user_id"])

    async def run_owner(self, run_id: uuid.UUID) -> str | None:
        rows = await _execute(self.cql.ready(), self.cql.q.run_owner, (run_id,))
        return str(rows[0]["user_id"]) if rows else None

    async def write_points(self, run_id: uuid.UUID, points: Sequence[Point]) -> None:
        session = self.cql.ready()
        insert = self.cql.q.insert_point
        if len(points) == 1:
            statement: Any = insert.bind(point_values(run_id, points[0]))
        else:
            # One partition: an unlogged batch is a single mutation, applied atomically.
            statement = BatchStatement(batch_type=BatchType.UNLOGGED)
            statement.is_idempotent = True  # the same points again: the same rows
            for p in points:
                statement.add(insert, point_values(run_id, p))
        await _execute_batch(session, statement)

    async def write_rows(self, rows: Sequence[tuple[uuid.UUID, Sequence[Point]]]) -> None:
        if len(rows) == 1:
            await self.write_points(*rows[0])
            return
        session = self.cql.ready()
        insert = self.cql.q.insert_point
        # Rows of many partitions in one request: an unlogged batch, which the coordinator applies per
        # partition (no batch log). It saves the replica a request per run, not the store its work.
        statement = BatchStatement(batch_type=BatchType.UNLOGGED)
        statement.is_idempotent = True  # the same points again: the same rows
        for run_id, points in rows:
            for p in points:
                statement.add(insert, point_values(run_id, p))
        await _execute_batch(session, statement)

    async def cursor(self, run_id: uuid.UUID) -> Cursor:
        """Reads only the seqs after the run's last known contiguous_seq, then moves that mark up."""
        session = self.cql.ready()
        hint_rows = await _execute(session, self.cql.q.cursor_hint, (run_id,))
        known = (hint_rows[0]["contiguous_hint"] or 0) if hint_rows else 0
        rows = await _execute(session, self.cql.q.seqs_after, (run_id, known), all_pages=True)
        cursor = cursor_from_seqs((r["seq"] for r in rows), known)
        if cursor.contiguous_seq > known:
            await _execute(session, self.cql.q.save_cursor_hint, (cursor.contiguous_seq, run_id))
        return cursor

    async def points_after(self, run_id: uuid.UUID, after_seq: int, limit: int) -> list[Point]:
        rows = await _execute(self.cql.ready(), self.cql.q.points_after, (run_id, after_seq, limit), all_pages=True)
        return await _points(rows)

    async def points_before(self, run_id: uuid.UUID, before_seq: int, limit: int) -> list[Point]:
        rows = await _execute(self.cql.ready(), self.cql.q.points_before, (run_id, before_seq, limit), all_pages=True)
        return await _points(rows)

    async def deleted_by(self, run_id: uuid.UUID) -> str | None:
        rows = await _execute(self.cql.ready(), self.cql.q.deleted_by, (run_id,))
        return str(rows[0]["user_id"]) if rows else None

    async def mark_deleted(self, run_id: uuid.UUID, user_id: str) -> None:
        await _execute(self.cql.ready(), self.cql.q.mark_deleted, (run_id, user_id, dt.datetime.now(dt.UTC)))

    async def delete_trail(self, run_id: uuid.UUID) -> None:
        session = self.cql.ready()
        for name in ("delete_points", "delete_cursor", "delete_owner"):
            await _execute(session, getattr(self.cql.q, name), (DELETED_FOREVER_US, run_id))

    async def privacy_zones(self, user_id: str) -> list[Zone]:
        rows = await _execute(self.cql.ready(), self.cql.q.privacy_zones, (user_id,))
        return [Zone(*zone) for zone in (rows[0]["zones"] or [])] if rows else []

    async def set_privacy_zones(self, user_id: str, zones: Sequence[Zone]) -> None:
        values = [(z.latitude, z.longitude, z.radius_m) for z in zones]
        await _execute(self.cql.ready(), self.cql.q.set_privacy_zones, (user_id, values))


def point_values(run_id: uuid.UUID, p: Point) -> tuple[Any, ...]:
    """A point's columns in track_points (the live feed's after its own key)."""
    assert p.time_ms is not None, "only validated points are written"
    recorded_at = EPOCH + dt.timedelta(milliseconds=p.time_ms)
    return (
        run_id,
        p.seq,
        recorded_at,
        p.latitude,
        p.longitude,
        _opt(p.altitude_m),
        _opt(p.horizontal_accuracy_m),
        _opt(p.speed_mps),
        _opt(p.heart_rate_bpm),
        _opt(p.cadence_spm),
        True if p.after_pause else UNSET_VALUE,  # no cell for the points that are not
    )


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _point(r: dict[str, Any]) -> Point:
    return Point(
        seq=r["seq"],
        time_ms=_to_ms(r["recorded_at"]),
        latitude=r["latitude"],
        longitude=r["longitude"],
        altitude_m=r["altitude_m"],
        horizontal_accuracy_m=r["horizontal_accuracy_m"],
        speed_mps=r["speed_mps"],
        heart_rate_bpm=r["heart_rate_bpm"],
        cadence_spm=r["cadence_spm"],
        after_pause=bool(r["after_pause"]),
    )


# Rows converted between two yields to the event loop (a page of 10,000 is ~30 ms of work).
ROWS_PER_YIELD = 2000


async def _points(rows: Sequence[Any]) -> list[Point]:
    out: list[Point] = []
    for start in range(0, len(rows), ROWS_PER_YIELD):
        if start:
            await asyncio.sleep(0)
        out += [_point(r) for r in rows[start : start + ROWS_PER_YIELD]]
    return out


def _to_ms(value: dt.datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return (value - EPOCH) // dt.timedelta(milliseconds=1)
