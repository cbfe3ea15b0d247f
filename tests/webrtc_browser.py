"""Headless Chromium for the browser tests (Debian `chromium`, driven by Playwright's Python package).

Playwright's wheel ships its own driver; we point it at the system Chromium and never download browsers. The
fake media flags give the page a microphone (a beeping test source) without a permission prompt; loopback ICE
candidates are allowed so the browser and the gateway talk over 127.0.0.1 only.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import pytest

#: how long a page action or a wait may take (Playwright's own default for `expect` is 5 s: too short on a busy box)
TIMEOUT_MS = 20000
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",                       # ICE over 127.0.0.1
    "--disable-features=WebRtcHideLocalIpsWithMdns",             # plain host candidates, no mDNS names
]


def skip_without_chromium():
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium is not installed (apt-get install -y chromium chromium-driver; .ci/run does)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        pytest.skip("the playwright Python package is not installed (pip install playwright)")


class Browser:
    """`async with Browser() as page:` a fresh profile in a temp dir, closed and removed afterwards."""

    async def __aenter__(self):
        from playwright.async_api import async_playwright

        self._dir = tempfile.mkdtemp(prefix="chromium-profile-")
        self._pw = await async_playwright().start()
        self._ctx = await self._pw.chromium.launch_persistent_context(
            self._dir, executable_path=CHROMIUM, headless=True, args=FLAGS)
        self.console: list[str] = []
        page = self._ctx.pages[0] if self._ctx.pages else await self._ctx.new_page()
        page.on("console", lambda m: self.console.append(m.text))
        page.set_default_timeout(TIMEOUT_MS)
        return page

    async def __aexit__(self, *exc):
        try:
            await self._ctx.close()
        finally:
            await self._pw.stop()
            shutil.rmtree(self._dir, ignore_errors=True)


def expect(actual: Any) -> Any:
    """Playwright's `expect` (retrying assertions on a locator or page) with the page's timeout.

    Waits go through locators and `expect` rather than `page.wait_for_function("…")`: a string predicate is
    evaluated with `eval` on every poll after the first, which a page whose Content-Security-Policy has no
    'unsafe-eval' (the console's) refuses with an EvalError: the wait then fails only when its condition was not
    already true at the first check, i.e. intermittently and more often on a busy machine."""
    from playwright.async_api import expect as playwright_expect

    playwright_expect.set_options(timeout=TIMEOUT_MS)
    return playwright_expect(actual)
