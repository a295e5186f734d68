"""Small helpers the tests share: JSON over HTTP through Envoy, and GPS points."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from runtrack.v1 import tracking_pb2


def http_json(base: str, method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
    """(status, parsed JSON body) of one HTTP/1.1 request to Envoy."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://{base}{path}", data=data, method=method, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, raw.decode(errors="replace")


def point(seq: int, *, start_ms: int | None = None, **extra: Any) -> tracking_pb2.TrackPoint:
    """Point `seq` of a run started at `start_ms` (default: an hour ago), one fix a second."""
    start_ms = start_ms if start_ms is not None else (int(time.time()) - 3600) * 1000
    ms = start_ms + (seq - 1) * 1000
    fields: dict[str, Any] = dict(
        seq=seq,
        time=Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000),
        latitude=48.8566 + seq * 1e-5,
        longitude=2.3522 + seq * 1e-5,
        altitude_m=35.0 + seq % 7,
        horizontal_accuracy_m=4.5,
        speed_mps=3.1,
        heart_rate_bpm=140 + seq % 20,
        cadence_spm=170,
    )
    fields.update(extra)
    return tracking_pb2.TrackPoint(**fields)
