"""Shared fixtures. ``trained_model``: a tiny PINN trained once per session on a few real cells (seconds)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The numpy runtime caches extracted weights; tests must not write into the user's ~/.cache.
os.environ.setdefault("EIS_HIL_CACHE_DIR", tempfile.mkdtemp(prefix="eis-hil-test-cache-"))


@pytest.fixture(autouse=True)
def _no_server_left_running(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fails a test that starts a ``HilServer`` and does not stop it, or whose stopped server still holds a
    session (python-can's ``check_unclosed_virtual_channel``): a leak here is a leak for users too."""
    from hil_server.transport.tcp import HilServer

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
    assert not running, f"the test left {len(running)} server(s) running: stop them (await server.stop())"
    open_sessions = sum(len(s.sessions) for s in stopped)
    assert not open_sessions, f"{open_sessions} session(s) still open after their server stopped"


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
