"""The TCP server and client over loopback: handshake, versions, auth, streaming, control, bad input."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import protocol as p
from hil_server.client.client import ClientError, HilClient
from hil_server.testing import loopback, start_server, until

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
US06 = SCENARIOS / "us06_25c.yaml"
FAULTS = SCENARIOS / "fault_showcase.yaml"


@pytest.mark.asyncio
async def test_handshake_and_stream() -> None:
    async with loopback(US06) as (_, client):
        assert client.hello is not None
        assert client.hello.cell_count == 1
        assert client.hello.scenario_id == "us06_25c"
        assert client.hello.freq_hz.size > 0
        assert await client.subscribe() == 1
        states = [await client.next_message(p.CellStates, timeout=5) for _ in range(50)]
        steps = [s.step for s in states]
        assert steps == list(range(steps[0], steps[0] + 50))
        assert all(3.0e6 < s.records["voltage_uV"][0] < 4.3e6 for s in states)
        spectrum = await client.next_message(p.EisSpectrum, timeout=10)
        assert spectrum.freq_hz.size == client.hello.freq_hz.size
        assert np.all(spectrum.z_re_ohm > 0)
        assert 0 <= spectrum.kk_residual < 0.001  # the validity figure is computed and small
        assert client.errors == []
        assert client.gaps == 0


@pytest.mark.asyncio
async def test_stream_is_deterministic_for_a_seed() -> None:
    runs = []
    for _ in range(2):
        async with loopback(US06) as (_, client):
            await client.subscribe(mask=p.SubscribeMask.CELL_STATES)
            runs.append(
                [(await client.next_message(p.CellStates, timeout=5)).records.tobytes() for _ in range(30)]
            )
    assert runs[0] == runs[1]


@pytest.mark.asyncio
async def test_version_mismatch_gets_error_and_bye() -> None:
    server = await start_server(US06)
    try:
        with pytest.raises(ClientError, match=r"hello refused|closed"):
            await HilClient.connect("127.0.0.1", server.port, versions=(2, 3), timeout=2)
    finally:
        await server.stop()


@pytest.mark.asyncio
async def test_authentication() -> None:
    secret = b"bench-secret"
    async with loopback(US06, secret=secret) as (_, client):
        assert client.hello is not None
        assert client.hello.auth_required == 1
        assert await client.subscribe() == 1
    server = await start_server(US06, secret=secret)
    try:
        with pytest.raises(ClientError):
            await HilClient.connect("127.0.0.1", server.port, secret=b"wrong", timeout=2)
        with pytest.raises(ClientError, match="requires authentication"):
            await HilClient.connect("127.0.0.1", server.port, timeout=2)
    finally:
        await server.stop()


async def first_state(
    client: HilClient, predicate: Callable[[p.CellStates], bool], limit: int = 3000
) -> p.CellStates:
    """At speed 0 the server runs up to half a client queue ahead: an effect shows within a bounded number of
    frames after its ACK, not in the very next one."""
    for _ in range(limit):
        states: p.CellStates = await client.next_message(p.CellStates, timeout=5)
        if predicate(states):
            return states
    raise AssertionError(f"no matching CELL_STATES within {limit} frames")


@pytest.mark.asyncio
async def test_controls_act_on_the_simulation() -> None:
    # Paced (20x): at speed 0 the simulation may already be past the seek target when the seek arrives.
    async with loopback(FAULTS, speed=20.0) as (server, client):
        await client.subscribe(mask=p.SubscribeMask.CELL_STATES | p.SubscribeMask.FAULT_EVENT)
        await client.next_message(p.CellStates, timeout=5)
        ack = await client.control(p.Control.set_load_current(20_000))  # 20 mA discharge, all cells
        assert isinstance(ack, p.Ack)
        states = await first_state(client, lambda s: bool(np.all(s.records["current_uA"] == 20_000)))
        assert np.all(states.records["current_uA"] == 20_000)
        inject = await client.control(p.Control.inject_fault(p.FaultKind.CONTACT_RESISTANCE, cell=3))
        assert isinstance(inject, p.Ack)
        assert inject.result > 0
        event = await client.next_message(p.FaultEvent, timeout=5)
        assert event.fault_id == inject.result
        assert event.cells.tolist() == [3]
        seek = await client.control(p.Control.seek(100_000_000))
        assert isinstance(seek, p.Ack)
        assert seek.result == 100_000_000
        after = await first_state(client, lambda s: s.t_sim_us >= 100_000_000)
        assert after.t_sim_us == 100_000_000 + 100_000  # the step after the seek target
        refused = await client.control(p.Control(p.ControlCommand.SET_LOAD_CURRENT, cell=500))
        assert isinstance(refused, p.Nak)
        assert refused.code == p.ErrorCode.UNKNOWN_CELL
        unknown = await client.control(p.Control(200))
        assert isinstance(unknown, p.Nak)
        assert unknown.code == p.ErrorCode.UNKNOWN_COMMAND
        assert isinstance(await client.control(p.Control(p.ControlCommand.PAUSE)), p.Ack)
        assert server.sim_state is p.SimState.PAUSED
        nak = await client.control(p.Control(p.ControlCommand.PAUSE))
        assert isinstance(nak, p.Nak)
        assert nak.code == p.ErrorCode.NOT_ALLOWED_IN_STATE
        assert isinstance(await client.control(p.Control(p.ControlCommand.RESUME)), p.Ack)


@pytest.mark.asyncio
async def test_garbage_from_one_client_does_not_disturb_another() -> None:
    async with loopback(US06) as (server, good):
        await good.subscribe(mask=p.SubscribeMask.CELL_STATES)
        bad = await HilClient.connect("127.0.0.1", server.port, name="bad")
        bad.send_raw(b"\x00garbage\xe1\x5a" + bytes(40))
        frame = bytearray(p.encode_frame(p.Control.seek(1), seq=99))
        frame[-1] ^= 0xFF  # bad CRC
        bad.send_raw(bytes(frame))
        error = await bad.next_message(p.Error, timeout=5)
        assert error.code in (p.ErrorCode.GARBAGE, p.ErrorCode.BAD_CRC)
        steps = [(await good.next_message(p.CellStates, timeout=5)).step for _ in range(40)]
        assert steps == list(range(steps[0], steps[0] + 40))
        assert good.gaps == 0
        assert server.rx_bad >= 1
        await bad.close()


@pytest.mark.asyncio
async def test_shutdown_says_bye() -> None:
    server = await start_server(US06)
    client = await HilClient.connect("127.0.0.1", server.port)
    await client.subscribe()
    await server.stop()
    frames = []
    with pytest.raises(ClientError):  # the stream ends: BYE, then the connection closes
        frames.extend([await client.next_frame(timeout=5) for _ in range(100_000)])
    assert client.bye is not None
    assert client.bye.reason == p.ErrorCode.SHUTDOWN
    await client.close()


@pytest.mark.asyncio
async def test_paced_mode_sends_nothing_early() -> None:
    """Every frame arrives no earlier than its own absolute deadline (server anchor + t_sim / speed), on the
    server's own clock: receipt follows sending, so this holds exactly, however loaded the machine is."""
    async with loopback(US06, speed=50.0) as (server, client):
        await client.subscribe(mask=p.SubscribeMask.CELL_STATES)
        for _ in range(40):
            states = await client.next_message(p.CellStates, timeout=5)
            received = server.now()
            assert server._anchor is not None
            wall0, sim0_us = server._anchor
            due = wall0 + (states.t_sim_us - sim0_us) / 1e6 / 50.0
            assert received >= due, f"step {states.step} arrived {1e3 * (due - received):.3f} ms early"


def test_demo_command_runs_server_and_client(capsys: pytest.CaptureFixture[str]) -> None:
    """The README's main job: the server with the bundled model and the default scenario, and a client."""
    from hil_server.cli import main

    assert main(["demo", "--seconds", "1.5", "--speed", "400"]) == 0
    out = capsys.readouterr().out
    assert "client connected: model eis-pinn" in out
    assert "CELL_STATES" in out
    assert "EIS_SPECTRUM" in out
    assert " 0 sequence gaps, 0 bad frames" in out


@pytest.mark.asyncio
async def test_clients_are_served_when_the_simulation_cannot_keep_up() -> None:
    """At a speed the CPU cannot reach, the loop runs behind its deadlines; it must still let sessions run."""
    async with loopback(SCENARIOS / "pack_96s_spread.yaml", speed=1e6) as (server, client):
        await client.subscribe(mask=p.SubscribeMask.CELL_STATES)
        first = await client.next_message(p.CellStates, timeout=5)
        ack = await client.control(p.Control(p.ControlCommand.PAUSE), timeout=5)
        assert isinstance(ack, p.Ack)
        assert first.t_sim_us > 0
        assert server.sim_state is p.SimState.PAUSED


async def _raw_subscriber(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client that does the handshake by hand and then never reads again."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a tiny window: the server's side fills fast
    sock.connect(("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    decoder = p.FrameDecoder()
    while not any(
        isinstance(f, p.Frame) and isinstance(f.message, p.ServerHello)
        for f in _fed(decoder, await reader.read(65536))
    ):
        pass
    encoder = p.FrameEncoder()
    writer.write(encoder.encode(p.ClientHello(client_name="never-reads")) + encoder.encode(p.Subscribe()))
    await writer.drain()
    return reader, writer


def _fed(decoder: p.FrameDecoder, data: bytes) -> list[p.Frame | p.RemoteProtocolError]:
    decoder.feed(data)
    return list(decoder.events())


@pytest.mark.asyncio
async def test_a_client_that_never_reads_is_dropped_without_hurting_others() -> None:
    scenario = SCENARIOS / "pack_96s_spread.yaml"
    async with loopback(scenario, speed=20.0, queue_frames=512, stuck_s=0.5) as (server, good):
        await good.subscribe(mask=p.SubscribeMask.CELL_STATES)  # its own queue never fills
        _, slow_writer = await _raw_subscriber(server.port)
        await until(lambda: len(server.sessions) == 2)
        slow = next(s for s in server.sessions.values() if s.client_name == "never-reads")
        steps = [(await good.next_message(p.CellStates, timeout=5)).step for _ in range(150)]
        await until(lambda: slow.frames_dropped > 0 or len(server.sessions) == 1, timeout=30)
        await until(lambda: len(server.sessions) == 1, timeout=30)  # disconnected: stuck past stuck_s
        more = [(await good.next_message(p.CellStates, timeout=5)).step for _ in range(20)]
        assert good.gaps == 0
        assert sorted(set(steps)) == steps
        assert more[0] > steps[-1]
        slow_writer.close()


@pytest.mark.asyncio
async def test_client_disconnect_mid_frame_leaves_the_server_serving() -> None:
    async with loopback(US06) as (server, good):
        await good.subscribe(mask=p.SubscribeMask.CELL_STATES)
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(p.encode_frame(p.ClientHello(client_name="half"), seq=0)[:9])  # half a frame, then gone
        await writer.drain()
        writer.close()
        await until(lambda: len(server.sessions) == 1)
        steps = [(await good.next_message(p.CellStates, timeout=5)).step for _ in range(20)]
        assert steps == list(range(steps[0], steps[0] + 20))


@pytest.mark.asyncio
async def test_every_control_command() -> None:
    async with loopback(FAULTS) as (server, client):
        await client.subscribe(mask=p.SubscribeMask.CELL_STATES | p.SubscribeMask.EIS_SPECTRUM)
        c = p.ControlCommand

        async def ack(message: p.Control) -> int:
            reply = await client.control(message)
            assert isinstance(reply, p.Ack), reply
            assert reply.command == message.command
            return reply.result

        await ack(p.Control.set_ambient_temperature(-10_000))
        await ack(p.Control(c.SET_AMBIENT_TEMPERATURE, aux=1))  # release the override
        nak = await client.control(p.Control.set_ambient_temperature(-300_000))
        assert isinstance(nak, p.Nak)
        assert nak.code == p.ErrorCode.OUT_OF_RANGE
        spectrum_id = await ack(p.Control.request_spectrum(cell=5))
        spectrum = await client.next_message(p.EisSpectrum, timeout=10)
        while (spectrum.cell, spectrum.spectrum_id) != (5, spectrum_id):
            spectrum = await client.next_message(p.EisSpectrum, timeout=10)
        fault = await ack(p.Control.inject_fault(p.FaultKind.NOISE, severity_ppm=500_000, duration_ms=0))
        assert await ack(p.Control.clear_fault(fault)) == 1
        await ack(p.Control(c.STOP))
        assert server.sim_state.name == "STOPPED"
        await ack(p.Control(c.START))  # from STOPPED: again from t = 0
        assert server.sim_state.name == "RUNNING"
        previous = await client.next_message(p.CellStates, timeout=5)
        # frames queued before the restart (at speed 0 the simulation runs ahead of a client that buffers
        # everything it reads), then time jumps back to the start
        for _ in range(1_000_000):
            states = await client.next_message(p.CellStates, timeout=5)
            if states.t_sim_us < previous.t_sim_us:
                break
            previous = states
        assert states.t_sim_us == 100_000
        await ack(p.Control.set_speed(2_000_000))
        assert server.speed == 2.0
        bad = await client.control(p.Control(c.SEEK, value=-1))
        assert isinstance(bad, p.Nak)
        assert bad.code == p.ErrorCode.OUT_OF_RANGE
        far = await client.control(p.Control.seek(2 * 86_400_000_000))  # two days ahead
        assert isinstance(far, p.Nak)
        assert "ahead" in far.message


@pytest.mark.asyncio
async def test_a_seek_that_would_stall_the_stream_too_long_is_refused() -> None:
    """The server weighs a SEEK (steps to simulate x measured cost of a step) against max_seek_stall_s."""
    async with loopback(US06, max_seek_stall_s=1e-9) as (server, client):
        await client.subscribe()
        await client.next_message(p.CellStates, timeout=5)
        assert isinstance(await client.control(p.Control(p.ControlCommand.PAUSE)), p.Ack)
        assert server.tick_cost_s > 0
        here = server.source.time_us
        assert isinstance(await client.control(p.Control.seek(here)), p.Ack)  # nothing to simulate
        far = await client.control(p.Control.seek(here + 10_000_000))
        assert isinstance(far, p.Nak)
        assert far.code == p.ErrorCode.OUT_OF_RANGE
        assert "would simulate 100 steps" in far.message
        assert server.source.time_us == here


@pytest.mark.asyncio
async def test_malformed_control_gets_a_nak_with_its_seq() -> None:
    async with loopback(US06) as (_, client):
        raw = bytearray(p.encode_frame(p.Control(p.ControlCommand.PAUSE), seq=4242))
        short = p.frame_payload(p.MsgType.CONTROL, b"\x02\x00", seq=4243)  # 2 bytes: malformed payload
        client.send_raw(bytes(raw[:-1]) + bytes([raw[-1] ^ 1]) + short)
        errors: list[p.Nak] = []
        while len(errors) < 2:
            frame = await client.next_frame(timeout=5)
            assert not isinstance(frame.message, p.Error), frame.message  # control frames get NAK, not ERROR
            if isinstance(frame.message, p.Nak):
                errors.append(frame.message)
        assert {e.ack_seq for e in errors} == {4242, 4243}
        assert {e.code for e in errors} == {p.ErrorCode.BAD_CRC, p.ErrorCode.MALFORMED_PAYLOAD}


def test_demo_with_a_bad_scenario_reports_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hil_server.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nseed: 1\n")
    assert main(["demo", "--scenario", str(bad)]) == 2
    assert "bad.yaml:1: timeline: missing required key" in capsys.readouterr().err


def _scenario(tmp_path: Path, extra: str = "", eis: str = "") -> Path:
    """US06 on a short, fast grid (a whole sweep takes seconds of simulated time), plus ``extra`` YAML."""
    text = US06.read_text().replace(
        "frequencies: {min_hz: 0.02, max_hz: 20000, points_per_decade: 6}",
        "frequencies: {min_hz: 1, max_hz: 1000, points_per_decade: 2}",
    )
    if eis:
        text = text.replace("mode: instant", f"mode: {eis}")
    path = tmp_path / "scenario.yaml"
    path.write_text(text + extra)
    return path


@pytest.mark.asyncio
async def test_each_client_gets_the_eis_mode_it_asked_for(tmp_path: Path) -> None:
    server = await start_server(_scenario(tmp_path))
    eis = p.SubscribeMask.EIS_SPECTRUM | p.SubscribeMask.EIS_POINT
    instant = await HilClient.connect("127.0.0.1", server.port, name="instant")
    sweep = await HilClient.connect("127.0.0.1", server.port, name="sweep")
    try:
        await instant.subscribe(mask=eis, eis_mode=p.EisMode.INSTANT)
        await sweep.subscribe(mask=eis, eis_mode=p.EisMode.SWEEP)
        assert isinstance(await instant.control(p.Control(p.ControlCommand.REQUEST_SPECTRUM)), p.Ack)
        got = await instant.next_message(p.EisSpectrum, timeout=10)
        assert got.sweep_duration_ms == 0
        n = got.freq_hz.size
        # Sweep-timed: the points arrive one by one, high to low frequency, at increasing times that leave
        # at least one period of each frequency; then the whole spectrum, stamped at the last point.
        points = [await sweep.next_message(p.EisPoint, timeout=10) for _ in range(n)]
        assert [pt.point_index for pt in points] == list(range(n))
        assert len({pt.spectrum_id for pt in points}) == 1
        times = np.array([pt.t_sim_us for pt in points])
        freqs = np.array([pt.freq_hz for pt in points])
        assert np.all(np.diff(freqs) < 0)
        assert np.all(np.diff(times) >= np.round(1e6 / freqs[1:]) - 1)
        whole = await sweep.next_message(p.EisSpectrum, timeout=10)
        assert whole.spectrum_id == points[0].spectrum_id
        assert whole.sweep_duration_ms > 0
        assert whole.t_sim_us == pytest.approx(times[-1], abs=200_000)  # within the 10 Hz step
        np.testing.assert_allclose(whole.z_re_ohm, [pt.z_re_ohm for pt in points], rtol=1e-6)
        # and the instant client saw no points
        while not instant.frames.empty():
            frame = instant.frames.get_nowait()
            assert frame is None or not isinstance(frame.message, p.EisPoint)
    finally:
        await instant.close()
        await sweep.close()
        await server.stop()


@pytest.mark.asyncio
async def test_subscribe_with_an_unknown_eis_mode_is_refused() -> None:
    async with loopback(US06) as (_, client):
        with pytest.raises(ClientError, match="eis_mode 7"):
            await client.subscribe(eis_mode=7)


@pytest.mark.asyncio
async def test_stream_faults_reach_the_wire(tmp_path: Path) -> None:
    faults = (
        "faults:\n"
        "  - {kind: drop_frames, start_s: 1, duration_s: 5, probability: 0.5}\n"
        "  - {kind: corrupt_crc, start_s: 10, duration_s: 5, probability: 0.5}\n"
        "  - {kind: disconnect, start_s: 20}\n"
    )
    # Paced (50x): at speed 0 a whole burst of steps can sit unsent in the queue that the disconnect
    # discards, and where the stream ends on the client would depend on when the writer last ran.
    async with loopback(_scenario(tmp_path, faults), speed=50.0) as (_, client):
        await client.subscribe(mask=p.SubscribeMask.CELL_STATES | p.SubscribeMask.FAULT_EVENT)
        states: list[p.CellStates] = []
        events: list[p.FaultEvent] = []
        while True:
            try:
                frame = await client.next_frame(timeout=10)
            except ClientError:
                break  # the disconnect fault
            if isinstance(frame.message, p.CellStates):
                states.append(frame.message)
            elif isinstance(frame.message, p.FaultEvent):
                events.append(frame.message)
    t = np.array([s.t_sim_us for s in states]) / 1e6
    steps = np.array([s.step for s in states])
    assert np.all(np.diff(steps[t < 1.0]) == 1)  # intact before the faults
    dropped = np.diff(steps[(t > 1.0) & (t < 6.0)]) - 1
    assert 20 < dropped.sum() < 30  # half of the 50 steps in the window
    assert sum(e.kind is p.DecodeErrorKind.BAD_CRC for e in client.errors) > 10
    assert 19.0 < t.max() <= 20.0  # cut at the disconnect
    kinds = {e.kind for e in events}
    assert {p.FaultKind.DROP_FRAMES, p.FaultKind.CORRUPT_CRC} <= kinds  # ground truth never damaged


def test_logs_are_json_lines_with_log_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import json

    from hil_server.cli import main

    assert main(["--log-json", "serve", str(US06), "--model", str(tmp_path / "missing")]) == 2
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines
    assert lines[-1]["level"] == "error"
    assert str(tmp_path / "missing") in lines[-1]["error"]
    assert {"event", "timestamp"} <= set(lines[-1])


def test_server_runs_on_uvloop_and_paces_nothing_early() -> None:
    """uvloop's timers fire up to about 1 ms early: the pacing loop must still send nothing early."""
    pytest.importorskip("uvloop")
    from hil_server.cli._loop import run

    async def go() -> str:
        async with loopback(US06, speed=50.0) as (server, client):
            await client.subscribe(mask=p.SubscribeMask.CELL_STATES)
            for _ in range(20):
                states = await client.next_message(p.CellStates, timeout=5)
                assert server._anchor is not None
                wall0, sim0_us = server._anchor
                assert server.now() >= wall0 + (states.t_sim_us - sim0_us) / 1e6 / 50.0
            return type(asyncio.get_running_loop()).__module__

    assert run(go(), "uvloop").startswith("uvloop")
    assert run(go(), "asyncio").startswith("asyncio")


def test_cell_state_records_are_scaled_and_clipped_to_the_wire_ranges() -> None:
    import dataclasses

    from hil_server.model.store import BUNDLED_MODEL_DIR
    from hil_server.sim.output import CellColumns
    from hil_server.sim.run import build_engine
    from hil_server.stream.source import step_messages

    engine, _, _ = build_engine(US06, BUNDLED_MODEL_DIR, None)
    out = engine.step()
    nan, inf = float("nan"), float("inf")
    odd = CellColumns(
        voltage_v=np.array([nan]),
        current_a=np.array([inf]),
        temp_c=np.array([-inf]),
        soc=np.array([1.7]),
        soh=np.array([-0.1]),
        flags=np.array([5], dtype=np.uint16),
    )
    (item,) = step_messages(dataclasses.replace(out, reported=odd), 123, p.SubscribeMask.CELL_STATES)
    assert isinstance(item.message, p.CellStates)
    rec = item.message.records[0]
    assert (rec["voltage_uV"], rec["current_uA"], rec["temperature_mdegC"]) == (0, 2**31 - 1, -(2**31))
    assert (rec["soc_ppm"], rec["soh_ppm"], rec["flags"], rec["cell"]) == (1_000_000, 0, 5, 0)
    normal = dataclasses.replace(out.reported, voltage_v=np.array([3.7123456]), temp_c=np.array([25.0004]))
    (item,) = step_messages(dataclasses.replace(out, reported=normal), 0, p.SubscribeMask.CELL_STATES)
    assert isinstance(item.message, p.CellStates)
    assert item.message.records[0]["voltage_uV"] == 3_712_346
    assert item.message.records[0]["temperature_mdegC"] == 25_000


@pytest.mark.asyncio
async def test_a_fault_that_needs_parameters_a_control_cannot_carry_is_refused() -> None:
    """ACCELERATED_HEATING has no default heat: accepting it would fail the next step (and the stream)."""
    async with loopback(US06) as (server, client):
        await client.subscribe(mask=p.SubscribeMask.CELL_STATES)
        nak = await client.control(p.Control.inject_fault(p.FaultKind.ACCELERATED_HEATING))
        assert isinstance(nak, p.Nak)
        assert nak.code == p.ErrorCode.OUT_OF_RANGE
        assert "extra_heat_w" in nak.message
        first = await client.next_message(p.CellStates, timeout=5)
        later = await client.next_message(p.CellStates, timeout=5)
        assert later.step > first.step  # still streaming
        assert server.sim_state is p.SimState.RUNNING


@pytest.mark.asyncio
async def test_a_failing_step_stops_the_stream_and_tells_the_clients() -> None:
    async with loopback(US06) as (server, client):
        await client.subscribe(mask=p.SubscribeMask.CELL_STATES)
        await client.next_message(p.CellStates, timeout=5)

        def broken(wanted: int, wall_us: int) -> Any:
            raise RuntimeError("boom")

        server.source.tick = broken  # type: ignore[method-assign]
        error = await client.next_message(p.Error, timeout=5)
        assert error.code == p.ErrorCode.INTERNAL
        assert server.sim_state is p.SimState.STOPPED
        assert isinstance(await client.control(p.Control(p.ControlCommand.PAUSE)), p.Nak)  # still answers


@pytest.mark.asyncio
async def test_nothing_is_answered_after_bye_even_from_the_same_read() -> None:
    server = await start_server(US06)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        enc = p.FrameEncoder()
        bad_hello = p.ClientHello(7, 9, bytes(p.AUTH_RESPONSE_SIZE), "future")  # no common version
        more = p.Subscribe(p.SubscribeMask.ALL, 1, 0, np.zeros(0, np.uint16))
        writer.write(enc.encode(bad_hello) + enc.encode(more) + enc.encode(p.Control(p.ControlCommand.PAUSE)))
        decoder = p.FrameDecoder()
        decoder.feed(await asyncio.wait_for(reader.read(1 << 16), 5))
        while chunk := await asyncio.wait_for(reader.read(1 << 16), 5):
            decoder.feed(chunk)
        kinds = [type(f.message).__name__ for f in decoder.events() if isinstance(f, p.Frame)]
        assert kinds == ["ServerHello", "Error", "Bye"]
        assert server.sim_state is p.SimState.RUNNING  # the PAUSE after the BYE was not carried out
        writer.close()
    finally:
        await server.stop()


@pytest.mark.asyncio
async def test_a_stalled_paced_stream_and_a_slow_collection_are_logged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bench must learn from the log when the stream fell behind its deadlines, and whether a garbage
    collection held the loop (the clock is moved on instead of stalling anything)."""
    import gc
    import time

    import structlog

    import hil_server.transport.tcp as server_module
    from hil_server.app import identity_for
    from hil_server.model.store import BUNDLED_MODEL_DIR
    from hil_server.sim.run import build_engine
    from hil_server.transport.tcp import HilServer, ServerConfig

    offset = 0.0
    engine, sc, meta = build_engine(US06, BUNDLED_MODEL_DIR, None)
    server = HilServer(
        engine,
        identity_for(US06, sc.name, meta.model_sha256, "eis-pinn"),
        ServerConfig(port=0, speed=1.0),
        now=lambda: time.monotonic() + offset,
    )
    monkeypatch.setattr(server_module, "SLOW_GC_S", 0.0)
    with structlog.testing.capture_logs() as logs:
        await server.start()
        client = await HilClient.connect("127.0.0.1", server.port, name="bench")
        try:
            await client.subscribe(mask=p.SubscribeMask.CELL_STATES)
            await client.next_message(p.CellStates, timeout=5)
            offset = 0.5  # as if the process had been stopped for half a second
            await client.next_message(p.CellStates, timeout=5)
            gc.collect()
        finally:
            await client.close()
            await server.stop()
    behind = [e for e in logs if e["event"] == "stream behind schedule"]
    assert len(behind) == 1
    assert 400 < behind[0]["late_ms"] < 5000
    # every collection counts as slow with a threshold of 0; the full one asked for is among them
    assert any(e["event"] == "slow garbage collection" and e["generation"] == 2 for e in logs)
    assert server._gc_watch not in gc.callbacks  # stopped: no longer watched
