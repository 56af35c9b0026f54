"""One headless Chromium for the browser tests of this folder (system package; fails, never skips, without it)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from edge_runtime.integrations.view.headless import launch_chromium


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = launch_chromium(pw)  # a ViewError naming the binary and the reason fails the test
        yield chromium
        chromium.close()


def open_page(browser: Any, url: str) -> Any:
    """A page on `url`. bypass_csp: Playwright's wait_for_function evaluates strings, which the page forbids."""
    page = browser.new_page(viewport={"width": 900, "height": 700}, bypass_csp=True)
    page.goto(url)
    return page
