"""`scripts/bench flood`: other runners' calls while one token floods, against the same calls quiet.

An Envoy with the product's limits (edge/limits.yaml) in front of the stack's replicas. Each round:
ten runners call GetRun ten times a second each (within their limit), 100 calls apiece, from a process
of their own (as phones are): once quiet, then again while another process, scheduled only when the
CPU is otherwise idle (SCHED_IDLE, an attacker's CPU is not the stack's), sends 50,000 GetRun calls
from one token, 64 at a time. Per round: the others' p50/p99/slowest quiet and during, the p99 ratio,
how many of the flood's calls were served, and Envoy's CPU per refused call. Figures go to
.dev/bench/flood-<time>.json. The test (`tests/integration/test_limits.py`) runs one round.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import multiprocessing
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import grpc

from bench.sampling import cpu_seconds, with_descendants
from devstack import procs
from devstack.auth import token_channel
from devstack.stack import Stack
from edge.config import Limits
from runtrack.v1 import summary_pb2, summary_pb2_grpc

FLOOD_CALLS = 50_000
OTHER_RUNNERS = 10
CALLS_EACH = 100


def flood(address: str, token: str, total: int, started: Any, results: Any) -> None:
    """`total` GetRun calls from one token as fast as 64 concurrent calls go, in its own process that
    runs only when nothing else would (SCHED_IDLE): an attacker's CPU is not the stack's, and on a
    2-core machine a flooding process of equal priority would take a core from Envoy and the replicas.
    Sets `started` at its first answer; puts (served, refused, seconds)."""
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))

    async def run() -> tuple[int, int, float]:
        request = summary_pb2.GetRunRequest(run_id=str(uuid.uuid4()))
        channels = [token_channel(address, token) for _ in range(4)]
        stubs = [summary_pb2_grpc.SummaryServiceStub(c) for c in channels]
        left, served, refused = total, 0, 0
        began = time.monotonic()

        async def worker(stub: summary_pb2_grpc.SummaryServiceAsyncStub) -> None:
            nonlocal left, served, refused
            while left > 0:
                left -= 1
                try:
                    await stub.GetRun(request)
                    served += 1
                except grpc.aio.AioRpcError as err:
                    if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        refused += 1
                    else:
                        served += 1  # NOT_FOUND: the call reached a replica
                started.set()

        await asyncio.gather(*(worker(stubs[i % 4]) for i in range(64)))
        for c in channels:
            await c.close()
        return served, refused, time.monotonic() - began

    results.put(asyncio.run(run()))


def calm_runners(address: str, tokens: list[str], calls: int, quiet_done: Any, go: Any, results: Any) -> None:
    """Other runners, each a GetRun ten times a second (within its limit) on its own connection, in a
    process of their own as phones are (not in a test's, whose heap after a whole suite makes collection
    pauses of its own): `calls` each while quiet, then again once `go` is set. Puts ((latencies,
    failed) quiet, (latencies, failed) during); a failure is any status but NOT_FOUND."""

    async def runner(token: str, offset: float) -> tuple[list[float], int]:
        request = summary_pb2.GetRunRequest(run_id=str(uuid.uuid4()))
        latencies, failed = [], 0
        async with token_channel(address, token) as channel:
            stub = summary_pb2_grpc.SummaryServiceStub(channel)
            await asyncio.sleep(offset)  # not in step with the others
            for _ in range(calls):
                began = time.perf_counter()
                try:
                    await stub.GetRun(request)
                except grpc.aio.AioRpcError as err:
                    failed += err.code() != grpc.StatusCode.NOT_FOUND
                latencies.append(time.perf_counter() - began)
                await asyncio.sleep(0.1)
        return latencies, failed

    async def phase() -> tuple[list[float], int]:
        done = await asyncio.gather(*(runner(t, i * 0.1 / len(tokens)) for i, t in enumerate(tokens)))
        return [x for latencies, _ in done for x in latencies], sum(failed for _, failed in done)

    quiet = asyncio.run(phase())
    quiet_done.set()
    go.wait(60)
    results.put((quiet, asyncio.run(phase())))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


@dataclasses.dataclass
class Round:
    quiet: list[float]
    during: list[float]
    quiet_failed: int
    failed: int
    served: int
    refused: int
    seconds: float

    def figures(self) -> dict[str, Any]:
        ms = {
            f"{name}_{what}_ms": round(f(values) * 1000, 1)
            for name, values in (("quiet", self.quiet), ("during", self.during))
            for what, f in (("p50", lambda v: pct(v, 0.5)), ("p99", lambda v: pct(v, 0.99)), ("slowest", max))
        }
        return {
            "other_runner_calls": len(self.during),
            **ms,
            "p99_ratio": round(pct(self.during, 0.99) / pct(self.quiet, 0.99), 2),
            "failed": self.quiet_failed + self.failed,
            "flood_served": self.served,
            "flood_refused": self.refused,
            "flood_seconds": round(self.seconds, 1),
        }


async def one_round(stack: Stack, address: str, total: int = FLOOD_CALLS) -> Round:
    """Quiet, then during a flood of `total` calls from one token (the test's and the benchmark's)."""
    flooder = stack.issuer.token(f"flood-{uuid.uuid4().hex[:6]}")
    others = [stack.issuer.token(f"calm{i}-{uuid.uuid4().hex[:6]}") for i in range(OTHER_RUNNERS)]
    spawn = multiprocessing.get_context("spawn")
    quiet_done, go, started = spawn.Event(), spawn.Event(), spawn.Event()
    calm_results, flood_results = spawn.Queue(), spawn.Queue()
    calm = spawn.Process(target=calm_runners, args=(address, others, CALLS_EACH, quiet_done, go, calm_results))
    calm.start()
    if not await asyncio.to_thread(quiet_done.wait, 120):
        raise RuntimeError("the other runners' quiet calls did not finish")
    flooding = spawn.Process(target=flood, args=(address, flooder, total, started, flood_results))
    flooding.start()
    if not await asyncio.to_thread(started.wait, 60):
        raise RuntimeError("the flood did not start")
    await asyncio.sleep(0.5)
    go.set()
    # 50,000 calls take about 40 s on a quiet machine; over 120 s beside a build on the same cores.
    (quiet, quiet_failed), (during, failed) = await asyncio.to_thread(calm_results.get, True, 300)
    served, refused, took = await asyncio.to_thread(flood_results.get, True, 300)
    calm.join(10)
    flooding.join(10)
    return Round(quiet, during, quiet_failed, failed, served, refused, took)


def limited_envoy(stack: Stack, limits: Limits | None = None, offset: int = 3) -> tuple[int, str]:
    """Starts an Envoy with the product's limits (or `limits`) beside the stack's, on its ports plus
    `offset`, plaintext; returns (pid, host:port)."""
    layout = dataclasses.replace(
        stack.spec.layout,
        limits=limits or Limits.load(),
        listen_port=stack.spec.envoy_port + offset,
        admin_port=stack.spec.envoy_admin_port + offset,
        tls=None,
    )
    return stack.start_envoy(layout, name="envoy-limits"), f"127.0.0.1:{layout.listen_port}"


def run(stack: Stack, rounds: int, out_dir: Path) -> dict[str, Any]:
    pid, address = limited_envoy(stack)
    envoy = with_descendants([pid])
    try:
        done = []
        for _ in range(rounds):
            cpu = sum(cpu_seconds(p) for p in envoy)
            r = asyncio.run(one_round(stack, address))
            figures = r.figures()
            # Envoy's CPU over the round over the refusals (the others' 2,000 calls in it are a few percent).
            figures["envoy_cpu_us_per_refused_call"] = round(
                (sum(cpu_seconds(p) for p in envoy) - cpu) / max(r.refused, 1) * 1e6, 1
            )
            done.append(figures)
    finally:
        procs.stop(pid, timeout=10)
    print(f"{rounds} rounds; {OTHER_RUNNERS} other runners x {CALLS_EACH} calls each way, flood {FLOOD_CALLS:,} calls")
    print(f"  {'round':>5} {'quiet p50/p99':>14} {'during p50/p99':>15} {'slowest':>8} {'p99 ratio':>9} {'failed':>6}")
    for i, f in enumerate(done, 1):
        print(
            f"  {i:>5} {f['quiet_p50_ms']:>6.1f}/{f['quiet_p99_ms']:<7.1f} {f['during_p50_ms']:>7.1f}/"
            f"{f['during_p99_ms']:<7.1f} {f['during_slowest_ms']:>8.1f} {f['p99_ratio']:>9.2f} {f['failed']:>6}"
        )
    median = statistics.median(f["p99_ratio"] for f in done)
    print(f"  p99 during / quiet: median {median:.2f}x, worst {max(f['p99_ratio'] for f in done):.2f}x")
    result = {"rounds": done, "median_p99_ratio": median}
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"flood-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"figures: {out}")
    return result
