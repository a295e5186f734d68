"""scripts/bench traces: what tracing costs per point, measured against no tracing in the same run.

The same step of `scripts/bench phones` (N phones at 1 Hz through Envoy, one point a message) runs in
rounds with traces off (Envoy without a tracer, replicas without a collector) and on at the default
sampling (Envoy traces 1 % of requests, `docs/operating.md#traces`), Envoy restarted and every replica
rolled before each step, off first in odd rounds and on first in even ones. Reported per round and as
the median of each: the steady window's CPU microseconds per point of the tracking replicas and of
Envoy, the collector's (Jaeger's, on this machine only when on), and the ratio on/off; and the replicas'
CPU over the phone generator's in the same step (whose work is the same either way: a control for the
machine's own drift).
"""

from __future__ import annotations

import json
import statistics
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

from bench.phones import USERS, Step, run_step
from devstack import procs
from devstack.stack import Stack


def switch(stack: Stack) -> None:
    """Envoy and every replica started again as `stack`'s spec says (traces on or off)."""
    procs.stop(stack.envoy_pid(), timeout=15)
    stack.start_envoy()
    stack.rollout()


def per_point(step: Step, name: str) -> float | None:
    figures = step.steady_us_per_point or step.cpu_us_per_point
    return figures.get(name)


def run(stack: Stack, phones: int, seconds: float, rounds: int, out_dir: Path, ramp_rate: float) -> None:
    from bench.generator import phonegen

    if stack.traces is None:
        raise SystemExit("this stack runs no collector: traces cannot be turned on")
    on = stack
    off = Stack(replace(stack.spec, otlp_port=None))
    generator = phonegen()
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[Step]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="traces-") as tmp:
        work = Path(tmp)
        tokens = work / "tokens.txt"
        tokens.write_text("\n".join(stack.issuer.token(f"phone-{i}", ttl_s=6 * 3600) for i in range(USERS)) + "\n")
        for r in range(rounds):
            # Off first in odd rounds, on first in even ones: what comes first after a restart weighs on neither.
            order = (("off", off), ("on", on)) if r % 2 == 0 else (("on", on), ("off", off))
            for label, s in order:
                switch(s)
                step = run_step(s, generator, tokens, phones, seconds, work, ramp_rate)
                results[label].append(step)
                figures = " ".join(f"{k}={v:g}" for k, v in (step.steady_us_per_point or step.cpu_us_per_point).items())
                print(
                    f"round {r + 1} traces {label:3}: {phones} phones, failed {step.streams_failed}, "
                    f"durable {step.points_durable}/{step.points_sent}, p99 {step.durable_p99_ms} ms, "
                    f"steady µs/pt: {figures}",
                    flush=True,
                )
    switch(on)  # the stack as it was: traces on
    summary: dict[str, dict[str, float | None]] = {}
    for label, steps in results.items():
        summary[label] = {}
        for name in ("tracking", "envoy", "cql", "traces"):
            values = [v for s in steps if (v := per_point(s, name)) is not None]
            summary[label][name] = round(statistics.median(values), 1) if values else None
    control = {
        label: statistics.median(
            s.cpu_us_per_point["tracking"] / s.cpu_us_per_point["generator"]
            for s in steps
            if s.cpu_us_per_point.get("generator")
        )
        for label, steps in results.items()
        if steps
    }
    summary["tracking_over_generator"] = {k: round(v, 3) for k, v in control.items()}
    print(f"median steady CPU µs per point over {rounds} rounds of {phones} phones:")
    for name in ("tracking", "envoy", "cql", "traces"):
        a, b = summary["off"][name], summary["on"][name]
        change = f"  on/off {b / a:.3f}" if a and b else ""
        print(f"  {name:9} off {a!s:>7}  on {b!s:>7}{change}")
    a, b = control.get("off"), control.get("on")
    if a and b:
        print(f"  tracking CPU over the generator's (whole step): off {a:.2f}  on {b:.2f}  on/off {b / a:.3f}")
    (out_dir / "traces.json").write_text(
        json.dumps({k: [asdict(s) for s in v] for k, v in results.items()} | {"median": summary}, indent=2)
    )
    print(f"JSON: {out_dir / 'traces.json'}")
