"""A run recorded by the phone simulator (`scripts/phone record`, the Kotlin library) over TLS through
Envoy, then opened on the dashboard page in a real browser: listed, its overview the phone's, its whole
trail drawn."""

import asyncio
import os
import subprocess

from playwright.async_api import expect

from devstack.paths import ROOT
from runtrack.v1 import summary_pb2, summary_pb2_grpc
from tests.e2e.test_web_page import page_url, screenshot
from tests.helpers import token_channel


async def test_a_run_the_phone_simulator_records_is_on_the_page_with_its_trail(stack, page, user_id, token, tmp_path):
    argv = [str(ROOT / "scripts" / "phone"), "record", "--minutes", "1", "--rate", "30", "--user", user_id]
    argv += ["--endpoint", stack.envoy_tls_address, "--ca", str(stack.tls_ca), "--queue", str(tmp_path / "queue.db")]
    done = await asyncio.to_thread(
        subprocess.run,
        argv,
        capture_output=True,
        text=True,
        timeout=180,
        env=dict(os.environ, RUNTRACK_STACK="test"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run_id = done.stdout.split()[-1]
    async with token_channel(stack.envoy_address, token) as ch:
        run = await summary_pb2_grpc.SummaryServiceStub(ch).GetRun(summary_pb2.GetRunRequest(run_id=run_id))
    assert run.overview.point_count == 60 and run.overview.distance_m > 100

    await page.goto(page_url(stack, token))
    await expect(page.locator(f"#runs li[data-run-id='{run_id}']")).to_have_count(1)
    await page.goto(page_url(stack, token, run_id))
    await expect(page.locator("svg[data-points='60']")).to_have_count(1, timeout=20_000)
    await expect(page.locator("#run-overview")).to_contain_text(f"{run.overview.distance_m / 1000:.2f} km")
    await screenshot(stack, page, "phone-run")
