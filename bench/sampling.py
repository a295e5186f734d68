"""What the benchmarks measure, shared: a process's CPU and memory from /proc (with its descendants),
the components of the local stack a figure is charged to, the tracking replicas' metrics (the durable
histogram, open streams, points stored) and quantiles of a Prometheus histogram."""

from __future__ import annotations

import bisect
import math
import os
import uuid
from typing import NamedTuple

from prometheus_client.parser import text_string_to_metric_families

from devstack import procs
from devstack.autoscale import metrics_text
from devstack.stack import Stack, metrics_port

CLK_TCK = os.sysconf("SC_CLK_TCK")


def quantile_from_buckets(buckets: dict[float, float], q: float) -> float | None:
    """The q-quantile of a Prometheus histogram's cumulative buckets, interpolated linearly."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    counts = [buckets[b] for b in bounds]
    i = bisect.bisect_left(counts, rank)
    if i >= len(bounds) or math.isinf(bounds[i]):
        return bounds[-2] if len(bounds) > 1 else None
    lower_bound = 0.0 if i == 0 else bounds[i - 1]
    lower_count = 0.0 if i == 0 else counts[i - 1]
    span = counts[i] - lower_count
    return lower_bound + (bounds[i] - lower_bound) * ((rank - lower_count) / span if span else 1.0)


def histogram_increase(before: dict[float, float], now: dict[float, float]) -> dict[float, float]:
    """How much each cumulative bucket grew since `before`. A replica retired and a new one started on
    its port counts from zero again: a fall is a reset, as Prometheus reads counters (taken as negative
    growth, it had emptied whole phases of the day)."""
    if now.get(math.inf, 0.0) < before.get(math.inf, 0.0):
        return dict(now)
    return {le: count - before.get(le, 0.0) for le, count in now.items()}


class TrackingSample(NamedTuple):
    buckets: dict[float, float]  # the durable histogram, cumulative
    streams_open: float
    points_stored: float


def tracking_sample(port: int) -> TrackingSample:
    """A tracking replica's durable histogram (cumulative buckets), open streams and points stored."""
    text = metrics_text(metrics_port(port))
    buckets: dict[float, float] = {}
    streams = stored = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "runtrack_point_durable_seconds_bucket":
                buckets[float(sample.labels["le"])] = sample.value
            elif sample.name == "runtrack_streams_open":
                streams += sample.value
            elif sample.name == "runtrack_points_stored_total":
                stored += sample.value
    return TrackingSample(buckets, streams, stored)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (its reaped children left out)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int) -> float:
    return procs.memory_mb(pid).get("VmRSS", 0.0) * 1024


def per_point_us(cpu_s: float, points: int) -> float:
    return round(cpu_s / points * 1e6, 1) if points else 0.0


def components(stack: Stack) -> dict[str, list[int]]:
    """The processes whose CPU a step is charged to, by component."""
    out: dict[str, list[int]] = {"envoy": [], "tracking": [], "cql": []}
    envoy = stack.envoy_pid()
    if envoy:
        out["envoy"].append(envoy)
    for port in stack.replica_ports()["tracking"]:
        pid = stack.replica_pid("tracking", port)
        if pid:
            out["tracking"].append(pid)
    for node in stack.cql_nodes:
        pid = node.pid()
        if pid:
            out["cql"].append(pid)
    if stack.traces is not None and (pid := stack.traces.pid()):
        out["traces"] = [pid]  # the collector (Jaeger), when the stack runs one
    return out


def with_descendants(pids: list[int]) -> list[int]:
    """The processes and every process below them (Envoy runs under a small shell, for one)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(") ", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def cpu_by_component(pids: dict[str, list[int]]) -> dict[str, float]:
    return {name: sum(cpu_seconds(p) for p in group if alive(p)) for name, group in pids.items()}


def rss_by_component(pids: dict[str, list[int]]) -> dict[str, float]:
    return {
        name: sum(rss_kib(p) for p in group if alive(p))
        for name, group in pids.items()
        if name in ("envoy", "tracking")
    }


def durable_histogram(stack: Stack) -> tuple[dict[float, float], float]:
    """The tracking replicas' durable histogram, summed, and the points they have written so far."""
    total: dict[float, float] = {}
    stored = 0.0
    for port in stack.replica_ports()["tracking"]:
        sample = tracking_sample(port)
        stored += sample.points_stored
        for bound, count in sample.buckets.items():
            total[bound] = total.get(bound, 0.0) + count
    return total, stored


def durable_points(stack: Stack, run_ids: list[str]) -> int:
    """Points of these runs in the CQL store, every run read back (counted by the store)."""
    from cassandra.cluster import Cluster as CqlCluster  # scylla-driver
    from cassandra.concurrent import execute_concurrent_with_args

    hosts = stack.scylla_hosts.split(",")
    cluster = CqlCluster(hosts, port=stack.scylla_port)
    try:
        session = cluster.connect(stack.spec.keyspace)
        query = session.prepare("SELECT count(*) FROM track_points WHERE run_id = ?")
        results = execute_concurrent_with_args(
            session, query, [(uuid.UUID(r),) for r in run_ids], concurrency=64, raise_on_first_error=True
        )
        return sum(int(result.one()[0]) for ok, result in results if ok)
    finally:
        cluster.shutdown()
