"""scripts/bench watch: live runs followed by spectators (WatchRun through Envoy), against the same
live runs without spectators, in one run.

The phone generator (`bench/generator.py`, its `watch` mode) streams `--runs` phones at 1 Hz as
`scripts/bench phones` does, arriving at `--ramp-rate` per second. Once every phone streams, a
baseline window (`--baseline-seconds`) measures the phones alone. Then each run gets one live link
(CreateLiveLink, as its owner) and `--watchers` spectators (10 per run by default) open one WatchRun
stream each with the link's token, arriving at `--watch-rate` per second; a steady window
(`--seconds`) measures phones and watchers together. At the end the phones close their streams, the
generator waits for every watcher to hold every point its run sent, calls StopRun for each run
(unless `--no-stop-runs`) and waits for each watcher to see STOPPED and its stream end; the bench
then reads every run back from the CQL store.

Latency: each point carries the time its phone sent it; a watcher notes when each point reaches it.
"Fix to watcher" is receive time minus point time for every point delivered live (taken after the
watcher opened); "fix to every watcher" is, per point, until the last of its run's watchers had it.
Both include ingest (phone to durable), so they bound durable-to-watcher from above; the replicas'
own arrival-to-durable histogram is given beside them. The target: p99 durable to every watcher
within 2 s, read as fix to every watcher in the steady window.

CPU per component (tracking replicas, CQL, Envoy, the generator) comes from /proc at the generator's
phase markers: cores, microseconds per point ingested in each window (the ratio with / without
watchers), per point delivered to a watcher, and the marginal cost of a delivery (the CPU the
watchers added over the deliveries). Resident memory per watcher: the replicas' and Envoy's, mid
steady window minus the baseline's. The replicas' watch metrics are read when they export them.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from bench.sampling import (
    components,
    cpu_by_component,
    durable_points,
    histogram_increase,
    per_point_us,
    quantile_from_buckets,
    rss_by_component,
    with_descendants,
)
from devstack.autoscale import metrics_text
from devstack.paths import ROOT
from devstack.stack import Stack, metrics_port

TARGET_P99_S = 2.0
OWNERS = 200  # the runs' owners: run i belongs to owner i mod 200
SERVER = ("tracking", "cql", "envoy")
COMPONENTS = (*SERVER, "generator")
# The replicas' watch metrics, read when exported (summed over the replicas); absent ones are left out.
WATCH_GAUGES = ("runtrack_watchers_open", "runtrack_live_runs_watched")
WATCH_COUNTERS = ("runtrack_live_polls_total", "runtrack_watch_events_sent_total", "runtrack_watch_points_sent_total")
DESCRIPTORS = ROOT / "generated" / "runtrack_descriptor.pb"


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Scrape:
    """What the tracking replicas' metrics say at one moment, summed over the replicas."""

    buckets: dict[float, float]  # runtrack_point_durable_seconds, cumulative
    stored: float  # runtrack_points_stored_total
    watch: dict[str, float]  # the watch metrics found


def scrape(stack: Stack) -> Scrape | None:
    """None when a replica's metrics do not answer (a busy replica may be slow to)."""
    out = Scrape({}, 0.0, {})
    for port in stack.replica_ports()["tracking"]:
        try:
            text = metrics_text(metrics_port(port), timeout_s=5.0)
        except OSError as err:
            say(f"watch: metrics of tracking replica {port} unread: {err}")
            return None
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "runtrack_point_durable_seconds_bucket":
                    le = float(sample.labels["le"])
                    out.buckets[le] = out.buckets.get(le, 0.0) + sample.value
                elif sample.name == "runtrack_points_stored_total":
                    out.stored += sample.value
                elif sample.name in WATCH_GAUGES or sample.name in WATCH_COUNTERS:
                    out.watch[sample.name] = out.watch.get(sample.name, 0.0) + sample.value
    return out


@dataclass
class Sample:
    """Taken at one of the generator's phase markers."""

    phase: str
    at: float  # time.monotonic()
    marker: dict[str, Any]  # the generator's counters at the marker: points_sent, delivered, ...
    cpu: dict[str, float]  # CPU seconds so far, by component
    rss: dict[str, float]  # KiB, tracking replicas and Envoy
    metrics: Scrape | None


def take_sample(phase: str, marker: dict[str, Any], pids: dict[str, list[int]], stack: Stack) -> Sample:
    at = time.monotonic()
    cpu = cpu_by_component(pids)
    rss = rss_by_component(pids)
    return Sample(phase, at, marker, cpu, rss, scrape(stack))


@dataclass
class Window:
    """One measured window: from one marker's sample to another's."""

    name: str
    seconds: float = 0.0
    points: int = 0  # ingested: the replicas' points stored (the generator's points sent if unread)
    deliveries: int = 0  # points delivered to watchers (distinct per watcher)
    durable_p50_ms: float | None = None
    durable_p99_ms: float | None = None
    cpu_cores: dict[str, float] = field(default_factory=dict)
    us_per_point: dict[str, float] = field(default_factory=dict)
    us_per_delivery: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # gauges at the end, counters per second

    @property
    def points_per_s(self) -> float:
        return self.points / self.seconds if self.seconds else 0.0

    @property
    def deliveries_per_s(self) -> float:
        return self.deliveries / self.seconds if self.seconds else 0.0


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def window(name: str, a: Sample, b: Sample) -> Window:
    w = Window(name, seconds=round(b.at - a.at, 2))
    sent = int(b.marker.get("points_sent", 0)) - int(a.marker.get("points_sent", 0))
    w.deliveries = int(b.marker.get("delivered", 0)) - int(a.marker.get("delivered", 0))
    w.points = sent
    if a.metrics is not None and b.metrics is not None:
        w.points = int(b.metrics.stored - a.metrics.stored)
        grown = histogram_increase(a.metrics.buckets, b.metrics.buckets)
        w.durable_p50_ms = _ms(quantile_from_buckets(grown, 0.5))
        w.durable_p99_ms = _ms(quantile_from_buckets(grown, 0.99))
        for name in WATCH_GAUGES:
            if name in b.metrics.watch:
                w.metrics[name] = b.metrics.watch[name]
        for name in WATCH_COUNTERS:
            if name in b.metrics.watch and w.seconds:
                w.metrics[f"{name} /s"] = round((b.metrics.watch[name] - a.metrics.watch.get(name, 0.0)) / w.seconds, 1)
    for comp in b.cpu:
        spent = b.cpu[comp] - a.cpu.get(comp, 0.0)
        w.cpu_cores[comp] = round(spent / w.seconds, 3) if w.seconds else 0.0
        w.us_per_point[comp] = per_point_us(spent, w.points)
        if w.deliveries:
            w.us_per_delivery[comp] = per_point_us(spent, w.deliveries)
    return w


def _sum(figures: dict[str, float], names: tuple[str, ...]) -> float:
    return round(sum(figures.get(n, 0.0) for n in names), 1)


def run_generator(stack: Stack, command: list[str], pids: dict[str, list[int]]) -> tuple[dict[str, Sample], int]:
    """Runs the generator and samples CPU, memory and metrics at each phase marker it prints."""
    samples: dict[str, Sample] = {}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=sys.stderr, text=True, bufsize=1, cwd=ROOT)
    pids = {**pids, "generator": [proc.pid]}
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            try:
                marker = json.loads(line)
            except ValueError:
                say(line.rstrip())
                continue
            phase = str(marker.get("phase", ""))
            if phase:
                samples[phase] = take_sample(phase, marker, pids, stack)
    except BaseException:
        if proc.poll() is None:
            proc.terminate()  # the bench failed under it: the generator's phones and watchers end too
        raise
    return samples, proc.wait()


@dataclass(frozen=True)
class WatchConfig:
    runs: int = 1000
    watchers: int = 10_000
    seconds: float = 60.0  # the steady window, phones and watchers
    baseline_s: float = 20.0  # the window before, phones alone (0: none)
    ramp_rate: float = 250.0  # phones starting per second
    watch_rate: float = 1000.0  # watchers starting per second
    replicas: int = 2  # tracking replicas
    stop_runs: bool = True  # end with StopRun per run (the watchers must see STOPPED)


def run(stack: Stack, config: WatchConfig, out_dir: Path) -> dict[str, Any]:
    from bench.generator import phonegen

    generator = phonegen()
    before = len(stack.replica_ports()["tracking"])
    if config.replicas != before:
        say(f"watch: {config.replicas} tracking replicas (from {before})")
        stack.scale({"tracking": config.replicas})
    try:
        return _run(stack, generator, config, out_dir)
    finally:
        if config.replicas != before:
            stack.scale({"tracking": before})


def _run(stack: Stack, generator: Path, config: WatchConfig, out_dir: Path) -> dict[str, Any]:
    c = config
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    pids = {name: with_descendants(group) for name, group in components(stack).items()}
    with tempfile.TemporaryDirectory(prefix="watch-") as tmp:
        work = Path(tmp)
        tokens = work / "tokens.txt"
        tokens.write_text(
            "\n".join(stack.issuer.token(f"watch-owner-{i}", ttl_s=6 * 3600) for i in range(OWNERS)) + "\n"
        )
        out, run_ids = work / "result.json", work / "runs.txt"
        command = [
            str(generator),
            "watch",
            "--address",
            stack.envoy_address,
            "--token-file",
            str(tokens),
            "--descriptors",
            str(DESCRIPTORS),
            "--runs",
            str(c.runs),
            "--watchers",
            str(c.watchers),
            "--ramp",
            f"{c.runs / c.ramp_rate:.3f}s",
            "--watch-ramp",
            f"{c.watchers / c.watch_rate:.3f}s",
            "--baseline",
            f"{c.baseline_s:g}s",
            "--steady",
            f"{c.seconds:g}s",
            f"--stop-runs={'true' if c.stop_runs else 'false'}",
            "--out",
            str(out),
            "--run-ids",
            str(run_ids),
        ]
        say(f"watch: {c.runs} runs, {c.watchers} watchers, {c.replicas} tracking replicas: {' '.join(command[1:])}")
        samples, code = run_generator(stack, command, pids)
        if code != 0 or not out.exists():
            raise SystemExit(f"the phone generator failed (exit {code})")
        result: dict[str, Any] = json.loads(out.read_text())
        ids = run_ids.read_text().split()
        say(f"watch: reading {len(ids)} runs back from the CQL store")
        durable = durable_points(stack, ids)

    figures = summarise(result, samples, durable, c)
    document = {"figures": figures, "generator": result, "samples": [_sample_doc(s) for s in samples.values()]}
    path = out_dir / f"watch-{stamp}.json"
    path.write_text(json.dumps(document, indent=2))
    report(figures, result)
    print(f"figures: {path}")
    print(json.dumps(figures, separators=(",", ":")))
    return figures


def _sample_doc(s: Sample) -> dict[str, Any]:
    doc = asdict(s)
    doc.pop("at")
    return doc


def summarise(result: dict[str, Any], samples: dict[str, Sample], durable: int, config: WatchConfig) -> dict[str, Any]:
    """The figures of one run: the generator's result, the windows between its markers, the store."""
    analysis = result["analysis"]
    watchers = result["watchers_detail"]
    outcomes: dict[str, int] = watchers["outcomes"]
    base = (
        window("phones only", samples["baseline_start"], samples["baseline_end"])
        if ("baseline_start" in samples and "baseline_end" in samples)
        else None
    )
    steady = (
        window("phones + watchers", samples["steady_start"], samples["steady_end"])
        if ("steady_start" in samples and "steady_end" in samples)
        else None
    )
    figures: dict[str, Any] = {
        "bench": "watch",
        "runs": result["runs"],
        "watchers": result["watchers"],
        "replicas": config.replicas,
        "seconds": config.seconds,
        "baseline_seconds": config.baseline_s,
        "interrupted": result.get("interrupted", False),
        "fix_to_watcher_ms": analysis["fix_to_watcher_ms"],
        "fix_to_watcher_steady_ms": analysis["fix_to_watcher_steady_ms"],
        "fix_to_every_watcher_ms": analysis["fix_to_every_watcher_ms"],
        "fix_to_every_watcher_steady_ms": analysis["fix_to_every_watcher_steady_ms"],
        "first_event_ms": watchers["first_event_ms"],
        "watcher_outcomes": outcomes,
        "watcher_failures": watchers["failures"],
        "watchers_saw_stopped": watchers["saw_end_state"],
        "first_event_not_state": watchers["first_event_not_state"],
        "state_events": watchers["state_events"],
        "caught_up_s": watchers["caught_up_s"],
        "all_caught_up": watchers["all_caught_up"],
        "points_delivered": analysis["delivered"],
        "points_delivered_live": analysis["delivered_live"],
        "points_delivered_backlog": analysis["delivered_backlog"],
        "points_expected": analysis["points_expected"],
        "points_missed": analysis["missed"],
        "watchers_with_gaps": analysis["watchers_with_gaps"],
        "duplicates": analysis["duplicates"],
        "unexpected": analysis["unexpected"],
        "runs_incomplete": analysis["runs_incomplete"],
        "links": {k: result["links"][k] for k in ("ok", "failed", "failures", "latency_ms")},
        "stop_run": result.get("stop_run"),
        "phones": {
            "streams_ok": result["phones"]["streams_ok"],
            "streams_failed": result["phones"]["streams_failed"],
            "failures": result["phones"]["failures"],
            "points_sent": result["phones"]["points_sent"],
            "points_durable": durable,
            "points_rejected": result["phones"]["points_rejected"],
            "lag_p99_ms": result["phones"]["lag_ms"]["p99"],
        },
        "generator_cpu_s": round(result["cpu_s"]["user"] + result["cpu_s"]["system"], 2),
        "generator_max_rss_kib": result["max_rss_kib"],
        "windows": {w.name: asdict(w) for w in (base, steady) if w is not None},
    }
    if base is not None and steady is not None:
        ratio = {
            comp: round(steady.us_per_point[comp] / base.us_per_point[comp], 2)
            for comp in steady.us_per_point
            if base.us_per_point.get(comp)
        }
        server_base, server_steady = _sum(base.us_per_point, SERVER), _sum(steady.us_per_point, SERVER)
        if server_base:
            ratio["server"] = round(server_steady / server_base, 2)
        figures["ingest_us_per_point"] = {
            "without_watchers": base.us_per_point | {"server": server_base},
            "with_watchers": steady.us_per_point | {"server": server_steady},
            "ratio": ratio,
        }
        # The CPU the watchers added, over the deliveries: what one point delivered to one watcher costs.
        if steady.deliveries_per_s:
            figures["marginal_us_per_delivery"] = {
                comp: round((steady.cpu_cores[comp] - base.cpu_cores.get(comp, 0.0)) * 1e6 / steady.deliveries_per_s, 1)
                for comp in steady.cpu_cores
            }
    if steady is not None:
        figures["us_per_delivery"] = steady.us_per_delivery
    # Memory per watcher: mid steady window against the phones alone.
    idle = samples.get("baseline_end") or samples.get("links_done")
    mid = samples.get("steady_mid")
    if idle is not None and mid is not None:
        open_watchers = int(mid.marker.get("watchers_open", 0))
        if open_watchers:
            figures["kib_per_watcher"] = {
                comp: round((mid.rss[comp] - idle.rss.get(comp, 0.0)) / open_watchers, 2) for comp in mid.rss
            }
    p99 = (
        analysis["fix_to_every_watcher_steady_ms"]["p99"]
        if analysis["fix_to_every_watcher_steady_ms"]["count"]
        else None
    )
    troubles = sum(outcomes.get(k, 0) for k in ("failed", "ended_early", "open_failed", "not_started"))
    figures["watchers_failed"] = troubles
    figures["held"] = bool(
        p99 is not None
        and p99 <= TARGET_P99_S * 1000
        and troubles == 0
        and analysis["missed"] == 0
        and figures["phones"]["streams_failed"] == 0
        and durable == figures["phones"]["points_sent"]
        and (result.get("stop_run") is None or watchers["saw_end_state"] == result["watchers"])
    )
    return figures


def _q(q: dict[str, Any] | None) -> str:
    """p50 / p99 / max of a quantiles document (ms), or - when it counted nothing."""
    if not q or not q.get("count"):
        return "-"
    return " / ".join(f"{q[k]:.0f}" if q[k] >= 100 else f"{q[k]:.1f}" for k in ("p50", "p99", "max"))


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def report(figures: dict[str, Any], result: dict[str, Any]) -> None:
    console = Console(width=120)
    windows = figures["windows"]
    base, steady = windows.get("phones only"), windows.get("phones + watchers")
    cols = [w for w in (base, steady) if w is not None]
    t = Table(
        title=f"scripts/bench watch: {figures['runs']} live runs, {figures['watchers']} watchers,"
        f" {figures['replicas']} tracking replicas"
    )
    t.add_column("")
    for w in cols:
        t.add_column(f"{w['name']} ({w['seconds']:.0f} s)", justify="right")

    def row(label: str, cell: Any) -> None:
        t.add_row(label, *(cell(w) for w in cols))

    row("points ingested /s", lambda w: f"{w['points'] / w['seconds']:.0f}" if w["seconds"] else "-")
    row("points delivered to watchers /s", lambda w: f"{w['deliveries'] / w['seconds']:.0f}" if w["seconds"] else "-")
    row("arrival to durable p50 / p99 ms", lambda w: f"{_fmt(w['durable_p50_ms'])} / {_fmt(w['durable_p99_ms'])}")
    for comp in COMPONENTS:
        row(f"{comp} CPU cores", lambda w, c=comp: _fmt(w["cpu_cores"].get(c), 2))
    for comp in COMPONENTS:
        row(f"{comp} µs per point ingested", lambda w, c=comp: _fmt(w["us_per_point"].get(c)))
    row("server (tracking+cql+envoy) µs per point", lambda w: _fmt(_sum(w["us_per_point"], SERVER)))
    for comp in COMPONENTS:
        row(f"{comp} µs per point delivered", lambda w, c=comp: _fmt(w["us_per_delivery"].get(c)))
    names = sorted({name for w in cols for name in w["metrics"]})
    for name in names:
        row(name, lambda w, n=name: _fmt(w["metrics"].get(n)))
    if not names:
        t.add_row("replica watch metrics", *(["not exported"] * len(cols)))
    console.print(t)

    a = Table(title="watchers (latencies in ms: p50 / p99 / max)")
    a.add_column("")
    a.add_column("", justify="right")
    o = figures["watcher_outcomes"]
    a.add_row(
        "ended after STOPPED / cancelled at the end",
        f"{o.get('ended', 0)} / {o.get('cancelled', 0)} of {figures['watchers']}",
    )
    a.add_row(
        "failed / ended early / open failed / not started (no link)",
        f"{o.get('failed', 0)} / {o.get('ended_early', 0)} / {o.get('open_failed', 0)} / {o.get('not_started', 0)}",
    )
    for kind, n in list(figures["watcher_failures"].items())[:5]:
        a.add_row(f"  {kind}", str(n))
    links = figures["links"]
    a.add_row("live links created / failed (latency)", f"{links['ok']} / {links['failed']} ({_q(links['latency_ms'])})")
    a.add_row("WatchRun open to first event", _q(figures["first_event_ms"]))
    a.add_row("fix to watcher, whole run", _q(figures["fix_to_watcher_ms"]))
    a.add_row("fix to watcher, steady window", _q(figures["fix_to_watcher_steady_ms"]))
    a.add_row("fix to every watcher, whole run", _q(figures["fix_to_every_watcher_ms"]))
    a.add_row(
        f"fix to every watcher, steady window (target p99 ≤ {TARGET_P99_S * 1000:.0f})",
        _q(figures["fix_to_every_watcher_steady_ms"]),
    )
    a.add_row(
        "points delivered (live + read back at open)",
        f"{figures['points_delivered']} ({figures['points_delivered_live']} + {figures['points_delivered_backlog']})",
    )
    a.add_row(
        "points missed / watchers with gaps",
        f"{figures['points_missed']} of {figures['points_expected']} / {figures['watchers_with_gaps']}",
    )
    a.add_row("duplicate / unexpected deliveries", f"{figures['duplicates']} / {figures['unexpected']}")
    a.add_row("first event not a state", str(figures["first_event_not_state"]))
    a.add_row("state events", ", ".join(f"{k} {v}" for k, v in sorted(figures["state_events"].items())) or "-")
    a.add_row(
        "every point at every watcher, after the phones ended",
        f"{figures['caught_up_s']:.1f} s" + ("" if figures["all_caught_up"] else " (not all: gave up)"),
    )
    stop = figures["stop_run"]
    if stop is not None:
        a.add_row("StopRun ok / failed (latency)", f"{stop['ok']} / {stop['failed']} ({_q(stop['latency_ms'])})")
        a.add_row("watchers that saw STOPPED", f"{figures['watchers_saw_stopped']} of {figures['watchers']}")
    p = figures["phones"]
    a.add_row("phone streams ok / failed", f"{p['streams_ok']} / {p['streams_failed']}")
    a.add_row(
        "points durable / sent (read back) / rejected",
        f"{p['points_durable']} / {p['points_sent']} / {p['points_rejected']}",
    )
    a.add_row("generator lag p99 ms", _fmt(p["lag_p99_ms"]))
    for comp, kib in figures.get("kib_per_watcher", {}).items():
        a.add_row(f"{comp} resident KiB per watcher", _fmt(kib, 2))
    a.add_row(
        "generator CPU s / max RSS MiB", f"{figures['generator_cpu_s']} / {figures['generator_max_rss_kib'] / 1024:.0f}"
    )
    console.print(a)

    ingest = figures.get("ingest_us_per_point")
    if ingest:
        without, with_, ratio = ingest["without_watchers"], ingest["with_watchers"], ingest["ratio"]
        parts = [
            f"{comp} {_fmt(without.get(comp))} → {_fmt(with_.get(comp))} (x{_fmt(ratio.get(comp), 2)})"
            for comp in ("server", *COMPONENTS)
        ]
        print("ingest CPU µs per point, without watchers → with: " + "; ".join(parts))
    marginal = figures.get("marginal_us_per_delivery")
    if marginal:
        print(
            "CPU added by the watchers, per point delivered to a watcher (µs): "
            + "; ".join(f"{comp} {_fmt(v)}" for comp, v in marginal.items())
        )
    steady = figures["fix_to_every_watcher_steady_ms"]
    durable = (steady_w := windows.get("phones + watchers")) and steady_w["durable_p99_ms"]
    verdict = "held" if figures["held"] else "NOT held"
    print(
        f"target, p99 durable to every watcher ≤ {TARGET_P99_S:g} s: {verdict}"
        f" (fix to every watcher p99 {_fmt(steady.get('p99') if steady.get('count') else None, 0)} ms in the steady"
        f" window, an upper bound: it includes ingest, whose arrival-to-durable p99 was {_fmt(durable)} ms;"
        f" durable to watcher ≤ fix to watcher)"
    )
