"""The sans-IO server session, driven with explicit times and bytes: no sockets, no event loop."""

from __future__ import annotations

import numpy as np
import pytest

import protocol as p
from hil_server.session.send_queue import Kept, SendQueue
from hil_server.session.server_session import (
    ServerSession,
    heartbeat,
    lateness_percentiles_us,
)
from protocol import DEVICE_TRANSITIONS, SERVER_TRANSITIONS, SessionState
from protocol._session import Transitions


class Recorder(ServerSession):
    """A session whose transport only records what the session decided."""

    def __init__(
        self,
        *,
        transitions: Transitions = SERVER_TRANSITIONS,
        secret: bytes | None = None,
        handshake_timeout_s: float | None = None,
        peer_timeout_s: float = 5.0,
    ) -> None:
        self.transitions = transitions
        self._settings = (secret, handshake_timeout_s, peer_timeout_s)
        super().__init__()
        self.sent: list[p.Message] = []
        self.ended: list[tuple[p.ErrorCode | None, str]] = []
        self.subscribed: list[tuple[int, tuple[int, ...]]] = []
        self.controls: list[int] = []

    @property
    def secret(self) -> bytes | None:
        return self._settings[0]

    @property
    def handshake_timeout_s(self) -> float | None:
        return self._settings[1]

    @property
    def peer_timeout_s(self) -> float:
        return self._settings[2]

    def reply(self, message: p.Message, now: float) -> None:
        self.sent.append(message)

    def end(self, code: p.ErrorCode | None, text: str, now: float) -> None:
        self.ended.append((code, text))
        self.closing = True

    def cell_count(self) -> int:
        return 3

    def subscribe(self, seq: int, msg: p.Subscribe, cells: tuple[int, ...], now: float) -> None:
        self.subscribed.append((seq, cells))

    def control(self, seq: int, msg: p.Control, now: float) -> None:
        self.controls.append(msg.command)


def frames(*messages: p.Message) -> bytes:
    encoder = p.FrameEncoder()
    return b"".join(encoder.encode(m) for m in messages)


def hello(lo: int = 1, hi: int = p.PROTOCOL_VERSION, name: str = "bms") -> p.ClientHello:
    return p.ClientHello(lo, hi, bytes(p.AUTH_RESPONSE_SIZE), name)


def subscribe(cells: list[int], eis_mode: int = 0) -> p.Subscribe:
    return p.Subscribe(p.SubscribeMask.ALL, 1, eis_mode, np.array(cells, dtype=np.uint16))


def test_hello_then_subscribe_walks_the_table_to_streaming() -> None:
    s = Recorder()
    s.feed(frames(hello(), subscribe([0, 2])), now=1.0)
    assert s.state is SessionState.STREAMING
    assert isinstance(s.sent[0], p.Ack)
    assert s.sent[0].result == p.PROTOCOL_VERSION
    assert s.subscribed == [(1, (0, 2))]
    assert s.client_name == "bms"


def test_a_request_before_hello_is_refused_and_the_state_stays() -> None:
    """One reply rule (SPEC.md 6.1): a request gets its NAK in every state, echoing seq and command."""
    s = Recorder()
    s.feed(frames(subscribe([]), p.Control(p.ControlCommand.PAUSE)), now=0.0)
    assert s.state is SessionState.HANDSHAKE
    nak_subscribe, nak_control = s.sent
    assert isinstance(nak_subscribe, p.Nak)
    assert isinstance(nak_control, p.Nak)
    assert (nak_subscribe.ack_seq, nak_subscribe.command) == (0, 0)
    assert (nak_control.ack_seq, nak_control.command) == (1, p.ControlCommand.PAUSE)
    assert {nak_subscribe.code, nak_control.code} == {p.ErrorCode.NOT_ALLOWED_IN_STATE}
    assert nak_control.message == "send CLIENT_HELLO first"
    assert s.subscribed == []
    assert s.controls == []


def test_heartbeat_and_error_are_taken_in_every_state_and_never_answered() -> None:
    s = Recorder(handshake_timeout_s=2.0)
    beat, error = p.Heartbeat(), p.Error(p.ErrorCode.BAD_CRC, 3, "your frame 3 was damaged")
    s.feed(frames(beat, error), now=0.5)
    assert s.sent == []
    s.feed(frames(hello(), beat, error, subscribe([]), beat, error), now=1.0)
    assert [type(m) for m in s.sent] == [p.Ack]  # the hello's (the transport answers the SUBSCRIBE)
    assert s.subscribed == [(3, ())]
    assert s.rx_bad == 0


def test_heartbeats_do_not_stretch_the_client_hello_deadline() -> None:
    s = Recorder(handshake_timeout_s=2.0)
    s.last_rx = s.opened = 100.0
    s.feed(frames(p.Heartbeat()), now=101.5)
    s.last_rx = 101.5  # what a transport does on every read
    assert s.expired(101.9) is None
    assert s.expired(102.1) == "no CLIENT_HELLO in time"


def test_a_second_hello_is_refused_by_the_server_but_taken_by_the_bridge() -> None:
    server, device = Recorder(transitions=SERVER_TRANSITIONS), Recorder(transitions=DEVICE_TRANSITIONS)
    for s in (server, device):
        s.feed(frames(hello(), hello(name="again")), now=0.0)
    assert isinstance(server.sent[1], p.Error)
    assert "CLIENT_HELLO is not accepted" in server.sent[1].message
    assert isinstance(device.sent[1], p.Ack)
    assert device.client_name == "again"


@pytest.mark.parametrize(
    ("lo", "hi", "agreed"), [(1, 1, 1), (1, 9, p.PROTOCOL_VERSION), (0, 1, 1), (2, 9, None)]
)
def test_version_negotiation(lo: int, hi: int, agreed: int | None) -> None:
    assert p.negotiate_version(lo, hi) == agreed


def test_no_common_version_is_an_error_then_the_end() -> None:
    s = Recorder()
    s.feed(frames(hello(2, 3), subscribe([])), now=0.0)
    (err,) = s.sent  # nothing after the refusal is answered, even from the same read
    assert isinstance(err, p.Error)
    assert err.code == p.ErrorCode.UNSUPPORTED_VERSION
    assert s.ended == [(p.ErrorCode.UNSUPPORTED_VERSION, err.message)]


def test_a_wrong_auth_response_is_refused() -> None:
    s = Recorder(secret=b"k" * 16)
    s.feed(frames(hello()), now=0.0)
    assert s.ended[0][0] == p.ErrorCode.AUTH_FAILED
    assert s.state is SessionState.HANDSHAKE


def test_a_right_auth_response_is_accepted() -> None:
    secret = b"k" * 16
    s = Recorder(secret=secret)
    answer = p.auth_response(secret, s.challenge, "bms")
    s.feed(frames(p.ClientHello(1, 1, answer, "bms")), now=0.0)
    assert s.state is SessionState.READY
    assert not s.ended


def test_subscribe_checks_cells_and_mode() -> None:
    s = Recorder()
    s.feed(frames(hello(), subscribe([1, 7]), subscribe([], eis_mode=9)), now=0.0)
    nak_cells, nak_mode = s.sent[1:]
    assert isinstance(nak_cells, p.Nak)
    assert nak_cells.message == "cells [7] do not exist (0..2)"
    assert isinstance(nak_mode, p.Nak)
    assert nak_mode.code == p.ErrorCode.OUT_OF_RANGE
    assert s.subscribed == []
    assert s.state is SessionState.READY


def test_a_cell_named_twice_is_subscribed_and_counted_once() -> None:
    s = Recorder()
    s.feed(frames(hello(), subscribe([1, 1, 2, 1])), now=0.0)
    assert s.subscribed == [(1, (1, 2))]


def test_garbage_is_counted_and_answered_at_most_once_a_second() -> None:
    s = Recorder()
    s.feed(b"\x00" * 40, now=10.0)
    s.feed(frames(hello()) + b"\x01" * 40 + frames(p.Heartbeat()), now=10.5)
    s.feed(b"\x02" * 40 + frames(p.Heartbeat()), now=11.6)
    errors = [m for m in s.sent if isinstance(m, p.Error)]
    assert len(errors) == 2  # reported when a frame follows: 10.5 yes, 10.5 again no, 11.6 yes
    assert s.rx_bad == 3


def test_a_bad_control_frame_is_naked_with_its_seq() -> None:
    s = Recorder()
    data = bytearray(frames(hello(), p.Control(p.ControlCommand.PAUSE)))
    data[-1] ^= 0xFF  # the CONTROL frame's CRC
    s.feed(bytes(data), now=0.0)
    nak = s.sent[-1]
    assert isinstance(nak, p.Nak)
    assert nak.ack_seq == 1
    assert nak.command == p.UNPARSED_COMMAND  # not the 0 of a NAK to a SUBSCRIBE
    assert nak.code == p.ErrorCode.BAD_CRC
    assert s.controls == []


def test_a_bad_subscribe_frame_is_naked_with_command_0() -> None:
    s = Recorder()
    s.feed(frames(hello()) + p.frame_payload(p.MsgType.SUBSCRIBE, b"\x01\x00", seq=1), now=0.0)
    nak = s.sent[-1]
    assert isinstance(nak, p.Nak)
    assert (nak.ack_seq, nak.command, nak.code) == (1, 0, p.ErrorCode.MALFORMED_PAYLOAD)


def test_errors_for_bad_frames_are_limited_to_ten_a_second_and_all_counted() -> None:
    s = Recorder()
    unknown = b"".join(p.frame_payload(0x7E, b"", seq=i) for i in range(1, 31))
    s.feed(frames(hello()) + unknown, now=5.0)
    s.feed(p.frame_payload(0x7E, b"", seq=31), now=5.9)
    s.feed(p.frame_payload(0x7E, b"", seq=32), now=6.0)
    errors = [m for m in s.sent if isinstance(m, p.Error)]
    assert [e.ref_seq for e in errors] == [*range(1, 11), 32]
    assert {e.code for e in errors} == {p.ErrorCode.UNKNOWN_MESSAGE_TYPE}
    assert s.rx_bad == 32


def test_bye_ends_the_session() -> None:
    s = Recorder()
    s.feed(frames(hello(), p.Bye(p.ErrorCode.SHUTDOWN, "done"), p.Control(p.ControlCommand.PAUSE)), now=0.0)
    assert s.ended == [(None, "done")]
    assert s.controls == []


def test_timeouts_use_the_time_given() -> None:
    s = Recorder(handshake_timeout_s=2.0, peer_timeout_s=5.0)
    s.last_rx = 100.0
    assert s.expired(101.9) is None
    assert s.expired(102.1) == "no CLIENT_HELLO in time"
    s.feed(frames(hello()), now=102.0)
    s.last_rx = 102.0
    assert s.expired(106.9) is None
    assert s.expired(107.1) == "nothing received for 5 s"
    bridge = Recorder(transitions=DEVICE_TRANSITIONS, peer_timeout_s=5.0)  # no handshake deadline
    assert bridge.expired(1e6) is None


def test_heartbeat_content() -> None:
    assert lateness_percentiles_us([]) == (0, 0, 0)
    p50, p99, mx = lateness_percentiles_us([float(v) for v in range(1, 101)])
    assert (p50, mx) == (50, 100)
    assert 98 <= p99 <= 100
    assert lateness_percentiles_us([-5.0, 1e12])[2] == 2**32 - 1
    hb = heartbeat(1, 2, 3, 4, 2**32 + 5, (6, 7, 8), 70000, int(p.SimState.RUNNING))
    assert (hb.rx_bad_frames, hb.queue_depth) == (5, 0xFFFF)


def test_cell_ranges() -> None:
    from hil_server.client.text import cell_ranges

    assert cell_ranges([]) == "none"
    assert cell_ranges([8, 0, 1, 2, 5, 7]) == "0..2, 5, 7..8"
    assert cell_ranges([0, 1, 2, 5], sep="-") == "0-2, 5"


class FakeFlag:
    def __init__(self) -> None:
        self.value = False

    def set(self) -> None:
        self.value = True

    def clear(self) -> None:
        self.value = False

    def is_set(self) -> bool:
        return self.value


def test_send_queue_keeps_replies_and_drops_the_oldest_telemetry() -> None:
    wake, room = FakeFlag(), FakeFlag()
    q = SendQueue(4, wake, room)
    q.queue_reply(p.Ack(0, 0, 1))
    for i in range(6):
        q.push_telemetry(p.MsgType.HEARTBEAT, bytes([i]) * 52, 0)
    assert q.frames_dropped == 2
    assert q.droppable == 4
    assert type(q.queue[0]) is Kept  # the reply survived, in front
    assert not room.is_set()
    frames_, data = q.take()
    assert frames_ == 5
    assert room.is_set()
    assert q.droppable == 0
    decoder = p.FrameDecoder()
    decoder.feed(data)
    seqs = [f.seq for f in decoder.events() if isinstance(f, p.Frame)]
    assert seqs == [0, 3, 4, 5, 6]  # the gap is the drop


def test_send_queue_discard_counts_the_telemetry_only() -> None:
    q = SendQueue(8, FakeFlag(), FakeFlag())
    q.queue_reply(p.Ack(0, 0, 1))
    q.queue_telemetry([b"a", b"b"])
    q.discard()
    assert q.frames_dropped == 2
    assert [type(f) for f in q.queue] == [Kept]  # the reply stays


def test_a_stuck_peer_gets_every_reply_before_its_bye() -> None:
    """SPEC.md 8: replies are never dropped, not even when a slow consumer is disconnected."""
    q = SendQueue(8, FakeFlag(), FakeFlag())
    q.queue_reply(p.Ack(7, p.ControlCommand.PAUSE, 0))
    q.push_telemetry(p.MsgType.HEARTBEAT, bytes(52), 0)
    q.queue_reply(p.Nak(8, p.ControlCommand.RESUME, p.ErrorCode.NOT_ALLOWED_IN_STATE, "x"))
    q.queue_telemetry([q.encoder.frame(p.MsgType.HEARTBEAT, bytes(52), 0)])
    n, data = q.last_words(p.Bye(p.ErrorCode.SLOW_CONSUMER, "stuck"))
    decoder = p.FrameDecoder()
    decoder.feed(data)
    got = [f for f in decoder.events() if isinstance(f, p.Frame)]
    assert n == 3
    assert [type(f.message) for f in got] == [p.Ack, p.Nak, p.Bye]
    assert [f.seq for f in got] == [0, 2, 4]  # the BYE has the highest seq; gaps are the dropped telemetry
    assert q.frames_dropped == 2
    assert not q.queue
