"""Each stream fault kind, carried out on encoded frames, and what a receiver's decoder makes of it."""

from __future__ import annotations

import pytest

import protocol as p
from hil_server.sim.output import StreamFault
from hil_server.stream.stream_faults import TransportFaults

FK = p.FaultKind
Result = tuple[list[bytes], TransportFaults]


def _fault(kind: FK, fault_id: int = 1, **params: float | int) -> StreamFault:
    return StreamFault(fault_id, kind, params, seed=42, start_us=0, end_us=None)


def _frames(n: int) -> list[bytes]:
    enc = p.FrameEncoder()
    return [enc.encode(p.Heartbeat(i, 0, 0, 0, 0, 0, 0, 0, 0, 0)) for i in range(n)]


def _run(
    faults: list[StreamFault], n: int = 200, dt_us: int = 100_000
) -> tuple[list[bytes], TransportFaults]:
    tf = TransportFaults()
    out: list[bytes] = []
    for i, frame in enumerate(_frames(n)):
        out.extend(tf.apply(frame, i * dt_us, faults))
    out.extend(tf.release(2**62, []))
    return out, tf


def _decoded(chunks: list[bytes]) -> tuple[list[int], list[p.RemoteProtocolError]]:
    dec = p.FrameDecoder()
    dec.feed(b"".join(chunks))
    seqs, errors = [], []
    for item in dec.events():
        if isinstance(item, p.RemoteProtocolError):
            errors.append(item)
        else:
            seqs.append(item.seq)
    return seqs, errors


def test_no_fault_passes_everything_through() -> None:
    out, tf = _run([])
    assert out == _frames(200)
    assert tf.damaged == 0
    assert tf.idle


def test_drop_frames_leaves_gaps() -> None:
    out, tf = _run([_fault(FK.DROP_FRAMES, probability=0.3)])
    seqs, errors = _decoded(out)
    assert errors == []
    assert seqs == sorted(seqs)
    assert 200 - len(seqs) == tf.damaged
    assert 40 < tf.damaged < 80


def test_duplicate_frames_repeat_a_seq() -> None:
    out, tf = _run([_fault(FK.DUPLICATE_FRAMES, probability=0.2)])
    seqs, _ = _decoded(out)
    assert len(seqs) == 200 + tf.damaged
    assert sorted(set(seqs)) == list(range(200))
    assert 20 < tf.damaged < 60


def test_corrupt_crc_is_rejected_by_the_receiver() -> None:
    out, tf = _run([_fault(FK.CORRUPT_CRC, probability=0.1)])
    seqs, errors = _decoded(out)
    assert len(errors) == tf.damaged > 5
    assert all(e.kind is p.DecodeErrorKind.BAD_CRC for e in errors)
    assert len(seqs) == 200 - tf.damaged


def test_stray_bytes_are_skipped_as_garbage() -> None:
    out, tf = _run([_fault(FK.STRAY_BYTES, probability=0.2, max_bytes=32)])
    seqs, errors = _decoded(out)
    # Random bytes may swallow a frame that follows if they happen to hold a sync word; nearly all survive.
    assert len(seqs) >= 195
    assert errors
    assert tf.damaged > 20


def test_delay_frames_arrive_later_and_out_of_order() -> None:
    out, _ = _run([_fault(FK.DELAY_FRAMES, probability=0.1, delay_s=0.5)])
    seqs, errors = _decoded(out)
    assert errors == []
    assert sorted(seqs) == list(range(200))  # nothing lost
    assert seqs != sorted(seqs)
    # a frame delayed by 0.5 s at 10 frames/s comes out about five frames late
    assert max(seqs.index(i) - i for i in range(200)) in range(4, 7)


def test_reorder_frames_shuffle_within_the_window() -> None:
    out, _ = _run([_fault(FK.REORDER_FRAMES, probability=1.0, window_frames=4)])
    seqs, _ = _decoded(out)
    assert sorted(seqs) == list(range(200))
    assert seqs != list(range(200))
    for start in range(0, 200, 4):
        assert sorted(seqs[start : start + 4]) == list(range(start, start + 4))


def test_reorder_window_flushed_when_the_fault_ends() -> None:
    tf = TransportFaults()
    fault = _fault(FK.REORDER_FRAMES, probability=1.0, window_frames=8)
    frames = _frames(3)
    assert tf.apply(frames[0], 0, [fault]) == []
    assert tf.apply(frames[1], 1, [fault]) == []
    out = tf.apply(frames[2], 2, [])  # fault over: the held two, then this one
    assert sorted(out[:2]) == sorted(frames[:2])
    assert out[2] == frames[2]


def test_disconnect_fires_once_per_fault() -> None:
    tf = TransportFaults()
    fault = _fault(FK.DISCONNECT, fault_id=9)
    assert tf.disconnect_due([fault])
    assert not tf.disconnect_due([fault])
    assert tf.disconnect_due([_fault(FK.DISCONNECT, fault_id=10)])


@pytest.mark.parametrize("kind", [FK.DROP_FRAMES, FK.DUPLICATE_FRAMES, FK.STRAY_BYTES, FK.REORDER_FRAMES])
def test_same_seed_same_damage(kind: FK) -> None:
    a, _ = _run([_fault(kind, probability=0.3)])
    b, _ = _run([_fault(kind, probability=0.3)])
    assert a == b
    c, _ = _run([StreamFault(1, kind, {"probability": 0.3}, seed=7, start_us=0, end_us=None)])
    assert c != a


def test_every_stream_kind_is_handled() -> None:
    """A new stream fault kind in the protocol must get an effect here, or be listed as not a frame one."""
    handled = {
        FK.DROP_FRAMES,
        FK.DELAY_FRAMES,
        FK.DUPLICATE_FRAMES,
        FK.REORDER_FRAMES,
        FK.CORRUPT_CRC,
        FK.STRAY_BYTES,
        FK.DISCONNECT,
        FK.SPECTRUM_DRIFT,  # acts on the measured spectrum in the engine, not on frames
    }
    assert {k for k in FK if k >= 0x40} == handled
