"""The autoscaler's rule (Kubernetes HPA) and its loop over a simulated fleet (no servers)."""

import pytest

from devstack.autoscale import Autoscaler, Policy, recommend, stabilised

POLICY = Policy(target=10, min_replicas=1, max_replicas=8, tolerance=0.1, scale_down_window_s=30)


@pytest.mark.parametrize(
    "current, load, expected",
    [
        (2, 60, 6),  # 30 per replica, target 10: ceil(2 x 3)
        (3, 31, 3),  # 10.3 per replica: within the 10 % band, no change
        (3, 33.5, 4),  # 11.2 per replica: out of the band, ceil(3.35)
        (4, 20, 2),  # 5 per replica: halve
        (4, 0, 1),  # idle: the minimum
        (2, 500, 8),  # the maximum
        (0, 40, 1),  # nothing running: start from the minimum
        (5, 50.0000001, 5),  # exactly on target, give or take a float
    ],
)
def test_recommend_follows_the_hpa_rule_within_the_band_and_bounds(current, load, expected):
    assert recommend(current, load, POLICY) == expected


def test_a_rise_applies_at_once_and_a_fall_only_after_the_window():
    history = [(0.0, 2), (10.0, 5)]
    assert stabilised(history, 10.0, 30) == 5
    history += [(20.0, 1), (35.0, 1)]
    assert stabilised(history, 35.0, 30) == 5  # 5 was recommended 25 s ago
    assert stabilised(history, 41.0, 30) == 1  # and then it left the window


class SimulatedFleet(Autoscaler):
    """Replicas are numbers; the load is what the test says each round."""

    def __init__(self, loads):
        self.fleet = {"tracking": [1, 2]}
        self.loads = iter(loads)
        super().__init__(
            {"tracking": POLICY},
            replicas=lambda: {"tracking": list(self.fleet["tracking"])},
            scale=self.apply,
            metrics_port=lambda port: port,
        )

    def apply(self, counts):
        self.fleet["tracking"] = list(range(1, counts["tracking"] + 1))

    def load(self, svc, ports, now):
        return next(self.loads)


def test_flapping_load_scales_up_once_and_does_not_flap_down():
    # Every 5 s the load swings between 60 and 5 for two minutes, then stays at 5.
    loads = [60 if k % 2 == 0 else 5 for k in range(24)] + [5] * 12
    fleet = SimulatedFleet(loads)
    counts = [fleet.step(now=5.0 * k)["tracking"] for k in range(len(loads))]
    assert counts[0] == 6  # ceil(2 x 30 / 10): at once
    assert set(counts[:24]) == {6}, "the fleet flapped with the load"
    assert counts[-1] == 1  # the window passed with nothing but 5 streams: down to ceil(5/10)=1
    assert [(f, t) for _, _, f, t in fleet.decisions] == [(2, 6), (6, 1)]


def test_a_fresh_loop_keeps_what_runs_for_a_window_before_scaling_down():
    fleet = SimulatedFleet([0] * 8)
    counts = [fleet.step(now=5.0 * k)["tracking"] for k in range(8)]
    assert counts == [2, 2, 2, 2, 2, 2, 2, 1]  # 30 s of idle first
