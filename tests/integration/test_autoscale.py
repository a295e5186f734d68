"""The autoscaler on the real stack: phones arrive, replicas are added; they leave, replicas are
removed after the window; no call fails and no point is lost. And the replicas' /metrics."""

import asyncio
import itertools
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

from devstack.autoscale import Autoscaler, Policy, scrape
from devstack.paths import ROOT
from devstack.stack import metrics_port
from tests.integration.faults import new_run, paced, report, stored_trail
from tests.integration.test_scale_and_rollout import unary_traffic


def test_every_replica_serves_prometheus_metrics_on_its_own_port(stack):
    for svc, ports in stack.replica_ports().items():
        for port in ports:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port(port)}/metrics", timeout=5) as reply:
                text = reply.read().decode()
            for family in ("grpc_server_started_total", "grpc_server_handled_total", "grpc_server_handling_seconds"):
                assert f"# TYPE {family.removesuffix('_total')}" in text, (svc, family)
            if svc == "tracking":
                for family in (
                    "runtrack_streams_open",
                    "runtrack_points_stored_total",
                    "runtrack_point_durable_seconds",
                ):
                    assert family in text
            else:
                assert "runtrack_pg_pool_in_use" in text


def test_status_json_lists_every_process_with_its_pid_and_metrics_port(stack):
    out = subprocess.run(
        [sys.executable, "-m", "devstack", "status", "--json"],
        cwd=ROOT,
        env=dict(os.environ, RUNTRACK_STACK="test"),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    status = json.loads(out.stdout)
    processes = status["processes"]
    assert status["postgres"]["primary"]["pid"] == stack.pg.pid()
    assert status["postgres"]["primary"]["address"] == f"127.0.0.1:{stack.spec.pg_port}"
    kinds = [p["kind"] for p in processes]
    assert {"cql-node", "postgresql", "envoy", "tracking-replica", "summary-replica"} <= set(kinds)
    for p in processes:
        if p["kind"].endswith("-replica"):
            port = int(p["address"].rsplit(":", 1)[1])
            assert p["pid"] == stack.replica_pid(p["kind"].split("-")[0], port)
            assert p["metrics_port"] == metrics_port(port) and p["envoy_health"] == "healthy"
            assert p["load"] is not None
        elif p["kind"] == "traces":  # the test stack starts Jaeger for the tests that read traces (run last)
            assert p["pid"] or not stack.spec.traces_at_up, p
        elif p["kind"] != "autoscaler":
            assert p["pid"], p


async def test_phones_arriving_add_tracking_replicas_and_leaving_removes_them_with_no_failed_call(stack, channel):
    policy = Policy(target=4, min_replicas=1, max_replicas=3, scale_down_window_s=6)
    scaler = Autoscaler(
        {"tracking": policy}, replicas=stack.replica_ports, scale=stack.scale, metrics_port=metrics_port, interval_s=1
    )
    stop_scaler = threading.Event()
    loop_thread = threading.Thread(target=scaler.run, args=(stop_scaler,), daemon=True)
    counts: list[tuple[float, int]] = []
    stop_traffic, failures, calls = asyncio.Event(), [], []
    traffic = [asyncio.create_task(unary_traffic(channel, stop_traffic, failures, calls)) for _ in range(2)]
    start = time.monotonic()

    async def watch():
        while not stop_traffic.is_set():
            counts.append((round(time.monotonic() - start, 1), len(stack.replica_ports()["tracking"])))
            await asyncio.sleep(0.5)

    watcher = asyncio.create_task(watch())
    loop_thread.start()
    try:
        # 10 phones, a point every 0.1 s for 20 s: 10 open streams against 4 per replica.
        runs = [new_run(channel, 200) for _ in range(10)]
        uploads = [asyncio.create_task(r.upload(paced(pts, 0.1))) for r, pts in runs]
        finished: list[float] = []
        for upload in uploads:
            upload.add_done_callback(lambda _: finished.append(time.monotonic() - start))
        await asyncio.wait_for(asyncio.gather(*uploads), timeout=120)
        peak = max(n for _, n in counts)
        # The phones are gone: after the window the fleet shrinks to the minimum.
        deadline = time.monotonic() + 60
        while len(stack.replica_ports()["tracking"]) > policy.min_replicas:
            assert time.monotonic() < deadline, f"not scaled down: {scaler.decisions}"
            await asyncio.sleep(0.5)
        await asyncio.sleep(1)
    finally:
        stop_scaler.set()
        # Until the loop is out of a scale it began (a retire waits for its replica's drain): the
        # stack's own scale below must not race it for ports.
        await asyncio.to_thread(loop_thread.join, 180)
        assert not loop_thread.is_alive(), "the autoscaler did not stop"
        stop_traffic.set()
        await asyncio.gather(*traffic, watcher)
    try:
        assert peak == 3, f"replicas over time {counts}"
        assert failures == [], failures[:5]
        for recorder, pts in runs:
            assert list(await stored_trail(channel, recorder.run_id)) == pts, "a point was lost or changed"
        changes = [(round(t - start, 1), svc, a, b) for t, svc, a, b in scaler.decisions]
        # Up once to the maximum while the phones are there; then only down (one step or several, as the
        # streams close one by one), never back up, and none within a window of the first phone leaving
        # (until then every round saw 10 streams; a round is 1 s, hence the 2 s of slack).
        assert changes[0][2:] == (2, 3), changes
        downs = changes[1:]
        assert downs and downs[-1][3] == policy.min_replicas, changes
        assert all(b < a for _, _, a, b in downs), changes
        assert all(d[2] == prev[3] for prev, d in itertools.pairwise(changes)), changes
        assert downs[0][0] >= min(finished) + policy.scale_down_window_s - 2, (sorted(finished), changes)
        report(
            stack,
            "autoscale",
            decisions=changes,
            phones_left_s=[round(min(finished), 1), round(max(finished), 1)],
            unary_calls=len(calls),
            failed_calls=len(failures),
            points_sent=sum(len(p) for _, p in runs),
            points_lost=0,
            stream_retries=sum(r.stats.retries for r, _ in runs),
        )
    finally:
        await asyncio.to_thread(stack.scale, {"tracking": 2})


def test_scrape_reads_a_replicas_open_streams(stack):
    port = stack.replica_ports()["tracking"][0]
    sample = scrape(metrics_port(port))
    assert sample["streams_open"] >= 0 and sample["handled"] >= 0
