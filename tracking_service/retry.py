"""Bounded, jittered retries of a store call that is safe to send again (an idempotent write, the owner's
claim), for the store's hiccups (a node lost, a timeout under load): only Unavailable is retried, for up
to `budget_s` from the first failure, and each retry is counted and logged."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from prometheus_client import Counter

from runtrack_common.errors import Unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

STORE_RETRIES = Counter(
    "runtrack_store_retries_total",
    "Store calls sent again within a stream after the store did not answer (safe to repeat).",
    ("call",),
)
# The calls retried (`what` below), each counted from 0: a rate over them is 0, not missing.
for _call in ("write", "cursor", "claim", "deleted_by"):
    STORE_RETRIES.labels(_call)


async def retry_unavailable(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    context: str,
    budget_s: float,
    base_s: float = 0.1,
    cap_s: float = 1.0,
) -> T:
    attempt = 0
    deadline: float | None = None
    while True:
        try:
            return await call()
        except Unavailable as err:
            now = time.monotonic()
            if deadline is None:
                deadline = now + budget_s
            delay = min(cap_s, base_s * 2**attempt) * random.uniform(0.5, 1.0)
            if now + delay > deadline:
                raise
            attempt += 1
            STORE_RETRIES.labels(what).inc()
            log.info("store retry call=%s %s attempt=%d in=%.2fs error=%s", what, context, attempt, delay, err)
            await asyncio.sleep(delay)
