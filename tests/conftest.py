"""Shared fixtures. ``trained_model``: a tiny PINN trained once per session on a few real cells (seconds)."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The numpy runtime caches extracted weights; tests must not write into the user's ~/.cache.
os.environ.setdefault("EIS_HIL_CACHE_DIR", tempfile.mkdtemp(prefix="eis-hil-test-cache-"))


LEAK_SETTLE_TURNS = 20
"""Event-loop turns a task still finishing when its test returns gets before it counts as left open."""


def _pending_tasks(loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks(loop) if not t.done()]


def _settle(loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[Any]]:
    """The tasks still pending after a few turns of ``loop``; those are cancelled (and awaited), so the
    next test does not inherit them."""

    async def turns() -> None:
        for _ in range(LEAK_SETTLE_TURNS):
            if not [t for t in _pending_tasks(loop) if t is not asyncio.current_task()]:
                return
            await asyncio.sleep(0)

    loop.run_until_complete(turns())
    left = _pending_tasks(loop)
    for t in left:
        t.cancel()
    if left:
        loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
    return left


@pytest.fixture(autouse=True)
def _nothing_left_open(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fails a test that leaves a server, a session or an asyncio task open (python-can's
    ``check_unclosed_virtual_channel``): a ``HilServer`` started and not stopped, a stopped server that still
    holds a session (TCP or an attached serial port), and, in an async test, a task of the test's event
    loop still pending once the test and its fixtures are done. A leak here is a leak for users too.
    A test that leaks on purpose says so with ``@pytest.mark.leaks("why")``."""
    from hil_server.transport.tcp import HilServer

    marker = request.node.get_closest_marker("leaks")
    if marker is not None:
        assert marker.args, "@pytest.mark.leaks needs the reason as its argument"
        yield
        return
    loop: asyncio.AbstractEventLoop | None = None
    asyncio_marker = request.node.get_closest_marker("asyncio")
    if asyncio_marker is not None:
        # pytest-asyncio's runner of this test's loop (a private fixture name of pytest-asyncio 1.x): set up
        # before this fixture, so it is torn down after it, and after the test's async fixtures.
        scope = asyncio_marker.kwargs.get("loop_scope") or "function"
        loop = request.getfixturevalue(f"_{scope}_scoped_runner").get_loop()
    running: list[HilServer] = []
    stopped: list[HilServer] = []
    start, stop = HilServer.start, HilServer.stop

    async def counted_start(self: HilServer, *, listen: bool = True) -> None:
        await start(self, listen=listen)
        running.append(self)

    async def counted_stop(self: HilServer, reason: str = "server shutting down") -> None:
        await stop(self, reason)
        if self in running:
            running.remove(self)
            stopped.append(self)

    monkeypatch.setattr(HilServer, "start", counted_start)
    monkeypatch.setattr(HilServer, "stop", counted_stop)
    yield
    left = _settle(loop) if loop is not None else []
    problems = []
    if running:
        problems.append(f"{len(running)} server(s) left running: stop them (await server.stop())")
    if open_sessions := sum(len(s.sessions) for s in stopped):
        problems.append(f"{open_sessions} session(s) still open after their server stopped")
    if left:
        names = sorted(t.get_coro().__qualname__ for t in left)  # type: ignore[union-attr]
        problems.append(f"{len(left)} asyncio task(s) left pending (cancelled now): {', '.join(names)}")
    assert not problems, "the test left things open: " + "; ".join(problems)


@pytest.fixture(autouse=True)
def _structlog_config_restored():  # type: ignore[no-untyped-def]
    """A test that runs a command in-process configures logging (level, renderer): the next test must not
    inherit it, or ``structlog.testing.capture_logs`` misses what a raised level filters out."""
    import structlog

    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture(scope="session")
def small_spectra():  # type: ignore[no-untyped-def]
    from hil_server.eis_data import DataNotFoundError, load_all

    try:
        spectra = load_all().clean()
    except DataNotFoundError as exc:
        pytest.skip(f"measured data not available: {exc}")
    keep = set()
    for source in spectra.sources():
        keep.update(spectra.filter(source=source).cells()[:4])
    # every 4th spectrum of 4 cells per source: enough to train a few epochs in seconds
    return spectra.filter(cells=keep)[::4]


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory, small_spectra) -> Path:  # type: ignore[no-untyped-def]
    from hil_server.model.train import TrainConfig, train

    out = tmp_path_factory.mktemp("model")
    train(small_spectra, out, TrainConfig(epochs=8, batch_size=128, val_fraction=0.3))
    return out
