"""One line per event: key=value pairs, exceptions folded onto the same line."""

from __future__ import annotations

import logging
import sys
from types import TracebackType

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


class OneLineFormatter(logging.Formatter):
    def formatException(self, ei: ExcInfo) -> str:
        return " | ".join(super().formatException(ei).splitlines())

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " | ")


def setup(component: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(f"%(asctime)s %(levelname)s {component} %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    # The CQL driver is chatty about reconnection attempts; its warnings still show.
    logging.getLogger("cassandra").setLevel(logging.WARNING)
