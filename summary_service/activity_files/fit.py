"""FIT files, read with fitdecode: record frames are the fixes, a timer stop/start a pause, the session's
sport the declared one."""

from __future__ import annotations

import io
from datetime import datetime
from typing import Any

import fitdecode

from runtrack_common.errors import InvalidArgument
from summary_service.activity_files.common import (
    FIT,
    SEMICIRCLE_DEG,
    FilePoint,
    Parsed,
    bad,
    doubled,
    to_us,
    too_many,
)


def _fit_value(frame: fitdecode.FitDataMessage, *names: str) -> Any:
    for n in names:
        if frame.has_field(n):
            value = frame.get_value(n)
            if value is not None:
                return value
    return None


def read_fit(data: bytes, max_points: int) -> Parsed:
    """(name, declared sport, points, skipped). A timer stopped (event `timer`, type stop or stop_all)
    makes the next record with a position the first after a pause."""
    out: list[FilePoint] = []
    skipped = 0
    records = 0
    name: str | None = None
    session_sport: Any = None
    sport_sport: Any = None
    paused = False
    try:
        with fitdecode.FitReader(io.BytesIO(data), check_crc=fitdecode.CrcCheck.RAISE, keep_raw_chunks=False) as reader:
            for frame in reader:
                if not isinstance(frame, fitdecode.FitDataMessage):
                    continue
                if frame.name == "event":
                    kind = _fit_value(frame, "event_type")
                    if _fit_value(frame, "event") == "timer" and isinstance(kind, str) and kind.startswith("stop"):
                        paused = True
                    continue
                if frame.name == "session" and session_sport is None:
                    session_sport = _fit_value(frame, "sport")
                if frame.name == "sport":
                    name = name if name is not None else _fit_value(frame, "name")
                    sport_sport = sport_sport if sport_sport is not None else _fit_value(frame, "sport")
                if frame.name != "record":
                    continue
                records += 1
                where = f"record message {records}"
                lat, lon = _fit_value(frame, "position_lat"), _fit_value(frame, "position_long")
                when = _fit_value(frame, "timestamp")
                if lat is None or lon is None:
                    skipped += 1
                    continue
                if not isinstance(when, datetime):
                    raise bad(f"FIT {where}: a record with a position needs a timestamp")
                if len(out) >= max_points:
                    raise too_many(max_points)
                time_us = to_us(when)
                assert time_us is not None
                hr, cad = _fit_value(frame, "heart_rate"), _fit_value(frame, "cadence")
                altitude = _fit_value(frame, "enhanced_altitude", "altitude")
                speed = _fit_value(frame, "enhanced_speed", "speed")
                out.append(
                    FilePoint(
                        time_us,
                        lat * SEMICIRCLE_DEG,
                        lon * SEMICIRCLE_DEG,
                        None if altitude is None else float(altitude),
                        None if hr is None else int(hr),
                        doubled(cad),
                        None if speed is None else float(speed),
                        where,
                        after_pause=paused and bool(out),
                    )
                )
                paused = False
    except InvalidArgument:
        raise
    except Exception as err:  # noqa: BLE001 (fitdecode raises more than FitError on a corrupt file: fuzzed)
        at = f"after record message {records}" if records else "before any record"
        kind = "" if isinstance(err, fitdecode.FitError) else f"{type(err).__name__}: "
        raise bad(f"FIT file unreadable {at}: {kind}{str(err)[:200]}") from None
    declared = session_sport if session_sport is not None else sport_sport
    sport = None if declared is None else str(declared)
    return Parsed(FIT, name if isinstance(name, str) else None, sport, out, skipped)
