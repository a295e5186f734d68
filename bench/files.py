"""`scripts/bench files`: a run's files in and out through Envoy, and the analysis's CPU.

- Analysis: `analyse()` on synthetic runs of 1 to 6 hours (a fix a second), CPU seconds in this
  process (`time.process_time`), the median of --repeats; reported per 10,000 points.
- Import: GPX, TCX and FIT files of --points fixes (made by each format's own writer), each a
  distinct run, posted to `POST /v1/runs:import` by --clients clients at once; points/s end to end
  (parse, geodesics, analysis, the trail stored through RecordTrack, the dashboard row). Baseline in
  the same run: the same points streamed by RecordTrack and stopped with StopRun, as a phone does.
- Export: `GET /v1/runs/{id}/track.gpx` and `.tcx` of the imported runs, points/s. Baseline: the
  same trails read as JSON pages (`GET /v1/runs/{id}/track?pageSize=10000`).
Figures go to .dev/bench/files-<time>.json.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import http.client
import json
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from devstack.activity_files import Fix, fit_file, gpx_file, synthetic_run, tcx_file
from devstack.auth import token_channel
from devstack.stack import Stack
from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from summary_service.analysis import Sample, analyse

CONTENT_TYPES = {
    "gpx": "application/gpx+xml",
    "tcx": "application/vnd.garmin.tcx+xml",
    "fit": "application/vnd.ant.fit",
}
WRITERS: dict[str, Callable[[list[Fix]], bytes]] = {"gpx": gpx_file, "tcx": tcx_file, "fit": fit_file}


@dataclass
class Timing:
    name: str
    points: int = 0
    seconds: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    bytes: int = 0
    failed: int = 0

    @property
    def points_per_s(self) -> float:
        return self.points / self.seconds if self.seconds else 0.0

    def doc(self) -> dict[str, Any]:
        lat = sorted(self.latencies_s)
        return {
            "name": self.name,
            "points": self.points,
            "seconds": round(self.seconds, 3),
            "points_per_s": round(self.points_per_s),
            "mb": round(self.bytes / 1e6, 2),
            "p50_s": round(lat[len(lat) // 2], 3) if lat else None,
            "max_s": round(lat[-1], 3) if lat else None,
            "failed": self.failed,
        }


def _http(
    base: str, method: str, path: str, token: str, body: bytes | None = None, ctype: str = ""
) -> tuple[int, bytes]:
    host, port = base.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    headers = {"authorization": f"Bearer {token}"}
    if ctype:
        headers["content-type"] = ctype
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    out = response.status, response.read()
    conn.close()
    return out


def bench_analysis(repeats: int) -> list[dict[str, Any]]:
    out = []
    for hours in (1, 3, 6):
        fixes = synthetic_run(hours * 3600, seed=hours)
        t0 = fixes[0].time.timestamp()
        samples = [
            Sample(i, f.time.timestamp() - t0, f.latitude, f.longitude, f.altitude_m, f.heart_rate_bpm)
            for i, f in enumerate(fixes, 1)
        ]
        cpu = []
        for _ in range(repeats):
            started = time.process_time()
            analyse(samples)
            cpu.append(time.process_time() - started)
        median = statistics.median(cpu)
        out.append(
            {
                "hours": hours,
                "points": len(samples),
                "cpu_s_median": round(median, 3),
                "cpu_s_all": [round(c, 3) for c in cpu],
                "cpu_s_per_10k_points": round(median / len(samples) * 10_000, 3),
            }
        )
    return out


async def _pool(jobs: list[Callable[[], Any]], clients: int) -> float:
    """Runs the blocking jobs `clients` at a time (threads); the wall time."""
    queue = list(jobs)
    started = time.perf_counter()

    async def worker() -> None:
        while queue:
            job = queue.pop()
            await asyncio.to_thread(job)

    await asyncio.gather(*(worker() for _ in range(clients)))
    return time.perf_counter() - started


async def bench(stack: Stack, points: int, files: int, clients: int) -> dict[str, Any]:
    user = f"bench-files-{uuid.uuid4().hex[:8]}"
    token = stack.issuer.token(user, ttl_s=6 * 3600)
    base = stack.envoy_address
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=2)
    runs: list[list[Fix]] = [
        synthetic_run(points, seed=k, start=start + dt.timedelta(hours=k)) for k in range(files * len(WRITERS) + files)
    ]
    timings: dict[str, Timing] = {}
    imported: list[str] = []

    # Baseline: the same number of points as a phone sends them (RecordTrack, then StopRun).
    phone_runs = runs[-files:]
    t = timings["phone: RecordTrack + StopRun"] = Timing("phone: RecordTrack + StopRun")
    async with token_channel(base, token) as channel:
        tracking = tracking_pb2_grpc.TrackingServiceStub(channel)
        summary = summary_pb2_grpc.SummaryServiceStub(channel)

        async def phone(fixes: list[Fix]) -> None:
            run_id = str(uuid.uuid4())
            began = time.perf_counter()
            msgs = []
            for s in range(0, len(fixes), 1000):
                pts = [
                    tracking_pb2.TrackPoint(
                        seq=i,
                        time=Timestamp(seconds=int(f.time.timestamp())),
                        latitude=f.latitude,
                        longitude=f.longitude,
                        altitude_m=f.altitude_m,
                        heart_rate_bpm=f.heart_rate_bpm,
                        cadence_spm=f.cadence_spm,
                    )
                    for i, f in enumerate(fixes[s : s + 1000], s + 1)
                ]
                msgs.append(tracking_pb2.RecordTrackRequest(run_id=run_id if s == 0 else "", points=pts))
            await tracking.RecordTrack(iter(msgs))
            o = summary_pb2.RunOverview(distance_m=1.0, point_count=len(fixes))
            o.start_time.seconds, o.end_time.seconds = int(fixes[0].time.timestamp()), int(fixes[-1].time.timestamp())
            await summary.StopRun(summary_pb2.StopRunRequest(run_id=run_id, overview=o))
            t.latencies_s.append(time.perf_counter() - began)
            t.points += len(fixes)

        queue = list(phone_runs)
        began = time.perf_counter()

        async def phone_worker() -> None:
            while queue:
                await phone(queue.pop())

        await asyncio.gather(*(phone_worker() for _ in range(clients)))
        t.seconds = time.perf_counter() - began

    # Imports, one format at a time.
    for k, (kind, writer) in enumerate(WRITERS.items()):
        bodies = [writer(fixes) for fixes in runs[k * files : (k + 1) * files]]
        t = timings[f"import {kind}"] = Timing(f"import {kind}")

        def one(body: bytes, t: Timing = t, kind: str = kind) -> None:
            began = time.perf_counter()
            status, answer = _http(base, "POST", "/v1/runs:import", token, body, CONTENT_TYPES[kind])
            t.latencies_s.append(time.perf_counter() - began)
            t.bytes += len(body)
            if status != 200:
                t.failed += 1
                print(f"import {kind}: {status} {answer[:200]!r}")
                return
            run = json.loads(answer)
            t.points += run["overview"]["pointCount"]
            imported.append(run["runId"])

        t.seconds = await _pool([functools.partial(one, b) for b in bodies], clients)

    # Exports of the imported runs, against the same trails read as JSON pages.
    readers = {
        "export gpx": "/v1/runs/{run_id}/track.gpx",
        "export tcx": "/v1/runs/{run_id}/track.tcx",
        "GetTrack JSON pages": "/v1/runs/{run_id}/track?pageSize=10000",
    }
    for name, path in readers.items():
        t = timings[name] = Timing(name)

        def job(run_id: str, t: Timing = t, path: str = path) -> None:
            if "pageSize" in path:  # every page, as a client would
                token_param, got = "", 0
                began = time.perf_counter()
                while True:
                    status, body = _http(base, "GET", path.format(run_id=run_id) + token_param, token)
                    if status != 200:
                        t.failed += 1
                        return
                    page = json.loads(body)
                    t.bytes += len(body)
                    got += len(page.get("points", []))
                    if not page.get("nextPageToken"):
                        break
                    token_param = f"&pageToken={page['nextPageToken']}"
                t.latencies_s.append(time.perf_counter() - began)
                t.points += got
                return
            began = time.perf_counter()
            status, body = _http(base, "GET", path.format(run_id=run_id), token)
            t.latencies_s.append(time.perf_counter() - began)
            t.bytes += len(body)
            if status != 200:
                t.failed += 1
                return
            t.points += points

        t.seconds = await _pool([functools.partial(job, r) for r in imported], clients)
    return {name: t.doc() for name, t in timings.items()}


def run(stack: Stack, points: int, files: int, clients: int, repeats: int, out_dir: Path) -> dict[str, Any]:
    print(f"analysis: synthetic runs of 1, 3 and 6 hours, {repeats} times each (CPU of this process)")
    analysis = bench_analysis(repeats)
    for a in analysis:
        print(
            f"  {a['hours']} h, {a['points']:>6} points: {a['cpu_s_median']:.3f} s CPU "
            f"({a['cpu_s_per_10k_points']:.3f} s per 10,000 points; all: {a['cpu_s_all']})"
        )
    print(f"files: {files} per format of {points} points, {clients} clients at once, through Envoy")
    through = asyncio.run(bench(stack, points, files, clients))
    phone = through["phone: RecordTrack + StopRun"]["points_per_s"] or 1
    pages = through["GetTrack JSON pages"]["points_per_s"] or 1
    print(f"  {'':30} {'points/s':>9} {'ratio':>6} {'p50 s':>7} {'max s':>7} {'MB':>7} failed")
    for name, doc in through.items():
        base = pages if name.startswith(("export", "GetTrack")) else phone
        print(
            f"  {name:30} {doc['points_per_s']:>9,} {doc['points_per_s'] / base:>6.2f} "
            f"{doc['p50_s'] or 0:>7.3f} {doc['max_s'] or 0:>7.3f} {doc['mb']:>7.2f} {doc['failed']}"
        )
    print("  ratio: imports against the phone's RecordTrack + StopRun; exports against GetTrack's JSON pages")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"files-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    result = {
        "points": points,
        "files_per_format": files,
        "clients": clients,
        "analysis": analysis,
        "through_envoy": through,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"figures: {out}")
    return result
