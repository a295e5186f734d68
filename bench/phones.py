"""scripts/bench phones: live phones at 1 Hz (one point a message) through Envoy, stepped up.

Each step runs the compiled phone generator (`bench/generator.py`) for `--seconds` with N phones, each
one RecordTrack stream sending one point a second, then reads every run back from the CQL store. Per
step: streams failed, points durable / sent, arrival-to-durable p50/p99 (the tracking replicas' own
histogram, the step's increase), the generator's lag behind its schedule, CPU microseconds per point of
each component (from /proc: Envoy, the tracking replicas, the CQL node, the generator), and resident
memory per open stream of the replicas and Envoy (mid-step minus idle, over the phones). The ceiling is
the most phones with no failed stream, every point durable and p99 ≤ 1 s, over the whole step and in its
steady window.

Phones arrive at `--ramp-rate` per second (a peak builds up over minutes, not in one second; a burst
is `scripts/bench day`'s and the autoscaler's case). CPU per point is given twice: over the whole step
(stream starts, ownership claims and ends included) and in the steady window once every phone streams,
points counted by the replicas' own counter; the difference, spread over the phones, is what one
stream's start and end cost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.sampling import (
    components,
    cpu_by_component,
    durable_histogram,
    durable_points,
    per_point_us,
    quantile_from_buckets,
    rss_by_component,
    with_descendants,
)
from devstack.stack import Stack

CLK_TCK = os.sysconf("SC_CLK_TCK")
P99_LIMIT_S = 1.0
USERS = 200  # phones share this many runners' tokens


@dataclass
class Step:
    phones: int
    seconds: float
    streams_ok: int = 0
    streams_failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    points_sent: int = 0
    points_durable: int = 0
    durable_p50_ms: float | None = None
    durable_p99_ms: float | None = None
    steady_p99_ms: float | None = None  # the steady window's alone (no stream starting)
    lag_p50_ms: float | None = None
    lag_p99_ms: float | None = None
    cpu_us_per_point: dict[str, float] = field(default_factory=dict)
    steady_us_per_point: dict[str, float] = field(default_factory=dict)
    setup_ms_per_stream: dict[str, float] = field(default_factory=dict)
    cpu_cores: dict[str, float] = field(default_factory=dict)
    kib_per_stream: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            self.streams_failed == 0
            and self.points_sent > 0
            and self.points_durable == self.points_sent
            and self.durable_p99_ms is not None
            and self.durable_p99_ms <= P99_LIMIT_S * 1000
            # and once every phone streams (the ramp's quieter seconds must not carry a saturated step)
            and (self.steady_p99_ms is None or self.steady_p99_ms <= P99_LIMIT_S * 1000)
        )


def ceiling(steps: list[Step]) -> int:
    """The most phones of a step that held: no failed stream, every point durable, p99 within 1 s."""
    return max((s.phones for s in steps if s.ok), default=0)


def run_step(
    stack: Stack, generator: Path, tokens: Path, phones: int, seconds: float, work: Path, ramp_rate: float
) -> Step:
    ramp = max(1.0, phones / ramp_rate)
    # Every phone streams long enough for a steady window of 15 s once the last one has started.
    seconds = max(seconds, ramp + 20.0)
    step = Step(phones, seconds)
    pids = {name: with_descendants(group) for name, group in components(stack).items()}
    idle_rss = rss_by_component(pids)
    before_cpu = cpu_by_component(pids)
    before_hist, _ = durable_histogram(stack)
    out, run_ids = work / f"step-{phones}.json", work / f"runs-{phones}.txt"
    started = time.monotonic()
    proc = subprocess.Popen(
        [
            str(generator),
            "--address",
            stack.envoy_address,
            "--token-file",
            str(tokens),
            "--phones",
            str(phones),
            "--seconds",
            str(seconds),
            "--ramp",
            f"{ramp}s",
            "--out",
            str(out),
            "--run-ids",
            str(run_ids),
        ],
        stderr=sys.stderr,
    )
    mid: dict[str, float] = {}
    # The steady window: from a few seconds after the last phone started to a few before the first ends.
    window = (ramp + 3.0, seconds - 2.0)
    # (time, cpu by component, durable histogram, points stored)
    steady: list[tuple[float, dict[str, float], dict[float, float], float]] = []

    def sample_mid() -> None:
        if window[1] - window[0] >= 5.0:
            time.sleep(window[0])
            steady.append((time.monotonic(), cpu_by_component(pids), *durable_histogram(stack)))
        time.sleep(max(0.0, ramp + seconds / 2 - (time.monotonic() - started)))
        if proc.poll() is None:
            mid.update(rss_by_component(pids))
        if steady:
            time.sleep(max(0.0, window[1] - (time.monotonic() - started)))
            if proc.poll() is None:
                steady.append((time.monotonic(), cpu_by_component(pids), *durable_histogram(stack)))

    sampler = threading.Thread(target=sample_mid, daemon=True)
    sampler.start()
    proc.wait()
    sampler.join(timeout=1)
    wall = time.monotonic() - started
    time.sleep(1.0)  # the last lingering batches
    after_cpu = cpu_by_component(pids)
    after_hist, _ = durable_histogram(stack)
    result: dict[str, Any] = json.loads(out.read_text())
    step.streams_ok = int(result["streams_ok"])
    step.streams_failed = int(result["streams_failed"])
    step.failures = dict(result.get("failures") or {})
    step.points_sent = int(result["points_sent"])
    step.lag_p50_ms = result["lag_ms"]["p50"]
    step.lag_p99_ms = result["lag_ms"]["p99"]
    delta = {b: after_hist.get(b, 0.0) - before_hist.get(b, 0.0) for b in after_hist}
    for q, name in ((0.5, "durable_p50_ms"), (0.99, "durable_p99_ms")):
        value = quantile_from_buckets(delta, q)
        setattr(step, name, None if value is None else round(value * 1000, 1))
    generator_cpu = float(result["cpu_s"]["user"]) + float(result["cpu_s"]["system"])
    cpu = {name: after_cpu[name] - before_cpu[name] for name in after_cpu} | {"generator": generator_cpu}
    step.cpu_us_per_point = {name: per_point_us(s, step.points_sent) for name, s in cpu.items()}
    step.cpu_cores = {name: round(s / wall, 2) for name, s in cpu.items()}
    if len(steady) == 2 and steady[1][3] > steady[0][3]:
        (_, cpu0, hist0, n0), (_, cpu1, hist1, n1) = steady
        p99 = quantile_from_buckets({b: hist1.get(b, 0.0) - hist0.get(b, 0.0) for b in hist1}, 0.99)
        step.steady_p99_ms = None if p99 is None else round(p99 * 1000, 1)
        points = int(n1 - n0)
        step.steady_us_per_point = {name: per_point_us(cpu1[name] - cpu0[name], points) for name in cpu1}
        for name, us in step.steady_us_per_point.items():
            setup_s = cpu[name] - us / 1e6 * step.points_sent
            step.setup_ms_per_stream[name] = round(setup_s / phones * 1000, 2)
    if mid:
        step.kib_per_stream = {name: round((mid[name] - idle_rss[name]) / phones, 1) for name in mid}
    step.points_durable = durable_points(stack, run_ids.read_text().split())
    return step


def row(s: Step) -> str:
    cpu = " ".join(f"{k}={v:g}" for k, v in s.cpu_us_per_point.items())
    if s.steady_us_per_point:
        steady = " ".join(f"{k}={v:g}" for k, v in s.steady_us_per_point.items())
        setup = " ".join(f"{k}={v:g}" for k, v in s.setup_ms_per_stream.items())
        cpu += f"  steady µs/pt: {steady} (p99 {s.steady_p99_ms} ms)  start+end ms/stream: {setup}"
    mem = " ".join(f"{k}={v:g}" for k, v in s.kib_per_stream.items())
    return (
        f"{s.phones:>7} {s.streams_failed:>6} {s.points_durable:>9}/{s.points_sent:<9}"
        f" {s.durable_p50_ms!s:>7}/{s.durable_p99_ms!s:<7} {s.lag_p99_ms!s:>7}  {'yes' if s.ok else 'no ':3}"
        f"  cpu µs/pt: {cpu}  KiB/stream: {mem}"
    )


def chart(steps: list[Step], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    phones = [s.phones for s in steps]
    for name in ("tracking", "cql", "envoy", "generator"):
        a.plot(phones, [s.cpu_us_per_point.get(name, 0) for s in steps], marker="o", label=name)
    a.set_xlabel("phones at 1 Hz")
    a.set_ylabel("CPU µs per point")
    a.legend()
    b.plot(phones, [s.durable_p99_ms or 0 for s in steps], marker="o", label="p99 arrival to durable")
    b.axhline(P99_LIMIT_S * 1000, color="grey", linestyle="--", label="1 s")
    b.set_xlabel("phones at 1 Hz")
    b.set_ylabel("ms")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def ratio(s: Step) -> tuple[float, str] | None:
    """Replica CPU per point over Envoy's per proxied message: the steady window's when there is one."""
    for figures, what in ((s.steady_us_per_point, "steady"), (s.cpu_us_per_point, "whole step")):
        if figures.get("envoy"):
            return figures["tracking"] / figures["envoy"], what
    return None


def run(stack: Stack, steps: list[int], seconds: float, out_dir: Path, ramp_rate: float = 250.0) -> list[Step]:
    from bench.generator import phonegen

    generator = phonegen()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="phones-") as tmp:
        work = Path(tmp)
        tokens = work / "tokens.txt"
        tokens.write_text("\n".join(stack.issuer.token(f"phone-{i}", ttl_s=6 * 3600) for i in range(USERS)) + "\n")
        print(
            f"{'phones':>7} {'failed':>6} {'durable/sent':>19} {'p50/p99 ms':>15} {'lag p99':>7}  held",
            flush=True,
        )
        results: list[Step] = []
        for phones in steps:
            step = run_step(stack, generator, tokens, phones, seconds, work, ramp_rate)
            results.append(step)
            print(row(step), flush=True)
            (out_dir / "phones.json").write_text(
                json.dumps(
                    {"steps": [asdict(s) | {"held": s.ok} for s in results], "ceiling": ceiling(results)}, indent=2
                )
            )
            if not step.ok and step.streams_failed > step.phones // 10:
                print(f"stopping: {step.streams_failed} of {phones} streams failed", flush=True)
                break
    chart(results, out_dir / "phones.png")
    print(f"ceiling: {ceiling(results)} phones")
    held = [s for s in results if s.ok]
    for s in {id(x): x for x in (held[-1:] + results[-1:])}.values():
        r = ratio(s)
        if r is not None:
            print(f"replica CPU per point / Envoy's per message, at {s.phones} phones ({r[1]}): {r[0]:.1f}x")
    print(f"JSON: {out_dir / 'phones.json'}; chart: {out_dir / 'phones.png'}")
    return results
