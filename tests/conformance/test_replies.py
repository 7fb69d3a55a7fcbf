"""The reply rules a client waits on (SPEC.md 6.1, 5, 8) on a live server: exactly one ACK or NAK per
request in every session state, nothing for HEARTBEAT and ERROR, NAK command 0xFF for a damaged CONTROL,
argument ranges, a cell subscribed twice, and every reply before the BYE of a stalled reader (real TCP:
what a stalled socket does is the point)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import numpy as np
import pytest

import protocol as p
from hil_server.testing import start_server, until
from hil_server.transport.loopback import connect
from hil_server.transport.tcp import Session

from .conftest import serving

C = p.ControlCommand
PACK = Path(__file__).resolve().parents[2] / "scenarios" / "pack_96s_spread.yaml"


class Raw:
    """A client that does everything by hand over a reader/writer pair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.encoder = p.FrameEncoder()
        self.decoder = p.FrameDecoder()
        self.frames: list[p.Frame] = []

    def send(self, *messages: p.Message) -> list[int]:
        seqs = []
        for m in messages:
            seqs.append(self.encoder.next_seq)
            self.writer.write(self.encoder.encode(m))
        return seqs

    async def next(self, timeout: float = 5.0) -> p.Frame | None:
        while True:
            for item in self.decoder.events():
                assert isinstance(item, p.Frame), item
                self.frames.append(item)
                return item
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), timeout)
            except (ConnectionError, OSError):
                return None
            if not chunk:
                return None
            self.decoder.feed(chunk)

    async def reply_to(self, seq: int) -> p.Message:
        """The next frame that is not telemetry; it must refer to ``seq``."""
        async with asyncio.timeout(10):  # heartbeats keep coming: one deadline for the whole wait
            while True:
                frame = await self.next()
                assert frame is not None, "connection closed"
                msg = frame.message
                if isinstance(msg, p.Heartbeat | p.CellStates | p.EisSpectrum | p.EisPoint | p.FaultEvent):
                    continue
                ref = msg.ref_seq if isinstance(msg, p.Error) else getattr(msg, "ack_seq", None)
                assert ref == seq, msg
                return msg


@pytest.mark.asyncio
async def test_heartbeat_and_error_get_no_answer_and_requests_their_nak_before_the_hello(
    scenario: Path,
) -> None:
    async with serving(scenario) as (server, _):
        raw = Raw(*await connect(server))
        hello = await raw.next()
        assert hello is not None
        assert isinstance(hello.message, p.ServerHello)
        raw.send(p.Heartbeat(), p.Error(p.ErrorCode.BAD_CRC, 7, "a client may report errors too"))
        subscribe, pause = raw.send(p.Subscribe(), p.Control(C.PAUSE))
        nak = await raw.reply_to(subscribe)  # the HEARTBEAT and the ERROR got nothing: this comes first
        assert isinstance(nak, p.Nak)
        assert (nak.command, nak.code) == (0, p.ErrorCode.NOT_ALLOWED_IN_STATE)
        nak = await raw.reply_to(pause)
        assert isinstance(nak, p.Nak)
        assert (nak.command, nak.code) == (C.PAUSE, p.ErrorCode.NOT_ALLOWED_IN_STATE)
        (client_hello,) = raw.send(p.ClientHello(client_name="raw"))
        assert isinstance(await raw.reply_to(client_hello), p.Ack)
        raw.send(p.Heartbeat(), p.Error(p.ErrorCode.GARBAGE, 0, "noise"))
        (resume,) = raw.send(p.Control(C.RESUME))
        nak = await raw.reply_to(resume)
        assert isinstance(nak, p.Nak)
        assert nak.code == p.ErrorCode.NOT_ALLOWED_IN_STATE  # RUNNING: RESUME is refused (the table)
        assert server.sim_state is p.SimState.RUNNING
        raw.writer.close()


@pytest.mark.asyncio
async def test_a_damaged_control_gets_a_nak_that_cannot_be_taken_for_a_subscribe_nak(scenario: Path) -> None:
    async with serving(scenario) as (_, client):
        raw = bytearray(p.encode_frame(p.Control(C.PAUSE), seq=500))
        raw[-1] ^= 1
        short = p.frame_payload(p.MsgType.SUBSCRIBE, b"\x01", seq=501)
        client.send_raw(bytes(raw) + short)
        naks: dict[int, p.Nak] = {}
        async with asyncio.timeout(10):  # heartbeats keep coming: one deadline for the whole wait
            while len(naks) < 2:
                frame = await client.next_frame()
                if isinstance(frame.message, p.Nak):
                    naks[frame.message.ack_seq] = frame.message
        assert (naks[500].command, naks[500].code) == (p.UNPARSED_COMMAND, p.ErrorCode.BAD_CRC)
        assert (naks[501].command, naks[501].code) == (0, p.ErrorCode.MALFORMED_PAYLOAD)


@pytest.mark.asyncio
async def test_a_cell_named_twice_is_acknowledged_and_streamed_once(scenario: Path) -> None:
    async with serving(scenario) as (_, client):
        assert await client.subscribe(mask=p.SubscribeMask.CELL_STATES, cells=(1, 1)) == 1
        states = await client.next_message(p.CellStates, timeout=5)
        assert states.records["cell"].tolist() == [1]


@pytest.mark.parametrize(
    ("control", "text"),
    [
        (p.Control.set_load_current(10**12, cell=0), "outside the cells' limit -135000..135000 uA"),
        (p.Control.set_load_current(-135_001), "outside the cells' limit"),
        (p.Control.set_ambient_temperature(120_001), "outside -60..120 C"),
        (p.Control.inject_fault(p.FaultKind.GAIN, severity_ppm=1_000_001), "severity must be 0..1000000 ppm"),
        (p.Control.inject_fault(p.FaultKind.OFFSET), "inject it from a scenario file"),
        (p.Control.set_speed(1_000_000_001), "speed at most 1000000000 ppm"),
        (p.Control.set_speed(-1), "speed must be >= 0"),
    ],
)
@pytest.mark.asyncio
async def test_out_of_range_arguments_are_refused_with_the_range(
    scenario: Path, control: p.Control, text: str
) -> None:
    async with serving(scenario) as (server, client):
        nak = await client.control(control)
        assert isinstance(nak, p.Nak)
        assert (nak.command, nak.code) == (control.command, p.ErrorCode.OUT_OF_RANGE)
        assert text in nak.message
        assert server.speed == 0.0


@pytest.mark.parametrize(
    "control",
    [
        p.Control.set_load_current(135_000, cell=2),
        p.Control.set_load_current(-135_000),
        p.Control(C.SET_LOAD_CURRENT, aux=1, value=10**15),  # release: the value is unused
        p.Control.set_ambient_temperature(-60_000),
        p.Control.inject_fault(p.FaultKind.GAIN, severity_ppm=1_000_000, duration_ms=2**32 - 1),
        p.Control.set_speed(1_000_000_000),
        p.Control(C.REQUEST_SPECTRUM, cell=2, aux=0xFFFFFFFF, value=-5),  # unused fields are ignored
    ],
)
@pytest.mark.asyncio
async def test_the_ends_of_the_ranges_are_accepted(scenario: Path, control: p.Control) -> None:
    async with serving(scenario) as (_, client):
        assert isinstance(await client.control(control), p.Ack)


@pytest.mark.asyncio
async def test_a_stalled_reader_gets_every_reply_before_its_bye() -> None:
    """SPEC.md 8 and 6.1: CONTROLs the server carried out while the client's socket was stalled all have
    their ACK, before the BYE SLOW_CONSUMER (lower seq); nothing is answered after it."""
    server = await start_server(PACK, queue_frames=64, stuck_s=0.5)
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the stall comes fast
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        raw = Raw(*await asyncio.open_connection(sock=sock))
        await raw.next()
        (hello,) = raw.send(p.ClientHello(client_name="stalled"))
        assert isinstance(await raw.reply_to(hello), p.Ack)
        (sub,) = raw.send(p.Subscribe(cells=np.array([], dtype=np.uint16)))
        assert isinstance(await raw.reply_to(sub), p.Ack)
        session = next(s for s in server.sessions.values() if s.client_name == "stalled")
        assert isinstance(session, Session)  # a TCP session (the server's sessions may be any Peer)
        # its writer is blocked in drain (socket buffers full), and its queue has filled behind it
        await until(
            lambda: session.writer.transport.get_write_buffer_size() > 65536 and not session.room.is_set(), 20
        )
        controls = raw.send(*(p.Control.set_ambient_temperature(20_000 + i) for i in range(7)))
        await until(lambda: session.closing, 20)
        async with asyncio.timeout(30):
            while await raw.next(timeout=5) is not None:  # now read everything that reached us
                pass
        replies = {f.message.ack_seq: f.seq for f in raw.frames if isinstance(f.message, p.Ack)}
        byes = [f for f in raw.frames if isinstance(f.message, p.Bye)]
        assert len(byes) == 1
        bye = byes[0]
        assert isinstance(bye.message, p.Bye)
        assert bye.message.reason == p.ErrorCode.SLOW_CONSUMER
        assert raw.frames[-1] is bye
        assert set(controls) <= set(replies), f"no ACK for {sorted(set(controls) - set(replies))}"
        assert all(replies[seq] < bye.seq for seq in controls)
        raw.writer.close()
    finally:
        await server.stop()
