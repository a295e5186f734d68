"""scripts/bench day: a day of runners compressed into a few minutes, run twice on the dev stack:
a fixed fleet sized for the peak, then the autoscaler.

Phones arrive on a two-peak curve (about 07:00 and 18:30, a night trough of 3 % of the peak).
Each streams a run's points through Envoy with the reference client (1 Hz in the day's time, so
`compression` points per real second, sent four times a second), presses STOP RUN, and is read
back by a dashboard reader (ListRuns, GetRun). Per phase of the day the report gives StopRun and
GetRun latency (measured by the clients), time-to-durable (the replicas'
`runtrack_point_durable_seconds`, interpolated within buckets), failed calls; for the whole day the
replica-seconds (what the day costs), points lost (every trail read back) and replicas over time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import random
import statistics
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.sampling import histogram_increase, quantile_from_buckets, tracking_sample
from devstack.auth import token_channel
from devstack.autoscale import Autoscaler, Policy
from devstack.stack import Stack, metrics_port
from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from runtrack_client import Backoff, RunRecorder

PHASES = (("night", 0, 5), ("morning peak", 5, 9), ("day", 9, 16), ("evening peak", 16, 21), ("late", 21, 24))
NIGHT_FLOOR = 0.03


def arrival_share(hour: float) -> float:
    """The day's shape, 1.0 at the morning peak: runners at 07:00 and 18:30, few at night."""

    def bump(centre: float, width: float) -> float:
        return math.exp(-0.5 * ((hour - centre) / width) ** 2)

    return NIGHT_FLOOR + (1 - NIGHT_FLOOR) * max(bump(7.0, 1.1), 0.9 * bump(18.5, 1.4))


def arrival_schedule(config: DayConfig) -> list[float]:
    """When each run starts, in real seconds from the day's start: a Poisson process whose rate follows
    the day's shape (thinning at the peak rate), drawn from the seed before the day begins, so that the
    fixed and the autoscaled day replay the very same arrivals whatever either falls behind."""
    rng = random.Random(config.seed)
    out: list[float] = []
    t = 0.0
    while True:
        t += rng.expovariate(config.peak_arrivals_per_s)
        if t >= config.day_s:
            return out
        if rng.random() < arrival_share(t / config.day_s * 24):
            out.append(t)


def phase_of(hour: float) -> str:
    return next(name for name, start, end in PHASES if start <= hour < end)


@dataclass
class DayConfig:
    minutes: float = 10.0  # the real length of one simulated day
    peak_arrivals_per_s: float = 1.2  # new runs per real second at the morning peak
    run_minutes: float = 40.0  # a run's length in the day's minutes
    fixed: int = 4  # replicas of each service in the fixed fleet (sized for the peak)
    tracking_target: float = 8.0  # open streams per replica (each carries `compression` points/s here)
    summary_target: float = 10.0  # calls/s per replica (the day's dashboard readers make ~20 at the peak)
    window_s: float = 20.0
    seed: int = 7

    @property
    def day_s(self) -> float:
        return self.minutes * 60

    @property
    def compression(self) -> float:
        return 86_400 / self.day_s


@dataclass
class PhaseFigures:
    stop_ms: list[float] = field(default_factory=list)
    get_ms: list[float] = field(default_factory=list)
    failed: int = 0
    durable_buckets: dict[float, float] = field(default_factory=dict)  # le -> count (delta)


@dataclass
class DayResult:
    mode: str
    replica_seconds: float = 0.0
    runs: int = 0
    points_sent: int = 0
    points_lost: int = 0
    failed_calls: int = 0
    stream_retries: int = 0
    timeline: list[dict[str, float]] = field(default_factory=list)  # hour, replicas, streams, p99 durable
    phases: dict[str, PhaseFigures] = field(default_factory=lambda: {name: PhaseFigures() for name, _, _ in PHASES})
    decisions: list[tuple[float, str, int, int]] = field(default_factory=list)


def _ts(value: dt.datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(value)
    return t


class Day:
    def __init__(self, stack: Stack, config: DayConfig, mode: str, progress: Progress) -> None:
        self.stack, self.config, self.mode, self.progress = stack, config, mode, progress
        self.result = DayResult(mode)
        self.rng = random.Random(config.seed)
        self.start = 0.0
        self.finished_runs: list[tuple[str, str]] = []  # (run_id, user)
        self.recorders: list[tuple[RunRecorder, int]] = []

    def hour(self) -> float:
        return min(23.999, (time.monotonic() - self.start) / self.config.day_s * 24)

    async def phone(self, index: int) -> None:
        c = self.config
        user = f"day-{self.mode}-{index}"
        token = self.stack.issuer.token(user, ttl_s=3 * 3600)
        n = int(c.run_minutes * 60)
        start_s = int(time.time()) - n - 60
        points = [
            tracking_pb2.TrackPoint(
                seq=k,
                time=Timestamp(seconds=start_s + k),
                latitude=48.85 + k * 1e-5,
                longitude=2.35 + math.sin(k / 300) * 1e-3,
                heart_rate_bpm=140,
            )
            for k in range(1, n + 1)
        ]
        per_message = max(1, round(c.compression / 4))

        async def live() -> AsyncIterator[list[tracking_pb2.TrackPoint]]:
            for k in range(0, n, per_message):
                yield points[k : k + per_message]
                await asyncio.sleep(0.25)

        run_id = str(uuid.uuid4())
        async with token_channel(self.stack.envoy_address, token) as channel:
            recorder = RunRecorder(channel, run_id, "", backoff=Backoff(base_s=0.1, cap_s=2.0, max_attempts=100))
            phase = self.result.phases[phase_of(self.hour())]
            try:
                await recorder.upload(live())
                overview = summary_pb2.RunOverview(
                    start_time=_ts(dt.datetime.fromtimestamp(start_s, dt.UTC)),
                    end_time=_ts(dt.datetime.fromtimestamp(start_s + n, dt.UTC)),
                    distance_m=n * 2.8,
                    moving_time=Duration(seconds=n - 30),
                    point_count=n,
                )
                t0 = time.perf_counter()
                await summary_pb2_grpc.SummaryServiceStub(channel).StopRun(
                    summary_pb2.StopRunRequest(run_id=run_id, overview=overview)
                )
                phase.stop_ms.append((time.perf_counter() - t0) * 1000)
                self.finished_runs.append((run_id, token))
            except grpc.aio.AioRpcError:
                phase.failed += 1
            self.recorders.append((recorder, n))
            self.result.points_sent += n

    async def reader(self, stop: asyncio.Event) -> None:
        """A dashboard: someone who ran opens their list and a run, more often at the peaks."""
        while not stop.is_set():
            share = arrival_share(self.hour())
            await asyncio.sleep(1 / max(0.2, 8 * share))
            if not self.finished_runs:
                continue
            run_id, token = self.rng.choice(self.finished_runs)
            metadata = (("authorization", f"Bearer {token}"),)
            phase = self.result.phases[phase_of(self.hour())]
            async with grpc.aio.insecure_channel(self.stack.envoy_address) as channel:
                stub = summary_pb2_grpc.SummaryServiceStub(channel)
                try:
                    await stub.ListRuns(summary_pb2.ListRunsRequest(page_size=20), metadata=metadata)
                    t0 = time.perf_counter()
                    await stub.GetRun(summary_pb2.GetRunRequest(run_id=run_id), metadata=metadata)
                    phase.get_ms.append((time.perf_counter() - t0) * 1000)
                except grpc.aio.AioRpcError:
                    phase.failed += 1

    async def sampler(self, stop: asyncio.Event) -> None:
        """Once a second: replicas (the cost), open streams, and the durable histogram's growth."""
        last: dict[int, dict[float, float]] = {}
        previous = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(1.0)
            now = time.monotonic()
            ports = self.stack.replica_ports()
            replicas = sum(len(p) for p in ports.values())
            self.result.replica_seconds += replicas * (now - previous)
            previous = now
            phase = self.result.phases[phase_of(self.hour())]
            streams = 0.0
            window: dict[float, float] = {}
            for port in ports["tracking"]:
                try:
                    buckets, open_streams, _ = await asyncio.to_thread(tracking_sample, port)
                except OSError:
                    continue
                streams += open_streams
                for le, delta in histogram_increase(last.get(port, {}), buckets).items():
                    phase.durable_buckets[le] = phase.durable_buckets.get(le, 0.0) + delta
                    window[le] = window.get(le, 0.0) + delta
                last[port] = buckets
            p99 = quantile_from_buckets(window, 0.99)
            self.result.timeline.append(
                {
                    "hour": round(self.hour(), 3),
                    "tracking": len(ports["tracking"]),
                    "summary": len(ports["summary"]),
                    "streams_open": streams,
                    "p99_durable_ms": round(p99 * 1000, 1) if p99 is not None else -1,
                }
            )
            task = self.progress.tasks[0]
            self.progress.update(
                task.id,
                completed=now - self.start,
                description=f"{self.mode}: {int(self.hour()):02d}:{int(self.hour() % 1 * 60):02d}"
                f" {phase_of(self.hour()):13} replicas {len(ports['tracking'])}+{len(ports['summary'])}"
                f" streams {streams:.0f}",
            )

    async def run(self) -> DayResult:
        c = self.config
        stop = asyncio.Event()
        self.start = time.monotonic()
        background = [asyncio.create_task(self.sampler(stop)), asyncio.create_task(self.reader(stop))]
        phones: list[asyncio.Task[None]] = []
        schedule = arrival_schedule(c)
        for index, at in enumerate(schedule):
            await asyncio.sleep(max(0.0, self.start + at - time.monotonic()))
            phones.append(asyncio.create_task(self.phone(index)))
        index = len(schedule)
        await asyncio.sleep(max(0.0, self.start + c.day_s - time.monotonic()))
        await asyncio.gather(*phones)
        stop.set()
        await asyncio.gather(*background)
        self.result.runs = index
        self.result.stream_retries = sum(r.stats.retries for r, _ in self.recorders)
        self.result.failed_calls = sum(p.failed for p in self.result.phases.values())
        self.result.points_lost = await self.points_lost()
        return self.result

    async def points_lost(self) -> int:
        """Every trail read back, page by page, against what its phone recorded."""
        lost = 0
        sizes = {r.run_id: n for r, n in self.recorders}
        for run_id, token in self.finished_runs:
            metadata = (("authorization", f"Bearer {token}"),)
            async with grpc.aio.insecure_channel(self.stack.envoy_address) as channel:
                stub = tracking_pb2_grpc.TrackingServiceStub(channel)
                seqs: list[int] = []
                page_token = ""
                while True:
                    page = await stub.GetTrack(
                        tracking_pb2.GetTrackRequest(run_id=run_id, page_size=10_000, page_token=page_token),
                        metadata=metadata,
                    )
                    seqs += [p.seq for p in page.points]
                    page_token = page.next_page_token
                    if not page_token:
                        break
            lost += sizes[run_id] - len(set(seqs) & set(range(1, sizes[run_id] + 1)))
        lost += sum(n for r, n in self.recorders if r.run_id not in {rid for rid, _ in self.finished_runs})
        return lost


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(len(ordered) * q))]:.1f}"


def summary_rows(result: DayResult) -> list[dict[str, Any]]:
    rows = []
    for name, figures in result.phases.items():
        p50 = quantile_from_buckets(figures.durable_buckets, 0.5)
        p99 = quantile_from_buckets(figures.durable_buckets, 0.99)
        rows.append(
            {
                "phase": name,
                "durable_p50_ms": None if p50 is None else round(p50 * 1000, 1),
                "durable_p99_ms": None if p99 is None else round(p99 * 1000, 1),
                "stop_run_p50_ms": None if not figures.stop_ms else round(statistics.median(figures.stop_ms), 1),
                "stop_run_p99_ms": _ms(figures.stop_ms, 0.99),
                "get_run_p50_ms": None if not figures.get_ms else round(statistics.median(figures.get_ms), 1),
                "get_run_p99_ms": _ms(figures.get_ms, 0.99),
                "stop_runs": len(figures.stop_ms),
                "get_runs": len(figures.get_ms),
                "failed_calls": figures.failed,
            }
        )
    return rows


def chart(results: list[DayResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    for result, colour in zip(results, ("#cf222e", "#0969da"), strict=False):
        hours = [p["hour"] for p in result.timeline]
        axes[0].plot(hours, [p["streams_open"] for p in result.timeline], color=colour, label=result.mode)
        axes[1].step(hours, [p["tracking"] + p["summary"] for p in result.timeline], color=colour, label=result.mode)
        axes[2].plot(
            hours,
            [p["p99_durable_ms"] if p["p99_durable_ms"] >= 0 else float("nan") for p in result.timeline],
            color=colour,
            label=result.mode,
        )
    axes[0].set_ylabel("open streams")
    axes[1].set_ylabel("replicas (both services)")
    axes[2].set_ylabel("p99 time to durable (ms)")
    axes[2].set_xlabel("hour of the day")
    axes[2].set_xlim(0, 24)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
    fig.suptitle("A day of runners: fixed fleet vs autoscaler")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_day(stack: Stack, config: DayConfig, out_dir: Path) -> list[DayResult]:
    console = Console(stderr=True)
    results: list[DayResult] = []
    for mode in ("fixed", "autoscaled"):
        # The fixed fleet holds the peak's size all day; the autoscaled one starts the night at the minimum.
        size = config.fixed if mode == "fixed" else 1
        stack.scale({"tracking": size, "summary": size})
        stop = threading.Event()
        scaler = None
        if mode == "autoscaled":
            policies = {
                "tracking": Policy(config.tracking_target, 1, config.fixed, scale_down_window_s=config.window_s),
                "summary": Policy(config.summary_target, 1, config.fixed, scale_down_window_s=config.window_s),
            }
            scaler = Autoscaler(
                policies, replicas=stack.replica_ports, scale=stack.scale, metrics_port=metrics_port, interval_s=2
            )
            threading.Thread(target=scaler.run, args=(stop,), daemon=True).start()
        with Progress(
            TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console, transient=False
        ) as progress:
            progress.add_task(mode, total=config.day_s)
            result = asyncio.run(Day(stack, config, mode, progress).run())
        stop.set()
        if scaler is not None:
            result.decisions = scaler.decisions
        results.append(result)
    stack.scale({"tracking": 2, "summary": 2})

    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    document = {
        "config": {**asdict(config), "compression": config.compression},
        "results": [
            {
                "mode": r.mode,
                "replica_seconds": round(r.replica_seconds, 1),
                "runs": r.runs,
                "replica_seconds_per_run": round(r.replica_seconds / max(1, r.runs), 2),
                "points_sent": r.points_sent,
                "points_lost": r.points_lost,
                "failed_calls": r.failed_calls,
                "stream_retries": r.stream_retries,
                "phases": summary_rows(r),
                "timeline": r.timeline,
                "decisions": r.decisions,
            }
            for r in results
        ],
    }
    (out_dir / f"day-{stamp}.json").write_text(json.dumps(document, indent=2))
    chart(results, out_dir / "day.png")

    fixed, auto = results
    table = Table(title=f"a day in {config.minutes:g} minutes (x{config.compression:.0f})")
    table.add_column("")
    table.add_column("fixed fleet", justify="right")
    table.add_column("autoscaled", justify="right")
    table.add_row("replica-seconds", f"{fixed.replica_seconds:.0f}", f"{auto.replica_seconds:.0f}")
    table.add_row("ratio", "1.00", f"{auto.replica_seconds / fixed.replica_seconds:.2f}")
    table.add_row("runs / points", f"{fixed.runs} / {fixed.points_sent}", f"{auto.runs} / {auto.points_sent}")
    table.add_row(
        "replica-seconds per run",
        f"{fixed.replica_seconds / max(1, fixed.runs):.1f}",
        f"{auto.replica_seconds / max(1, auto.runs):.1f}",
    )
    table.add_row("failed calls", str(fixed.failed_calls), str(auto.failed_calls))
    table.add_row("points lost", str(fixed.points_lost), str(auto.points_lost))
    table.add_row("stream retries", str(fixed.stream_retries), str(auto.stream_retries))
    for f_row, a_row in zip(summary_rows(fixed), summary_rows(auto), strict=True):
        table.add_row(
            f"{f_row['phase']}: durable p50/p99 ms",
            f"{f_row['durable_p50_ms']} / {f_row['durable_p99_ms']}",
            f"{a_row['durable_p50_ms']} / {a_row['durable_p99_ms']}",
        )
        table.add_row(
            f"{f_row['phase']}: StopRun p50/p99 ms",
            f"{f_row['stop_run_p50_ms']} / {f_row['stop_run_p99_ms']}",
            f"{a_row['stop_run_p50_ms']} / {a_row['stop_run_p99_ms']}",
        )
        table.add_row(
            f"{f_row['phase']}: GetRun p50/p99 ms",
            f"{f_row['get_run_p50_ms']} / {f_row['get_run_p99_ms']}",
            f"{a_row['get_run_p50_ms']} / {a_row['get_run_p99_ms']}",
        )
    Console().print(table)
    print(f"figures: {out_dir / f'day-{stamp}.json'}\nchart:   {out_dir / 'day.png'}")
    return results
