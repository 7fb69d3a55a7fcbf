"""Loopback testing: a server on an ephemeral loopback port with a scenario, and a connected client.

For pytest (with pytest-asyncio) in your own CI::

    from hil_server.testing import loopback

    async def test_my_estimator():
        async with loopback("scenarios/us06_25c.yaml") as (server, client):
            await client.subscribe()
            states = await client.next_message(protocol.CellStates, timeout=5)

``speed=0`` (the default here) paces the simulation to the client: as fast as it reads, nothing dropped,
deterministic for a given scenario and seed, no sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from hil_server import __version__
from hil_server.client.client import HilClient
from hil_server.model.store import BUNDLED_MODEL_DIR
from hil_server.sim.run import build_engine
from hil_server.stream.source import EngineSource
from hil_server.transport.tcp import HilServer, ServerConfig, identity_for


async def start_server(
    scenario: str | Path,
    *,
    model_dir: Path = BUNDLED_MODEL_DIR,
    seed: int | None = None,
    record: str | Path | None = None,
    **config: Any,
) -> HilServer:
    """A started server on ``scenario``; ``config``: ServerConfig fields (default: ephemeral port, speed 0).
    ``record``: also write the whole stream to this capture file."""
    engine, sc, meta = build_engine(Path(scenario), model_dir, seed)
    cfg = dataclasses.replace(ServerConfig(port=0, speed=0.0), **config)
    identity = identity_for(Path(scenario), sc.name, meta.model_sha256, "eis-pinn")
    source = EngineSource(engine, identity, __version__)
    recorder = None
    if record is not None:
        from hil_server.capture.format import CaptureWriter, hello_meta

        info = hello_meta(source.hello(), recorder="eis-hil serve --record", scenario_path=str(scenario))
        recorder = CaptureWriter(record, info)
    server = HilServer(source, config=cfg, recorder=recorder)
    try:
        await server.start()
    except BaseException:  # e.g. the port is taken: no half-made capture left to block the next try
        if recorder is not None:
            recorder.close()
            recorder.path.unlink(missing_ok=True)
        raise
    return server


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a server-side condition, e.g. ``lambda: len(server.sessions) == 2`` (an event to wait for,
    not a timed assertion); TimeoutError after ``timeout`` s."""

    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


@contextlib.asynccontextmanager
async def loopback(
    scenario: str | Path,
    *,
    name: str = "loopback-client",
    secret: bytes | None = None,
    **config: Any,
) -> AsyncIterator[tuple[HilServer, HilClient]]:
    server = await start_server(scenario, secret=secret, **config)
    client = await HilClient.connect("127.0.0.1", server.port, name=name, secret=secret)
    try:
        yield server, client
    finally:
        await client.close()
        await server.stop()
