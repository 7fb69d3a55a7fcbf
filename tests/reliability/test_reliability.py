"""Reliability and security catalogue (issue #9): hostile bytes, misbehaving clients, bad files, signals.

Every case asserts the outcome the issue asks for: a clear message (its content is checked), the server still
serving, and a well-behaved client still receiving its whole stream with no gap in its sequence numbers.
The server is only touched through its public interfaces (``start_server``, ``HilClient``, raw sockets and
the ``eis-hil`` command), with short timeouts from ``ServerConfig`` instead of waiting.

Cases of issue #9 already covered elsewhere (not repeated here):

- garbage and a bad CRC from one client while another streams: ``transport/test_tcp.py``
  ``test_garbage_from_one_client_does_not_disturb_another``; a CONTROL with a bad CRC or a short payload gets
  a NAK with its seq: ``test_malformed_control_gets_a_nak_with_its_seq``;
- a subscribed client that never reads is dropped while the others keep their stream:
  ``test_a_client_that_never_reads_is_dropped_without_hurting_others``; a client gone mid-frame:
  ``test_client_disconnect_mid_frame_leaves_the_server_serving``;
- controls with an unknown cell, command or a negative seek, an unknown EIS mode:
  ``test_every_control_command``, ``test_controls_act_on_the_simulation``,
  ``test_subscribe_with_an_unknown_eis_mode_is_refused``;
- hostile scenario files at the loader level (aliases, depth, size, python tags, paths leaving the scenario's
  directory, missing drive cycles): ``test_scenario.py`` ``test_bad_input_catalogue``; here they go through
  the ``validate`` and ``serve`` commands;
- model directories at the loader level: ``test_model.py``, ``test_runtime.py``; here through ``serve``.

Slow parts, each bounded: the atheris run (``FUZZ_SECONDS``), and the 60-second soak (``-m "not soak"``
deselects it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocol as p
from hil_server.client.client import HilClient
from hil_server.model.store import BUNDLED_MODEL_DIR
from hil_server.testing import start_server, until
from hil_server.transport.tcp import HilServer

from ..fuzz_server_input import MODE_SUBSCRIBED, Harness, write_seeds

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "scenarios"
US06 = SCENARIOS / "us06_25c.yaml"
FAULTS = SCENARIOS / "fault_showcase.yaml"
PACK = SCENARIOS / "pack_96s_spread.yaml"
FUZZ_SECONDS = 10
C = p.ControlCommand


# -- helpers -------------------------------------------------------------------------------------------


def header(msg_type: int, payload_len: int, seq: int, version: int = 1) -> bytes:
    """A frame header with a valid header CRC announcing ``payload_len`` bytes (any value of the u16)."""
    head = struct.pack("<2sBBHHI", p.SYNC, version, msg_type, 0, payload_len, seq)
    return head + struct.pack("<H", p.crc16_ccitt_false(head))


class Raw:
    """A hand-driven client: bytes out as they are, frames in through a FrameDecoder."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = p.FrameDecoder()
        self.encoder = p.FrameEncoder()
        self.received: list[p.Frame] = []

    @classmethod
    async def open(
        cls, port: int, *, hello: bool = True, subscribe: int | None = None, rcvbuf: int | None = None
    ) -> Raw:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        raw = cls(reader, writer)
        await raw.expect(p.ServerHello)
        if hello:
            raw.send(raw.encoder.encode(p.ClientHello(client_name="raw")))
            await raw.expect(p.Ack)
        if subscribe is not None:
            raw.send(raw.encoder.encode(p.Subscribe(msg_mask=subscribe)))
            await raw.expect(p.Ack)
        return raw

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def next(self, timeout: float = 5.0) -> p.Frame | None:
        """The next frame from the server, None at end of stream; a bad frame from the server fails."""
        while True:
            for item in self.decoder.events():
                assert not isinstance(item, p.RemoteProtocolError), f"server sent a bad frame: {item}"
                self.received.append(item)
                return item
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), timeout)
            except (ConnectionError, OSError):
                return None
            if not chunk:
                return None
            self.decoder.feed(chunk)

    async def expect(self, kind: type[p.Message], timeout: float = 5.0) -> p.Frame:
        while True:
            frame = await self.next(timeout)
            assert frame is not None, f"connection closed while waiting for {kind.__name__}"
            if isinstance(frame.message, kind):
                return frame

    async def until_closed(self, timeout: float = 5.0) -> list[p.Message]:
        """Every message until the server closes the connection."""
        messages = []
        while (frame := await self.next(timeout)) is not None:
            messages.append(frame.message)
        return messages

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def serving(scenario: Path = US06, **config: Any) -> AsyncIterator[tuple[HilServer, HilClient]]:
    """A server and a well-behaved client (heartbeats every 50 ms, so short peer timeouts never hit it)."""
    server = await start_server(scenario, **config)
    good = await HilClient.connect("127.0.0.1", server.port, name="good", heartbeat_s=0.05)
    try:
        yield server, good
    finally:
        await good.close()
        await server.stop()


async def whole_stream(good: HilClient, n: int) -> list[int]:
    """The next ``n`` CELL_STATES steps of the well-behaved client, asserted consecutive and gap-free."""
    steps = [(await good.next_message(p.CellStates, timeout=10)).step for _ in range(n)]
    assert steps == list(range(steps[0], steps[0] + n)), "the well-behaved client missed steps"
    assert good.gaps == 0, f"{good.gaps} gaps in the well-behaved client's sequence numbers"
    assert good.errors == [], good.errors
    return steps


# -- protocol ------------------------------------------------------------------------------------------

HB = p.encode_payload(p.Heartbeat())
HELLO_BAD_UTF8 = p.encode_payload(p.ClientHello(client_name="abc"))[:-3] + b"\xff\xfe\xfd"


def _bad_crc(seq: int) -> bytes:
    frame = bytearray(p.frame_payload(p.MsgType.HEARTBEAT, HB, seq))
    frame[-1] ^= 0x01
    return bytes(frame)


MALFORMED = [
    # (id, frame builder, ErrorCode of the ERROR reply, text it must contain)
    ("wrong_crc", _bad_crc, p.ErrorCode.BAD_CRC, "frame CRC mismatch (type 0x04"),
    (
        "oversized_length",
        lambda s: header(0x04, 4097, s),
        p.ErrorCode.OVERSIZED,
        "payload length 4097 exceeds",
    ),
    # A length of -1 written into the u16 field reads as 65535: the largest the envelope can say.
    ("negative_length", lambda s: header(0x04, 0xFFFF, s), p.ErrorCode.OVERSIZED, "payload length 65535"),
    ("unknown_type", lambda s: p.frame_payload(0x7F, b"", s), p.ErrorCode.UNKNOWN_MESSAGE_TYPE, "type 0x7f"),
    (
        "wrong_version",
        lambda s: p.frame_payload(p.MsgType.HEARTBEAT, HB, s, version=2),
        p.ErrorCode.UNSUPPORTED_VERSION,
        "protocol version 2 (accepted: [1])",
    ),
    (  # a HEARTBEAT: a malformed request (SUBSCRIBE, CONTROL) gets a NAK instead (SPEC.md 6.1)
        "short_payload",
        lambda s: p.frame_payload(p.MsgType.HEARTBEAT, b"\x01\x00\x00", s),
        p.ErrorCode.MALFORMED_PAYLOAD,
        "Heartbeat: payload of 3 bytes is too short",
    ),
    (
        "invalid_utf8",
        lambda s: p.frame_payload(p.MsgType.CLIENT_HELLO, HELLO_BAD_UTF8, s),
        p.ErrorCode.MALFORMED_PAYLOAD,
        "client_name: invalid UTF-8",
    ),
    (
        "server_only_type",
        lambda s: p.encode_frame(p.CellStates(0, 0, 0, np.zeros(0, p.CELL_STATE_DTYPE)), s),
        p.ErrorCode.NOT_ALLOWED_IN_STATE,
        "CELL_STATES is not accepted from a client",
    ),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("case", "build", "code", "text"), MALFORMED, ids=[m[0] for m in MALFORMED])
async def test_a_bad_frame_gets_an_error_naming_it_and_the_session_goes_on(
    case: str, build: Callable[[int], bytes], code: p.ErrorCode, text: str
) -> None:
    async with serving() as (server, good):
        await good.subscribe(mask=p.SubscribeMask.CELL_STATES)
        bad = await Raw.open(server.port)
        bad.send(build(4242))  # alone: an oversized header must be answered without waiting for its payload
        error: p.Error = (await bad.expect(p.Error)).message  # type: ignore[assignment]
        assert (error.code, error.ref_seq) == (code, 4242), error
        assert text in error.message
        # the same session still works: a CONTROL gets its reply
        bad.send(p.encode_frame(p.Control(C.SET_AMBIENT_TEMPERATURE, aux=1), seq=4243))
        ack: p.Ack = (await bad.expect(p.Ack)).message  # type: ignore[assignment]
        assert ack.ack_seq == 4243
        await whole_stream(good, 30)
        assert server.rx_bad >= (0 if code == p.ErrorCode.NOT_ALLOWED_IN_STATE else 1)
        await bad.close()


def _harness_settings() -> settings:
    return settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        derandomize=True,
    )


def _frames_strategy() -> st.SearchStrategy[bytes]:
    """Valid frames of every client type, some with a bit flipped, cut, or with random bytes between."""
    enc_msgs = st.sampled_from(
        [
            p.Heartbeat(),
            p.Control(C.SET_AMBIENT_TEMPERATURE, aux=1),
            p.Control(C.REQUEST_SPECTRUM),
            p.Control(77),
            p.Subscribe(msg_mask=p.SubscribeMask.HEARTBEAT),
            p.ClientHello(client_name="again"),
        ]
    )

    @st.composite
    def piece(draw: st.DrawFn) -> bytes:
        frame = bytearray(p.encode_frame(draw(enc_msgs), seq=draw(st.integers(0, 2**32 - 1))))
        action = draw(st.sampled_from(["keep", "flip", "cut", "noise"]))
        if action == "flip":
            bit = draw(st.integers(0, len(frame) * 8 - 1))
            frame[bit // 8] ^= 1 << (bit % 8)
        elif action == "cut":
            frame = frame[: draw(st.integers(0, len(frame) - 1))]
        elif action == "noise":
            frame = bytearray(draw(st.binary(max_size=40))) + frame
        return bytes(frame)

    return st.lists(piece(), max_size=6).map(b"".join)


def test_random_bytes_property() -> None:
    """Hypothesis against the same path and invariants as the atheris harness: random bytes in every session
    state never escape as an exception, always leave the session answering (or closed with a BYE), and the
    server's bad-input counter matches a reference decoder."""
    with Harness() as harness:

        @_harness_settings()
        @given(mode=st.integers(0, 2), body=st.binary(max_size=600))
        def check(mode: int, body: bytes) -> None:
            outcome = harness.run(bytes([mode]) + body)
            assert outcome.probe_reply is not None or outcome.bye is not None

        check()
        harness.check_alive()


def test_mangled_frames_property() -> None:
    """Near-valid input (real frames, flipped bits, cut frames, noise between) in a subscribed session."""
    with Harness() as harness:

        @_harness_settings()
        @given(body=_frames_strategy())
        def check(body: bytes) -> None:
            outcome = harness.run(bytes([MODE_SUBSCRIBED]) + body)
            if outcome.bye is None and outcome.probe_reply is not None:
                assert outcome.rx_bad_delta == outcome.expected_bad

        check()
        harness.check_alive()


def test_atheris_fuzzing_of_the_input_path(tmp_path: Path) -> None:
    """Coverage-guided fuzzing for a bounded time, in a subprocess: it exits 0 when no invariant broke."""
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    write_seeds(corpus)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve().parents[1] / "fuzz_server_input.py"),
        f"-max_total_time={FUZZ_SECONDS}",
        "-max_len=8192",
        f"-artifact_prefix={tmp_path}/",
        str(corpus),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(  # noqa: PLW1510 (the exit status is asserted)
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=FUZZ_SECONDS + 60
    )
    tail = proc.stderr[-3000:]
    assert proc.returncode == 0, f"fuzzer found a failure (artifacts in {tmp_path}):\n{tail}"
    assert "seeds passed; fuzzing" in proc.stderr
    assert "DONE" in proc.stderr, tail
    assert not list(tmp_path.glob("crash-*"))


OUT_OF_RANGE_CONTROLS = [
    (p.Control(C.SET_SPEED, value=-5), p.ErrorCode.OUT_OF_RANGE, "speed must be >= 0"),
    (
        p.Control(C.SET_AMBIENT_TEMPERATURE, value=2**63 - 1),
        p.ErrorCode.OUT_OF_RANGE,
        "outside -60..120 C",
    ),
    (
        p.Control.inject_fault(p.FaultKind.NOISE, severity_ppm=2_000_000),
        p.ErrorCode.OUT_OF_RANGE,
        "severity must be 0..1000000 ppm",
    ),
    (
        p.Control(C.INJECT_FAULT, fault_kind=p.FaultKind.CONTACT_RESISTANCE, value=-1),
        p.ErrorCode.OUT_OF_RANGE,
        "severity must be 0..1000000 ppm",
    ),
    (
        p.Control(C.INJECT_FAULT, fault_kind=0xEE, value=1000),
        p.ErrorCode.OUT_OF_RANGE,
        "unknown fault kind 238",
    ),
    (p.Control(C.REQUEST_SPECTRUM, cell=4000), p.ErrorCode.UNKNOWN_CELL, "cell 4000 does not exist (0..0)"),
    (p.Control(0), p.ErrorCode.UNKNOWN_COMMAND, "unknown command 0"),
    (p.Control(255, aux=2**32 - 1, value=-(2**63)), p.ErrorCode.UNKNOWN_COMMAND, "unknown command 255"),
]


@pytest.mark.asyncio
async def test_control_values_out_of_range_get_a_nak_with_the_reason() -> None:
    async with serving() as (server, good):
        await good.subscribe(mask=p.SubscribeMask.CELL_STATES)
        controller = await HilClient.connect("127.0.0.1", server.port, name="controller")
        for control, code, text in OUT_OF_RANGE_CONTROLS:
            nak = await controller.control(control)
            assert isinstance(nak, p.Nak), (control, nak)
            assert (nak.code, nak.command) == (code, control.command), nak
            assert text in nak.message, nak
        # a subscription naming cells that do not exist is refused the same way
        controller.send_raw(
            controller.encoder.encode(p.Subscribe(cells=np.array([0, 9999], dtype=np.uint16)))
        )
        nak = await controller.next_message(p.Nak, timeout=5)
        assert nak.code == p.ErrorCode.UNKNOWN_CELL
        assert "cells [9999] do not exist (0..0)" in nak.message
        assert server.sim_state is p.SimState.RUNNING
        assert server.speed == 0.0  # none of the refused commands changed anything
        await whole_stream(good, 30)
        await controller.close()


async def _stalled(server: HilServer) -> None:
    """Until the simulation stops advancing (speed 0 waiting for a client that does not read)."""
    last = -1
    while (now := server.source.time_us) != last:
        last = now
        await asyncio.sleep(0.1)


@pytest.mark.asyncio
async def test_a_streaming_client_that_sends_controls_sees_its_frames_in_seq_order() -> None:
    """A client that is briefly slower than the stream (its socket full, frames waiting in its queue) sends a
    CONTROL: the ACK must come after the frames numbered before it, or the client counts false losses."""
    server = await start_server(PACK)  # 96 cells: big frames fill the socket buffers in a few thousand steps
    try:
        raw = await Raw.open(server.port, subscribe=p.SubscribeMask.CELL_STATES, rcvbuf=4096)
        await _stalled(
            server
        )  # not reading: at speed 0 the server stops stepping once its queue is half full
        raw.send(raw.encoder.encode(p.Control(C.SET_AMBIENT_TEMPERATURE, aux=1)))
        seqs: list[int] = []
        acked_at: int | None = None
        while acked_at is None or len(seqs) < acked_at + 50:
            frame = await raw.next()
            assert frame is not None
            seqs.append(frame.seq)
            if isinstance(frame.message, p.Ack) and frame.message.command:
                acked_at = len(seqs)
        out_of_order = [(a, b) for a, b in itertools.pairwise(seqs) if b != a + 1]
        assert out_of_order == [], f"seq jumps on the wire: {out_of_order[:5]}"
        await raw.close()
    finally:
        await server.stop()


@pytest.mark.asyncio
async def test_an_unknown_command_is_unknown_whatever_its_other_fields() -> None:
    """SPEC.md 3.3: an unknown command gets NAK UNKNOWN_COMMAND. Its other fields have no meaning yet (a later
    minor version defines them), so they cannot make it an UNKNOWN_CELL."""
    async with serving() as (_, good):
        nak = await good.control(p.Control(255, cell=0xFFFE))
        assert isinstance(nak, p.Nak)
        assert nak.code == p.ErrorCode.UNKNOWN_COMMAND, nak


@pytest.mark.asyncio
async def test_an_absurd_load_current_is_refused_with_the_cells_limit() -> None:
    """SET_LOAD_CURRENT with the largest i64 (9.2e12 A) is refused with the cells' limit (SPEC.md 4, CONTROL);
    the limit itself is carried out, and the stream goes on."""
    async with serving() as (server, good):
        await good.subscribe(mask=p.SubscribeMask.CELL_STATES)
        controller = await HilClient.connect("127.0.0.1", server.port, name="controller")
        nak = await controller.control(p.Control.set_load_current(2**63 - 1))
        assert isinstance(nak, p.Nak)
        assert nak.code == p.ErrorCode.OUT_OF_RANGE
        limit_uA = round(server.engine.profile.current_max_a * 1e6)
        assert f"..{limit_uA} uA" in nak.message
        assert isinstance(await controller.control(p.Control.set_load_current(limit_uA)), p.Ack)
        await controller.close()
        for _ in range(3000):
            states = await good.next_message(p.CellStates, timeout=10)
            if abs(int(states.records["current_uA"][0]) - limit_uA) <= 1:
                break
        else:
            raise AssertionError("the load current never reached the limit")
        await whole_stream(good, 30)


@pytest.mark.asyncio
async def test_a_flood_of_control_frames_is_rate_limited() -> None:
    rate = 20
    async with serving(control_rate_per_s=float(rate)) as (server, good):
        await good.subscribe(mask=p.SubscribeMask.CELL_STATES)
        flooder = await Raw.open(server.port)
        n = 200
        first = 1000
        release = p.Control(C.SET_AMBIENT_TEMPERATURE, aux=1)  # harmless: releases no override
        started = time.monotonic()
        flooder.send(b"".join(p.encode_frame(release, seq=first + i) for i in range(n)))
        replies: dict[int, p.Ack | p.Nak] = {}
        while len(replies) < n:
            msg = await flooder.next()
            assert msg is not None, f"connection closed after {len(replies)} replies"
            if isinstance(msg.message, p.Ack | p.Nak):
                assert msg.message.ack_seq not in replies, "a control got two replies"
                replies[msg.message.ack_seq] = msg.message
        elapsed = time.monotonic() - started
        assert sorted(replies) == list(range(first, first + n))  # every control answered exactly once
        acks = [r for r in replies.values() if isinstance(r, p.Ack)]
        naks = [r for r in replies.values() if isinstance(r, p.Nak)]
        assert rate <= len(acks) <= rate + rate * elapsed + 1  # the bucket's burst plus its refill
        assert naks, "no NAK for a flood"
        assert {r.code for r in naks} == {p.ErrorCode.RATE_LIMITED}
        assert f"more than {rate} commands/s" in naks[0].message
        await whole_stream(good, 30)
        await flooder.close()


@pytest.mark.asyncio
async def test_half_a_frame_then_silence_ends_in_a_heartbeat_timeout_bye() -> None:
    async with serving(peer_timeout_s=0.3, heartbeat_s=0.05) as (server, good):
        await good.subscribe(mask=p.SubscribeMask.CELL_STATES)
        silent = await Raw.open(server.port)
        silent.send(p.encode_frame(p.Control(C.PAUSE), seq=7)[:9])  # half a frame, then nothing
        messages = await silent.until_closed(timeout=5)
        byes = [m for m in messages if isinstance(m, p.Bye)]
        assert len(byes) == 1
        assert byes[0].reason == p.ErrorCode.HEARTBEAT_TIMEOUT
        assert byes[0].message == "nothing received for 0.3 s"
        assert isinstance(messages[-1], p.Bye)  # nothing after the BYE
        await silent.close()
        await until(lambda: len(server.sessions) == 1)
        await whole_stream(good, 30)  # the good client's heartbeats kept it alive
        assert server.sim_state is p.SimState.RUNNING  # the half PAUSE never acted


# -- connections ---------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_200_concurrent_clients_and_one_over_the_limit() -> None:
    n = 200
    async with serving(max_clients=n + 1) as (server, good):
        await good.subscribe(mask=p.SubscribeMask.CELL_STATES)
        clients = await asyncio.gather(
            *(HilClient.connect("127.0.0.1", server.port, name=f"c{i}", timeout=20) for i in range(n))
        )
        try:
            # Each subscribes (heartbeats only: they stream, so at speed 0 the server paces to them too).
            counts = await asyncio.gather(
                *(c.subscribe(mask=p.SubscribeMask.HEARTBEAT, timeout=20) for c in clients)
            )
            assert counts == [1] * n
            assert len(server.sessions) == n + 1
            await whole_stream(good, 100)
            over = await Raw.open(server.port, hello=False)
            messages = await over.until_closed()
            bye = messages[-1]
            assert isinstance(bye, p.Bye)
            assert bye.reason == p.ErrorCode.TOO_MANY_CLIENTS
            assert bye.message == f"at most {n + 1} clients"
            await over.close()
            await whole_stream(good, 30)
            assert all(c.gaps == 0 and not c.errors and c.bye is None for c in clients)
        finally:
            await asyncio.gather(*(c.close() for c in clients))
        await until(lambda: len(server.sessions) == 1)


@pytest.mark.asyncio
async def test_slowloris_is_closed_after_the_handshake_timeout() -> None:
    async with serving(handshake_timeout_s=0.2, heartbeat_s=0.05) as (server, good):
        await good.subscribe(mask=p.SubscribeMask.CELL_STATES)
        lazy = [await Raw.open(server.port, hello=False) for _ in range(5)]  # connect, never say hello
        for raw in lazy:
            messages = await raw.until_closed(timeout=5)
            assert isinstance(messages[-1], p.Bye)
            assert messages[-1].reason == p.ErrorCode.HEARTBEAT_TIMEOUT
            assert messages[-1].message == "no CLIENT_HELLO in time"
            await raw.close()
        await until(lambda: len(server.sessions) == 1)
        await whole_stream(good, 50)


async def _churn_once(port: int, i: int) -> None:
    """One of several ways to come and go: cut before hello, cut mid-frame, RST, orderly BYE."""
    kind = i % 4
    if kind == 3:
        client = await HilClient.connect("127.0.0.1", port, name=f"churn{i}")
        await client.subscribe(mask=p.SubscribeMask.CELL_STATES)
        await client.close()
        return
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    if kind == 1:
        sock.send(p.encode_frame(p.ClientHello(client_name="cut"), seq=0)[:20])
    if kind == 2:  # abortive close: the server sees a reset, not an EOF
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.asyncio
async def test_connect_disconnect_churn() -> None:
    async with serving(PACK, speed=20.0) as (server, good):
        await good.subscribe(mask=p.SubscribeMask.CELL_STATES, cells=(0,))
        steps = await whole_stream(good, 5)
        for batch in range(10):
            await asyncio.gather(*(_churn_once(server.port, batch * 10 + i) for i in range(10)))
        await until(lambda: len(server.sessions) == 1)
        later = await whole_stream(good, 20)
        assert later[0] > steps[-1]
        assert server.next_sid > 100  # every churned connection was accepted and cleaned up


@pytest.mark.asyncio
async def test_every_misbehaving_client_at_once_leaves_a_paced_stream_whole() -> None:
    """A never-reader (subscribed: at speed 0 it would hold the stream back by design, so the server paces
    at 20x real time here), slowloris, churn, garbage and a control flooder, all at once; the well-behaved
    client's stream has no gap and its server-side drop counter stays 0."""
    async with serving(
        PACK, speed=20.0, stuck_s=0.5, queue_frames=256, handshake_timeout_s=0.5, control_rate_per_s=10.0
    ) as (server, good):
        await good.subscribe(mask=p.SubscribeMask.CELL_STATES)
        reader = await Raw.open(server.port, subscribe=p.SubscribeMask.ALL, rcvbuf=4096)  # never reads
        lazy = await Raw.open(server.port, hello=False)
        noisy = await Raw.open(server.port)
        flooder = await Raw.open(server.port)
        stop = asyncio.Event()

        async def misbehave() -> None:
            rng = np.random.default_rng(9)
            i = 0
            while not stop.is_set():
                noisy.send(rng.bytes(500))
                flooder.send(p.encode_frame(p.Control(C.SET_AMBIENT_TEMPERATURE, aux=1), seq=i))
                await _churn_once(server.port, i)
                i += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(misbehave())
        try:
            steps = await whole_stream(good, 200)
        finally:
            stop.set()
            await task
        good_session = next(s for s in server.sessions.values() if s.client_name == "good")
        assert good_session.frames_dropped == 0
        assert steps[-1] - steps[0] == 199
        for raw in (reader, lazy, noisy, flooder):
            await raw.close()
        await until(lambda: len(server.sessions) == 1)
        await whole_stream(good, 20)


@pytest.mark.asyncio
async def test_a_stuck_client_is_told_slow_consumer() -> None:
    """A client that stops reading long enough to be disconnected, then reads what reached it: the last frame
    must be BYE SLOW_CONSUMER (SPEC.md section 8), so its log says why the stream ended."""
    async with serving(PACK, queue_frames=64, stuck_s=0.3) as (server, good):
        await good.subscribe(mask=p.SubscribeMask.CELL_STATES, cells=(0,))
        stuck = await Raw.open(server.port, subscribe=p.SubscribeMask.ALL, rcvbuf=4096)
        session = next(s for s in server.sessions.values() if s.client_name == "raw")
        await until(lambda: session.closing, timeout=20)  # the server gave up on it: now read what came
        byes = [m for m in await stuck.until_closed(timeout=5) if isinstance(m, p.Bye)]
        assert byes, "no BYE reached the stuck client"
        assert byes[-1].reason == p.ErrorCode.SLOW_CONSUMER
        await whole_stream(good, 20)
        await stuck.close()


# -- files ---------------------------------------------------------------------------------------------


def _model_copy(tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(BUNDLED_MODEL_DIR, target)
    return target


def _edit_metadata(model: Path, edit: Callable[[dict[str, object]], object]) -> None:
    meta = json.loads((model / "metadata.json").read_text())
    edit(meta)
    (model / "metadata.json").write_text(json.dumps(meta))


def _rehash(model: Path) -> None:
    digest = hashlib.sha256((model / "model.keras").read_bytes()).hexdigest()
    _edit_metadata(model, lambda m: m.__setitem__("model_sha256", digest))


def _truncate(model: Path, keep: int) -> None:
    (model / "model.keras").write_bytes((model / "model.keras").read_bytes()[:keep])


def _truncate_and_rehash(model: Path) -> None:
    """A torn model file whose hash was recomputed: only opening the archive can tell."""
    _truncate(model, 20_000)
    _rehash(model)


_BUNDLED_CELLS = json.loads((BUNDLED_MODEL_DIR / "metadata.json").read_text(encoding="utf-8"))["cells"]
MODEL_CASES: list[tuple[str, Callable[[Path], object], str, str]] = [
    # (id, how to break the copy, file the message names, what it must say)
    ("missing_directory", shutil.rmtree, "metadata.json", "missing (a model directory holds"),
    ("missing_model_file", lambda m: (m / "model.keras").unlink(), "model.keras", "missing (named by"),
    (
        "metadata_not_json",
        lambda m: (m / "metadata.json").write_text("{not json"),
        "metadata.json",
        "unreadable or not JSON",
    ),
    (
        "metadata_field_missing",
        lambda m: _edit_metadata(m, lambda d: d.pop("profiles")),
        "metadata.json",
        "missing or malformed field 'profiles'",
    ),
    ("truncated_model", lambda m: _truncate(m, 1000), "model.keras", "does not match metadata.json"),
    (
        "truncated_model_rehashed",
        _truncate_and_rehash,
        "model.keras",
        "not a Keras archive",
    ),
    (
        "metadata_lists_fewer_profiles",
        lambda m: _edit_metadata(m, lambda d: d.__setitem__("profiles", ["zhang2020"])),
        "model.keras",
        f"expected (4, 64) for 1 profiles and {len(_BUNDLED_CELLS)} cells",
    ),
    (
        "metadata_lists_other_cells",
        lambda m: _edit_metadata(m, lambda d: d.__setitem__("cells", {"zhang2020/x": 1})),
        "model.keras",
        "for 2 profiles and 1 cells",
    ),
]


@pytest.mark.parametrize(("case", "breaker", "file", "text"), MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_serve_with_a_bad_model_exits_2_naming_the_file(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
    breaker: Callable[[Path], object],
    file: str,
    text: str,
) -> None:
    from hil_server.cli import main

    model = _model_copy(tmp_path, "model")
    breaker(model)
    assert main(["--log-json", "serve", str(US06), "--model", str(model), "--port", "0"]) == 2
    errors = [
        json.loads(line)
        for line in capsys.readouterr().err.splitlines()
        if line.startswith("{") and '"level": "error"' in line
    ]
    assert errors, f"{case}: no error logged"
    message = errors[-1]["error"]
    assert str(model / file) in message, message
    assert text in message, message


def _scenario_text() -> str:
    return "name: t\ncells: {count: 1, profile: zhang2020}\ntimeline:\n  - rest: {duration_s: 60}\n"


HOSTILE_SCENARIOS: list[tuple[str, str, str]] = [
    # (id, file content, what the message must say); every message also starts with the file's path
    ("huge", _scenario_text() + "#" * (1 << 20) + "\n", "file larger than 1048576 bytes"),
    (
        "deeply_nested",
        _scenario_text() + "description: " + "[" * 500 + "]" * 500 + "\n",
        "nesting deeper than",
    ),
    (
        "alias_bomb",
        "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
        + "".join(
            f"{c}: &{c} [{', '.join([f'*{prev}'] * 9)}]\n"
            for prev, c in zip("abcdefgh", "bcdefghi", strict=True)
        )
        + _scenario_text(),
        "YAML anchor '&a' is not allowed",
    ),
    (
        "missing_drive_cycle",
        _scenario_text().replace(
            "rest: {duration_s: 60}", "drive_cycle: {cycle: cycles/gone.csv, signal: current}"
        ),
        "drive cycle file not found",
    ),
    (
        "python_object_tag",
        _scenario_text() + "description: !!python/object/apply:os.system 'touch pwned'\n",
        "YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed",
    ),
    (
        # a tag on a list is not reported (only scalar tags are), but nothing is constructed from it either
        "python_tag_on_a_list",
        _scenario_text() + "description: !!python/object/apply:os.system [touch pwned]\n",
        "description: expected a string, got a list",
    ),
]


@pytest.mark.parametrize(
    ("case", "text", "message"), HOSTILE_SCENARIOS, ids=[h[0] for h in HOSTILE_SCENARIOS]
)
def test_hostile_scenarios_through_validate_and_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, text: str, message: str
) -> None:
    from hil_server.cli import main

    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    started = time.monotonic()
    assert main(["validate", str(path)]) == 1  # validate: 1 = the files have errors
    out = capsys.readouterr().out
    assert out.startswith(f"{path}"), out[:300]
    assert message in out, out[:500]
    assert "1 file(s) checked, 1 error(s)" in out
    assert main(["serve", str(path), "--port", "0"]) == 2
    err = capsys.readouterr().err  # errors on stderr, each line naming the command
    assert err.startswith(f"eis-hil serve: {path}"), err[:300]
    assert message in err, err[:500]
    assert time.monotonic() - started < 5.0  # refused before any expansion or deep recursion
    assert not (tmp_path / "pwned").exists()
    assert not Path("pwned").exists()


_NEGATIVE_RE = (
    "spectrum_id,soc,temp_c,soh,freq_hz,z_re_ohm,z_im_ohm\n"
    "a,0.5,25,1,1000,0.1,-0.01\na,0.5,25,1,100,-0.2,-0.02\na,0.5,25,1,10,0.3,-0.03\n"
)
SCENARIO_PHYSICS: list[tuple[str, str, str | None]] = [
    # (id, timeline or extra keys appended to a one-cell zhang2020 scenario, the error; None = valid)
    (
        "current_beyond_the_cell",
        "  - constant_current: {current_a: 1000, duration_s: 60}\n",
        ":5: constant_current.current_a: 1000 A is beyond the zhang2020 cell's limit (45 mAh, at most "
        "0.135 A)",
    ),
    (
        "cv_voltage_beyond_the_cell",
        "  - cc_cv_charge: {current_a: 0.04, voltage_v: 5.5, cutoff_current_a: 0.01}\n",
        ":5: cc_cv_charge.voltage_v: 5.5 V is outside the zhang2020 cell's range (3, 4.2] V",
    ),
    (
        "power_beyond_the_cell",
        "  - repeat: {count: 2, segments: [constant_power: {power_w: -50, duration_s: 5}]}\n",
        ":5: constant_power.power_w: -50 W is beyond the zhang2020 cell's limit",
    ),
    ("measured_negative_re", "eis: {measured: {file: lab.csv}}\n", "Re(Z) < 0 at 100 Hz (-0.2 ohm)"),
    # YAML 1.2 numbers, as scenarios/README.md writes them, and frequencies with their defaults
    (
        "yaml12_floats",
        "  - drive_cycle: {cycle: WLTC, scale: 8e-6, loops: 1}\neis: {frequencies: {min_hz: 1e-2}}\n",
        None,
    ),
    ("frequencies_one_key", "eis: {frequencies: {points_per_decade: 4}}\n", None),
]


@pytest.mark.parametrize(("case", "extra", "message"), SCENARIO_PHYSICS, ids=[c[0] for c in SCENARIO_PHYSICS])
def test_scenario_values_beyond_the_cell_are_refused_with_their_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, extra: str, message: str | None
) -> None:
    """Issue 16: 1000 A on a 45 mAh cell validated and ran (clamped to 3C); Re(Z) < 0 was streamed; 8e-6 was
    'expected a number'. validate exits 1 and serve 2, each naming the file and line."""
    from hil_server.cli import main

    (tmp_path / "lab.csv").write_text(_NEGATIVE_RE)
    path = tmp_path / f"{case}.yaml"
    body = "  - rest: {duration_s: 1}\n" + (extra if extra.startswith("  -") else "")
    path.write_text(
        _scenario_text().replace("  - rest: {duration_s: 60}\n", body)
        + ("" if extra.startswith("  -") else extra)
    )
    code = main(["validate", str(path)])
    out = capsys.readouterr().out
    if message is None:
        assert code == 0, out
        return
    assert code == 1, out
    assert f"{path}" in out
    assert message in out, out
    assert main(["serve", str(path), "--port", "0"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_bundled_scenario_streams_spectra_the_validity_check_can_judge(path: Path) -> None:
    """Issue 16: fault_showcase, the scenario meant to show a KK-breaking fault, had a 26-point grid and so
    no KK figure (it needs FRAME_M + 3 = 33 points)."""
    from hil_server.model.linkk import FRAME_M
    from hil_server.scenario import load_scenario

    scenario = load_scenario(path)
    assert len(scenario.eis.frequencies_hz) >= FRAME_M + 3, f"{path.name}: KK would be n/a"


def test_validate_notes_a_grid_too_small_for_the_kk_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hil_server.cli import main

    path = tmp_path / "small.yaml"
    path.write_text(_scenario_text() + "eis: {frequencies: {min_hz: 0.1, points_per_decade: 5}}\n")
    assert main(["validate", str(path)]) == 0  # a note, not an error
    out = capsys.readouterr().out
    assert f"{path}: note: eis grid of 26 points; the KK validity figure of each spectrum needs 33" in out


def test_us06_drives_long_enough_to_reach_the_cut_off_it_promises() -> None:
    """Issue 16: us06_25c said 'discharged to 3.0 V' but its 20 passes drew 57 % of the charge and ended at
    3.70 V. Without running 8 simulated hours: the passes of its drive must draw more than the charge the
    cell holds, so the 3.0 V condition ends the drive, not the pass count (eis-hil run measured it: the
    drive ends by cutoff_low)."""
    from hil_server.scenario import DriveCycleSegment, load_scenario
    from hil_server.sim.profiles import PROFILES

    scenario = load_scenario(US06)
    assert "discharged to 3.0 V" in scenario.description
    (drive,) = [s for s in scenario.timeline if isinstance(s, DriveCycleSegment)]
    assert drive.until is not None
    cycle = drive.cycle
    charge_per_pass_ah = float(np.trapezoid(cycle.value, cycle.time_s)) * drive.scale / 3600
    capacity_ah = scenario.cells.capacity_ah or PROFILES[scenario.cells.profile].capacity_ah
    assert drive.loops * charge_per_pass_ah > 1.3 * capacity_ah * scenario.cells.soc


def test_truncated_capture_replays_up_to_its_last_whole_record(tmp_path: Path) -> None:
    """A capture cut mid-record (a crash while recording): every complete record is read back, the torn
    tail is reported with the file, its offset and why, and reading never raises."""
    from hil_server.capture import format as capture_mod

    path = tmp_path / "session.eiscap"

    async def record() -> None:
        server = await start_server(US06, record=path)
        client = await HilClient.connect("127.0.0.1", server.port)
        await client.subscribe(mask=p.SubscribeMask.CELL_STATES)
        for _ in range(50):
            await client.next_message(p.CellStates, timeout=5)
        await client.close()
        await server.stop()

    asyncio.run(record())
    whole = list(capture_mod.iter_records(capture_mod.open_capture(path)))
    assert len(whole) > 50
    data = path.read_bytes()
    last = len(whole[-1].frame) + capture_mod.RECORD_OVERHEAD
    for cut in (1, 7, capture_mod.RECORD_HEADER.size + 3, last - 1):
        torn = tmp_path / f"torn-{cut}.eiscap"
        torn.write_bytes(data[:-cut])
        capture = capture_mod.open_capture(torn)
        records = list(capture_mod.iter_records(capture))
        assert [r.frame for r in records] == [r.frame for r in whole[:-1]]
        assert capture.truncated_bytes == last - cut
        assert capture.stop_reason is not None
        assert str(torn) in capture.stop_reason
        assert "cut off" in capture.stop_reason
        # every complete record is an intact protocol frame
        decoder = p.FrameDecoder()
        for r in records:
            decoder.feed(r.frame)
        assert all(isinstance(item, p.Frame) for item in decoder.events())


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real recorded session (serve --record) of 40 steps."""
    path = tmp_path_factory.mktemp("recorded") / "session.eiscap"

    async def record() -> None:
        server = await start_server(US06, record=path)
        client = await HilClient.connect("127.0.0.1", server.port)
        await client.subscribe()
        for _ in range(40):
            await client.next_message(p.CellStates, timeout=5)
        await client.close()
        await server.stop()

    asyncio.run(record())
    return path


def _flip_middle_record(clean: Path, out: Path) -> tuple[int, int]:
    """``clean`` with one bit flipped in the data of its middle record, written to ``out``: (the record's
    offset, the records of the capture)."""
    from hil_server.capture.format import open_capture, scan_records

    capture = open_capture(clean)
    records = list(scan_records(capture))
    hit = records[len(records) // 2]
    data = bytearray(clean.read_bytes())
    data[hit.offset + 30] ^= 0x10
    out.write_bytes(bytes(data))
    return hit.offset, len(records)


def _errors(err: str) -> list[str]:
    """The text of every error line in ``err`` (logs of a command run in-process)."""
    return [line for line in err.splitlines() if "error" in line.lower()]


def test_a_flipped_bit_costs_one_record_and_every_command_says_so(
    tmp_path: Path, recorded: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 16: a flipped bit in a capture lost the rest of the session. Now export, replay and capture
    check read every other record, name the damaged span, exit 1 unless --salvage; --repair writes a clean
    copy."""
    from hil_server.capture.format import iter_records, open_capture
    from hil_server.cli import main

    damaged = tmp_path / "damaged.eiscap"
    offset, total = _flip_middle_record(recorded, damaged)
    capsys.readouterr()

    assert main(["capture", "check", str(damaged)]) == 1
    out = capsys.readouterr().out
    assert f"{total - 1} intact records; 1 damaged span(s), 1 record(s) lost" in out, out
    assert f"damaged span at offset {offset}: " in out, out
    assert "CRC mismatch" in out, out

    repaired = tmp_path / "repaired.eiscap"
    assert main(["capture", "check", str(damaged), "--repair", str(repaired)]) == 1
    assert f"repaired copy {repaired}: {total - 1} records" in capsys.readouterr().out
    assert main(["capture", "check", str(repaired)]) == 0
    assert "intact" in capsys.readouterr().out
    assert [r.frame for r in iter_records(open_capture(repaired))] == [
        r.frame for r in iter_records(open_capture(damaged))
    ]
    assert main(["capture", "check", str(recorded)]) == 0

    assert main(["export", str(damaged), "--out", str(tmp_path / "x"), "--csv-only"]) == 1
    captured = capsys.readouterr()
    assert f"exported {total - 1} records" in captured.out
    (line,) = [e for e in _errors(captured.err) if "capture damaged" in e]
    assert f"1 record(s) lost in 1 span(s), the first at offset {offset}" in line
    assert "--salvage" in line
    assert main(["export", str(damaged), "--out", str(tmp_path / "y"), "--csv-only", "--salvage"]) == 0
    assert "WARNING: capture damaged, 1 record(s) lost" in capsys.readouterr().out
    assert main(["export", str(damaged), "--pcap", str(tmp_path / "d.pcapng")]) == 1
    assert main(["replay", str(damaged), "--port", "0"]) == 1  # refused before serving anything
    assert "capture damaged" in capsys.readouterr().err


def test_decode_reads_a_capture_file_as_its_frames(
    tmp_path: Path, recorded: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``eis-hil decode session.eiscap`` reported the capture's header and every record header as GARBAGE
    (exit 1) though nothing was wrong. A capture is now decoded as the frames of its records (exit 0);
    one whose header is damaged falls back to its raw bytes, where the frames still are."""
    from hil_server.capture.format import iter_records, open_capture
    from hil_server.cli import main

    frames = list(iter_records(open_capture(recorded)))
    capsys.readouterr()
    assert main(["decode", str(recorded)]) == 0
    out = capsys.readouterr().out
    assert f"{len(frames)} frames, 0 errors" in out.splitlines()[-1]
    data = bytearray(recorded.read_bytes())
    data[12] ^= 1  # the header's flags: header CRC mismatch
    bad = tmp_path / "bad_header.eiscap"
    bad.write_bytes(bytes(data))
    assert main(["decode", str(bad)]) == 1
    assert f"{len(frames)} frames" in capsys.readouterr().out


def test_a_zeroed_block_is_counted_as_at_least_the_records_recognised(
    tmp_path: Path, recorded: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """4 KiB zeroed in the middle of a capture (a bad sector, a torn page after an OS crash) held dozens of
    records, but the span was reported as "1 record(s) lost": nothing in zeros can be counted. The count
    is now a lower bound, said so, wherever the recognised records do not fill the span."""
    from hil_server.capture.format import open_capture, scan_records
    from hil_server.cli import main

    total = sum(1 for _ in scan_records(open_capture(recorded)))
    data = bytearray(recorded.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(4096)
    damaged = tmp_path / "zeroed.eiscap"
    damaged.write_bytes(bytes(data))
    capture = open_capture(damaged)
    intact = sum(1 for _ in scan_records(capture))
    (span,) = capture.damage
    assert total - intact > 10  # what the zeros cost
    assert not span.exact
    capsys.readouterr()
    assert main(["capture", "check", str(damaged)]) == 1
    out = capsys.readouterr().out
    assert f"{intact} intact records; 1 damaged span(s), at least 1 record(s) lost" in out, out
    assert main(["export", str(damaged), "--out", str(tmp_path / "x"), "--csv-only"]) == 1
    assert "capture damaged: at least 1 record(s) lost in 1 span(s)" in capsys.readouterr().err


# -- bad input on the command line (issue 16) ----------------------------------------------------------


def _inputs(tmp: Path, recorded: Path) -> dict[str, str]:
    """Files the catalogue's command lines name, made in ``tmp``: {placeholder: path}."""
    (tmp / "empty.key").write_bytes(b"\n")
    (tmp / "bench.key").write_bytes(b"a key\n")
    (tmp / "binary.csv").write_bytes(b"profile,soc,temp_c,soh\n\x00\x01\x02\xff\n")
    (tmp / "latin1.txt").write_bytes(b"1000\n100\n# 10 \xb0C\n")
    header = "spectrum_id,soc,temp_c,soh,freq_hz,z_re_ohm,z_im_ohm\n"
    (tmp / "latin1.csv").write_bytes((header + "a,0.5,25,1,1000,0.1,0.0\n").encode() + b"b,0.5,25\xb0,1\n")
    (tmp / "semicolon.csv").write_text(header.replace(",", ";") + "a;0,5;25;1;1000;0,1;0\n")
    (tmp / "a_file").write_text("x")
    (tmp / "zero_kelvin.csv").write_text(
        "profile,soc,temp_c,soh\nzhang2020,0.5,25,1\nzhang2020,0.5,-273.15,1\n"
    )
    (tmp / "exists.eiscap").write_bytes(b"x")
    (tmp / "terahertz.txt").write_text("1000\n1e30\n")
    (tmp / "nan_point.csv").write_text("profile,soc,temp_c,soh\nzhang2020,0.5,nan,1\n")
    return {
        "{US06}": str(US06),
        "{TMP}": str(tmp),
        "{CAP}": str(recorded),
        **{f"{{{p.name}}}": str(p) for p in tmp.iterdir()},
    }


BAD_COMMAND_LINES: list[tuple[str, str, int, str]] = [
    # (id, command line, exit status, what the one line must say)
    ("port_too_big", "serve {US06} --port 70000", 2, "--port 70000: expected an integer in [0, 65535]"),
    ("port_negative", "serve {US06} --port -1", 2, "--port -1: expected an integer in [0, 65535]"),
    ("speed_negative", "serve {US06} --speed -1", 2, "--speed -1: expected a number in [0, "),
    ("speed_nan", "serve {US06} --speed nan", 2, "--speed nan: not a finite number"),
    ("speed_inf", "serve {US06} --speed inf", 2, "--speed inf: not a finite number"),
    ("replay_speed_negative", "replay {CAP} --speed -1", 2, "(as CONTROL SET_SPEED)"),
    ("max_clients_0", "serve {US06} --max-clients 0", 2, "--max-clients 0: expected an integer >= 1"),
    ("empty_secret_file", "serve {US06} --port 0 --secret-file {empty.key}", 2, "the file is empty"),
    ("demo_seconds_negative", "demo --seconds -5", 2, "--seconds -5: expected a number > 0"),
    ("record_seconds_negative", "record 127.0.0.1 1 --out {TMP}/r.eiscap --seconds -1", 2, "--seconds -1"),
    (
        "bridge_server_port_too_big",
        "serial-bridge --port loop:// --server 127.0.0.1:70000",
        2,
        "port 70000 outside 1..65535",
    ),
    (
        "serial_scenario_with_secret",
        "serial-bridge --port loop:// --scenario {US06} --secret-file {bench.key}",
        2,
        "with --scenario there is no upstream",
    ),
    ("export_cells_beyond", "export {CAP} --out {TMP}/x --cells 0 9", 2, "--cells 9: the capture has 1 cell"),
    ("export_plot_cells_negative", "export {CAP} --out {TMP}/x --plot-cells -1", 2, "--plot-cells -1"),
    ("spectrum_soh_0", "spectrum --profile zhang2020 --soc 0.5 --temp-c 25 --soh 0", 2, "--soh 0: expected"),
    (
        "spectrum_absolute_zero",
        "spectrum --profile zhang2020 --soc 0.5 --temp-c -273.15 --soh 1",
        2,
        "--temp-c -273.15: expected a number in [-40, 85] (as the scenario key cells.temp_c)",
    ),
    (
        "points_absolute_zero",
        "spectrum --points {zero_kelvin.csv}",
        2,
        "zero_kelvin.csv: operating point 2: temp_c -273.15: expected a number in [-40, 85]",
    ),
    ("points_nan", "spectrum --points {nan_point.csv}", 2, "nan_point.csv:2: temp_c=nan: expected a finite"),
    (
        "freqs_beyond_any_grid",
        "spectrum --profile zhang2020 --soc .5 --temp-c 25 --soh 1 --freqs {terahertz.txt}",
        2,
        "terahertz.txt: frequency 1e+30: expected a number in [0.0001, 1000000] (as the scenario key eis.",
    ),
    ("train_epochs_0", "train --out {TMP}/m --epochs 0", 2, "--epochs 0: expected an integer >= 1"),
    ("train_epochs_negative", "train --out {TMP}/m --epochs -3", 2, "--epochs -3"),
    ("client_port", "client 127.0.0.1 70000", 2, "PORT 70000: expected an integer in [1, 65535]"),
    # outputs, checked before any work
    ("spectrum_out_missing_dir", "spectrum --out {TMP}/no/x.csv", 2, "/no does not exist"),
    ("spectrum_out_is_dir", "spectrum --out {TMP}", 2, "is a directory, expected a file name"),
    ("train_out_is_file", "train --out {a_file} --epochs 1", 2, "is a file, expected a directory"),
    ("tflite_out_missing_dir", "export-tflite --out {TMP}/no/m.tflite", 2, "/no does not exist"),
    ("serve_record_exists", "serve {US06} --record {exists.eiscap}", 2, "exists; refusing to overwrite"),
    ("repair_exists", "capture check {CAP} --repair {exists.eiscap}", 2, "exists; refusing to overwrite"),
    (
        "calibrate_bad_name",
        "calibrate --profile zhang2020 --spectra {latin1.csv} --name ../x",
        2,
        "--name '../x': use letters, digits",
    ),
    # input files: one shared text reader names the file and line
    ("points_binary", "spectrum --points {binary.csv}", 2, "binary.csv:2: binary data, not text"),
    (
        "freqs_not_utf8",
        "spectrum --profile zhang2020 --soc .5 --temp-c 25 --soh 1 --freqs {latin1.txt}",
        2,
        "latin1.txt:3: not UTF-8 text (byte 0xb0",
    ),
    ("csv_not_utf8", "convert {latin1.csv} {TMP}/o.csv", 2, "latin1.csv:3: not UTF-8 text (byte 0xb0"),
    ("convert_a_directory", "convert {TMP} {TMP}/o.csv", 2, ": is a directory, expected a file"),
    ("calibrate_a_directory", "calibrate --profile zhang2020 --spectra {TMP} --name c", 2, "is a directory"),
    (
        "csv_semicolons",
        "convert {semicolon.csv} {TMP}/o.csv",
        2,
        "semicolon.csv:1: the header is separated by",
    ),
]


@pytest.mark.parametrize(
    ("case", "line", "code", "message"), BAD_COMMAND_LINES, ids=[c[0] for c in BAD_COMMAND_LINES]
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path,
    recorded: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
    line: str,
    code: int,
    message: str,
) -> None:
    """Issue 16's catalogue: each bad command line exits with its status before any work, with one line
    naming the option or the file (and line), never a traceback."""
    from hil_server.cli import main

    files = _inputs(tmp_path, recorded)
    argv = []
    for word in line.split():
        for key, value in files.items():
            word = word.replace(key, value)  # noqa: PLW2901 (each placeholder in turn)
        argv.append(word)
    capsys.readouterr()
    started = time.monotonic()
    try:
        status: object = main(argv)
    except SystemExit as exc:  # argparse's own usage errors (a malformed --server HOST:PORT)
        status = exc.code
    assert status == code, case
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = [text for text in (out + err).splitlines() if message in text]
    assert len(lines) == 1, f"{case}: {message!r} not on one line of:\n{out}{err}"
    assert time.monotonic() - started < 10.0  # refused before any work


def test_spectrum_rows_round_trip_and_carry_their_operating_point(tmp_path: Path) -> None:
    """Issue 16: 316.228 was written for 316.2277660168, so rows could not be joined to the user's grid."""
    import csv

    from hil_server.cli import main

    grid = [10 ** (k / 4) for k in range(8, -9, -1)]
    (tmp_path / "freqs.txt").write_text("".join(f"{f!r}\n" for f in grid))
    (tmp_path / "points.csv").write_text(
        "profile,soc,temp_c,soh\nzhang2020,0.5,25,0.9\nrashid2023,0.3,15,1\n"
    )
    out = tmp_path / "spectra.csv"
    argv = ["spectrum", "--points", str(tmp_path / "points.csv"), "--freqs", str(tmp_path / "freqs.txt")]
    assert main([*argv, "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [float(r["freq_hz"]) for r in rows] == grid * 2
    assert {(r["row"], r["profile"], float(r["soc"]), float(r["temp_c"]), float(r["soh"])) for r in rows} == {
        ("0", "zhang2020", 0.5, 25.0, 0.9),
        ("1", "rashid2023", 0.3, 15.0, 1.0),
    }


def test_spectrum_takes_one_range_for_the_option_and_the_rows_of_points(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--soh 1.1`` passed the option check ((0, 1.2], as cells.soh) and was then refused by a second,
    stricter one ("soh=1.1 outside 0.0..1.0"); a row of ``--points`` had that range and the option's
    too. Now both take what a scenario's cells.soh takes, and give the same spectrum."""
    from hil_server.cli import main

    (tmp_path / "points.csv").write_text("profile,soc,temp_c,soh\nzhang2020,0.5,25,1.1\n")
    assert main(["spectrum", "--points", str(tmp_path / "points.csv")]) == 0
    from_file = capsys.readouterr().out
    assert main(["spectrum", "--profile", "zhang2020", "--soc", "0.5", "--temp-c", "25", "--soh", "1.1"]) == 0
    assert capsys.readouterr().out == from_file
    assert from_file.count("\n") > 10


def test_an_internal_error_is_one_line_and_debug_shows_the_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from hil_server.cli import decode, main

    def boom(_args: object) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(decode, "run", boom)
    assert main(["decode", "-"]) == 1
    err = capsys.readouterr().err
    assert err == "eis-hil decode: internal error: RuntimeError: boom (--debug shows the traceback)\n"
    with pytest.raises(RuntimeError, match="boom"):
        main(["--debug", "decode", "-"])
    monkeypatch.setenv("EIS_HIL_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        main(["decode", "-"])
    monkeypatch.delenv("EIS_HIL_DEBUG")

    def bad_input(_args: object) -> int:  # an input error a command forgot to catch is still bad input
        from hil_server.scenario import Issue, ScenarioError

        raise ScenarioError(
            [Issue("s.yaml", 3, "cells.count", "expected an integer"), Issue("s.yaml", 9, "", "x")]
        )

    monkeypatch.setattr(decode, "run", bad_input)
    assert main(["decode", "-"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "s.yaml:3: cells.count: expected an integer;" in err


@pytest.mark.parametrize(
    ("sig", "code", "text"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_a_signal_exits_128_plus_its_number_with_one_line(
    tmp_path: Path, sig: signal.Signals, code: int, text: str
) -> None:
    """``capture check`` of a FIFO blocks in its read: when the FIFO's reader is open the command is running
    (no sleep needed), and the signal then interrupts it."""
    fifo = tmp_path / "capture.fifo"
    os.mkfifo(fifo)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [*_eis_hil(), "capture", "check", str(fifo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    opened: list[int] = []
    # opening the writing end returns once the command has opened the FIFO to read it (in a thread, so
    # that a command that died before cannot hang the test)
    opener = threading.Thread(target=lambda: opened.append(os.open(fifo, os.O_WRONLY)), daemon=True)
    opener.start()
    try:
        opener.join(timeout=60)
        if not opened:
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # releases the thread
            pytest.fail("the command never opened the FIFO: " + proc.communicate(timeout=10)[1])
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
    finally:
        for fd in opened:
            os.close(fd)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err
    assert err.strip() == f"eis-hil capture: {text} ({'Ctrl-C' if sig == signal.SIGINT else 'SIGTERM'})"
    assert out == ""


def test_a_closed_pipe_exits_141_quietly(tmp_path: Path) -> None:
    """``eis-hil spectrum --points many.csv | head -1``: no BrokenPipeError traceback."""
    points = tmp_path / "points.csv"
    points.write_text("profile,soc,temp_c,soh\n" + "zhang2020,0.5,25,0.9\n" * 2000)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [*_eis_hil(), "spectrum", "--points", str(points)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith(b"row,profile,soc,temp_c,soh,freq_hz")
    proc.stdout.close()  # what head does after its lines
    err = proc.stderr.read() if proc.stderr else b""
    assert proc.wait(timeout=60) == 141
    assert b"Traceback" not in err
    assert b"BrokenPipe" not in err


def test_ctrl_c_during_training_keeps_the_epochs_trained(tmp_path: Path, small_spectra: Any) -> None:
    """Issue 16: Ctrl-C in ``train`` lost the model. A real SIGINT (sent from the progress callback, so it
    falls inside the second epoch) ends the training after that epoch; the model is written, loads, and its
    metadata says it was interrupted."""
    from hil_server.model.interrupt import StopOnSignal
    from hil_server.model.store import read_metadata
    from hil_server.model.train import TrainConfig, train

    def progress(epoch: int, _metrics: dict[str, float]) -> None:
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    with StopOnSignal() as stop:
        config = TrainConfig(epochs=50, batch_size=128)
        meta = train(small_spectra, tmp_path, config, progress, stop.requested)
    assert signal.getsignal(signal.SIGINT) is before
    assert stop.signal is signal.SIGINT
    assert meta["epochs_trained"] == 2
    assert meta["interrupted"] is True
    assert read_metadata(tmp_path).raw["interrupted"] is True


def test_fault_labels_at_nearly_the_same_time_share_one_label() -> None:
    """Issue 16: fault labels on the timeline overlapped each other and the curves; they now stand above
    the plot, one label for the marks within 2 % of the time line."""
    from hil_server.capture.export import _label_groups

    start, end = int(p.FaultPhase.START), int(p.FaultPhase.END)
    marks = [(420.0, "CONTACT_RESISTANCE", start), (0.0, "NOISE", start), (425.0, "DROP_FRAMES", end)]
    marks.append((1000.0, "NOISE", end))
    assert _label_groups(marks) == [
        (0.0, "NOISE start", True),
        (420.0, "CONTACT_RESISTANCE start / DROP_FRAMES end", True),
        (1000.0, "NOISE end", False),
    ]


# -- environment ---------------------------------------------------------------------------------------


def _eis_hil() -> list[str]:
    return [sys.executable, "-c", "import sys; from hil_server.cli import main; sys.exit(main())"]


def test_sigterm_during_serve_says_bye_exits_0_and_keeps_the_recording(tmp_path: Path) -> None:
    from hil_server.capture import format as capture_mod

    recording = tmp_path / "rec.eiscap"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [*_eis_hil(), "serve", str(US06), "--port", "0", "--speed", "20", "--record", str(recording)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        assert proc.stderr is not None
        banner = proc.stdout.readline()
        assert "eis-hil serving us06_25c.yaml on 127.0.0.1:" in banner, banner + proc.stderr.read()
        port = int(banner.split("127.0.0.1:")[1].split()[0])

        async def client_side() -> HilClient:
            client = await HilClient.connect("127.0.0.1", port)
            await client.subscribe(mask=p.SubscribeMask.CELL_STATES)
            for _ in range(5):
                await client.next_message(p.CellStates, timeout=5)
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(Exception):
                while True:
                    await client.next_frame(timeout=5)
            await client.close()
            return client

        client = asyncio.run(client_side())
        assert proc.wait(timeout=10) == 0
        assert client.bye is not None
        assert client.bye.reason == p.ErrorCode.SHUTDOWN
        assert client.gaps == 0
        capture = capture_mod.open_capture(recording)
        records = list(capture_mod.iter_records(capture))
        assert len(records) > 5
        assert capture.truncated_bytes == 0  # closed cleanly: nothing torn
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_run_seeds_stops_every_worker_and_keeps_valid_files(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """Issue 16: ``run --seeds`` ignored SIGINT/SIGTERM sent to the parent until its workers finished, and
    after SIGTERM two workers stayed at 99 % CPU. Now the parent tells every worker; each ends its run after
    the current step, with valid files marked interrupted, and no process is left behind."""
    import pyarrow.parquet as pq

    out = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            *_eis_hil(),
            "run",
            str(SCENARIOS / "aging_sweep.yaml"),
            "--seeds",
            "1",
            "2",
            "3",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stderr is not None
        started = 0
        while started < 2:  # both workers (2 cores) are simulating: each logged its start
            line = proc.stderr.readline()
            assert line, "the run ended before its workers started"
            started += "run started" in line
        workers = [int(pid) for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        proc.send_signal(sig)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + sig, stdout
    assert f"interrupted ({sig.name})" in stdout
    for pid in workers:  # every worker has exited (none orphaned, spinning on)
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    for seed in (1, 2, 3):
        run = json.loads((out / f"seed={seed}" / "run.json").read_text())
        assert run["interrupted"] is True
        states = pq.read_table(out / f"seed={seed}" / "states.parquet")
        assert states.num_rows == run["rows"]["states"]
    assert len(json.loads((out / "sweep.json").read_text())) == 3


# -- soak ----------------------------------------------------------------------------------------------


@pytest.mark.soak
def test_soak_60_seconds_loses_nothing(tmp_path: Path) -> None:
    """``tools/soak.py`` for one minute: 16 clients on a paced 1 kHz stream with misbehaving clients around
    them; it exits non-zero when a well-behaved client lost a frame or the server died."""
    report = tmp_path / "soak.json"
    proc = subprocess.run(  # noqa: PLW1510 (the exit status is asserted)
        [sys.executable, str(ROOT / "tools" / "soak.py"), "--minutes", "1", "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["good_clients"] == 16
    assert result["frames_lost"] == 0
    assert result["crc_errors"] == 0
    assert result["server_alive"] is True
    assert all(c["frames"] > 0 for c in result["clients"])


def test_tensorflow_commands_silence_native_chatter_but_not_python(tmp_path: Path) -> None:
    """Issue 16: ``calibrate``, ``evaluate``, ``export-tflite`` printed TensorFlow's C++ start-up lines
    ("failed call to cuInit: UNKNOWN ERROR"), which read like a failure. TF_CPP_MIN_LOG_LEVEL does not
    silence them in TensorFlow 2.21 (they precede its logging set-up), so ``main`` points the descriptor
    at /dev/null for those commands, keeping Python's stderr (logs, warnings, the one-line errors)."""
    code = (
        "import os, sys\n"
        "from hil_server.cli import _native_stderr_silenced\n"
        "with _native_stderr_silenced():\n"
        "    os.write(2, b'native chatter\\n')\n"
        "    sys.stderr.write('python line\\n')\n"
        "os.write(2, b'after\\n')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "python line\nafter\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # two runs of seed 1 wrote into the one directory seed=1, each overwriting the other's files
        (
            ["run", str(US06), "--out", "{TMP}/r", "--seeds", "1", "2", "1"],
            "eis-hil run: --seeds: 1 given more",
        ),
        # an empty name was taken as "no --out": the spectra went to stdout, exit 0
        (
            [
                "spectrum",
                "--profile",
                "zhang2020",
                "--soc",
                ".5",
                "--temp-c",
                "25",
                "--soh",
                "1",
                "--out",
                "",
            ],
            "--out: an empty file name",
        ),
        # the integer was shown as 1.84467e+19, a different number from the one typed
        (
            ["serve", str(US06), "--seed", str(2**64)],
            f"--seed {2**64}: expected an integer in [0, {2**64 - 1}]",
        ),
    ],
    ids=["seeds_repeated", "out_empty", "seed_shown_as_typed"],
)
def test_options_refused_before_work_say_exactly_what_was_typed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    from hil_server.cli import main

    argv = [word.replace("{TMP}", str(tmp_path)) for word in argv]
    capsys.readouterr()
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert [line for line in err.splitlines() if message in line], err
    assert not (tmp_path / "r").exists()


def test_export_refuses_a_directory_that_holds_an_export(
    tmp_path: Path, recorded: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exporting a second capture into the directory of a first left the first one's spectrum files in
    spectra/, unlisted in the new spectra_index.csv: a glob of spectra/*.csv mixed two sessions. The
    directory is now refused before anything is read."""
    from hil_server.cli import main

    out = tmp_path / "x"
    assert main(["export", str(recorded), "--out", str(out), "--csv-only"]) == 0
    before = sorted(p.name for p in (out / "spectra").iterdir())
    capsys.readouterr()
    assert main(["export", str(recorded), "--out", str(out), "--csv-only"]) == 2
    assert "holds an export already (spectra_index.csv); give a new directory" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "spectra").iterdir()) == before


def test_a_duration_beyond_any_run_is_refused_by_validate_not_a_crash_in_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``rest: {duration_s: 1e308}`` validated, then run and serve stopped with an internal error
    (OverflowError: duration x step rate is infinite) when the segment started."""
    from hil_server.cli import main

    text = US06.read_text()
    path = tmp_path / "forever.yaml"
    path.write_text(text.replace("rest: {duration_s: 300, label: settle}", "rest: {duration_s: 1e308}"))
    assert main(["validate", str(path)]) == 1
    assert "rest.duration_s: expected a number in (0, 1000000000], got '1e308'" in capsys.readouterr().out
    assert main(["run", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "got '1e308'" in capsys.readouterr().err
