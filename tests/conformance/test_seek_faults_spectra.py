"""SEEK and what it does to faults and spectrum requests acknowledged before it, fault ids and spectrum ids
(SPEC.md 6.4 to 6.6), on a live server. Each case sends its commands in one burst, the way the issue that
asked for these rules found the server breaking them."""

from __future__ import annotations

from pathlib import Path

import pytest

import protocol as p

from .conftest import (
    SCENARIO_FAULT_ID,
    ack,
    acked,
    burst,
    check_ground_truth,
    frames_until,
    replies,
    serving,
)

C = p.ControlCommand
STATES_EVENTS = p.SubscribeMask.CELL_STATES | p.SubscribeMask.FAULT_EVENT
INJECT = p.Control.inject_fault(p.FaultKind.CONTACT_RESISTANCE, cell=1, severity_ppm=500_000)


def _states_at(t_us: int) -> object:
    return lambda f: isinstance(f.message, p.CellStates) and f.message.t_sim_us >= t_us


def _states_exactly(t_us: int) -> object:
    return lambda f: isinstance(f.message, p.CellStates) and f.message.t_sim_us == t_us


@pytest.mark.parametrize("paused", [False, True], ids=["running", "paused"])
@pytest.mark.asyncio
async def test_a_fault_injected_just_before_a_seek_gets_its_start(scenario: Path, paused: bool) -> None:
    async with serving(scenario, speed=20.0) as (server, client):
        await client.subscribe(mask=STATES_EVENTS)
        if paused:
            assert isinstance(await client.control(p.Control(C.PAUSE)), p.Ack)
        here = server.source.time_us
        inject, seek = burst(client, INJECT, p.Control.seek(here + 2_000_000))
        got = await replies(client, [inject, seek])
        fault_id = acked(got[inject]).result
        reached = acked(got[seek]).result
        assert isinstance(got[inject], p.Ack)
        assert isinstance(got[seek], p.Ack)
        if paused:
            assert isinstance(await client.control(p.Control(C.RESUME)), p.Ack)
        frames = await frames_until(client, _states_at(reached + 1_000_000))
        starts = [f.message for f in frames if isinstance(f.message, p.FaultEvent) and f.message.phase == 1]
        assert [e.fault_id for e in starts if e.fault_id == fault_id] == [fault_id]
        assert next(e for e in starts if e.fault_id == fault_id).t_sim_us == reached
        assert fault_id in check_ground_truth(frames)


@pytest.mark.parametrize("paused", [False, True], ids=["running", "paused"])
@pytest.mark.parametrize("back", [False, True], ids=["forward", "backward"])
@pytest.mark.asyncio
async def test_an_acknowledged_spectrum_request_survives_a_seek(
    scenario: Path, paused: bool, back: bool
) -> None:
    async with serving(scenario, speed=20.0) as (server, client):
        await client.subscribe(mask=p.SubscribeMask.CELL_STATES | p.SubscribeMask.EIS_SPECTRUM)
        await frames_until(client, _states_at(3_000_000))
        if paused:
            assert isinstance(await client.control(p.Control(C.PAUSE)), p.Ack)
        here = server.source.time_us
        target = here - 2_000_000 if back else here + 1_000_000
        request, seek = burst(client, p.Control.request_spectrum(cell=2), p.Control.seek(target))
        got = await replies(client, [request, seek])
        assert isinstance(got[request], p.Ack)
        assert isinstance(got[seek], p.Ack)
        promised = acked(got[request]).result
        if paused:
            assert isinstance(await client.control(p.Control(C.RESUME)), p.Ack)
        frames = await frames_until(
            client,
            lambda f: (
                isinstance(f.message, p.EisSpectrum)
                and (f.message.cell, f.message.spectrum_id) == (2, promised)
            ),
        )
        spectrum = frames[-1].message
        assert isinstance(spectrum, p.EisSpectrum)
        assert spectrum.t_sim_us == acked(got[seek]).result + 100_000  # the first step after the target


@pytest.mark.asyncio
async def test_injected_fault_ids_are_never_given_twice(scenario: Path) -> None:
    async with serving(scenario, speed=20.0) as (_, client):
        await client.subscribe(mask=STATES_EVENTS)
        frames = await frames_until(client, _states_at(3_000_000))
        ids = []
        first, back = burst(client, INJECT, p.Control.seek(1_000_000))
        got = await replies(client, [first, back])
        ids.append(acked(got[first]).result)
        ids.append(await ack(client, INJECT))  # after the backward seek voided the first
        assert isinstance(await client.control(p.Control(C.STOP)), p.Ack)
        assert isinstance(await client.control(p.Control(C.START)), p.Ack)
        ids.append(await ack(client, INJECT))  # a new run
        assert len(set(ids)) == 3
        assert all(i > 0x10000 for i in ids)
        frames += await frames_until(client, _states_exactly(100_000))
        frames += await frames_until(client, _states_at(1_000_000))
        check_ground_truth(frames)


@pytest.mark.asyncio
async def test_a_backward_seek_ends_what_it_voids_and_restarts_what_it_reaches(scenario: Path) -> None:
    """The scenario's fault (2..5 s) is active at 4 s; an injected one (at 4 s) is voided by a seek to 3 s:
    END for it, nothing for the scenario fault (active at both times); after a seek to 1 s its END."""
    async with serving(scenario, speed=20.0) as (_, client):
        await client.subscribe(mask=STATES_EVENTS)
        frames = await frames_until(client, _states_at(4_000_000))
        assert isinstance(await client.control(p.Control(C.PAUSE)), p.Ack)
        injected = await ack(client, INJECT)
        assert isinstance(await client.control(p.Control(C.RESUME)), p.Ack)
        frames += await frames_until(client, lambda f: isinstance(f.message, p.FaultEvent))
        assert isinstance(await client.control(p.Control.seek(3_000_000)), p.Ack)
        frames += await frames_until(client, _states_exactly(3_100_000))
        assert isinstance(await client.control(p.Control.seek(1_000_000)), p.Ack)
        frames += await frames_until(client, _states_exactly(1_100_000))
        frames += await frames_until(client, _states_at(2_500_000))
        assert check_ground_truth(frames) == {SCENARIO_FAULT_ID}  # started again after the seek to 1 s
        events = [
            (f.message.fault_id, f.message.phase) for f in frames if isinstance(f.message, p.FaultEvent)
        ]
        assert events == [
            (SCENARIO_FAULT_ID, 1),
            (injected, 1),
            (injected, 2),  # voided by the seek to 3 s
            (SCENARIO_FAULT_ID, 2),  # not active at 1 s
            (SCENARIO_FAULT_ID, 1),  # at 2 s again, same id
        ]


@pytest.mark.parametrize("paused", [False, True], ids=["running", "paused"])
@pytest.mark.asyncio
async def test_clear_fault_counts_each_fault_once(scenario: Path, paused: bool) -> None:
    async with serving(scenario, speed=20.0) as (_, client):
        await client.subscribe(mask=STATES_EVENTS)
        if paused:
            assert isinstance(await client.control(p.Control(C.PAUSE)), p.Ack)
        fault_id = await ack(client, INJECT)
        by_id, every = burst(client, p.Control.clear_fault(fault_id), p.Control.clear_fault(0))
        got = await replies(client, [by_id, every])
        assert (acked(got[by_id]).result, acked(got[every]).result) == (1, 0)
        assert await ack(client, p.Control.clear_fault(0)) == 0


@pytest.mark.asyncio
async def test_spectrum_ids_never_repeat_across_seeks_and_restarts(scenario: Path) -> None:
    async with serving(scenario, speed=20.0) as (_, client):
        await client.subscribe(mask=p.SubscribeMask.CELL_STATES | p.SubscribeMask.EIS_SPECTRUM)
        frames = await frames_until(client, _states_at(4_000_000))
        assert isinstance(await client.control(p.Control.seek(1_000_000)), p.Ack)
        frames += await frames_until(client, _states_exactly(1_100_000))  # the first step after the seek
        frames += await frames_until(client, _states_at(4_000_000))
        assert isinstance(await client.control(p.Control(C.STOP)), p.Ack)
        assert isinstance(await client.control(p.Control(C.START)), p.Ack)
        frames += await frames_until(client, _states_exactly(100_000))  # the first step of the new run
        frames += await frames_until(client, _states_at(4_000_000))
        for cell in range(3):
            ids = [
                f.message.spectrum_id
                for f in frames
                if isinstance(f.message, p.EisSpectrum) and f.message.cell == cell
            ]
            assert len(ids) >= 8
            assert ids == list(
                range(ids[0], ids[0] + len(ids))
            )  # one more each time: none twice, none skipped
        # all cells in one request: the ACK gives cell 0's id; a second request before the next step: the same
        assert isinstance(await client.control(p.Control(C.PAUSE)), p.Ack)
        first = await ack(client, p.Control.request_spectrum())
        assert await ack(client, p.Control.request_spectrum(cell=0)) == first
        assert isinstance(await client.control(p.Control(C.RESUME)), p.Ack)
        more = await frames_until(
            client,
            lambda f: (
                isinstance(f.message, p.EisSpectrum) and (f.message.cell, f.message.spectrum_id) == (0, first)
            ),
        )
        asked = more[-1].message
        assert isinstance(asked, p.EisSpectrum)
        t_us = asked.t_sim_us
        more += await frames_until(client, _states_at(t_us + 100_000))
        at_t = [
            f.message for f in more if isinstance(f.message, p.EisSpectrum) and f.message.t_sim_us == t_us
        ]
        assert sorted(m.cell for m in at_t) == [0, 1, 2]  # one spectrum per cell


@pytest.mark.asyncio
async def test_seek_rounds_to_the_nearest_step_ties_to_the_later(scenario: Path) -> None:
    async with serving(scenario) as (_, client):
        for target, reached in [(1_049_999, 1_000_000), (1_050_000, 1_100_000), (1_050_001, 1_100_000)]:
            ack = await client.control(p.Control.seek(target))
            assert isinstance(ack, p.Ack)
            assert ack.result == reached


@pytest.mark.asyncio
async def test_seek_limits_are_refused_with_the_reason(scenario: Path) -> None:
    async with serving(scenario) as (_, client):
        for control, text in [
            (p.Control.seek(-1), "must be >= 0"),
            (p.Control.seek(3_601_000_000), "at most 3600 s ahead"),
        ]:
            nak = await client.control(control)
            assert isinstance(nak, p.Nak)
            assert nak.code == p.ErrorCode.OUT_OF_RANGE
            assert text in nak.message


@pytest.mark.asyncio
async def test_a_stream_fault_injected_by_control_acts_on_its_session_only(scenario: Path) -> None:
    from .conftest import other_client

    async with serving(scenario) as (server, client):
        other = await other_client(server)
        try:
            # paused before anyone subscribes: at speed 0 a subscribed stream runs as fast as it can, and on a
            # loaded machine it could pass the 10 s below before the fault is injected
            assert isinstance(await client.control(p.Control(C.PAUSE)), p.Ack)
            drop = await client.control(p.Control.inject_fault(p.FaultKind.DROP_FRAMES))
            assert isinstance(drop, p.Ack)
            for c in (client, other):
                await c.subscribe(mask=STATES_EVENTS)
            until = server.source.time_us + 10_000_000  # about 100 frames, each dropped with probability 0.1
            assert isinstance(await client.control(p.Control(C.RESUME)), p.Ack)
            mine = await frames_until(client, _states_at(until))
            theirs = await frames_until(other, _states_at(until))
            assert client.gaps > 0  # frames dropped for the injecting session
            assert other.gaps == 0
            assert any(
                isinstance(f.message, p.FaultEvent) and f.message.fault_id == drop.result for f in mine
            )
            assert not any(
                isinstance(f.message, p.FaultEvent) and f.message.fault_id == drop.result for f in theirs
            )
        finally:
            await other.close()


@pytest.mark.asyncio
async def test_a_client_subscribing_during_a_fault_gets_its_start_first(scenario: Path) -> None:
    from .conftest import other_client

    async with serving(scenario, speed=20.0) as (server, client):
        await client.subscribe(mask=STATES_EVENTS)
        await frames_until(client, _states_at(3_000_000))  # the scenario's fault is active from 2 s
        assert isinstance(await client.control(p.Control(C.PAUSE)), p.Ack)
        assert 2_000_000 < server.source.time_us < 5_000_000
        late = await other_client(server, "late")
        try:
            await late.subscribe(mask=STATES_EVENTS)
            await late.subscribe(mask=STATES_EVENTS)  # again: nothing sent twice
            assert isinstance(await client.control(p.Control(C.RESUME)), p.Ack)
            frames = await frames_until(late, _states_at(6_000_000))
            starts = [
                f.message for f in frames if isinstance(f.message, p.FaultEvent) and f.message.phase == 1
            ]
            assert [e.fault_id for e in starts] == [SCENARIO_FAULT_ID]
            assert check_ground_truth(frames) == set()  # its END came too, at 5 s
        finally:
            await late.close()
