"""The serial bridge through its real interfaces: pseudo-terminals and pyserial's ``loop://``, a device-side
reader that decodes every frame (CRCs, seq continuity), the C example client, the line budget with a fake
clock, port loss and reopen, and the AD5940 text output."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import shutil
import subprocess
import threading
import time
import tty
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import serial
import structlog

import protocol as p
from hil_server.client.client import HilClient
from hil_server.testing import start_server
from hil_server.transport.serial import ad5940
from hil_server.transport.serial.bridge import SerialBridge
from hil_server.transport.serial.budget import OutputFormat, StreamSpec, plan_budget, states_bytes
from hil_server.transport.serial.device_session import LineSession
from hil_server.transport.serial.line import EXIT_PORT_GONE, EXIT_UPSTREAM, BridgeConfig, SerialLine
from hil_server.transport.serial.line_pacer import LinePacer
from hil_server.transport.serial.port import ftdi_latency_timer, open_serial
from hil_server.transport.serial.served import SerialTransport
from hil_server.transport.tcp import HilServer

ROOT = Path(__file__).resolve().parents[2]
US06 = ROOT / "scenarios" / "us06_25c.yaml"
PACK = ROOT / "scenarios" / "pack_96s_spread.yaml"


# -- device side -------------------------------------------------------------------------------------------


class Device:
    """The device end of a pty pair: decodes every frame (the decoder checks both CRCs), checks that the
    bridge's seq increases by one per frame, and sends frames with its own seq."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self.decoder = p.FrameDecoder()
        self.frames: asyncio.Queue[p.Frame] = asyncio.Queue()
        self.errors: list[p.RemoteProtocolError] = []
        self.gaps: list[tuple[int, int]] = []
        self.last_seq: int | None = None
        self.encoder = p.FrameEncoder()
        self.closed = False
        asyncio.get_running_loop().add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self.decoder.feed(data)
        for item in self.decoder.events():
            if isinstance(item, p.RemoteProtocolError):
                self.errors.append(item)
                continue
            if isinstance(item.message, p.ServerHello):
                self.last_seq = None  # a new serial connection numbers from 0
            if self.last_seq is not None and (item.seq - self.last_seq) & 0xFFFFFFFF != 1:
                self.gaps.append((self.last_seq, item.seq))
            self.last_seq = item.seq
            self.frames.put_nowait(item)

    def send(self, message: p.Message) -> int:
        seq = self.encoder.next_seq
        os.write(self.fd, self.encoder.encode(message))
        return seq

    async def next(
        self, kind: type[p.Message], timeout: float = 5.0, skip: Callable[[p.Frame], Any] | None = None
    ) -> p.Frame:
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.frames.get()
                if isinstance(frame.message, kind):
                    return frame
                if skip is not None:
                    skip(frame)

    async def handshake(self, sub: p.Subscribe | None = None) -> None:
        await self.next(p.ServerHello)
        seq = self.send(p.ClientHello(1, 1, bytes(32), "pytest-device"))
        ack = await self.next(p.Ack)
        assert ack.message == p.Ack(seq, 0, 1)
        if sub is not None:
            seq = self.send(sub)
            ack = await self.next(p.Ack)
            assert isinstance(ack.message, p.Ack)
            assert ack.message.ack_seq == seq

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().remove_reader(self.fd)
            with contextlib.suppress(OSError):
                os.close(self.fd)


async def port_open(bridge: SerialLine, outages: int = 0) -> None:
    """Until the bridge holds the port open (a pty master reads EIO while no slave is open)."""
    async with asyncio.timeout(5):
        while bridge.port is None or bridge.outages != outages:
            await asyncio.sleep(0.005)


def pty_pair() -> tuple[int, str]:
    master, slave = os.openpty()
    name = os.ttyname(slave)
    tty.setraw(slave)  # no echo before the opener configures it (a UART has none)
    os.close(slave)  # pyserial opens it again by name, like a real device
    return master, name


class FakeTime:
    """A monotonic clock that the bridge's backoff sleeps advance instantly."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.offset += seconds
        await asyncio.sleep(0)


MODES = ["served", "client"]
"""How the port gets its stream: ``served``, the serial transport of the server itself (``serial-bridge
--scenario``); ``client``, a bridge that is a TCP client of the server (``serial-bridge --server``)."""


@contextlib.asynccontextmanager
async def bridged(
    scenario: Path,
    config: BridgeConfig,
    *,
    speed: float,
    mode: str,
    opener: Callable[[str, int], serial.SerialBase] = open_serial,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Any] = asyncio.sleep,
) -> AsyncIterator[tuple[HilServer, SerialLine, asyncio.Task[int]]]:
    """A server on ``scenario`` (listening on TCP too, for reference clients) with the port attached."""
    server = await start_server(scenario, speed=speed)
    client: HilClient | None = None
    line: SerialLine
    try:
        if mode == "served":
            line = SerialTransport(server, config, opener=opener, clock=clock, sleep=sleep)
        else:
            client = await HilClient.connect("127.0.0.1", server.port, name="bridge-under-test")
            line = SerialBridge(client, config, opener=opener, clock=clock, sleep=sleep)
            d = line.default
            await client.subscribe(d.mask, d.cells, d.divider, d.eis_mode)
        task = asyncio.create_task(line.run())
        try:
            yield server, line, task
        finally:
            line.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)
    finally:
        if client is not None:
            await client.close()
        await server.stop()


# -- the line budget and pacing (sans-IO, fake clock) ------------------------------------------------------


def test_budget_says_when_the_stream_does_not_fit_and_raises_the_divider() -> None:
    spec = StreamSpec(n_cells=96, step_period_us=100_000, n_freq=61, speed=1.0, eis_interval_s=600.0)
    fast = plan_budget(spec, 921600)
    assert fast.fits
    assert fast.effective_divider == 1
    slow = plan_budget(spec, 9600)
    assert slow.available == 960.0
    assert slow.states == pytest.approx(10 * states_bytes(96))  # 10 steps/s of 2346 bytes
    assert not slow.fits
    # the smallest divider whose states fit what is left of 90 % of the line
    room = 0.9 * 960 - slow.spectra - slow.overhead
    assert slow.states / slow.effective_divider <= room < slow.states / (slow.effective_divider - 1)
    assert "does NOT fit" in slow.describe()
    assert f"-> {slow.effective_divider}" in slow.describe()
    # a requested divider stays a factor of the effective one: the steps sent are a subset of those asked
    three = plan_budget(StreamSpec(96, 100_000, 61, 1.0, divider=3, eis_interval_s=600.0), 9600)
    assert three.effective_divider % 3 == 0
    # speed 0: the speed at which the stream fills 90 % of the line
    paced = plan_budget(StreamSpec(1, 100_000, 61, 0.0, eis_interval_s=60.0), 115200)
    assert paced.line_speed == pytest.approx((0.9 * 11520 - paced.overhead) / (paced.states + paced.spectra))


def test_the_line_sends_a_bounded_hello_and_budgets_a_grid_it_was_not_told() -> None:
    """SPEC.md 4: the hello on the line is at most HELLO_PAYLOAD_MAX; a bridge whose upstream hello came
    without its grid budgets for the longest spectrum."""
    whole = p.ServerHello(
        cell_count=4, step_period_us=100_000, model_id="m" * 255, freq_hz=np.logspace(4, -2, 337)
    )
    line = SerialLine(whole, BridgeConfig(port="unused"))
    session = LineSession(whole, line.default, line.pacer, **line.session_options)
    assert len(p.encode_payload(session.hello)) <= p.HELLO_PAYLOAD_MAX
    assert session.hello.freq_hz.size == 0
    assert session.hello.model_id == "m" * 255
    upstream = SerialLine(session.hello, BridgeConfig(port="unused"))
    assert line.n_freq == upstream.n_freq == 337
    assert upstream.plan(upstream.default).spectra == line.plan(line.default).spectra > 0


def test_pacer_never_exceeds_the_line_and_never_drops_replies() -> None:
    rate = 960.0  # 9600 baud
    pacer = LinePacer(rate, limit_bytes=600)
    frame = bytes(200)
    now, written, replies = 0.0, bytearray(), 0
    for i in range(200):  # 50 frames/s of telemetry for 4 s: about ten times the line
        pacer.push(frame, now, droppable=True, kind="states")
        if i % 20 == 0:
            pacer.push(b"R" * 30, now, droppable=False, kind="reply")
            replies += 1
        for _ in range(4):
            now += 0.005
            written += pacer.pull(now)
        # the line never carries more than its rate plus one burst
        assert len(written) <= rate * now + pacer.burst
    while not pacer.idle:
        now += 0.01
        written += pacer.pull(now)
    assert written.count(b"R" * 30) == replies  # every reply went out, whole
    assert pacer.dropped > 0
    assert pacer.dropped_by_kind["states"] == pacer.dropped
    assert len(written) == 30 * replies + 200 * (200 - pacer.dropped)
    assert pacer.telemetry_bytes == 0


def test_pacer_keeps_a_started_frame_whole_and_the_push_order() -> None:
    pacer = LinePacer(1000.0, limit_bytes=10_000, burst_s=0.0)  # burst: 64 bytes
    pacer.push(b"a" * 100, 0.0, droppable=True, kind="t")
    first = pacer.pull(0.0)
    assert first == b"a" * 64
    pacer.push(b"b" * 10, 0.0, droppable=True, kind="t")
    pacer.push(b"R" * 10, 0.0, droppable=False, kind="reply")
    assert pacer.next_ready(0.0) == pytest.approx(0.032)
    out = pacer.pull(1.0)
    # the started frame ends first; then push order, which is seq order: nothing overtakes (SPEC.md 2.3)
    assert out == b"a" * 36 + b"b" * 10 + b"R" * 10
    assert pacer.frames_sent == 3
    assert pacer.next_ready(1.0) is None


def test_a_failed_write_drops_its_telemetry_and_keeps_its_replies() -> None:
    pacer = LinePacer(1000.0, limit_bytes=10_000, burst_s=0.0)  # 64-byte bursts
    pacer.push(b"t" * 20, 0.0, droppable=True, kind="t")
    pacer.push(b"R" * 20, 0.0, droppable=False, kind="reply")
    pacer.push(b"u" * 40, 0.0, droppable=True, kind="t")
    chunk = pacer.pull(0.0)
    assert chunk == b"t" * 20 + b"R" * 20 + b"u" * 24  # the last frame cut by the burst
    pacer.write_failed(len(chunk))  # the port went away during this write
    assert pacer.dropped == 2  # both telemetry frames, the cut one included
    assert pacer.frames_sent == 0
    assert pacer.pull(1.0) == b"R" * 20  # the reply again, whole, and nothing of the cut frame


def test_a_frame_cut_by_a_lost_port_is_not_continued() -> None:
    pacer = LinePacer(1000.0, limit_bytes=10_000, burst_s=0.0)
    pacer.push(b"R" * 100, 0.0, droppable=False, kind="reply")
    assert pacer.pull(0.0) == b"R" * 64  # written; then the port is lost before the rest
    pacer.abort_current()
    assert pacer.pull(1.0) == b"R" * 64  # the reply starts again from its first byte
    assert pacer.pull(2.0) == b"R" * 36
    pacer.abort_current()  # nothing half-sent now: nothing to do
    assert (pacer.dropped, pacer.frames_sent, pacer.pull(3.0)) == (0, 1, b"")


def test_pacer_drops_the_oldest_telemetry_but_never_a_reply() -> None:
    pacer = LinePacer(1000.0, limit_bytes=30, burst_s=0.0)
    pacer.push(b"1" * 10, 0.0, droppable=True, kind="t")
    pacer.push(b"R" * 10, 0.0, droppable=False, kind="reply")
    pacer.push(b"2" * 10, 0.0, droppable=True, kind="t")
    pacer.push(b"3" * 10, 0.0, droppable=True, kind="t")
    assert pacer.push(b"4" * 10, 0.0, droppable=True, kind="t") == 1  # over 30 bytes of telemetry: 1 goes
    assert pacer.pull(1.0) == b"R" * 10 + b"2" * 10 + b"3" * 10 + b"4" * 10
    assert pacer.dropped == 1


# -- protocol format over a pty ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.asyncio
async def test_device_session_handshake_states_and_pause_over_a_pty(mode: str) -> None:
    master, name = pty_pair()
    config = BridgeConfig(port=name, baud=921600, low_latency=True)
    with structlog.testing.capture_logs() as logs:
        async with bridged(US06, config, speed=20.0, mode=mode) as (_, bridge, _task):
            await port_open(bridge)
            dev = Device(master)
            await dev.handshake(p.Subscribe(p.SubscribeMask.ALL, 2, 0, np.array([0], np.uint16)))
            states = (await dev.next(p.CellStates)).message
            assert isinstance(states, p.CellStates)
            assert states.step % 2 == 0
            assert states.records["cell"].tolist() == [0]
            # PAUSE: the ACK echoes the device's seq, then no more states, heartbeats say PAUSED
            seq = dev.send(p.Control(p.ControlCommand.PAUSE))
            seen: list[p.Frame] = []
            ack = await dev.next(p.Ack, skip=seen.append)
            assert ack.message == p.Ack(seq, p.ControlCommand.PAUSE, 0)
            hb = await dev.next(p.Heartbeat, timeout=3)
            while not isinstance(hb.message, p.Heartbeat) or hb.message.sim_state != p.SimState.PAUSED:
                hb = await dev.next(p.Heartbeat, timeout=3)
            after: list[p.Frame] = []
            await dev.next(p.Heartbeat, timeout=3, skip=after.append)
            assert not [f for f in after if isinstance(f.message, p.CellStates)]
            seq = dev.send(p.Control(p.ControlCommand.RESUME))
            ack = await dev.next(p.Ack)
            assert ack.message == p.Ack(seq, p.ControlCommand.RESUME, 0)
            resumed = (await dev.next(p.CellStates)).message
            assert isinstance(resumed, p.CellStates)
            assert resumed.step > states.step
            # an unknown cell is refused by the bridge itself
            seq = dev.send(p.Subscribe(p.SubscribeMask.ALL, 1, 0, np.array([7], np.uint16)))
            nak = await dev.next(p.Nak)
            assert isinstance(nak.message, p.Nak)
            assert nak.message.ack_seq == seq
            assert nak.message.code == p.ErrorCode.UNKNOWN_CELL
            assert dev.errors == []
            assert dev.gaps == []
            assert hb.message.frames_dropped == 0
            dev.close()
            assert bridge.session.rx_bad == 0
    assert any("line budget" in e["event"] and "fits" in e["event"] for e in logs)
    assert any("low_latency" in e["event"] for e in logs)  # a pty refuses it: logged, not fatal


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.asyncio
async def test_low_baud_decimates_counts_in_heartbeats_and_keeps_replies(mode: str) -> None:
    master, name = pty_pair()
    # 96 cells at 10 steps/s and 2x: 47 kB/s of states against 11.5 kB/s of line
    config = BridgeConfig(port=name, baud=115200, eis_interval_s=600.0, speed=2.0)
    with structlog.testing.capture_logs() as logs:
        async with bridged(PACK, config, speed=2.0, mode=mode) as (_, bridge, _task):
            await port_open(bridge)
            dev = Device(master)
            await dev.handshake()
            warned = [e for e in logs if "line budget" in e["event"]]
            assert warned
            assert "does NOT fit" in warned[0]["event"]
            assert warned[0]["log_level"] == "warning"
            divider = bridge.session.effective_divider
            assert divider > 1
            seq = dev.send(p.Control(p.ControlCommand.REQUEST_SPECTRUM, cell=3))
            frames: list[p.Frame] = []
            ack = await dev.next(p.Ack, skip=frames.append)
            assert ack.message.ack_seq == seq  # type: ignore[attr-defined]
            hb = (await dev.next(p.Heartbeat, timeout=3, skip=frames.append)).message
            assert isinstance(hb, p.Heartbeat)
            if hb.frames_dropped == 0:
                hb = (await dev.next(p.Heartbeat, timeout=3, skip=frames.append)).message
            assert isinstance(hb, p.Heartbeat)
            assert hb.frames_dropped > 0
            steps = [f.message.step for f in frames if isinstance(f.message, p.CellStates)]
            assert steps
            assert all(s % divider == 0 for s in steps)
            assert bridge.session.decimated > 0
            assert dev.errors == []
            dev.close()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.asyncio
async def test_port_lost_and_back_keeps_the_session(mode: str) -> None:
    master1, name1 = pty_pair()
    master2, name2 = pty_pair()
    fake = FakeTime()
    failures = 7  # backoff 0.05 + 0.1 + ... + 2.0 = 5.15 s, past the device's 5 s peer timeout

    def opener(port: str, baud: int) -> serial.SerialBase:
        nonlocal failures
        if port == "dev" and opener.calls == 0:  # type: ignore[attr-defined]
            opener.calls += 1  # type: ignore[attr-defined]
            return open_serial(name1, baud)
        if failures:
            failures -= 1
            raise serial.SerialException(f"could not open port {port}: No such file or directory")
        return open_serial(name2, baud)

    opener.calls = 0  # type: ignore[attr-defined]
    # the outage outlasts the device's peer timeout (5 s): the session must still survive it
    config = BridgeConfig(port="dev", baud=921600, reopen_timeout_s=30.0, peer_timeout_s=5.0)
    async with bridged(US06, config, speed=20.0, mode=mode, opener=opener, clock=fake, sleep=fake.sleep) as (
        _,
        bridge,
        task,
    ):
        await port_open(bridge)
        dev = Device(master1)
        await dev.handshake(p.Subscribe(p.SubscribeMask.ALL, 1, 0, np.array([0], np.uint16)))
        last = (await dev.next(p.CellStates)).seq
        dev.close()  # the adapter is unplugged: the bridge's reads fail
        await port_open(bridge, outages=1)
        dev2 = Device(master2)
        dev2.last_seq = last
        frame = await dev2.next(p.CellStates)
        assert frame.seq > last  # the same serial connection: numbering goes on, no new hello
        assert not task.done()
        assert bridge.outages == 1
        assert len(fake.sleeps) == 7
        assert fake.sleeps == sorted(fake.sleeps)
        hb = (await dev2.next(p.Heartbeat, timeout=3)).message
        assert isinstance(hb, p.Heartbeat)
        assert hb.frames_dropped >= 0
        # the session survived: a control still works without a new handshake
        seq = dev2.send(p.Control(p.ControlCommand.PAUSE))
        ack = await dev2.next(p.Ack)
        assert ack.message == p.Ack(seq, p.ControlCommand.PAUSE, 0)
        dev2.close()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.asyncio
async def test_port_that_never_comes_back_exits_3(mode: str) -> None:
    master, name = pty_pair()
    fake = FakeTime()
    opened = False

    def opener(port: str, baud: int) -> serial.SerialBase:
        nonlocal opened
        if not opened:
            opened = True
            return open_serial(name, baud)
        raise serial.SerialException(f"could not open port {port}")

    config = BridgeConfig(port=name, baud=921600, reopen_timeout_s=30.0)
    with structlog.testing.capture_logs() as logs:
        async with bridged(
            US06, config, speed=5.0, mode=mode, opener=opener, clock=fake, sleep=fake.sleep
        ) as (
            _,
            bridge,
            task,
        ):
            await port_open(bridge)
            os.close(master)
            code = await asyncio.wait_for(task, 5)
    assert code == EXIT_PORT_GONE
    assert "did not come back within 30 s" in bridge.exit_message
    assert name in bridge.exit_message
    assert sum(fake.sleeps) == pytest.approx(30.0, abs=0.1)
    assert any("did not come back" in e["event"] and e["log_level"] == "error" for e in logs)


@pytest.mark.asyncio
async def test_stream_faults_reach_the_line_of_a_served_port(tmp_path: Path) -> None:
    """The port as the server's transport gets the scenario's stream faults as a TCP client does: gaps,
    bad CRCs the device rejects, and after a ``disconnect`` a new serial connection (SERVER_HELLO)."""
    scenario = tmp_path / "faults.yaml"
    scenario.write_text(
        US06.read_text() + "faults:\n"
        "  - {kind: drop_frames, start_s: 1, duration_s: 5, probability: 0.5}\n"
        "  - {kind: corrupt_crc, start_s: 10, duration_s: 5, probability: 0.5}\n"
        "  - {kind: disconnect, start_s: 20}\n"
    )
    master, name = pty_pair()
    config = BridgeConfig(port=name, baud=921600)
    async with bridged(scenario, config, speed=50.0, mode="served") as (_, line, _task):
        await port_open(line)
        dev = Device(master)
        mask = p.SubscribeMask.CELL_STATES | p.SubscribeMask.FAULT_EVENT
        await dev.handshake(p.Subscribe(mask, 1, 0, np.array([], np.uint16)))
        frames: list[p.Frame] = []
        await dev.next(p.ServerHello, timeout=10, skip=frames.append)  # the disconnect: a new connection
        dev.close()
    states = [f.message for f in frames if isinstance(f.message, p.CellStates)]
    events = {f.message.kind for f in frames if isinstance(f.message, p.FaultEvent)}
    assert 19.0 < max(s.t_sim_us for s in states) / 1e6 <= 20.5
    assert dev.gaps  # frames dropped on purpose
    assert sum(e.kind is p.DecodeErrorKind.BAD_CRC for e in dev.errors) > 10
    assert {p.FaultKind.DROP_FRAMES, p.FaultKind.CORRUPT_CRC} <= events  # ground truth never damaged


@pytest.mark.asyncio
async def test_a_served_port_ends_with_its_server() -> None:
    """The server's ``stop()`` ends its serial transport as it ends its TCP sessions: BYE SHUTDOWN to the
    device, the port detached before the server is gone, exit code 1 (the stream's source went away)."""
    master, name = pty_pair()
    config = BridgeConfig(port=name, baud=921600)
    async with bridged(US06, config, speed=20.0, mode="served") as (server, line, task):
        await port_open(line)
        dev = Device(master)
        await dev.handshake()
        await server.stop("end of test")
        bye = (await dev.next(p.Bye)).message
        assert bye == p.Bye(p.ErrorCode.SHUTDOWN, "server stopped: end of test")
        assert await asyncio.wait_for(task, 5) == EXIT_UPSTREAM
        assert not server.sessions
        dev.close()


def test_cli_refuses_a_port_that_does_not_open(tmp_path: Path) -> None:
    from hil_server.cli import main

    code = main(["serial-bridge", "--port", str(tmp_path / "ttyNONE"), "--scenario", str(US06)])
    assert code == 2


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.asyncio
async def test_cli_bridge_answers_the_device_and_says_bye_on_sigint(mode: str) -> None:
    """``serial-bridge`` as a user runs it, with ``--scenario`` (the port is the server's own transport: no
    TCP port, the line-paced speed at ``--speed 0``) and with ``--server HOST:PORT`` (a client of a running
    server): the device's handshake and controls answered, BYE SHUTDOWN and exit 0 on SIGINT."""
    import signal
    import sys

    master, slave = os.openpty()
    name = os.ttyname(slave)
    tty.setraw(slave)  # held open by the test too: the master does not read EIO before the bridge opens it
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ["--port", name, "--baud", "115200", "--no-low-latency"]
    server = await start_server(US06, speed=5.0) if mode == "client" else None
    if server is not None:
        args += ["--server", f"127.0.0.1:{server.port}"]
    else:
        args += ["--scenario", str(US06), "--speed", "0"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hil_server.cli",
        "serial-bridge",
        *args,
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    dev = Device(master)
    try:
        await dev.handshake(p.Subscribe(p.SubscribeMask.CELL_STATES, 1, 0, np.array([], np.uint16)))
        first = (await dev.next(p.CellStates)).message
        seq = dev.send(p.Control(p.ControlCommand.PAUSE))
        ack = await dev.next(p.Ack)
        assert ack.message == p.Ack(seq, p.ControlCommand.PAUSE, 0)
        proc.send_signal(signal.SIGINT)
        bye = (await dev.next(p.Bye)).message
        assert isinstance(bye, p.Bye)
        assert bye.reason == p.ErrorCode.SHUTDOWN
        code = await asyncio.wait_for(proc.wait(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        dev.close()
        os.close(slave)
        if server is not None:
            await server.stop()
    err = (await proc.stderr.read()).decode()
    assert code == 0, err
    assert isinstance(first, p.CellStates)
    assert dev.errors == []
    assert dev.gaps == []
    if server is None:
        serving = next(line for line in err.splitlines() if "serving" in line)
        assert "port=None" in serving  # the port is the server's transport: no TCP listener, no client
        assert "line-paced speed" in err


def test_ftdi_latency_timer(tmp_path: Path) -> None:
    node = tmp_path / "ttyUSB7"
    node.mkdir()
    (node / "latency_timer").write_text("16\n")
    assert ftdi_latency_timer("/dev/ttyUSB7", 1, sysfs=tmp_path) == "set"
    assert (node / "latency_timer").read_text().strip() == "1"
    assert ftdi_latency_timer("/dev/ttyUSB7", 1, sysfs=tmp_path) == "ok"
    assert ftdi_latency_timer("/dev/ttyUSB9", 1, sysfs=tmp_path) == "absent"


# -- AD5940 text -------------------------------------------------------------------------------------------


def test_ad5940_line_format_is_the_example_printf() -> None:
    line = ad5940.format_point(1000.0, 0.012345678, -0.0034567)
    # printf("Freq: %f (real, image) = ,%f , %f ,mOhm \n", ...), values in mOhm as float
    assert line == "Freq: 1000.000000 (real, image) = ,12.345678 , -3.456700 ,mOhm \n"
    point = ad5940.parse_line(line)
    assert point.freq_hz == 1000.0
    assert point.z_re_mohm == 12.345678
    assert point.z_im_mohm == -3.4567
    nan = ad5940.format_point(0.02, float("nan"), float("inf"))
    assert nan == "Freq: 0.020000 (real, image) = ,nan , inf ,mOhm \n"
    with pytest.raises(ValueError, match="not an AD5940"):
        ad5940.parse_line("Freq: 1 (real, image) = ,1 , 1 ,Ohm")
    assert ad5940.format_banner(time.strptime("12:34:56", "%H:%M:%S")) == "Hello AD5940-Build Time:12:34:56\n"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.asyncio
async def test_ad5940_over_loop_parses_back_to_the_spectrum(mode: str) -> None:
    # the production opener: its write timeout ends a write nobody reads any more (the bridge goes on printing
    # after the test stops reading; without it the executor thread blocks forever and the loop never closes)
    port = open_serial("loop://", 921600)
    config = BridgeConfig(port="loop://", baud=921600, fmt=OutputFormat.AD5940, cells=(0,))
    async with bridged(US06, config, speed=400.0, mode=mode, opener=lambda _u, _b: port) as (
        server,
        _bridge,
        _task,
    ):
        ref = await HilClient.connect("127.0.0.1", server.port, name="reference")
        try:
            await ref.subscribe(p.SubscribeMask.EIS_SPECTRUM, cells=(0,))
            spectrum = await ref.next_message(p.EisSpectrum, timeout=10)
        finally:
            await ref.close()
        text = b""
        n = spectrum.freq_hz.size
        async with asyncio.timeout(10):
            while text.count(b"\n") < n + 1:
                text += await asyncio.to_thread(port.read, 4096)
    lines = text.decode("ascii").split("\n")
    assert lines[0].startswith("Hello AD5940-Build Time:")
    points = [ad5940.parse_line(line) for line in lines[1 : n + 1]]
    # the first spectrum the bridge printed is the first the reference client got (same server, same cell)
    np.testing.assert_allclose([q.freq_hz for q in points], spectrum.freq_hz, rtol=1e-7, atol=5e-7)
    re_mohm = (spectrum.z_re_ohm.astype(np.float32) * np.float32(1000)).astype(float)
    im_mohm = (spectrum.z_im_ohm.astype(np.float32) * np.float32(1000)).astype(float)
    np.testing.assert_allclose([q.z_re_mohm for q in points], re_mohm, atol=5e-7)
    np.testing.assert_allclose([q.z_im_mohm for q in points], im_mohm, atol=5e-7)
    np.testing.assert_allclose(
        [q.z_ohm for q in points], spectrum.z_re_ohm + 1j * spectrum.z_im_ohm, rtol=1e-6
    )


# -- the C example client ----------------------------------------------------------------------------------


def _relay(a: int, b: int, stop: threading.Event) -> None:
    """What socat does: copy bytes between two pty masters, so each side opens a real tty by path. Bytes
    nobody reads (the device not open yet) are lost, as on a real line."""
    os.set_blocking(a, False)
    os.set_blocking(b, False)
    while not stop.is_set():
        ready, _, _ = select.select([a, b], [], [], 0.05)
        for src in ready:
            try:
                data = os.read(src, 65536)
                os.write(b if src == a else a, data)
            except OSError:  # EIO: the other side has no slave open yet; EAGAIN: full
                time.sleep(0.01)


def _c_session_done(out: list[str]) -> bool:
    starts = [i for i, line in enumerate(out) if line.startswith("SERVER_HELLO")]
    if not starts:
        return False
    session = out[starts[0] :]
    kinds = ("ACK seq 1 ", "CELL_STATES", "HEARTBEAT")
    return all(any(line.startswith(k) for line in session) for k in kinds)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.asyncio
async def test_c_serial_client_talks_to_the_bridge(mode: str) -> None:
    if shutil.which("gcc") is None or shutil.which("make") is None:
        if os.environ.get("EIS_HIL_CI"):  # CI has them: a skip there would test nothing
            pytest.fail("needs gcc and make")
        pytest.skip("needs gcc and make")
    build = subprocess.run(
        ["make", "-s", "-C", str(ROOT / "firmware_stub"), "examples"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    exe = ROOT / "firmware_stub" / "build" / "hil_serial_client"
    bridge_master, bridge_name = pty_pair()
    dev_master, dev_name = pty_pair()
    stop = threading.Event()
    relay = threading.Thread(target=_relay, args=(bridge_master, dev_master, stop), daemon=True)
    relay.start()
    config = BridgeConfig(port=bridge_name, baud=115200, cells=(0,))
    try:
        async with bridged(US06, config, speed=20.0, mode=mode) as (_, bridge, _task):
            await port_open(bridge)
            proc = await asyncio.create_subprocess_exec(
                str(exe), dev_name, "115200", "--name", "c-bms", stdout=asyncio.subprocess.PIPE
            )
            assert proc.stdout is not None
            out: list[str] = []
            try:
                async with asyncio.timeout(8):
                    while not _c_session_done(out):
                        out.append((await proc.stdout.readline()).decode())
            finally:
                proc.terminate()
                await proc.wait()
    finally:
        stop.set()
        relay.join()
        os.close(bridge_master)
        os.close(dev_master)
    # The client may open the line in the middle of a frame (its tcflush drops the head): garbage first,
    # then the next repeated SERVER_HELLO starts its session.
    start = next(i for i, line in enumerate(out) if line.startswith("SERVER_HELLO"))
    assert out[start].startswith("SERVER_HELLO versions 1..1.0 cells 1 step 100000 us")
    session = out[start:]
    assert "ACK seq 0 command 0 result 1\n" in session  # CLIENT_HELLO (seq 0) accepted, version 1
    assert "ACK seq 1 command 0 result 1\n" in session  # its SUBSCRIBE, one cell
    assert not [line for line in session if line.startswith(("decoder:", "ERROR", "NAK"))]
