"""One line per event: key=value pairs, exceptions folded onto the same line, the call's trace id last."""

from __future__ import annotations

import logging
import sys
from types import TracebackType

from runtrack_common import tracing

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


class OneLineFormatter(logging.Formatter):
    def formatException(self, ei: ExcInfo) -> str:
        return " | ".join(super().formatException(ei).splitlines())

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record).replace("\n", " | ")
        # Inside a call that carries trace context (Envoy sends it): the line names its trace.
        trace_id = tracing.trace_id()
        return line if trace_id is None else f"{line} trace_id={trace_id}"


def setup(component: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(f"%(asctime)s %(levelname)s {component} %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    # The CQL driver is chatty about reconnection attempts; its warnings still show.
    logging.getLogger("cassandra").setLevel(logging.WARNING)
