#!/usr/bin/env python3
"""Protocol speed: encode and decode time per frame, against a naive construct definition of the same
frames measured in the same run (this machine is shared and noisy: read the ratios).

Naive = the schema of ``protocol/_schema.py`` with every array as construct ``Array(count, element)`` and
the whole frame built and parsed by construct (header, Switch on the type, Checksum). Ours = the derived
codec behind ``encode_frame`` and the stream decoder ``FrameDecoder`` (sync hunt, both CRCs, typed
message objects).

    python tools/bench_protocol.py [--repeat 7] [--number 2000]
"""

from __future__ import annotations

import argparse
import statistics
import timeit
from collections.abc import Callable
from typing import Any

import numpy as np
from construct import Array, Checksum, FixedSized, Int16ul, Int32ul, Struct, Switch, this

import protocol as p
from protocol import _schema


def naive_payload(declaration: Any) -> Any:
    subcons = []
    for sub in declaration.subcons:
        if isinstance(sub.subcon, _schema.NumpyArray):
            subcons.append(sub.name / Array(this[sub.subcon.count_field], sub.subcon.element))
        else:
            subcons.append(sub)
    return Struct(*subcons)


NAIVE_PAYLOADS = {t: naive_payload(d) for t, d in _schema.PAYLOADS.items()}
NAIVE_FRAME = Struct(
    "header" / _schema.HEADER,
    "header_crc" / Checksum(Int16ul, p.crc16_ccitt_false, lambda ctx: ctx._io.getvalue()[:12]),
    "payload" / FixedSized(this.header.payload_len, Switch(this.header.msg_type, NAIVE_PAYLOADS)),
    "frame_crc" / Checksum(Int32ul, p.crc32c, lambda ctx: ctx._io.getvalue()[: 14 + ctx.header.payload_len]),
)


def naive_fields(message: p.Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in p.MESSAGE_CLASSES[message.MSG_TYPE].__dataclass_fields__:  # type: ignore[attr-defined]
        value = getattr(message, name)
        if isinstance(value, np.ndarray):
            value = (
                [dict(zip(value.dtype.names, r.tolist(), strict=True)) for r in value]
                if value.dtype.names
                else value.tolist()
            )
        out[name] = value
    return out


def per_call_us(fn: Callable[[], object], repeat: int, number: int) -> float:
    """Median over ``repeat`` runs of the mean time per call, in microseconds."""
    return statistics.median(timeit.repeat(fn, repeat=repeat, number=number)) / number * 1e6


def cases() -> list[tuple[str, p.Message]]:
    f = np.logspace(4, -2, 60).astype(np.float32)
    spectrum = p.EisSpectrum(1, 2, 0, 3, 0, 500_000, 990_000, 25_000, 0, 0.001, f, f * 0.5, -f * 0.1)

    def states(n: int) -> p.CellStates:
        return p.CellStates.from_columns(
            1_000_000,
            1_790_000_000_000_000,
            10,
            cell=np.arange(n),
            voltage_uV=3_700_000,
            current_uA=-1_500_000,
            temperature_mdegC=25_000,
            soc_ppm=500_000,
            soh_ppm=980_000,
        )

    return [
        ("spectrum, 60 points", spectrum),
        ("cell states, 1 cell", states(1)),
        ("cell states, 96 cells", states(96)),
    ]


def bench_case(label: str, message: p.Message, repeat: int, number: int) -> str:
    raw = p.encode_frame(message, seq=7)
    header = {"version": 1, "msg_type": message.MSG_TYPE, "flags": 0, "payload_len": len(raw) - 18, "seq": 7}
    fields = {"header": header, "payload": naive_fields(message)}
    assert NAIVE_FRAME.build(fields) == raw, "naive definition disagrees with the codec"
    decoder = p.FrameDecoder()

    def decode() -> object:
        decoder.feed(raw)
        return decoder.next_frame()

    assert isinstance(decode(), p.Frame)
    naive_number = max(1, number // 20)
    enc = per_call_us(lambda: p.encode_frame(message, seq=7), repeat, number)
    dec = per_call_us(decode, repeat, number)
    enc_naive = per_call_us(lambda: NAIVE_FRAME.build(fields), repeat, naive_number)
    dec_naive = per_call_us(lambda: NAIVE_FRAME.parse(raw), repeat, naive_number)
    return (
        f"{label:24} {len(raw):6d} | {enc:9.2f} {enc_naive:8.1f} {enc_naive / enc:5.1f}x | "
        f"{dec:9.2f} {dec_naive:8.1f} {dec_naive / dec:5.1f}x"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=2000)
    args = parser.parse_args()
    print(f"{'frame':24} {'bytes':>6} | {'encode us':>9} {'naive':>8} {'ratio':>6} | ", end="")
    print(f"{'decode us':>9} {'naive':>8} {'ratio':>6}")
    for label, message in cases():
        print(bench_case(label, message, args.repeat, args.number))
    print(
        "ratio = naive time / our time, both measured in this run; targets: >= 5x, and < 20 us per "
        "spectrum-frame encode and decode"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
