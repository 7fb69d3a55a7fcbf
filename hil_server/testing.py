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
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from hil_server.app import start_server
from hil_server.client.client import HilClient
from hil_server.transport.loopback import connect
from hil_server.transport.tcp import HilServer


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
    pipe: bool = False,
    **config: Any,
) -> AsyncIterator[tuple[HilServer, HilClient]]:
    """A started server and a client connected to it (handshake done). ``pipe``: through an in-process
    pipe (``transport.loopback``) instead of a loopback TCP socket; the server's session is the same."""
    server = await start_server(scenario, secret=secret, **config)
    if pipe:
        reader, writer = await connect(server)
        client = await HilClient.over(reader, writer, name=name, secret=secret)
    else:
        client = await HilClient.connect("127.0.0.1", server.port, name=name, secret=secret)
    try:
        yield server, client
    finally:
        await client.close()
        await server.stop()


__all__ = ["loopback", "start_server", "until"]
