"""The autoscaler: each service's replica count from its replicas' own metrics, by the Kubernetes
HPA rule, applied exactly as `scripts/dev scale` applies a count (health-checked, drained).

What a replica's load is (docs/operating.md says why these):
- tracking: RecordTrack streams open on it (`runtrack_streams_open`); a phone holds one for its
  whole run, and a live phone's stream costs about the same as another's (1 point a second).
- summary: calls it completed per second (the rate of `grpc_server_handled_total`), since the
  dashboard's calls are short and many.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

UNITS = {"tracking": "open streams per replica", "summary": "calls/s per replica"}
# tracking: open streams a replica holds at about a third of one core in the steady state (94 µs of CPU
# per 1 Hz point, `scripts/bench phones`), leaving room for a burst of stream starts (about 1.7 ms each).
DEFAULT_TARGETS = {"tracking": 3000.0, "summary": 300.0}


@dataclass(frozen=True)
class Policy:
    target: float  # load per replica, in the service's unit (UNITS)
    min_replicas: int = 1
    max_replicas: int = 8
    tolerance: float = 0.1  # no change while load per replica is within 10 % of the target
    scale_down_window_s: float = 60.0  # scale down to the highest recommendation of this window


def recommend(current: int, load: float, policy: Policy) -> int:
    """The HPA rule: desired = ceil(current x (load per replica) / target), unchanged within the
    tolerance band, clamped to [min, max]. `load` is the service's total."""
    if current <= 0:
        return policy.min_replicas
    ratio = (load / current) / policy.target
    within_band = abs(ratio - 1.0) <= policy.tolerance
    desired = current if within_band else math.ceil(current * ratio - 1e-9)  # 1e-9: 3.0000000001 is 3
    return max(policy.min_replicas, min(policy.max_replicas, desired))


def stabilised(history: Sequence[tuple[float, int]], now: float, window_s: float) -> int:
    """The highest recommendation of the last `window_s`: a rise applies at once (it is the
    newest and highest), a fall only once it has held for the whole window (no flapping)."""
    recent = [n for t, n in history if now - t <= window_s]
    if not recent:
        raise ValueError("no recommendation in the window")
    return max(recent)


def metrics_text(port: int, timeout_s: float = 2.0) -> str:
    """What a replica's metrics port serves at /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as reply:
        return str(reply.read().decode())


def scrape(port: int, timeout_s: float = 2.0) -> dict[str, float]:
    """What the loop reads of a replica's metrics: open streams, calls completed, calls in flight."""
    text = metrics_text(port, timeout_s)
    out: dict[str, float] = {"streams_open": 0.0, "handled": 0.0, "in_flight": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "runtrack_streams_open":
                out["streams_open"] += sample.value
            elif sample.name == "grpc_server_handled_total" and sample.labels.get("grpc_service", "").startswith(
                "runtrack."
            ):
                out["handled"] += sample.value
            elif sample.name == "grpc_server_started_total" and sample.labels.get("grpc_service", "").startswith(
                "runtrack."
            ):
                out["in_flight"] += sample.value
    out["in_flight"] -= out["handled"]
    return out


@dataclass
class ServiceState:
    history: list[tuple[float, int]] = field(default_factory=list)
    last_counts: dict[int, tuple[float, float]] = field(default_factory=dict)  # port -> (time, handled)


class Autoscaler:
    """The control loop. `replicas()` and `scale()` are the stack's; `metrics_port` maps a replica's
    port to its metrics port."""

    def __init__(
        self,
        policies: dict[str, Policy],
        *,
        replicas: Callable[[], dict[str, list[int]]],
        scale: Callable[[dict[str, int]], None],
        metrics_port: Callable[[int], int],
        interval_s: float = 5.0,
    ) -> None:
        self.policies = policies
        self.replicas = replicas
        self.scale = scale
        self.metrics_port = metrics_port
        self.interval_s = interval_s
        self.state = {svc: ServiceState() for svc in policies}
        self.decisions: list[tuple[float, str, int, int]] = []  # (time, service, from, to)

    def load(self, svc: str, ports: list[int], now: float) -> float:
        """The service's total load in its unit; a replica that does not answer counts as none."""
        state = self.state[svc]
        total = 0.0
        counts: dict[int, tuple[float, float]] = {}
        for port in ports:
            try:
                sample = scrape(self.metrics_port(port))
            except OSError:
                continue
            if svc == "tracking":
                total += sample["streams_open"]
            else:
                counts[port] = (now, sample["handled"])
                if port in state.last_counts:
                    then, handled = state.last_counts[port]
                    if now > then:
                        total += max(0.0, sample["handled"] - handled) / (now - then)
        state.last_counts = counts
        return total

    def step(self, now: float | None = None) -> dict[str, int]:
        """One round: measure, recommend, stabilise, scale. Returns the counts it wants."""
        now = time.monotonic() if now is None else now
        ports = self.replicas()
        wanted: dict[str, int] = {}
        for svc, policy in self.policies.items():
            current = len(ports[svc])
            load = self.load(svc, ports[svc], now)
            recommendation = recommend(current, load, policy)
            state = self.state[svc]
            if not state.history:  # a fresh loop keeps what runs for a window before it scales down
                state.history.append((now, current))
            state.history = [(t, n) for t, n in state.history if now - t <= policy.scale_down_window_s]
            state.history.append((now, recommendation))
            desired = stabilised(state.history, now, policy.scale_down_window_s)
            wanted[svc] = desired
            if desired != current:
                log.info(
                    "autoscale service=%s replicas=%d->%d load=%.1f target=%g (%s) recommendation=%d",
                    svc,
                    current,
                    desired,
                    load,
                    policy.target,
                    UNITS[svc],
                    recommendation,
                )
                self.decisions.append((now, svc, current, desired))
                self.scale({svc: desired})
        return wanted

    def run(self, stop: threading.Event) -> None:
        log.info(
            "autoscale started %s interval_s=%g",
            " ".join(
                f"{svc}=target:{p.target:g}/min:{p.min_replicas}/max:{p.max_replicas}/window:{p.scale_down_window_s:g}s"
                for svc, p in self.policies.items()
            ),
            self.interval_s,
        )
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.step(started)
            except Exception:  # a round that failed (a replica that would not start) is logged, the loop goes on
                log.exception("autoscale round failed")
            stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))
