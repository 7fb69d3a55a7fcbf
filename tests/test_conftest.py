"""The leak fixture of ``tests/conftest.py`` fails what it should: a pending task, a server left running;
and lets through a test marked ``leaks`` (run in a fresh pytest with the same conftest)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]

LEAKY = f"""
import asyncio
import pytest

@pytest.mark.asyncio
async def test_leaves_a_task_pending():
    asyncio.get_running_loop().create_task(asyncio.sleep(3600), name="forgotten")

@pytest.mark.asyncio
async def test_leaves_a_server_running():
    from hil_server.testing import start_server
    await start_server({str(ROOT / "scenarios" / "us06_25c.yaml")!r})

@pytest.mark.asyncio
@pytest.mark.leaks("on purpose, to check the marker")
async def test_says_it_leaks():
    asyncio.get_running_loop().create_task(asyncio.sleep(3600))

@pytest.mark.asyncio
async def test_cleans_up():
    task = asyncio.get_running_loop().create_task(asyncio.sleep(3600))
    task.cancel()
"""


def test_the_leak_fixture_fails_what_is_left_open(pytester: pytest.Pytester) -> None:
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text())
    pytester.makeini(
        "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n"
        "markers =\n    leaks(why)\n"
    )
    pytester.makepyfile(test_leaky=LEAKY)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, errors=2)
    out = result.stdout.str()
    assert "1 asyncio task(s) left pending (cancelled now): sleep" in out
    assert "1 server(s) left running" in out
