"""Computes a run's analysis once its trail is complete, after StopRun has answered.

StopRun may arrive before the phone's last points are durable (it resumes a broken stream while the
runner already pressed STOP RUN): the trail is read through the tracking service's public API as the
owner, and read again, a little later each time, until it holds the overview's point_count (or the
wait runs out: then what is there is analysed, and said in the log). One task per stopped run."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

from runtrack_common.errors import RunTrackError
from runtrack_common.identity import Caller
from summary_service.analysis import Sample, analyse
from summary_service.domain import Run
from summary_service.store import RunStore

log = logging.getLogger(__name__)
# Waits between reads of an incomplete trail (seconds), then the analysis runs on what is stored.
WAITS_S = (0.0, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


class TrailReader(Protocol):
    async def trail(self, run_id: uuid.UUID, caller: Caller) -> Sequence[Sample]:
        """Every point of the run, oldest first, as its owner reads them."""


def to_json(analysis: Any) -> dict[str, Any]:
    return dataclasses.asdict(analysis)


class Analyser:
    def __init__(self, store: RunStore, trails: TrailReader, waits_s: Sequence[float] = WAITS_S) -> None:
        self.store = store
        self.trails = trails
        self.waits_s = waits_s
        self._tasks: dict[uuid.UUID, asyncio.Task[None]] = {}
        # Runs whose trail grew while their analysis was being computed: computed once more after.
        self._again: dict[uuid.UUID, tuple[Run, Caller, int]] = {}

    def schedule(self, run: Run, caller: Caller) -> None:
        """After StopRun: once, when the trail holds the overview's point_count."""
        if run.analysis is None:
            self._start(run, caller, run.overview.point_count)

    def trail_grew(self, run: Run, caller: Caller, point_count: int) -> bool:
        """Late points: analysed again (once the trail holds `point_count`) unless the stored
        analysis already counted them. True when an analysis was started or queued."""
        done = (run.analysis or {}).get("point_count", 0)
        if run.analysis is not None and done >= point_count:
            return False
        want = max(point_count, run.overview.point_count if run.analysis is None else 0)
        if run.run_id in self._tasks:
            self._again[run.run_id] = (run, caller, want)
        else:
            self._start(run, caller, want)
        return True

    def _start(self, run: Run, caller: Caller, want: int) -> None:
        task = asyncio.create_task(self._analyse(run, caller, want))
        self._tasks[run.run_id] = task
        task.add_done_callback(lambda _: self._finished(run.run_id))

    def _finished(self, run_id: uuid.UUID) -> None:
        self._tasks.pop(run_id, None)
        queued = self._again.pop(run_id, None)
        if queued is not None:
            self._start(*queued)

    async def _analyse(self, run: Run, caller: Caller, want: int) -> None:
        samples: Sequence[Sample] = []
        for wait in self.waits_s:
            await asyncio.sleep(wait)
            try:
                samples = await self.trails.trail(run.run_id, caller)
            except RunTrackError as err:
                log.warning("analysis: trail unreadable run_id=%s reason=%s: %s", run.run_id, err.reason, err.message)
                continue
            if len(samples) >= want:
                break
        if len(samples) < 2:
            log.info("analysis skipped run_id=%s points=%d of %d", run.run_id, len(samples), want)
            return
        started = time.process_time()
        result = analyse(samples)
        cpu_ms = (time.process_time() - started) * 1000
        document = to_json(result) | {"point_count": len(samples)}
        try:
            stored = await self.store.set_analysis(run.run_id, document)
        except RunTrackError as err:
            log.warning("analysis not stored run_id=%s reason=%s: %s", run.run_id, err.reason, err.message)
            return
        log.info(
            "analysis stored run_id=%s points=%d of %d distance_m=%.0f efforts=%d cpu_ms=%.0f stored=%s",
            run.run_id,
            len(samples),
            want,
            result.distance_m,
            len(result.best_efforts),
            cpu_ms,
            stored,
        )

    async def close(self) -> None:
        self._again.clear()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
