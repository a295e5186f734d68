"""The browser the page's tests drive: Debian's Chromium through Playwright, one per test."""

import pytest
from playwright.async_api import Page, async_playwright

from devstack import tools


@pytest.fixture
async def browser():
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=str(tools.chromium()), args=["--no-sandbox"])
        yield launched
        await launched.close()


@pytest.fixture
async def page(browser) -> Page:
    """A fresh browser context: no token, no storage."""
    context = await browser.new_context(viewport={"width": 1100, "height": 900}, timezone_id="UTC")
    page = await context.new_page()
    yield page
    await context.close()
