"""A file read into a trail and the run it makes (the overview a phone would have sent, its analysis)."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from summary_service.activity_files.common import (
    FIT,
    MAX_POINTS,
    Abandoned,
    ImportedFile,
    check_size,
    checked,
    clean_name,
    sniff,
    sport_of,
)
from summary_service.activity_files.fit import read_fit
from summary_service.activity_files.gpx_tcx import read_xml
from summary_service.analysis import analyse, cumulative_distances
from summary_service.domain import Overview
from summary_service.overview import overview_of, samples_of


def read_file(
    data: bytes, *, now_us: int, max_points: int = MAX_POINTS, cancelled: Callable[[], bool] = lambda: False
) -> ImportedFile:
    """The trail a file holds; InvalidArgument on `file` naming what is wrong and where."""
    check_size(data)
    kind = sniff(data)  # the content decides: a file's declared type or extension may be wrong
    parsed = read_fit(data, max_points) if kind == FIT else read_xml(data, cancelled=cancelled, max_points=max_points)
    points = checked(parsed.points, now_us)
    sha256 = hashlib.sha256(data).hexdigest()
    return ImportedFile(parsed.format, clean_name(parsed.name), points, sha256, parsed.skipped, sport_of(parsed.sport))


@dataclass(frozen=True, slots=True)
class PreparedRun:
    """A file read and computed, ready to store: nothing of it is stored yet."""

    file: ImportedFile
    overview: Overview
    analysis: dict[str, Any]


def prepare(data: bytes, *, now_us: int, cancelled: Callable[[], bool] = lambda: False) -> PreparedRun:
    """The CPU part of an import (parse, geodesics, analysis), run off the event loop; abandoned
    (Abandoned) at the next step once `cancelled()` says the caller went away."""
    file = read_file(data, now_us=now_us, cancelled=cancelled)
    if cancelled():
        raise Abandoned
    samples = samples_of(file.points)
    cum = cumulative_distances(samples)
    analysis = analyse(samples, cum=cum)
    document = dataclasses.asdict(analysis) | {"point_count": len(samples)}
    return PreparedRun(file, overview_of(file.points, cum, analysis), document)
