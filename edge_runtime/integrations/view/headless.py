"""The system's Chromium, headless, driven by Playwright: for the browser tests, the display-latency benchmark and
screenshots. Playwright's own browser download is never used; Chromium comes from the system's packages
(`apt-get install chromium`) or `$EDGERT_CHROMIUM`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from edge_runtime.integrations.view.server import ViewError

# As root Chromium needs --no-sandbox; the others keep it from reaching out to the network at every start.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def chromium_path() -> Path:
    """The Chromium binary: $EDGERT_CHROMIUM, else `chromium` or `chromium-browser` on the PATH."""
    override = os.environ.get("EDGERT_CHROMIUM")
    found = override or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found or not Path(found).exists():
        raise ViewError(
            "no Chromium found: install the system package (apt-get install chromium) or set $EDGERT_CHROMIUM"
        )
    return Path(found)


def launch_chromium(playwright: Any) -> Any:
    """A headless Chromium browser from a started `sync_playwright()`; errors name the binary and the reason."""
    path = chromium_path()
    try:
        return playwright.chromium.launch(executable_path=str(path), args=list(CHROMIUM_ARGS), headless=True)
    except Exception as exc:  # Playwright's own error type; the message says why the browser did not start
        raise ViewError(f"Chromium at {path} did not start: {str(exc).splitlines()[0]}") from None
