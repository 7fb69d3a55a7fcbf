"""The in-process pipe (transport/loopback.py): a real server session over it, and the manipulator's
split, delay, corrupt and drop, each deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import protocol as p
from hil_server.client.client import HilClient
from hil_server.testing import loopback, start_server
from hil_server.transport.loopback import Manipulator, connect
from hil_server.transport.tcp import Session

NO_CELLS = np.zeros(0, dtype=np.uint16)
US06 = Path(__file__).resolve().parents[2] / "scenarios" / "us06_25c.yaml"


def test_the_manipulator_splits_drops_and_corrupts_by_count() -> None:
    assert Manipulator()(b"abcdef") == [b"abcdef"]
    assert Manipulator(split=4)(b"abcdef") == [b"abcd", b"ef"]
    assert Manipulator(split=1, drop_every=2)(b"abcd") == [b"a", b"c"]
    assert Manipulator(split=2, corrupt_every=2)(b"abcdef") == [b"ab", b"bd", b"ef"]


@pytest.mark.asyncio
async def test_a_client_over_the_pipe_gets_the_same_session_as_over_tcp() -> None:
    async with loopback(US06, pipe=True) as (server, client):
        await client.subscribe(mask=p.SubscribeMask.CELL_STATES)
        states = await client.next_message(p.CellStates, timeout=10)
        assert states.records.size > 0
        (session,) = server.sessions.values()
        assert isinstance(session, Session)
        assert session.writer.get_extra_info("peername")[0] == "loopback"
        assert client.gaps == 0
        assert not client.errors


@pytest.mark.asyncio
async def test_the_server_reads_a_client_byte_by_byte_and_late() -> None:
    server = await start_server(US06)
    try:
        reader, writer = await connect(server, to_server=Manipulator(split=1, delay_s=0.001))
        client = await HilClient.over(reader, writer, name="slow-line")
        await client.subscribe(mask=p.SubscribeMask.CELL_STATES)
        await client.next_message(p.CellStates, timeout=10)
        assert server.rx_bad == 0
        await client.close()
    finally:
        await server.stop()


@pytest.mark.asyncio
async def test_corrupted_bytes_to_the_server_are_counted_and_the_session_goes_on() -> None:
    server = await start_server(US06)
    wire = Manipulator()
    try:
        reader, writer = await connect(server, to_server=wire)
        client = await HilClient.over(reader, writer, name="noisy-line")
        wire.corrupt_every = wire.chunks + 1  # the next write's sync byte is hit: the CONTROL is garbage
        writer.write(p.FrameEncoder().encode(p.Control(p.ControlCommand.PAUSE)))
        wire.corrupt_every = 0
        ack = await client.control(p.Control(p.ControlCommand.PAUSE))  # the garbage is reported before it
        assert isinstance(ack, p.Ack)
        assert server.rx_bad == 1
        assert server.sim_state is p.SimState.PAUSED
        assert [e.code for e in client.server_errors] == [p.ErrorCode.GARBAGE]
        await client.close()
    finally:
        await server.stop()


@pytest.mark.asyncio
async def test_writes_lost_on_the_way_to_the_client_are_gaps_in_seq() -> None:
    server = await start_server(US06)
    wire = Manipulator()
    try:
        reader, writer = await connect(server, to_client=wire)
        client = await HilClient.over(reader, writer, name="lossy-line")
        wire.drop_every = 2
        # sent raw: its ACK may be among the writes lost
        client.send_raw(client.encoder.encode(p.Subscribe(p.SubscribeMask.CELL_STATES, 1, 0, NO_CELLS)))
        while client.gaps == 0:
            await client.next_frame(timeout=10)
        assert server.rx_bad == 0
        await client.close()
    finally:
        await server.stop()
