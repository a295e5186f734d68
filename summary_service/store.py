"""The port the use cases talk to: where the dashboard's runs are kept."""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from summary_service.domain import Improvement, Overview, Run, UserTotals, Visibility


class RunStore(Protocol):
    async def ensure_ready(self) -> None:
        """Connects if needed, applies migrations, proves the store answers; raises Unavailable."""

    async def close(self) -> None: ...

    async def insert_run(
        self, run_id: uuid.UUID, user_id: str, overview: Overview, name: str = "", sport: str = ""
    ) -> tuple[Run | None, bool]:
        """Stores the run unless it exists; returns the stored run and whether this call stored it,
        or (None, False) when the run was deleted."""

    async def get_run(self, run_id: uuid.UUID) -> Run | None: ...

    async def set_analysis(self, run_id: uuid.UUID, analysis: dict[str, Any]) -> bool:
        """Stores what the server computed from the trail; False when the run is gone."""

    async def list_runs(
        self, user_id: str, after: tuple[int, uuid.UUID] | None, limit: int, *, public_only: bool = False
    ) -> list[Run]:
        """Newest first (start time, then run_id, descending), strictly after `after`."""

    async def set_name(self, run_id: uuid.UUID, name: str) -> Run | None: ...

    async def set_visibility(self, run_id: uuid.UUID, visibility: Visibility) -> Run | None: ...

    async def set_share_health(self, run_id: uuid.UUID, share: bool) -> Run | None: ...

    async def delete_run(self, run_id: uuid.UUID, user_id: str) -> None:
        """Removes the run's row (if any) and remembers that `user_id` deleted it."""

    async def deleted_by(self, run_id: uuid.UUID) -> str | None: ...

    async def server_key(self, name: str) -> bytes:
        """A 32-byte secret shared by every replica, made once (kept with the runs)."""

    async def user_stats(self, user_id: str, time_zone: str, weeks: int) -> UserTotals: ...

    async def record_improvements(self, user_id: str) -> list[Improvement]:
        """Every improvement of the user's best effort per distance, shortest distance first, then
        oldest, from runs whose sport holds records (domain.RECORD_SPORTS)."""
