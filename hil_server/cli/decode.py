"""``eis-hil decode``: a byte capture as frames and errors."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import structlog

import protocol as p
from hil_server.cli._common import write
from hil_server.client.text import describe

log = structlog.get_logger(__name__)


def _read_capture(source: str, as_hex: bool) -> bytes:
    raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    if not as_hex:
        return raw
    text = raw.decode("ascii", errors="replace")
    digits = "".join(ch for ch in text if ch in "0123456789abcdefABCDEF")
    if len(digits) % 2:
        raise ValueError(f"{source}: odd number of hex digits ({len(digits)})")
    return bytes.fromhex(digits)


def run(args: argparse.Namespace) -> int:
    try:
        data = _read_capture(args.file, args.hex)
    except (OSError, ValueError) as exc:
        log.error("cannot read capture", file=args.file, error=str(exc))
        return 2
    decoder = p.FrameDecoder()
    decoder.feed(data)
    decoder.feed_eof()
    for item in decoder.events():
        if args.json and isinstance(item, p.Frame):
            write(
                json.dumps(
                    {
                        "seq": item.seq,
                        "type": p.MsgType(item.message.MSG_TYPE).name,
                        "flags": item.flags,
                        "fields": item.message.to_dict(),
                    }
                )
                + "\n"
            )
        else:
            write(describe(item) + "\n")
    stats = decoder.stats
    write(f"{len(data)} bytes: {stats.frames} frames, {stats.errors} errors {dict(stats.errors_by_kind)}\n")
    return 0 if stats.errors == 0 else 1


def add_arguments(decode: argparse.ArgumentParser) -> None:
    decode.add_argument("file", help="capture file, or - for stdin")
    decode.add_argument("--hex", action="store_true", help="the capture is hex text (whitespace ignored)")
    decode.add_argument("--json", action="store_true", help="frames as JSON lines")
