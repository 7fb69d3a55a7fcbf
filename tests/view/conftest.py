"""Browser tests of the view: Debian's chromium driven by Playwright, in the test's event loop beside the
server and the view. Chromium is a system package: ``.ci/run`` installs it and sets ``EIS_HIL_CI``, so in CI
a missing chromium (or Playwright) fails these tests instead of skipping them.

``EIS_HIL_SCREENSHOTS=1`` makes the tests that take the README's screenshots write them to ``docs/view/``
(off by default, so that ``make test`` leaves the tree as it was)."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "docs" / "view"
CHROMIUM = os.environ.get("EIS_HIL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _missing(what: str) -> None:
    if os.environ.get("EIS_HIL_CI"):
        pytest.fail(f"{what} is missing in CI: .ci/run installs it", pytrace=False)
    pytest.skip(f"{what} is not installed (apt-get install chromium; pip install playwright)")


class Browser:
    """A page in headless chromium that records console errors and uncaught exceptions."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))

    def _console(self, message: Any) -> None:
        if message.type in ("error", "warning"):
            self.errors.append(f"console {message.type}: {message.text}")

    async def screenshot(self, name: str) -> None:
        """``docs/view/NAME.png`` when EIS_HIL_SCREENSHOTS is set."""
        if os.environ.get("EIS_HIL_SCREENSHOTS"):
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            await self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Browser]:
    if CHROMIUM is None:
        _missing("chromium")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _missing("playwright (python package)")
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM)
        try:
            page = await chromium.new_page(viewport={"width": 1400, "height": 1000})
            yield Browser(page)
            await page.close()
        finally:
            await chromium.close()


async def spawn_cli(*argv: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    """``python -m hil_server.cli ARGV`` with unbuffered output, this tree first on the path, and ``env``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hil_server.cli",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


async def line_with(proc: asyncio.subprocess.Process, marker: str) -> str:
    assert proc.stdout is not None
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line, f"the process ended before printing {marker!r}"
        if marker in line:
            return line
