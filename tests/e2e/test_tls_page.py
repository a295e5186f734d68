"""The page over TLS in Chromium trusting the local CA (an NSS database in the browser's home, as
Chromium on Linux reads it): it signs in and lists the runs; a browser without the CA refuses."""

import subprocess

import pytest
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import async_playwright

from devstack import tools


def nss_home(tmp_path, ca) -> str:
    db = tmp_path / ".pki" / "nssdb"
    db.mkdir(parents=True)
    certutil = str(tools.certutil())
    subprocess.run([certutil, "-N", "-d", f"sql:{db}", "--empty-password"], check=True, timeout=30)
    subprocess.run(
        [certutil, "-A", "-d", f"sql:{db}", "-t", "C,,", "-n", "runtrack-local-ca", "-i", str(ca)],
        check=True,
        timeout=30,
    )
    return str(tmp_path)


async def test_the_page_over_tls_signs_in_and_lists_the_runs_with_the_local_ca_trusted(stack, tmp_path, token):
    home = nss_home(tmp_path, stack.tls_ca)
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=str(tools.chromium()), args=["--no-sandbox"], env={"HOME": home}
        )
        page = await browser.new_page()
        response = await page.goto(f"https://{stack.envoy_tls_address}/#token={token}")
        assert response is not None and response.ok
        assert response.headers["strict-transport-security"] == "max-age=31536000"
        await page.wait_for_selector("#runs-view", state="visible")
        assert "#token=" not in page.url
        await browser.close()


async def test_a_browser_without_the_local_ca_refuses_the_page(stack, tmp_path):
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=str(tools.chromium()), args=["--no-sandbox"], env={"HOME": str(tmp_path)}
        )
        page = await browser.new_page()
        with pytest.raises(PlaywrightError, match="ERR_CERT_AUTHORITY_INVALID"):
            await page.goto(f"https://{stack.envoy_tls_address}/")
        await browser.close()
