#!/usr/bin/env python3
"""Differential test: random corrupted streams decoded by the Python FrameDecoder and by the C decoder
(tests/hil_dump.c) must give the same events. Needs the project's Python (`import protocol`).

    diff_python.py VECTORS_JSON HIL_DUMP [--streams N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import subprocess
import sys
from pathlib import Path

from protocol import FrameDecoder, RemoteProtocolError
from protocol._crc import crc16_ccitt_false, crc32c


def fake_header(rng: random.Random) -> bytes:
    """A header whose CRC is right but whose length, type or version may be anything."""
    length = rng.choice([0, 1, 16, 52, 300, 4096, 4097, 65535, rng.randrange(65536)])
    head = struct.pack(
        "<2sBBHHI",
        b"\xe1\x5a",
        rng.choice([1, 1, 1, 2]),
        rng.choice([4, 0x20, 0x11, 0x7F]),
        0,
        length,
        rng.randrange(2**32),
    )
    return head + struct.pack("<H", crc16_ccitt_false(head))


def odd_frame(rng: random.Random) -> bytes:
    """Sound framing around a payload that may be short, of an unknown type or of another version."""
    payload = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
    msg_type = rng.choice([0x01, 0x02, 0x03, 0x05, 0x06, 0x10, 0x11, 0x13, 0x22, 0x7F])
    head = struct.pack("<2sBBHHI", b"\xe1\x5a", rng.choice([1, 1, 1, 2]), msg_type, 0, len(payload), 7)
    body = head + struct.pack("<H", crc16_ccitt_false(head)) + payload
    return body + struct.pack("<I", crc32c(body))


def random_stream(rng: random.Random, frames: list[bytes]) -> bytes:
    out = bytearray()
    for _ in range(rng.randrange(1, 8)):
        r = rng.random()
        if r < 0.35:
            out += rng.choice(frames)
        elif r < 0.5:
            f = bytearray(rng.choice(frames))
            for _ in range(rng.randrange(1, 4)):
                f[rng.randrange(len(f))] ^= 1 << rng.randrange(8)
            out += f
        elif r < 0.65:
            whole = rng.choice(frames)
            out += whole[: rng.randrange(len(whole))]
        elif r < 0.7:
            out += fake_header(rng)
        elif r < 0.75:
            out += odd_frame(rng)
        elif r < 0.9:
            out += bytes(rng.choice([0xE1, 0x5A, rng.randrange(256)]) for _ in range(rng.randrange(1, 40)))
        else:
            f = bytearray(rng.choice(frames))
            pos = rng.randrange(len(f))
            f[pos:pos] = rng.choice(frames)  # a frame inside a frame
            out += f
    return bytes(out)


def python_events(stream: bytes) -> list[tuple[str, int | None, str, str]]:
    dec = FrameDecoder()
    dec.feed(stream)
    dec.feed_eof()
    lines: list[tuple[str, int | None, str, str]] = []
    for item in dec.events():
        if isinstance(item, RemoteProtocolError):
            seq = "-" if item.seq is None else str(item.seq)
            mt = "-" if item.msg_type is None else str(item.msg_type)
            lines.append((item.kind.name, item.nbytes, seq, mt))
        else:
            lines.append(("FRAME", None, str(item.seq), str(int(item.message.MSG_TYPE))))
    return lines


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("vectors", type=Path)
    ap.add_argument("dump", type=Path)
    ap.add_argument("--streams", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    doc = json.loads(args.vectors.read_text(encoding="utf-8"))
    frames = [bytes.fromhex(v["hex"]) for v in doc["vectors"] if v["valid"]]
    rng = random.Random(args.seed)
    streams = [random_stream(rng, frames) for _ in range(args.streams)]
    payload = b"".join(
        struct.pack("<II", len(s), 0 if i % 2 == 0 else rng.randrange(1, 2**32)) + s
        for i, s in enumerate(streams)
    )
    out = subprocess.run([str(args.dump)], input=payload, capture_output=True, check=True, timeout=120).stdout
    c_runs = out.decode().split("END\n")[:-1]
    failed = 0
    for i, (stream, run) in enumerate(zip(streams, c_runs, strict=True)):
        c = [tuple(line.split()) for line in run.splitlines()]
        py = python_events(stream)
        same = len(c) == len(py) and all(
            ce[0] == pe[0] and (pe[1] is None or ce[1] == str(pe[1])) and ce[2:] == (pe[2], pe[3])
            for ce, pe in zip(c, py, strict=True)
        )
        if not same:
            failed += 1
            if failed <= 3:
                print(f"stream {i} ({stream.hex()}):\n  C:      {c}\n  Python: {py}")  # noqa: T201
    print(f"diff_python: {len(streams) - failed} of {len(streams)} streams agree with Python")  # noqa: T201
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
