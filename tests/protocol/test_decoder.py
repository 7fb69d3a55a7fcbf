"""The stream decoder: golden vectors fed whole, byte by byte and in random chunks; garbage before,
between and after frames; and the invariants "any byte string yields frames or protocol errors, never
stalls, never grows without bound, and the result does not depend on how the stream was split"."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocol as p
from protocol._codec import HEADER_STRUCT

from ..strategies import any_message

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "vectors.json").read_text(encoding="utf-8")
)


def _describe(item: p.Frame | p.RemoteProtocolError) -> Any:
    if isinstance(item, p.Frame):
        return (
            "FRAME",
            p.MsgType(item.message.MSG_TYPE).name,
            item.seq,
            item.flags,
            item.version,
            item.message,
        )
    return (item.kind.name, item.nbytes, item.seq, item.msg_type)


def decode_chunks(chunks: list[bytes]) -> list[Any]:
    decoder = p.FrameDecoder()
    out: list[Any] = []
    for chunk in chunks:
        decoder.feed(chunk)
        out.extend(_describe(item) for item in decoder.events())
        assert decoder.buffered < p.MAX_FRAME_SIZE
    decoder.feed_eof()
    out.extend(_describe(item) for item in decoder.events())
    assert decoder.buffered == 0
    return out


def split(data: bytes, rng: random.Random, max_chunk: int = 64) -> list[bytes]:
    chunks, i = [], 0
    while i < len(data):
        n = rng.randint(1, max_chunk)
        chunks.append(data[i : i + n])
        i += n
    return chunks


def expected_outcome(vector: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    for event in vector["outcome"]:
        if "frame" in event:
            f = event["frame"]
            cls = p.MESSAGE_CLASSES[p.MsgType[f["msg_type"]]]
            out.append(
                ("FRAME", f["msg_type"], f["seq"], f["flags"], f["version"], cls.from_dict(f["fields"]))
            )
        else:
            out.append((event["error"], event["nbytes"], event["seq"], event["msg_type"]))
    return out


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_golden_vector(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    expected = expected_outcome(vector)
    assert decode_chunks([data]) == expected, "whole"
    assert decode_chunks([data[i : i + 1] for i in range(len(data))]) == expected, "byte by byte"
    for seed in range(5):
        assert decode_chunks(split(data, random.Random(seed))) == expected, f"chunks seed {seed}"


def test_vectors_cover_every_message_type_and_error_kind() -> None:
    types = {e["frame"]["msg_type"] for v in VECTORS["vectors"] for e in v["outcome"] if "frame" in e}
    kinds = {e["error"] for v in VECTORS["vectors"] for e in v["outcome"] if "error" in e}
    assert types == {t.name for t in p.MsgType}
    assert kinds == {k.name for k in p.DecodeErrorKind}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000), st.randoms(use_true_random=False))
def test_any_bytes_yield_frames_or_protocol_errors(data: bytes, rng: random.Random) -> None:
    whole = decode_chunks([data])
    assert decode_chunks(split(data, rng)) == whole
    for item in whole:
        assert item[0] == "FRAME" or item[0] in p.DecodeErrorKind.__members__


frames_and_garbage = st.lists(
    st.tuples(any_message, st.binary(max_size=40), st.integers(0, 2**32 - 1)), min_size=1, max_size=8
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames_and_garbage, st.binary(max_size=40), st.randoms(use_true_random=False))
def test_every_frame_survives_garbage(
    items: list[tuple[p.Message, bytes, int]], tail: bytes, rng: random.Random
) -> None:
    stream = b""
    for message, garbage, seq in items:
        stream += garbage + p.encode_frame(message, seq=seq)
    stream += tail
    outcome = decode_chunks(split(stream, rng, max_chunk=200))
    frames = [o for o in outcome if o[0] == "FRAME"]
    assert [(f[2], f[5]) for f in frames] == [(seq, m) for m, _, seq in items]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(any_message, st.integers(0, 2**32 - 1)), min_size=2, max_size=6), st.data())
def test_corrupting_one_frame_loses_only_that_frame(
    items: list[tuple[p.Message, int]], data: st.DataObject
) -> None:
    raws = [p.encode_frame(m, seq=s) for m, s in items]
    victim = data.draw(st.integers(0, len(raws) - 1))
    position = data.draw(st.integers(0, len(raws[victim]) - 1))
    bit = data.draw(st.integers(0, 7))
    corrupted = bytearray(raws[victim])
    corrupted[position] ^= 1 << bit
    raws[victim] = bytes(corrupted)
    outcome = decode_chunks([b"".join(raws)])
    got = [(o[2], o[5]) for o in outcome if o[0] == "FRAME"]
    want = [(s, m) for i, (m, s) in enumerate(items) if i != victim]
    assert got == want
    assert any(o[0] != "FRAME" for o in outcome)


def test_oversized_length_is_rejected_without_buffering() -> None:
    vector = next(v for v in VECTORS["vectors"] if v["name"] == "oversized_4097")
    decoder = p.FrameDecoder()
    decoder.feed(bytes.fromhex(vector["hex"]))
    with pytest.raises(p.RemoteProtocolError) as info:
        decoder.next_frame()
    assert info.value.kind is p.DecodeErrorKind.OVERSIZED
    assert info.value.seq == 6
    assert decoder.buffered == 0


def test_smaller_receiver_maximum() -> None:
    decoder = p.FrameDecoder(max_payload_size=16)
    decoder.feed(p.encode_frame(p.Bye(0, "x" * 40), seq=1) + p.encode_frame(p.Control.seek(5), seq=2))
    kinds = [
        item.kind.name if isinstance(item, p.RemoteProtocolError) else "FRAME" for item in decoder.events()
    ]
    assert kinds == ["OVERSIZED", "GARBAGE", "FRAME"]


def test_stats_count_frames_and_errors() -> None:
    vector = next(v for v in VECTORS["vectors"] if v["name"] == "garbage_around")
    decoder = p.FrameDecoder()
    decoder.feed(bytes.fromhex(vector["hex"]))
    decoder.feed_eof()
    list(decoder.events())
    assert decoder.stats.frames == 2
    assert decoder.stats.errors_by_kind["GARBAGE"] == 3
    assert decoder.stats.bytes_garbage == 37 + 53 + 11


def test_feed_after_eof_is_refused() -> None:
    decoder = p.FrameDecoder()
    decoder.feed_eof()
    with pytest.raises(ValueError, match="feed_eof"):
        decoder.feed(b"x")


def test_accepting_a_second_version() -> None:
    raw = bytearray(p.encode_frame(p.Heartbeat(), seq=1, version=2))
    decoder = p.FrameDecoder(accepted_versions=frozenset({1, 2}))
    decoder.feed(bytes(raw))
    frame = decoder.next_frame()
    assert isinstance(frame, p.Frame)
    assert frame.version == 2


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(p.MESSAGE_CLASSES)), st.binary(max_size=300), st.integers(0, 2**32 - 1))
def test_random_payload_in_valid_framing(msg_type: int, payload: bytes, seq: int) -> None:
    """Past the CRCs, any payload of a known type is a frame or MALFORMED_PAYLOAD, nothing else."""
    head = HEADER_STRUCT.pack(p.SYNC, 1, msg_type, 0, len(payload), seq)
    head += p.crc16_ccitt_false(head).to_bytes(2, "little")
    body = head + payload
    decoder = p.FrameDecoder()
    decoder.feed(body + p.crc32c(body).to_bytes(4, "little"))
    (item,) = list(decoder.events())
    if isinstance(item, p.RemoteProtocolError):
        assert item.kind is p.DecodeErrorKind.MALFORMED_PAYLOAD
        assert item.seq == seq
    else:
        encoded = p.encode_payload(item.message)
        assert p.decode_payload(msg_type, encoded) == item.message
