"""The SummaryService use cases: STOP RUN (idempotent), the dashboard's reads, sharing, deletion.

Every use case takes the verified caller. A runner reads and changes their own runs; anyone signed
in reads a PUBLIC run (without its polyline); a PRIVATE run of someone else does not exist for them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import logging
import uuid
from collections.abc import Sequence
from typing import Protocol

from runtrack_common import page_tokens
from runtrack_common.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    RunTrackError,
    Violations,
)
from runtrack_common.identity import Caller, LinkHolder, require_self, resolve_user
from summary_service.activity_files import FilePoint, PreparedRun
from summary_service.domain import (
    Improvement,
    Overview,
    Run,
    UserTotals,
    Visibility,
    VisiblePart,
    check_name,
    default_name,
    list_page_size,
    stats_weeks,
    time_zone,
    validate_overview,
)
from summary_service.store import RunStore

log = logging.getLogger(__name__)
LIST_TOKEN = "runs"
UPDATABLE = ("visibility", "name", "share_health")


class TrailDeleter(Protocol):
    """Deletes a run's trail on the tracking service, as the caller; True when it had one."""

    async def delete_trail(self, run_id: uuid.UUID, caller: Caller) -> bool: ...

    async def claim(self, run_id: uuid.UUID, caller: Caller) -> None:
        """Makes the caller the run's owner of record (the tracking service's one claim, shared by
        every method that can create a run); raises PERMISSION_DENIED `RUN_ID_TAKEN` when another
        runner is, FAILED_PRECONDITION when the caller deleted it."""

    async def mark_stopped(self, run_id: uuid.UUID, stop_us: int, caller: Caller) -> None:
        """Tells the run's live watchers it stopped (STOPPED); safe to repeat."""

    async def visible_part(self, run_id: uuid.UUID, viewer: Caller | LinkHolder) -> VisiblePart:
        """The trail as `viewer` (not its owner) sees it after the owner's privacy zones, summed up."""

    async def check_link(self, run_id: uuid.UUID, holder: LinkHolder) -> None:
        """Raises UNAUTHENTICATED (revoked, expired) or PERMISSION_DENIED (another run) unless the
        holder's live link grants the run."""

    async def store_points(self, run_id: uuid.UUID, points: Sequence[FilePoint], caller: Caller) -> None:
        """Stores an imported trail as the run's points 1..n (safe to repeat); raises unless all are."""


def _no_run(run_id: uuid.UUID) -> NotFound:
    return NotFound(f"run_id: no run {run_id}", metadata={"run_id": str(run_id)})


def _deleted(run_id: uuid.UUID) -> FailedPrecondition:
    return FailedPrecondition(
        f"run_id: run {run_id} was deleted; it cannot be stopped again", metadata={"run_id": str(run_id)}
    )


def _not_yours(run: Run) -> PermissionDenied | NotFound:
    """Someone else's run: PERMISSION_DENIED when the caller may see it, else it does not exist."""
    if run.visibility == Visibility.PUBLIC:
        return PermissionDenied(
            f"run_id: run {run.run_id} belongs to another user", metadata={"run_id": str(run.run_id)}
        )
    return _no_run(run.run_id)


async def stop_run(
    store: RunStore,
    trails: TrailDeleter,
    caller: Caller,
    run_id: uuid.UUID,
    user_id: str,
    overview: Overview,
    zone: str = "UTC",
) -> Run:
    """Stores the run once; a retry with the same overview returns the same Run. The run id is
    claimed for the caller first: a run in progress (or stopped, or deleted) of another runner is
    refused before anything is written here."""
    user = require_self(user_id, caller)
    validate_overview(overview)
    await trails.claim(run_id, caller)
    run, inserted = await store.insert_run(run_id, user, overview, default_name(overview.start_us, zone))
    if run is None:
        raise _deleted(run_id)
    if inserted:
        log.info("run stopped run_id=%s user_id=%s distance_m=%.1f", run_id, user, overview.distance_m)
        return run
    if run.user_id != user:  # a row written before runs had one owner of record (see scripts/dev owners)
        raise PermissionDenied(
            f"run_id: run {run_id} is taken; a new run needs a new id",
            reason="RUN_ID_TAKEN",
            metadata={"run_id": str(run_id)},
        )
    if run.overview != overview:
        raise AlreadyExists(
            f"run_id: run {run_id} was already stopped with a different overview", metadata={"run_id": str(run_id)}
        )
    return run


# Imported runs are named by their owner and their file's content, through a key only the replicas
# know (kept in PostgreSQL): the same file again is the same run, and nobody can compute the id of
# another runner's import to take it first.
IMPORT_KEY = "import_ids"
# How ids were derived before the key (without it): a runner's earlier imports are still found.
LEGACY_IMPORT_NAMESPACE = uuid.UUID("6f1c2a52-7f0e-4d8e-9a43-0b8f3d1e5c27")


def imported_run_id(key: bytes, user_id: str, sha256: str) -> uuid.UUID:
    digest = hmac.new(key, f"{user_id}:{sha256}".encode(), hashlib.sha256).digest()
    return uuid.UUID(bytes=digest[:16], version=4)


async def imported_run(store: RunStore, caller: Caller, sha256: str) -> tuple[uuid.UUID, Run | None]:
    """The id a file (by its hash) gets for the caller, and the run it already is, if any: answered
    before the file is parsed. FAILED_PRECONDITION when that run was deleted."""
    run_id = imported_run_id(await store.server_key(IMPORT_KEY), caller.user_id, sha256)
    for candidate in (run_id, uuid.uuid5(LEGACY_IMPORT_NAMESPACE, f"{caller.user_id}:{sha256}")):
        existing = await store.get_run(candidate)
        if existing is not None and existing.user_id == caller.user_id:
            log.info("import repeated run_id=%s user_id=%s sha256=%s", candidate, caller.user_id, sha256[:16])
            return candidate, existing
    if await store.deleted_by(run_id) is not None:
        raise FailedPrecondition(
            f"file: this file was imported as run {run_id}, which was deleted; it is not imported again",
            reason="RUN_DELETED",
            metadata={"run_id": str(run_id)},
        )
    return run_id, None


async def import_run(
    store: RunStore, trails: TrailDeleter, caller: Caller, run_id: uuid.UUID, prepared: PreparedRun, zone: str
) -> Run:
    """Stores an imported file's run once (`run_id` from `imported_run`): the id claimed for the
    caller, its points (the run is not listed until they are all durable), then the dashboard row
    with its analysis. A repeat answers the stored run."""
    file = prepared.file
    await trails.claim(run_id, caller)
    await trails.store_points(run_id, file.points, caller)
    name = file.name or default_name(prepared.overview.start_us, zone)
    run, inserted = await store.insert_run(run_id, caller.user_id, prepared.overview, name, file.sport)
    if run is None:
        raise _deleted(run_id)
    if inserted:
        await store.set_analysis(run_id, prepared.analysis)
        run = dataclasses.replace(run, analysis=prepared.analysis)
        try:  # a watcher of the run (none yet, normally) sees it end; the run is stored whatever happens
            await trails.mark_stopped(run_id, run.stopped_at_us, caller)
        except RunTrackError as err:
            log.warning("live stop not marked run_id=%s reason=%s: %s", run_id, err.reason, err.message)
    log.info(
        "run imported run_id=%s user_id=%s format=%s sport=%s points=%d skipped=%d distance_m=%.1f inserted=%s",
        run_id,
        caller.user_id,
        file.format,
        file.sport or "-",
        len(file.points),
        file.skipped,
        prepared.overview.distance_m,
        inserted,
    )
    return run


async def get_run_by_link(store: RunStore, trails: TrailDeleter, holder: LinkHolder, run_id: uuid.UUID) -> Run:
    """A live link's holder sees its run as anyone else would, shared or not."""
    await trails.check_link(run_id, holder)
    run = await store.get_run(run_id)
    if run is None:
        raise _no_run(run_id)
    return run.as_seen_by("", await trails.visible_part(run_id, holder))


async def get_run(store: RunStore, trails: TrailDeleter, caller: Caller, run_id: uuid.UUID) -> Run:
    run = await store.get_run(run_id)
    if run is None or not run.readable_by(caller.user_id):
        raise _no_run(run_id)
    if run.user_id == caller.user_id:
        return run
    return run.as_seen_by(caller.user_id, await trails.visible_part(run_id, caller))


async def check_visible(
    store: RunStore, trails: TrailDeleter, viewer: Caller | LinkHolder, run_id: uuid.UUID
) -> Run | None:
    """The run, when `viewer` may see it (owner, a PUBLIC run, its live link); decided from the
    dashboard's row and visibility, NOT_FOUND otherwise. A live link's holder may see its run before
    it stops (None: no row yet, so nothing shared beyond the trimmed trail)."""
    if isinstance(viewer, LinkHolder):
        await trails.check_link(run_id, viewer)
        return await store.get_run(run_id)
    run = await store.get_run(run_id)
    if run is None or not run.readable_by(viewer.user_id):
        raise _no_run(run_id)
    return run


# Another runner's list: the trimmed summaries of a page's runs asked this many at a time.
LIST_SUMMARIES_AT_ONCE = 8


async def list_runs(
    store: RunStore, trails: TrailDeleter, caller: Caller, user_id: str, page_size: int, page_token: str
) -> tuple[list[Run], str]:
    """The caller's runs, or another runner's PUBLIC runs; newest first, in keyset pages."""
    user = resolve_user(user_id, caller)
    public_only = user != caller.user_id
    scope = f"{'public' if public_only else 'all'}:{user}"
    size = list_page_size(page_size)
    after: tuple[int, uuid.UUID] | None = None
    if page_token:
        position = page_tokens.decode(page_token, LIST_TOKEN, scope)
        try:
            start_us, rid = position
            if not isinstance(start_us, int):
                raise ValueError
            after = (start_us, uuid.UUID(rid))
        except (ValueError, TypeError, AttributeError):
            raise page_tokens.invalid() from None
    runs = await store.list_runs(user, after, size + 1, public_only=public_only)
    token = ""
    if len(runs) > size:
        runs = runs[:size]
        last = runs[-1]
        token = page_tokens.encode(LIST_TOKEN, scope, [last.overview.start_us, str(last.run_id)])
    if not public_only:
        return runs, token
    gate = asyncio.Semaphore(LIST_SUMMARIES_AT_ONCE)

    async def seen(run: Run) -> Run:
        async with gate:
            return run.as_seen_by(caller.user_id, await trails.visible_part(run.run_id, caller))

    return list(await asyncio.gather(*(seen(r) for r in runs))), token


async def user_stats(store: RunStore, caller: Caller, user_id: str, zone: str, weeks: int) -> tuple[str, UserTotals]:
    user = require_self(user_id, caller)
    return user, await store.user_stats(user, time_zone(zone), stats_weeks(weeks))


async def update_run(
    store: RunStore,
    caller: Caller,
    run_id: uuid.UUID,
    raw_visibility: int,
    mask: list[str],
    raw_name: str = "",
    share_health: bool = False,
) -> Run:
    """Changes what the mask names (AIP-134: no mask means every populated updatable field):
    `visibility`, `name` and `share_health`, and only the owner changes them."""
    paths = mask or (
        (["visibility"] if raw_visibility != Visibility.UNSPECIFIED else [])
        + (["name"] if raw_name else [])
        + (["share_health"] if share_health else [])
    )
    found = Violations()
    if not paths:  # a PATCH without a body and without a mask: a client bug, not a no-op
        found.add("update_mask", f"names no field and the run sets none of {', '.join(UPDATABLE)}: nothing to update")
    for path in paths:
        if path not in UPDATABLE:
            found.add("update_mask", f"only {', '.join(UPDATABLE)} can be updated, got {path!r}")
    if "visibility" in paths and raw_visibility not in (Visibility.PRIVATE, Visibility.PUBLIC):
        found.add("run.visibility", "must be PRIVATE or PUBLIC")
    name = found.check(lambda: check_name(raw_name)) if "name" in paths else None
    found.raise_if_any()
    visibility = Visibility(raw_visibility) if "visibility" in paths else Visibility.UNSPECIFIED
    run = await owned_run(store, caller, run_id)
    if name is not None and name != run.stored_name:
        renamed = await store.set_name(run_id, name)
        if renamed is None:  # deleted meanwhile
            raise _no_run(run_id)
        log.info("run updated run_id=%s name_chars=%d", run_id, len(name))
        run = renamed
    if "share_health" in paths and share_health != run.share_health:
        shared = await store.set_share_health(run_id, share_health)
        if shared is None:  # deleted meanwhile
            raise _no_run(run_id)
        log.info("run updated run_id=%s share_health=%s", run_id, share_health)
        run = shared
    if "visibility" in paths and visibility != run.visibility:
        updated = await store.set_visibility(run_id, visibility)
        if updated is None:  # deleted meanwhile
            raise _no_run(run_id)
        log.info("run updated run_id=%s visibility=%s", run_id, visibility.name)
        return updated
    return run


async def owned_run(store: RunStore, caller: Caller, run_id: uuid.UUID) -> Run:
    """The caller's own run; someone else's is refused as it is to them anywhere."""
    run = await store.get_run(run_id)
    if run is None:
        raise _no_run(run_id)
    if run.user_id != caller.user_id:
        raise _not_yours(run)
    return run


async def records(store: RunStore, caller: Caller, user_id: str) -> tuple[str, list[Improvement]]:
    """The caller's own records (efforts reveal where a run went fastest: not shown to others)."""
    user = require_self(user_id, caller)
    return user, await store.record_improvements(user)


async def delete_run(store: RunStore, trails: TrailDeleter, caller: Caller, run_id: uuid.UUID) -> None:
    """Deletes the dashboard's row and the whole trail, for good. The trail goes first: if it
    fails, nothing is marked deleted here and a retry does it all again; once the row is deleted
    and the deletion remembered, a repeat answers NOT_FOUND."""
    if await store.deleted_by(run_id) is not None:
        raise _no_run(run_id)
    run = await store.get_run(run_id)
    if run is not None and run.user_id != caller.user_id:
        raise _not_yours(run)
    had_trail = await trails.delete_trail(run_id, caller)
    await store.delete_run(run_id, caller.user_id)
    if run is None and not had_trail:
        raise _no_run(run_id)
    log.info(
        "run deleted run_id=%s user_id=%s had_row=%s had_trail=%s", run_id, caller.user_id, run is not None, had_trail
    )
