"""Every message type round-trips, and the fast codec agrees byte for byte with construct's own
parse and build of the declarations in ``_schema.py`` (the wire is described once)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocol as p
from protocol import _schema
from protocol._codec import CODECS, decode_payload, encode_payload

from ..strategies import any_message, message_strategy

ALL_TYPES = sorted(CODECS)


@pytest.mark.parametrize("msg_type", ALL_TYPES, ids=lambda t: p.MsgType(t).name)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_round_trip_every_type(msg_type: int, data: st.DataObject) -> None:
    message = data.draw(message_strategy(msg_type))
    frame = p.encode_frame(message, seq=data.draw(st.integers(0, 2**32 - 1)))
    decoder = p.FrameDecoder()
    decoder.feed(frame)
    got = decoder.next_frame()
    assert isinstance(got, p.Frame)
    assert got.message == message
    assert decoder.next_frame() is p.NEED_DATA


@pytest.mark.parametrize("msg_type", ALL_TYPES, ids=lambda t: p.MsgType(t).name)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_fast_codec_matches_construct(msg_type: int, data: st.DataObject) -> None:
    message = data.draw(message_strategy(msg_type))
    fast = encode_payload(message)
    declaration = _schema.PAYLOADS[p.MsgType(msg_type)]
    fields = {f: getattr(message, f) for f in CODECS[msg_type].fields}
    assert declaration.build(fields) == fast
    parsed = declaration.parse(fast)
    for name in CODECS[msg_type].fields:
        ours, theirs = getattr(decode_payload(msg_type, fast), name), parsed[name]
        if isinstance(ours, np.ndarray):
            assert ours.tobytes() == np.asarray(theirs).tobytes(), name
        else:
            assert ours == theirs or (math.isnan(ours) and math.isnan(theirs)), name


@settings(max_examples=100, deadline=None)
@given(any_message, st.integers(0, 2**32 - 1), st.integers(0, 0xFFFF))
def test_whole_frame_matches_construct(message: p.Message, seq: int, flags: int) -> None:
    raw = p.encode_frame(message, seq=seq, flags=flags)
    parsed = _schema.FRAME.parse(raw)
    assert parsed.header.seq == seq
    assert parsed.header.flags == flags
    assert parsed.header.msg_type == message.MSG_TYPE
    assert parsed.header.payload_len == len(raw) - p.HEADER_SIZE - p.CRC_SIZE


def test_decoded_arrays_are_read_only() -> None:
    f = np.array([1000.0, 1.0], dtype=np.float32)
    message = p.EisSpectrum(0, 0, 0, 0, 0, 0, 0, 0, 0, 0.0, f, f, f)
    decoded = decode_payload(p.MsgType.EIS_SPECTRUM, encode_payload(message))
    assert isinstance(decoded, p.EisSpectrum)
    with pytest.raises(ValueError, match="read-only"):
        decoded.z_re_ohm[0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        message.freq_hz[0] = 1.0


def test_out_of_range_is_a_local_error() -> None:
    with pytest.raises(p.LocalProtocolError, match="cell"):
        p.encode_frame(p.Control(p.ControlCommand.PAUSE, cell=70_000), seq=0)
    with pytest.raises(p.LocalProtocolError, match="seq"):
        p.encode_frame(p.Heartbeat(), seq=2**32)
    with pytest.raises(p.LocalProtocolError, match="255"):
        p.encode_frame(p.Bye(0, "x" * 256), seq=0)
    with pytest.raises(p.LocalProtocolError, match="lengths differ"):
        p.EisSpectrum(0, 0, 0, 0, 0, 0, 0, 0, 0, 0.0, np.ones(2), np.ones(1), np.ones(2))
    with pytest.raises(p.LocalProtocolError, match="soc_ppm out of range"):
        p.CellStates.from_columns(
            0,
            0,
            0,
            cell=[0],
            voltage_uV=[0],
            current_uA=[0],
            temperature_mdegC=[0],
            soc_ppm=[-1],
            soh_ppm=[0],
        )
    with pytest.raises(p.LocalProtocolError, match="auth_challenge"):
        p.ServerHello(auth_challenge=b"short")


def test_payload_over_maximum_is_refused() -> None:
    n = (p.MAX_PAYLOAD_SIZE - 40) // 12 + 1
    f = np.ones(n, dtype=np.float32)
    with pytest.raises(p.LocalProtocolError, match="exceeds the maximum"):
        p.encode_frame(p.EisSpectrum(0, 0, 0, 0, 0, 0, 0, 0, 0, 0.0, f, f, f), seq=0)


def test_encoder_numbers_frames_and_wraps() -> None:
    encoder = p.FrameEncoder(first_seq=2**32 - 1)
    decoder = p.FrameDecoder()
    decoder.feed(encoder.encode(p.Heartbeat()) + encoder.encode(p.Heartbeat()))
    seqs = [item.seq for item in decoder.events() if isinstance(item, p.Frame)]
    assert seqs == [2**32 - 1, 0]
    # an encoded payload framed per client takes the next number too, and is the same frame as encode()
    payload = p.encode_payload(p.Heartbeat())
    assert encoder.frame(p.MsgType.HEARTBEAT, payload, 0) == p.encode_frame(p.Heartbeat(), seq=1)
    assert encoder.next_seq == 2


def test_cell_states_columns() -> None:
    states = p.CellStates.from_columns(
        1,
        2,
        3,
        cell=[0, 1],
        voltage_uV=[3_700_000, 3_650_000],
        current_uA=-5,
        temperature_mdegC=25_000,
        soc_ppm=[500_000, 490_000],
        soh_ppm=1_000_000,
    )
    assert states.column("voltage_uV").tolist() == [3_700_000, 3_650_000]
    assert states.column("current_uA").tolist() == [-5, -5]


def test_json_round_trip() -> None:
    message = p.ServerHello(
        seed=5, model_hash=bytes(range(32)), freq_hz=np.array([1.5, 2.5]), scenario_id="é"
    )
    assert p.ServerHello.from_dict(message.to_dict()) == message


def test_auth_response_verifies() -> None:
    challenge = p.new_challenge()
    response = p.auth_response(b"secret", challenge, "ecu")
    assert p.verify_response(b"secret", challenge, "ecu", response)
    assert not p.verify_response(b"other", challenge, "ecu", response)
    assert not p.verify_response(b"secret", challenge, "ecu2", response)
    assert len(response) == p.AUTH_RESPONSE_SIZE
