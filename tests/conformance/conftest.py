"""A live server on a one-minute scenario for the conformance suite, reached through the in-process pipe (the
server's sessions are the ones TCP clients get). At speed 0 the simulation steps only while some client is
subscribed, so a test's controller that never subscribes sees the time line stand still unless it asks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import protocol as p
from hil_server.client.client import HilClient
from hil_server.testing import loopback, until
from hil_server.transport.loopback import connect
from hil_server.transport.tcp import HilServer

SCENARIO = """\
name: conformance
seed: 3
step_rate_hz: 10
eis:
  interval_s: 1
  mode: instant
  frequencies: {min_hz: 1, max_hz: 1000, points_per_decade: 2}
cells:
  count: 3
  profile: zhang2020
  soc: 0.8
timeline:
  - rest: {duration_s: 5}
  - constant_current: {current_a: 0.01, duration_s: 55}
faults:
  - {kind: gain, start_s: 2, duration_s: 3, cells: [0], signal: voltage, gain: 1.01}
"""
END_US = 60_000_000
"""When the scenario finishes."""
SCENARIO_FAULT_ID = 1
"""The gain fault of the scenario: cell 0, 2..5 s."""


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    path = tmp_path / "conformance.yaml"
    path.write_text(SCENARIO, encoding="utf-8")
    return path


@contextlib.asynccontextmanager
async def serving(scenario: Path, **config: Any) -> AsyncIterator[tuple[HilServer, HilClient]]:
    async with loopback(scenario, pipe=True, name="conformance", **config) as (server, client):
        try:
            yield server, client
        finally:
            _SEEN.pop(id(client), None)


async def other_client(server: HilServer, name: str = "other") -> HilClient:
    reader, writer = await connect(server)
    return await HilClient.over(reader, writer, name=name)


async def run_until(server: HilServer, predicate: Any, mask: int = p.SubscribeMask.ALL) -> None:
    """Let the simulation step (a subscribed client) until ``predicate()``, then stand still again."""
    before = len(server.sessions)
    driver = await other_client(server, "driver")
    try:
        await driver.subscribe(mask=mask)
        await until(predicate, 20)
    finally:
        await driver.close()
    await until(lambda: len(server.sessions) == before)


def burst(client: HilClient, *messages: p.Message) -> list[int]:
    """Send ``messages`` in one write (the server handles them before its next step); their seqs."""
    seqs = []
    data = b""
    for m in messages:
        seqs.append(client.encoder.next_seq)
        data += client.encoder.encode(m)
    client.send_raw(data)
    return seqs


async def replies(client: HilClient, seqs: list[int], timeout: float = 10) -> dict[int, p.Ack | p.Nak]:
    """The ACK or NAK of each of ``seqs`` (sent with ``burst``); other frames are kept in ``client.seen``."""
    got: dict[int, p.Ack | p.Nak] = {}
    async with asyncio.timeout(timeout):
        while len(got) < len(seqs):
            frame = await client.next_frame()
            msg = frame.message
            if isinstance(msg, p.Ack | p.Nak) and msg.ack_seq in seqs:
                got[msg.ack_seq] = msg
            else:
                seen(client).append(frame)
    return got


_SEEN: dict[int, list[p.Frame]] = {}


def seen(client: HilClient) -> list[p.Frame]:
    """Frames read past while waiting for replies, in order (for ``frames_until``)."""
    return _SEEN.setdefault(id(client), [])


async def frames_until(
    client: HilClient, done: Any, timeout: float = 30, limit: int = 100_000
) -> list[p.Frame]:
    """Frames (those read past by ``replies`` first) up to and including the first ``done(frame)``; fails
    after ``timeout`` s in all (heartbeats keep coming, so a per-frame timeout would never fire)."""
    out: list[p.Frame] = []
    backlog = seen(client)
    async with asyncio.timeout(timeout):
        for _ in range(limit):
            frame = backlog.pop(0) if backlog else await client.next_frame()
            out.append(frame)
            if done(frame):
                return out
    raise AssertionError(f"not reached in {limit} frames")


def check_ground_truth(frames: list[p.Frame]) -> set[int]:
    """SPEC.md 6.4: every END has a START, and every cell flagged FAULT_ACTIVE or MEASUREMENT_FAULT in a
    CELL_STATES is covered by a fault started before (and not ended). The faults still active at the end."""
    active: dict[int, set[int]] = {}
    flagged = int(p.CellFlags.FAULT_ACTIVE | p.CellFlags.MEASUREMENT_FAULT)
    for frame in frames:
        msg = frame.message
        if isinstance(msg, p.FaultEvent):
            if msg.phase == p.FaultPhase.START:
                assert msg.fault_id not in active, f"fault {msg.fault_id} started twice (seq {frame.seq})"
                active[msg.fault_id] = {int(c) for c in msg.cells}
            else:
                assert msg.fault_id in active, f"END of fault {msg.fault_id} without START (seq {frame.seq})"
                del active[msg.fault_id]
        elif isinstance(msg, p.CellStates):
            covered = set().union(*active.values()) if active else set()
            for rec in msg.records:
                if int(rec["flags"]) & flagged:
                    assert int(rec["cell"]) in covered, (
                        f"cell {rec['cell']} flagged at t={msg.t_sim_us}, no fault started (seq {frame.seq})"
                    )
    return set(active)


def acked(reply: p.Ack | p.Nak) -> p.Ack:
    """``reply``, which must be an ACK."""
    assert isinstance(reply, p.Ack), reply
    return reply


async def ack(client: HilClient, control: p.Control) -> int:
    """Send ``control``; it must be acknowledged: its ``result``."""
    return acked(await client.control(control)).result
