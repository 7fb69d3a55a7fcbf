"""Every CONTROL command in every SimState a TCP server can be in, against SPEC.md section 6.3 (which
``tools/gen_spec.py`` generates from ``protocol.SIM_TRANSITIONS``): ACK and the state given, or NAK
NOT_ALLOWED_IN_STATE and nothing changed."""

from __future__ import annotations

from pathlib import Path

import pytest

import protocol as p
from hil_server.transport.tcp import HilServer
from protocol import SIM_TRANSITIONS

from .conftest import END_US, run_until, serving

C, S = p.ControlCommand, p.SimState
VALID = {  # a command with arguments in range: what a NAK then can only be about is the state
    C.START: p.Control(C.START),
    C.PAUSE: p.Control(C.PAUSE),
    C.RESUME: p.Control(C.RESUME),
    C.STOP: p.Control(C.STOP),
    C.SEEK: p.Control.seek(2_000_000),
    C.SET_LOAD_CURRENT: p.Control.set_load_current(1_000, cell=1),
    C.SET_AMBIENT_TEMPERATURE: p.Control.set_ambient_temperature(30_000),
    C.INJECT_FAULT: p.Control.inject_fault(p.FaultKind.GAIN, cell=0, severity_ppm=500_000),
    C.CLEAR_FAULT: p.Control.clear_fault(0),
    C.REQUEST_SPECTRUM: p.Control.request_spectrum(cell=2),
    C.SET_SPEED: p.Control.set_speed(2_000_000),
}
ENTERED = {  # how a client brings a fresh server (RUNNING, nobody streaming) into each state
    S.RUNNING: (),
    S.PAUSED: (C.PAUSE,),
    S.STOPPED: (C.STOP,),
    S.FINISHED: (),
}


def test_every_command_has_a_valid_example() -> None:
    assert set(VALID) == set(C)


async def _enter(server: HilServer, client: object, state: p.SimState) -> None:
    from hil_server.client.client import HilClient

    assert isinstance(client, HilClient)
    if state is S.FINISHED:
        assert isinstance(await client.control(p.Control.seek(END_US - 1_000_000)), p.Ack)
        await run_until(server, lambda: server.sim_state is S.FINISHED)
    for cmd in ENTERED[state]:
        assert isinstance(await client.control(VALID[cmd]), p.Ack)
    assert server.sim_state is state


@pytest.mark.parametrize("command", list(C), ids=[c.name for c in C])
@pytest.mark.parametrize("state", list(ENTERED), ids=[s.name for s in ENTERED])
@pytest.mark.asyncio
async def test_command_in_state(scenario: Path, state: p.SimState, command: p.ControlCommand) -> None:
    async with serving(scenario) as (server, client):
        await _enter(server, client, state)
        time_before = server.source.time_us
        reply = await client.control(VALID[command])
        target = SIM_TRANSITIONS[state].get(command)
        assert reply.command == command
        if target is None:
            assert isinstance(reply, p.Nak), reply
            assert reply.code == p.ErrorCode.NOT_ALLOWED_IN_STATE
            assert server.sim_state is state
            assert server.source.time_us == time_before
        else:
            assert isinstance(reply, p.Ack), reply
            assert server.sim_state is target  # nobody is streaming: nothing else moves the state
            if command == C.START:
                assert server.source.time_us == 0  # a new run
            if command == C.SEEK:
                assert reply.result == server.source.time_us == 2_000_000


@pytest.mark.asyncio
async def test_idle_is_not_a_tcp_server_state_and_its_row_refuses_everything(scenario: Path) -> None:
    assert SIM_TRANSITIONS[S.IDLE] == {}
    async with serving(scenario) as (server, _):
        assert server.sim_state is S.RUNNING  # a server starts RUNNING (SPEC.md 6.3)


@pytest.mark.asyncio
async def test_unknown_command_is_refused_in_every_state_before_the_state_is_looked_at(
    scenario: Path,
) -> None:
    async with serving(scenario) as (server, client):
        for cmd in (C.STOP, None):
            nak = await client.control(p.Control(0x7E))
            assert isinstance(nak, p.Nak)
            assert (nak.command, nak.code) == (0x7E, p.ErrorCode.UNKNOWN_COMMAND)
            if cmd is not None:
                assert isinstance(await client.control(p.Control(cmd)), p.Ack)
        assert server.sim_state is S.STOPPED
