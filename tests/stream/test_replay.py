"""``eis-hil serve --record`` and ``eis-hil replay``: a recorded session served again with its timing."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import protocol as p
from hil_server.capture.format import DIR_RX, open_capture
from hil_server.capture.meta import hello_meta
from hil_server.capture.writer import CaptureWriter
from hil_server.cli import main
from hil_server.client.client import HilClient
from hil_server.stream.replay_source import ReplayError, ReplaySource
from hil_server.testing import start_server
from hil_server.transport.tcp import HilServer, ServerConfig

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
FAULTS = SCENARIOS / "fault_showcase.yaml"


async def _record(path: Path, states: int = 60) -> list[p.CellStates]:
    """Run the fault showcase with ``--record`` until a client has seen ``states`` CELL_STATES."""
    server = await start_server(FAULTS, record=path)
    client = await HilClient.connect("127.0.0.1", server.port)
    try:
        await client.subscribe(mask=p.SubscribeMask.CELL_STATES)
        return [await client.next_message(p.CellStates, timeout=5) for _ in range(states)]
    finally:
        await client.close()
        await server.stop()


async def _replay(source: ReplaySource, speed: float = 0.0) -> tuple[HilServer, HilClient]:
    server = HilServer(source, config=ServerConfig(port=0, speed=speed))
    await server.start()
    return server, await HilClient.connect("127.0.0.1", server.port)


@pytest.mark.asyncio
async def test_recorded_session_replays_frame_for_frame(tmp_path: Path) -> None:
    path = tmp_path / "session.ehc"
    live = await _record(path)
    capture = open_capture(path)
    assert capture.meta["scenario_id"] == "fault_showcase"
    server, client = await _replay(ReplaySource(path))
    try:
        assert client.hello is not None
        assert client.hello.scenario_id == "fault_showcase"
        assert client.hello.cell_count == 12
        await client.subscribe(mask=p.SubscribeMask.CELL_STATES)
        frames = [await client.next_frame(timeout=5) for _ in range(len(live) + 1)]
        again = [f.message for f in frames if isinstance(f.message, p.CellStates)][: len(live)]
        assert all(f.flags & p.FrameFlags.REPLAY for f in frames if isinstance(f.message, p.CellStates))
    finally:
        await client.close()
        await server.stop()
    # The recording holds every step (it subscribes to everything); the replay starts at its first one.
    assert [s.step for s in again] == [s.step for s in live]
    assert all(a.records.tobytes() == b.records.tobytes() for a, b in zip(again, live, strict=True))
    assert client.gaps == 0


@pytest.mark.asyncio
async def test_replay_serves_each_client_its_subscription(tmp_path: Path) -> None:
    path = tmp_path / "session.ehc"
    await _record(path, 40)
    server, client = await _replay(ReplaySource(path))
    try:
        await client.subscribe(mask=p.SubscribeMask.CELL_STATES, cells=(3, 7), divider=5)
        got = [await client.next_message(p.CellStates, timeout=5) for _ in range(5)]
        assert all(s.records["cell"].tolist() == [3, 7] for s in got)
        assert all(s.step % 5 == 0 for s in got)
        nak = await client.control(p.Control(p.ControlCommand.INJECT_FAULT, fault_kind=1, value=1000))
        assert isinstance(nak, p.Nak)
        assert nak.code == p.ErrorCode.NOT_ALLOWED_IN_STATE
        assert "replay" in nak.message
    finally:
        await client.close()
        await server.stop()


def _synthetic(path: Path, times_s: list[float]) -> None:
    """A capture with a SERVER_HELLO and one CELL_STATES (step i) at each of ``times_s``."""
    enc = p.FrameEncoder()
    hello = p.ServerHello(
        auth_required=0,
        seed=1,
        cell_count=1,
        step_period_us=100_000,
        auth_challenge=bytes(16),
        model_hash=bytes(32),
        scenario_hash=bytes(32),
        server_version="test",
        model_id="m",
        scenario_id="synthetic",
        freq_hz=np.array([1000.0, 1.0], dtype=np.float32),
    )
    with CaptureWriter(path, hello_meta(hello)) as w:
        w.write(enc.encode(hello), direction=DIR_RX, t_us=0)
        for i, t in enumerate(times_s):
            states = p.CellStates.from_columns(
                round(t * 1e6), 0, i, cell=[0], flags=[0], voltage_uV=[3_700_000], current_uA=[0],
                temperature_mdegC=[25_000], soc_ppm=[500_000], soh_ppm=[1_000_000],
            )  # fmt: skip
            w.write(enc.encode(states), direction=DIR_RX, t_us=round(t * 1e6) + 5_000_000)


def _ticks(source: ReplaySource, n: int) -> list[tuple[int, int]]:
    """(tick time µs, step of its message) for the next ``n`` ticks."""
    out = []
    for _ in range(n):
        tick = source.tick(p.SubscribeMask.ALL, 0)
        (item,) = list(tick.items)
        assert isinstance(item.message, p.CellStates)
        out.append((tick.time_us, item.message.step))
    return out


def test_timing_skip_loop_gaps_and_seek(tmp_path: Path) -> None:
    path = tmp_path / "s.ehc"
    _synthetic(path, [0.0, 0.1, 0.2, 10.2, 10.3])
    # Original timing, relative to the first stream message.
    src = ReplaySource(path)
    assert _ticks(src, 5) == [(0, 0), (100_000, 1), (200_000, 2), (10_200_000, 3), (10_300_000, 4)]
    # --max-gap shortens the 10 s silence; --loop 2 plays it again one median interval later.
    src = ReplaySource(path, max_gap_s=1.0, loop=2)
    first = _ticks(src, 5)
    assert [t for t, _ in first] == [0, 100_000, 200_000, 1_200_000, 1_300_000]
    second = _ticks(src, 5)
    assert [s for _, s in second] == [0, 1, 2, 3, 4]
    assert second[0][0] == 1_300_000 + 100_000
    # --skip
    src = ReplaySource(path, skip_s=5.0)
    assert _ticks(src, 2) == [(0, 3), (100_000, 4)]
    # seek lands on the first frame at or after the target
    src = ReplaySource(path)
    src.seek(150_000)
    assert _ticks(src, 1) == [(200_000, 2)]
    # a seek into the pause between two passes lands on the next pass, not back on the last frame
    src = ReplaySource(path, max_gap_s=1.0, loop=2)
    src.seek(1_350_000)  # the first pass ends at 1.3 s, the second starts at 1.4 s
    assert src.time_us <= 1_400_000
    assert _ticks(src, 1) == [(1_400_000, 0)]
    with pytest.raises(ValueError, match="max-gap"):
        ReplaySource(path, max_gap_s=0)


def test_last_tick_finishes_the_stream(tmp_path: Path) -> None:
    path = tmp_path / "s.ehc"
    _synthetic(path, [0.0, 0.1])
    src = ReplaySource(path)
    assert not src.tick(p.SubscribeMask.ALL, 0).finished
    assert src.tick(p.SubscribeMask.ALL, 0).finished


def test_truncated_capture_replays_up_to_its_last_record(tmp_path: Path) -> None:
    path = tmp_path / "s.ehc"
    _synthetic(path, [0.0, 0.1, 0.2])
    data = path.read_bytes()
    path.write_bytes(data[:-7])  # cut inside the last record, as a kill -9 would
    src = ReplaySource(path)
    assert [s for _, s in _ticks(src, 2)] == [0, 1]


def test_capture_without_hello_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.ehc"
    with CaptureWriter(path, {}) as w:
        w.write(p.FrameEncoder().encode(p.Heartbeat(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)), t_us=0)
    with pytest.raises(ReplayError, match="no SERVER_HELLO"):
        ReplaySource(path)


@pytest.mark.asyncio
async def test_replay_pause_resume_seek_by_control(tmp_path: Path) -> None:
    path = tmp_path / "s.ehc"
    _synthetic(path, [i * 0.1 for i in range(500)])
    # paced (10x: 50 s of capture in 5 s): at speed 0 the replay could be over before the seek arrives
    server, client = await _replay(ReplaySource(path), speed=10.0)
    try:
        await client.subscribe(mask=p.SubscribeMask.CELL_STATES)
        assert (await client.next_message(p.CellStates, timeout=5)).step < 100
        assert isinstance(await client.control(p.Control(p.ControlCommand.PAUSE)), p.Ack)
        seek = await client.control(p.Control(p.ControlCommand.SEEK, value=40_000_000))
        assert isinstance(seek, p.Ack)
        assert seek.result == 40_000_000
        assert isinstance(await client.control(p.Control(p.ControlCommand.RESUME)), p.Ack)
        steps = [(await client.next_message(p.CellStates, timeout=5)).step for _ in range(12)]
        # frames already queued before the pause still arrive; then the stream continues from 40 s
        assert 400 in steps
        after = steps[steps.index(400) :]
        assert after == list(range(400, 400 + len(after)))
        assert max(steps[: steps.index(400)], default=0) < 100
    finally:
        await client.close()
        await server.stop()


def test_replay_command_reports_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(tmp_path / "missing.ehc")]) == 2
    assert "missing.ehc" in capsys.readouterr().err
    bad = tmp_path / "bad.ehc"
    bad.write_bytes(b"not a capture at all")
    assert main(["replay", str(bad)]) == 2
    assert "bad.ehc" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _states_from(port: int, n: int) -> list[p.CellStates]:
    for _ in range(100):  # the process is starting up
        try:
            client = await HilClient.connect("127.0.0.1", port, timeout=2)
            break
        except OSError:
            await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"nothing listens on {port}")
    try:
        await client.subscribe(mask=p.SubscribeMask.CELL_STATES)
        return [await client.next_message(p.CellStates, timeout=10) for _ in range(n)]
    finally:
        await client.close()


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out


def test_serve_record_then_replay_commands(tmp_path: Path) -> None:
    """Through the real commands: ``serve --record`` stopped by SIGTERM (the capture is closed cleanly),
    then ``replay`` of that capture to a client, stopped by SIGTERM too."""
    path = tmp_path / "cli.ehc"
    exe = [sys.executable, "-m", "hil_server.cli"]
    port = _free_port()
    serve = subprocess.Popen(
        [*exe, "serve", str(FAULTS), "--port", str(port), "--speed", "100", "--record", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        live = asyncio.run(_states_from(port, 20))
    finally:
        code, out = _stop(serve)
    assert code == 0, out
    assert "recording closed" in out
    capture = open_capture(path)
    assert capture.meta["recorder"] == "eis-hil serve --record"
    port = _free_port()
    replay = subprocess.Popen(
        [*exe, "replay", str(path), "--port", str(port), "--speed", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        again = asyncio.run(_states_from(port, 20))
    finally:
        code, out = _stop(replay)
    assert code == 0, out
    assert "replaying cli.ehc" in out
    assert [s.step for s in again] == list(range(again[0].step, again[0].step + 20))
    assert again[0].step == 1  # the recording starts at the first step
    assert live[0].records.dtype == again[0].records.dtype


@pytest.mark.asyncio
async def test_a_record_that_cannot_start_leaves_no_capture(tmp_path: Path) -> None:
    path = tmp_path / "x.ehc"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="address already in use"):
            await start_server(FAULTS, record=path, port=taken.getsockname()[1])
    assert not path.exists()
