"""The SummaryService use cases: STOP RUN (idempotent) and the dashboard's reads."""

from __future__ import annotations

import logging
import uuid

from runtrack_common import page_tokens
from runtrack_common.errors import AlreadyExists, NotFound, PermissionDenied
from summary_service.domain import Overview, Run, UserTotals, list_page_size, stats_weeks, time_zone, validate_overview
from summary_service.store import RunStore

log = logging.getLogger(__name__)
LIST_TOKEN = "runs"


async def stop_run(store: RunStore, run_id: uuid.UUID, user_id: str, overview: Overview) -> Run:
    """Stores the run once; a retry with the same overview returns the same Run."""
    validate_overview(overview)
    run, inserted = await store.insert_run(run_id, user_id, overview)
    if inserted:
        log.info("run stopped run_id=%s user_id=%s distance_m=%.1f", run_id, user_id, overview.distance_m)
        return run
    if run.user_id != user_id:
        raise PermissionDenied(f"run_id: run {run_id} belongs to another user", metadata={"run_id": str(run_id)})
    if run.overview != overview:
        raise AlreadyExists(
            f"run_id: run {run_id} was already stopped with a different overview", metadata={"run_id": str(run_id)}
        )
    return run


async def get_run(store: RunStore, run_id: uuid.UUID) -> Run:
    run = await store.get_run(run_id)
    if run is None:
        raise NotFound(f"run_id: no run {run_id}", metadata={"run_id": str(run_id)})
    return run


async def list_runs(store: RunStore, user_id: str, page_size: int, page_token: str) -> tuple[list[Run], str]:
    size = list_page_size(page_size)
    after: tuple[int, uuid.UUID] | None = None
    if page_token:
        position = page_tokens.decode(page_token, LIST_TOKEN, user_id)
        try:
            start_us, rid = position
            if not isinstance(start_us, int):
                raise ValueError
            after = (start_us, uuid.UUID(rid))
        except (ValueError, TypeError, AttributeError):
            raise page_tokens.invalid() from None
    runs = await store.list_runs(user_id, after, size + 1)
    token = ""
    if len(runs) > size:
        runs = runs[:size]
        last = runs[-1]
        token = page_tokens.encode(LIST_TOKEN, user_id, [last.overview.start_us, str(last.run_id)])
    return runs, token


async def user_stats(store: RunStore, user_id: str, zone: str, weeks: int) -> UserTotals:
    return await store.user_stats(user_id, time_zone(zone), stats_weeks(weeks))
